"""The local executor: evaluations here, or in spawned processes on this machine."""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any


def call(function, args: tuple, candidate: Any) -> Any:
    """What a worker runs: an evaluator's `remote_call()` (function, args) on a candidate."""
    return function(*args, candidate)


class LocalExecutor:
    """With `max_pending` > 1 and an evaluator that can run elsewhere (`remote_call`), that
    many spawned processes run evaluations side by side; otherwise each runs here when
    submitted."""

    def __init__(self, evaluator: Any, *, max_pending: int = 1, **_: Any):
        self.evaluator = evaluator
        self.tokens = itertools.count()
        self.done: list[tuple[int, Any]] = []
        self.futures: dict[Any, int] = {}
        remote = getattr(evaluator, "remote_call", None)
        self.pool = None
        if max_pending > 1 and remote is not None:
            self.function, self.args = remote()
            self.pool = ProcessPoolExecutor(max_pending,
                                            mp_context=multiprocessing.get_context("spawn"))

    def submit(self, candidate: Any) -> int:
        token = next(self.tokens)
        if self.pool is None:
            self.done.append((token, self.evaluator(candidate)))
        else:
            self.futures[self.pool.submit(call, self.function, self.args, candidate)] = token
        return token

    def wait(self) -> tuple[int, Any]:
        if self.done:
            return self.done.pop(0)
        finished, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        future = min(finished, key=lambda f: self.futures[f])  # the earliest asked of them
        return self.futures.pop(future), future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None
