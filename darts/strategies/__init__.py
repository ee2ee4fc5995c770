"""Multi-trial search strategies: ask for a candidate, tell its score.

A strategy proposes candidates of a space (`ask`) and learns from their scores (`tell`); it
never knows how a candidate is scored. What it needs of a space (sample, mutate, crossover,
decisions, encode) is the space module's functions, e.g. `darts.spaces.nb201`. A plugin
registers its own strategy with `register_strategy(name, cls)`.

    strategy = STRATEGIES["evolution"](nb201, seed=0)
    for _ in range(budget):
        arch = strategy.ask()
        strategy.tell(arch, evaluate(arch))
    strategy.best   # (score, candidate) of the best told so far
"""

from __future__ import annotations

from darts.registry import Registry
from darts.strategies.anneal import SimulatedAnnealing
from darts.strategies.bananas import Bananas
from darts.strategies.base import Strategy, run, run_async
from darts.strategies.bayesian import BayesianOptimisation
from darts.strategies.evolution import RegularizedEvolution
from darts.strategies.genetic import GeneticAlgorithm
from darts.strategies.morphism import NetworkMorphism
from darts.strategies.random_search import RandomSearch
from darts.strategies.reinforce import ENAS, Reinforce

# `--strategy NAME`: a plugin adds one with `register_strategy("hill", HillClimbing)`, a
# Strategy subclass (its `options(cfg)` picks the flags it takes).
STRATEGIES = Registry("strategy", "--strategy", {
    "random": RandomSearch,
    "evolution": RegularizedEvolution,
    "ga": GeneticAlgorithm,
    "anneal": SimulatedAnnealing,
    "reinforce": Reinforce,
    "enas": ENAS,
    "bo": BayesianOptimisation,
    "bananas": Bananas,
    "morphism": NetworkMorphism,
}.items())
register_strategy = STRATEGIES.register

__all__ = ["STRATEGIES", "register_strategy", "ENAS", "Bananas", "BayesianOptimisation", "GeneticAlgorithm", "NetworkMorphism", "RandomSearch", "RegularizedEvolution",
           "Reinforce", "SimulatedAnnealing", "Strategy", "run", "run_async"]
