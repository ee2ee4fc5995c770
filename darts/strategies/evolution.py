"""Regularized (aging) evolution (Real et al., AAAI 2019, Algorithm 1).

A population of `population` candidates, first drawn at random. Each cycle draws
`sample_size` members uniformly (with replacement, as Algorithm 1 does), mutates the best of
them (one decision changed), scores the child, adds it, and removes the *oldest* member,
not the worst: a candidate survives by having good children, not by one lucky score. The
defaults are NAS-Bench-201's REA runs (AutoDL-Projects, scripts-search/algos/R-EA.sh:
population 10, sample size 3).
"""

from __future__ import annotations

from collections import deque
from types import ModuleType
from typing import Any

from darts.strategies.base import Strategy


class RegularizedEvolution(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {"population": 10 if cfg.population is None else cfg.population,
                "sample_size": cfg.sample_size}

    def __init__(self, space: ModuleType, seed: int = 0, population: int = 10,
                 sample_size: int = 3):
        super().__init__(space, seed)
        if population < 1 or not 1 <= sample_size:
            raise ValueError(f"need population >= 1 and sample_size >= 1, got {population}, "
                             f"{sample_size}")
        self.population_size, self.sample_size = population, sample_size
        self.population: deque[tuple[Any, float]] = deque()
        self.seeded: deque[Any] = deque()

    warm_startable = True

    def warm_start(self, candidates: list[Any]) -> None:
        """The initial population: the best `population` of `candidates` (Abdelfattah et al.,
        ICLR 2021, Section 5: the top of a proxy-scored sample)."""
        self.seeded = deque(candidates[:self.population_size])

    def ask(self) -> Any:
        if len(self.population) < self.population_size:
            if self.seeded:
                return self.seeded.popleft()
            return self.space.sample(self.rng)  # the initial population: random
        sample = [self.population[self.rng.randrange(len(self.population))]
                  for _ in range(self.sample_size)]
        parent = max(sample, key=lambda member: member[1])[0]
        return self.space.mutate(parent, self.rng)

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        self.population.append((candidate, score))
        if len(self.population) > self.population_size:
            self.population.popleft()  # aging: the oldest dies
