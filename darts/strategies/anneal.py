"""Simulated annealing over the mutation neighbourhood (Kirkpatrick et al. 1983).

The walk starts at a random candidate. Each step proposes a neighbour (one decision
mutated) and moves there if it scores better, or else with probability exp(delta / T), where
delta < 0 is the loss in score. T starts at `t0` and is multiplied by `cooling` after every
evaluation (a geometric schedule). The defaults are ours, for scores in percent: t0 = 1.0
accepts a 1-point loss with probability 1/e at first; cooling = 0.99 leaves T at 0.37 after
100 evaluations and 0.00004 after 1,000.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from darts.strategies.base import Strategy


class SimulatedAnnealing(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {"t0": cfg.temperature, "cooling": cfg.cooling}

    def __init__(self, space: ModuleType, seed: int = 0, t0: float = 1.0, cooling: float = 0.99):
        super().__init__(space, seed)
        if t0 <= 0 or not 0 < cooling <= 1:
            raise ValueError(f"need t0 > 0 and 0 < cooling <= 1, got {t0}, {cooling}")
        self.temperature, self.cooling = t0, cooling
        self.current: tuple[Any, float] | None = None

    def ask(self) -> Any:
        if self.current is None:
            return self.space.sample(self.rng)
        return self.space.mutate(self.current[0], self.rng)

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        if self.current is None or score >= self.current[1]:
            self.current = (candidate, score)
        elif self.rng.random() < math.exp((score - self.current[1]) / self.temperature):
            self.current = (candidate, score)
        self.temperature = max(self.temperature * self.cooling, 1e-12)
