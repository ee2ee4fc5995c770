"""User-facing errors: one clear message, no traceback, non-zero exit.

Every mistake in a user's input (a flag, a file, a data set, a full disk) is raised as a
`UserError` whose message is one line naming the flag or file and the fix. The command-line
entry points (`darts.train.cli.main`, `python -m darts.visualize`) catch it, print
`error: <message>` and exit with status 2; nothing else turns into a bare traceback.
"""

from __future__ import annotations

# What torch's DataLoader puts around an exception raised in a worker process, when it
# raises the same type again in the main process: "Caught X in DataLoader worker process N.
# Original Traceback (most recent call last): ... darts.errors.UserError: <message>".
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class UserError(Exception):
    """A mistake in the user's input (file, flag, data). The CLIs print it and exit 2."""


class GenotypeError(UserError):
    """A genotype file or name that cannot be used."""


def one_line(error: BaseException) -> str:
    """The user's message of `error` on one line.

    A UserError raised in a DataLoader worker reaches the main process wrapped in the
    worker's traceback; the message is its last line, after the exception's type name.
    """
    text = str(error).strip()
    if _WORKER_TRACEBACK in text:
        last = text.splitlines()[-1]
        name, sep, rest = last.partition(": ")
        text = rest if sep and name.split(".")[-1].endswith("Error") else last
    return " ".join(text.split())


class InvalidCandidate(ValueError):
    """Well-formed decisions or a spec that name no candidate of the space (NAS-Bench-101's
    specs whose input does not reach the output, or with too many edges): a strategy draws
    again."""
