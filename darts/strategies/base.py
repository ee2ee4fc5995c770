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

    def can_ask(self) -> bool:
        """Whether a candidate can be asked before the pending ones are told (an asynchronous
        run waits for one to finish when not: network morphism's step is over)."""
        return True

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


def run_async(strategy: Strategy, executor, budget: int, history: list[dict] | None = None,
              asks: list[dict] | None = None, on_evaluation=None, on_ask=None,
              max_pending: int = 1, to_text=str) -> list[dict]:
    """Asks, evaluates and tells with up to `max_pending` evaluations running at once: as soon
    as one finishes, it is told and the strategy is asked for the next (Real et al.'s
    asynchronous evolution; any strategy). `executor.submit(candidate)` starts an evaluation
    and returns a token; `executor.wait()` returns (token, Evaluation) of one that finished.

    Records are in the order evaluations finished, each with `asked` (its place in the order
    of asks) and `after` (the tells before it was asked); `on_ask({"ask", "after",
    "candidate"})` sees each ask. A resumed run replays `asks` and `history` (those of a
    stopped run) in their recorded interleaving, checking each asked candidate, then submits
    again what was asked but never told. With `max_pending` 1 the run is the sequential one:
    ask, evaluate, tell."""
    records = list(history or [])
    asked_log = list(asks or [])
    told_asks = {r["asked"] for r in records}
    after_of = {e["ask"]: e["after"] for e in asked_log}
    pending: dict[Any, tuple[int, Any]] = {}  # token -> (ask index, candidate)
    candidates: dict[int, Any] = {}

    def ask(after: int, recorded: dict | None = None) -> int:
        candidate = strategy.ask()
        k = len(candidates)
        if recorded is not None and to_text(candidate) != recorded["candidate"]:
            raise ValueError(f"the history does not replay: ask {k + 1} was "
                             f"{recorded['candidate']}, the strategy now asks {to_text(candidate)}")
        candidates[k] = candidate
        if recorded is None:
            entry = {"ask": k, "after": after, "candidate": to_text(candidate)}
            asked_log.append(entry)
            after_of[k] = after
            if on_ask is not None:
                on_ask(entry)
        return k

    told = 0

    def tell_recorded(upto: int) -> None:
        nonlocal told
        for record in records[told:upto]:
            strategy.tell(candidates[record["asked"]], record["score"])
        told = max(told, upto)

    # Replay: the asks and tells of the stopped run, in their order.
    for entry in list(asked_log):
        tell_recorded(entry["after"])
        ask(entry["after"], entry)
    tell_recorded(len(records))
    for k, candidate in candidates.items():  # asked, never told: evaluated again
        if k not in told_asks and len(records) + len(pending) < budget:
            pending[executor.submit(candidate)] = (k, candidate)

    while len(records) < budget:
        while (len(pending) < max_pending and len(records) + len(pending) < budget
               and strategy.can_ask()):
            k = ask(len(records))
            pending[executor.submit(candidates[k])] = (k, candidates[k])
        if not pending:
            raise RuntimeError("the strategy asks nothing and nothing is running")
        token, result = executor.wait()
        k, candidate = pending.pop(token)
        strategy.tell(candidate, result.score)
        record = {"n": len(records) + 1, "candidate": to_text(candidate),
                  "score": result.score, "reported": result.reported, "cost": result.cost,
                  "time": time.time(), "asked": k, "after": after_of[k]}
        records.append(record)
        if on_evaluation is not None:
            on_evaluation(record)
    return records
