"""Multi-trial strategies on NAS-Bench-201's space, scored by a synthetic table of the
benchmark's shape (not its numbers), whose optimum is known."""

import random
from collections import Counter

import pytest

from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.nb201 import BenchmarkTable, synthetic_table
from darts.spaces import nb201
from darts.spaces.nb201 import NB201_OPS, NB201Arch
from darts.strategies import STRATEGIES, RegularizedEvolution, run


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return BenchmarkTable.load(synthetic_table(tmp_path_factory.mktemp("s") / "t.csv", seed=0))


def best_found(name, table, seed, budget):
    evaluate = BenchmarkEvaluator(table, "cifar10_test", "cifar10_test")
    strategy = STRATEGIES[name](nb201, seed=seed)
    run(strategy, evaluate, budget)
    return strategy.best[1]


def test_evolution_finds_the_optimum_well_before_exhausting_the_space_and_random_does_not(table):
    optimum = NB201Arch.from_string(max(table.rows, key=lambda a: table.rows[a]["cifar10_test"]))
    budget = 1000  # 6.4 % of the 15,625 cells
    found = {name: sum(best_found(name, table, seed, budget) == optimum for seed in range(10))
             for name in ("random", "evolution")}
    # measured: evolution 8 of 10 seeds, random 0 of 10
    assert found["evolution"] >= 6 and found["random"] <= 2, found


def test_evolution_beats_random_on_a_small_budget(table):
    def median_rank(name):
        ranks = sorted(table.rank(best_found(name, table, seed, 100), "cifar10_test")
                       for seed in range(10))
        return ranks[len(ranks) // 2]
    # measured: median rank 5.5 (evolution) against 140 (random) among 15,625
    assert median_rank("evolution") * 5 < median_rank("random")


def test_mutation_changes_exactly_one_edge_uniformly():
    rng = random.Random(0)
    arch = NB201Arch(("nor_conv_3x3",) * 6)
    edges, ops = Counter(), Counter()
    for _ in range(6000):
        child = nb201.mutate(arch, rng)
        changed = [e for e in range(6) if child.ops[e] != arch.ops[e]]
        assert len(changed) == 1
        edges[changed[0]] += 1
        ops[child.ops[changed[0]]] += 1
    assert all(900 < edges[e] < 1100 for e in range(6))  # 1000 each expected
    assert "nor_conv_3x3" not in ops and all(1300 < ops[o] < 1700 for o in ops)  # 1500 each


def test_crossover_takes_each_edge_from_a_parent_with_probability_one_half():
    rng = random.Random(1)
    a, b = NB201Arch(("none",) * 6), NB201Arch(("skip_connect",) * 6)
    from_a = sum(nb201.crossover(a, b, rng).ops.count("none") for _ in range(2000))
    assert abs(from_a / 12000 - 0.5) < 0.02
    assert len(nb201.encode(a)) == 30 and sum(nb201.encode(a)) == 6
    assert nb201.from_decisions([1] * 6) == b and nb201.decisions() == [NB201_OPS] * 6


def test_aging_removes_the_oldest_not_the_worst():
    strategy = RegularizedEvolution(nb201, seed=0, population=3, sample_size=2)
    scores = [90.0, 10.0, 50.0, 20.0]
    told = []
    for score in scores:
        arch = strategy.ask()
        strategy.tell(arch, score)
        told.append(arch)
    assert [s for _, s in strategy.population] == [10.0, 50.0, 20.0]  # 90 was oldest: gone
    assert strategy.best == (90.0, told[0])


def test_a_resumed_run_ends_with_the_same_history(table):
    evaluate = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
    whole = run(RegularizedEvolution(nb201, seed=3), evaluate, 60)
    part = run(RegularizedEvolution(nb201, seed=3), evaluate, 25)
    resumed = run(RegularizedEvolution(nb201, seed=3), evaluate, 60, history=part)
    assert resumed == whole
    assert all(r["reported"] == table.lookup(r["candidate"])["cifar10_test"] for r in whole)
    with pytest.raises(ValueError, match="does not replay"):
        run(RegularizedEvolution(nb201, seed=4), evaluate, 60, history=part)


def test_the_evaluator_names_a_missing_column(table):
    with pytest.raises(UserError, match="--metric cifar10_x: .* has no such column"):
        BenchmarkEvaluator(table, "cifar10_x")
