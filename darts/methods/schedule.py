"""The epoch hook: how the search loop tells its pieces the epoch about to run.

A piece whose behaviour changes over the search (GDAS's temperature, beta-DARTS's weight, ...)
has a method `set_epoch(epoch, epochs)`: `epoch` is the 0-based index of the epoch about to
run, `epochs` the search's total. The search calls it on every piece before each epoch, also
the first after a `--resume`, so a piece keeps no state of its own beyond what the epoch
gives it (nothing to checkpoint). A piece may also have `scalars()`: a dict of the values it
uses this epoch, logged with the epoch (`arch/<name>` in TensorBoard, `<name>` in
metrics.json).

`set_epoch(pieces, epoch, epochs)` below is that call; pieces without the method, and None,
are skipped, so any object (a sampler, an architecture loss, a perturbation) can take part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def set_epoch(pieces: Iterable[Any], epoch: int, epochs: int) -> None:
    """Calls `piece.set_epoch(epoch, epochs)` on every piece that has it."""
    for piece in pieces:
        hook = getattr(piece, "set_epoch", None)
        if callable(hook):
            hook(epoch, epochs)


def scalars(pieces: Iterable[Any]) -> dict[str, float]:
    """The values the pieces use this epoch (their `scalars()`), merged."""
    out: dict[str, float] = {}
    for piece in pieces:
        values = getattr(piece, "scalars", None)
        if callable(values):
            out.update(values())
    return out
