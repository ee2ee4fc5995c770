"""The ask/tell interface every multi-trial strategy implements."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any


class Strategy:
    """Proposes candidates of `space` (a space module) and keeps the best told so far.

    `ask()` returns the next candidate to score; `tell(candidate, score)` reports it (higher
    is better). Strategies draw only from their own `random.Random(seed)`, so a run is
    repeated exactly by its seed and its history of told scores."""

    def __init__(self, space: ModuleType, seed: int = 0):
        self.space = space
        self.rng = random.Random(seed)
        self.best: tuple[float, Any] | None = None
        self.told = 0

    def ask(self) -> Any:
        raise NotImplementedError

    def tell(self, candidate: Any, score: float) -> None:
        self.told += 1
        if self.best is None or score > self.best[0]:
            self.best = (score, candidate)


def run(strategy: Strategy, evaluate, budget: int, history: list[dict] | None = None,
        on_evaluation=None) -> list[dict]:
    """Asks, evaluates and tells until `budget` evaluations are in the history.

    `history` (records of an earlier, stopped run of the same strategy and seed) is replayed
    first: each asked candidate must be the recorded one, and is told the recorded score
    without evaluating it again, so a resumed run continues exactly where the stopped one
    was. Each record: {"n", "candidate", "score", "reported"}; `on_evaluation(record)` sees
    each new one."""
    records = list(history or [])
    for record in records:
        candidate = strategy.ask()
        if str(candidate) != record["candidate"]:
            raise ValueError(f"the history does not replay: evaluation {record['n']} was "
                             f"{record['candidate']}, the strategy now asks {candidate}")
        strategy.tell(candidate, record["score"])
    while len(records) < budget:
        candidate = strategy.ask()
        result = evaluate(candidate)
        strategy.tell(candidate, result.score)
        record = {"n": len(records) + 1, "candidate": str(candidate), "score": result.score,
                  "reported": result.reported}
        records.append(record)
        if on_evaluation is not None:
            on_evaluation(record)
    return records
