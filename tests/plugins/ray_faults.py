"""Evaluations that fail on purpose, for the executors' fault tests (imported by Ray workers)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from darts.evaluators.base import Evaluation


def flaky(folder: str, mode: str, candidate) -> Evaluation:
    """Counts its attempts in `folder`; `raise`: always raises; `die`: the first attempt kills
    its own worker process, later ones score."""
    Path(folder, f"attempt-{uuid.uuid4().hex}").touch()
    attempts = len(list(Path(folder).glob("attempt-*")))
    if mode == "raise":
        raise ValueError(f"broken evaluation of {candidate}")
    if mode == "die" and attempts == 1:
        os._exit(1)
    return Evaluation(float(len(str(candidate))), 0.0, 0.0)


class FlakyEvaluator:
    def __init__(self, folder: str, mode: str):
        self.folder, self.mode = folder, mode

    def remote_call(self):
        return flaky, (self.folder, self.mode)

    def __call__(self, candidate) -> Evaluation:
        return flaky(self.folder, self.mode, candidate)
