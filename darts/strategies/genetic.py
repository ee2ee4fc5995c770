"""A genetic algorithm as the documents this project comes from describe it: a population of
20 over 10 generations, crossover rate 0.7, mutation rate 0.1, selection, crossover,
mutation and replacement.

Generation 0 is drawn at random. Each next generation keeps the `elites` best members as
they are (not evaluated again), and fills the rest with children: two parents selected by
`selection` (`tournament` of `tournament_size`, or `roulette`, probability proportional to
score), crossed over (uniform, each decision from either parent) with probability
`crossover_rate` or else a copy of the first parent, then every decision mutated with
probability `mutation_rate`. The new generation replaces the old. A run of `population` x
`generations` evaluations less the elites' re-use is the documents' budget.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from darts.strategies.base import Strategy

SELECTIONS = ("tournament", "roulette")


class GeneticAlgorithm(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {"population": 20 if cfg.population is None else cfg.population,
                "crossover_rate": cfg.crossover_rate,
                "mutation_rate": cfg.mutation_rate, "selection": cfg.selection,
                "tournament_size": cfg.sample_size, "elites": cfg.elites}

    def __init__(self, space: ModuleType, seed: int = 0, population: int = 20,
                 crossover_rate: float = 0.7, mutation_rate: float = 0.1,
                 selection: str = "tournament", tournament_size: int = 3, elites: int = 1):
        super().__init__(space, seed)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if population < 2 or not 0 <= elites < population:
            raise ValueError(f"need population >= 2 and 0 <= elites < population, got "
                             f"{population}, {elites}")
        if not (0 <= crossover_rate <= 1 and 0 <= mutation_rate <= 1):
            raise ValueError("crossover_rate and mutation_rate must be in [0, 1]")
        self.size, self.elites = population, elites
        self.crossover_rate, self.mutation_rate = crossover_rate, mutation_rate
        self.selection, self.tournament_size = selection, tournament_size
        self.generation = 0
        self.members: list[tuple[Any, float]] = []  # the current generation, scored
        self.next: list[tuple[Any, float]] = []     # the one being built
        self.pending: list[Any] = []                # children asked for, not yet told
        self.crossovers = self.children = 0         # counts, for checking the rates

    def _select(self) -> Any:
        if self.selection == "tournament":
            group = [self.members[self.rng.randrange(len(self.members))]
                     for _ in range(self.tournament_size)]
            return max(group, key=lambda m: m[1])[0]
        low = min(score for _, score in self.members)
        weights = [score - low + 1e-9 for _, score in self.members]  # shifted: all positive
        return self.rng.choices([m[0] for m in self.members], weights=weights)[0]

    def _child(self) -> Any:
        first = self._select()
        self.children += 1
        if self.rng.random() < self.crossover_rate:
            self.crossovers += 1
            child = self.space.crossover(first, self._select(), self.rng)
        else:
            child = first
        return self.space.mutate(child, self.rng, rate=self.mutation_rate)

    def ask(self) -> Any:
        # Generation 0 is random; children asked before it is complete (a batch that spans
        # its end) are random too, immigrants of generation 1.
        child = self.space.sample(self.rng) if not self.members else self._child()
        self.pending.append(child)
        return child

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        self.pending.remove(candidate)
        self.next.append((candidate, score))
        if len(self.next) >= self.size:
            # The generation is complete: it becomes the parents; the next one starts with
            # its elites (and any children of a batch that spanned the turn).
            self.members, rest = self.next[:self.size], self.next[self.size:]
            self.next = sorted(self.members, key=lambda m: m[1], reverse=True)[:self.elites] + rest
            self.generation += 1
