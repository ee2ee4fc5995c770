"""The ask/tell interface every multi-trial strategy implements."""

from __future__ import annotations

import random
import time
from types import ModuleType
from typing import Any


class Strategy:
    """Proposes candidates of `space` (a space module) and keeps the best told so far.

    `ask()` returns the next candidate to score; `tell(candidate, score)` reports it (higher
    is better). Strategies draw only from their own `random.Random(seed)`, so a run is
    repeated exactly by its seed and its history of told scores."""

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        """The keyword arguments of this strategy that a run's flags set (`cfg`, a
        SearchConfig); a flag left at None takes the strategy's own default."""
        return {}

    def __init__(self, space: ModuleType, seed: int = 0):
        self.space = space
        self.rng = random.Random(seed)
        self.best: tuple[float, Any] | None = None
        self.told = 0

    def ask(self) -> Any:
        raise NotImplementedError

    # Strategies that can start from given candidates (`--warm_start`) override this.
    warm_startable = False

    def warm_start(self, candidates: list[Any]) -> None:
        """Starts from `candidates` (best first, e.g. the top of a proxy-scored sample)
        instead of random ones."""
        raise NotImplementedError

    def tell(self, candidate: Any, score: float) -> None:
        self.told += 1
        if self.best is None or score > self.best[0]:
            self.best = (score, candidate)


def run(strategy: Strategy, evaluate, budget: int | None = None, history: list[dict] | None = None,
        on_evaluation=None, seconds: float | None = None, batch: int = 1,
        to_text=str) -> list[dict]:
    """Asks, evaluates and tells until the budget is spent: `budget` evaluations, or (with
    `seconds`) evaluations whose costs add up to `seconds`; the evaluation that crosses it
    is kept, as NAS-Bench-201's time-budgeted runs keep it.

    With `batch` > 1, `batch` candidates are asked, evaluated together (the evaluator's
    `evaluate_many`, e.g. in parallel processes) and then told in order. `history` (records
    of an earlier, stopped run of the same strategy, seed and batch) is replayed first: each
    asked candidate must be the recorded one, and is told the recorded score without being
    evaluated again, so a resumed run continues exactly where the stopped one was. A record:
    {"n", "candidate", "score", "reported", "cost", "time"} (`to_text(candidate)` is its
    text); `on_evaluation(record)` sees each new one."""
    if budget is None and seconds is None:
        raise ValueError("give a budget of evaluations or of seconds")
    records = list(history or [])

    def spent() -> bool:
        return ((budget is not None and len(records) >= budget)
                or (seconds is not None and sum(r.get("cost", 0.0) for r in records) >= seconds))

    for start in range(0, len(records), batch):
        group = records[start:start + batch]
        asked = [strategy.ask() for _ in group]
        for candidate, record in zip(asked, group, strict=True):
            if to_text(candidate) != record["candidate"]:
                raise ValueError(f"the history does not replay: evaluation {record['n']} was "
                                 f"{record['candidate']}, the strategy now asks "
                                 f"{to_text(candidate)}")
        for candidate, record in zip(asked, group, strict=True):
            strategy.tell(candidate, record["score"])
    many = getattr(evaluate, "evaluate_many", None)
    while not spent():
        size = batch if budget is None else min(batch, budget - len(records))
        asked = [strategy.ask() for _ in range(size)]
        results = many(asked) if many is not None and size > 1 else [evaluate(c) for c in asked]
        for candidate, result in zip(asked, results, strict=True):
            strategy.tell(candidate, result.score)
            record = {"n": len(records) + 1, "candidate": to_text(candidate),
                      "score": result.score, "reported": result.reported,
                      "cost": result.cost, "time": time.time()}
            records.append(record)
            if on_evaluation is not None:
                on_evaluation(record)
    return records
