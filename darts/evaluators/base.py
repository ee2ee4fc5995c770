"""What every evaluator returns for a candidate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Evaluation:
    score: float       # what the strategy is told (higher is better)
    reported: float    # what the run reports for it (e.g. test accuracy)
    cost: float = 0.0  # seconds it took, or would have taken (a table's training time)
