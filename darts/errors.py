"""User-facing errors: one clear message, no traceback, non-zero exit."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, flag, data). The CLIs print it and exit 2."""


class GenotypeError(UserError):
    """A genotype file or name that cannot be used."""
