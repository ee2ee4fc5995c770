"""A candidate with a lineage: made from a trained parent by function-preserving edits.

Network morphism (darts.strategies.morphism) proposes `Child` candidates; an evaluator that can
inherit weights (darts.evaluators.training) starts a child from its parent's trained weights,
kept under the parent's `key`. Everything else sees a child as its spec: its text is the spec's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Child:
    """A candidate made by morphing a trained parent: `spec` (the space's candidate), `parent`
    (the parent's key; its spec `parent_spec`), `edits` (applied in order), `key` (this
    child's, a function of its lineage: the name its trained weights are kept under)."""

    spec: Any
    key: str
    parent: str | None = None
    parent_spec: Any = None
    edits: tuple = ()

    def __str__(self) -> str:
        return str(self.spec)


def lineage_key(parent: str, edits: tuple) -> str:
    """A child's key: a function of its parent's key and its edits alone."""
    text = parent + ">" + ",".join(map(str, edits))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
