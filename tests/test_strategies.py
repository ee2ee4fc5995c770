"""Multi-trial strategies on NAS-Bench-201's space, scored by a synthetic table of the
benchmark's shape (not its numbers), whose optimum is known."""

import random
from collections import Counter

import pytest

from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table
from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.spaces import nb201
from darts.spaces.nb201 import NB201_OPS, NB201Arch
from darts.strategies import (
    STRATEGIES,
    GeneticAlgorithm,
    RegularizedEvolution,
    SimulatedAnnealing,
    run,
)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return BenchmarkTable.load(synthetic_table(tmp_path_factory.mktemp("s") / "t.csv", seed=0))


def best_found(name, table, seed, budget):
    evaluate = BenchmarkEvaluator(table, "cifar10_test", "cifar10_test")
    strategy = STRATEGIES[name](nb201, seed=seed)
    run(strategy, evaluate, budget)
    return strategy.best[1]


def test_each_strategy_finds_the_optimum_well_before_exhausting_the_space_and_random_does_not(table):
    optimum = NB201Arch.from_string(max(table.rows, key=lambda a: table.rows[a]["cifar10_test"]))
    budget = 1000  # 6.4 % of the 15,625 cells
    found = {name: sum(best_found(name, table, seed, budget) == optimum for seed in range(10))
             for name in ("random", "evolution", "ga", "anneal")}
    # measured: evolution 8, ga 10, anneal 10 of 10 seeds; random 0 of 10
    assert found["random"] <= 2, found
    assert all(found[name] >= 6 for name in ("evolution", "ga", "anneal")), found


def test_evolution_beats_random_on_a_small_budget(table):
    def median_rank(name):
        ranks = sorted(table.rank(best_found(name, table, seed, 100), "cifar10_test")
                       for seed in range(10))
        return ranks[len(ranks) // 2]
    # measured: median rank 5.5 (evolution), 12.5 (ga), 2.5 (anneal) against 140 (random)
    random_rank = median_rank("random")
    assert all(median_rank(name) * 4 < random_rank for name in ("evolution", "ga", "anneal"))


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


@pytest.mark.parametrize("name", ["random", "evolution", "ga", "anneal", "reinforce", "enas", "bo"])
def test_a_resumed_run_ends_with_the_same_history(table, name):
    evaluate = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
    def untimed(records):
        return [{k: v for k, v in r.items() if k != "time"} for r in records]

    for batch in (1, 3):
        whole = run(STRATEGIES[name](nb201, seed=3), evaluate, 60, batch=batch)
        # a stopped run's history holds whole batches: each is written once evaluated
        part = run(STRATEGIES[name](nb201, seed=3), evaluate, 24, batch=batch)
        resumed = run(STRATEGIES[name](nb201, seed=3), evaluate, 60, history=part, batch=batch)
        assert untimed(resumed) == untimed(whole)
    assert all(r["reported"] == table.lookup(r["candidate"])["cifar10_test"] for r in whole)
    with pytest.raises(ValueError, match="does not replay"):
        run(RegularizedEvolution(nb201, seed=4), evaluate, 60, history=part)


def test_the_evaluator_names_a_missing_column(table):
    with pytest.raises(UserError, match="--metric cifar10_x: .* has no such column"):
        BenchmarkEvaluator(table, "cifar10_x")


def test_the_genetic_algorithm_honours_its_rates_and_generations(table):
    evaluate = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
    for selection in ("tournament", "roulette"):
        ga = GeneticAlgorithm(nb201, seed=0, selection=selection)
        run(ga, evaluate, 20 + 19 * 9)  # the documents' 10 generations of 20, one elite kept
        assert ga.generation == 10
        assert abs(ga.crossovers / ga.children - 0.7) < 0.07  # 171 children
    big = GeneticAlgorithm(nb201, seed=1, crossover_rate=0.3)
    run(big, evaluate, 2000)
    assert abs(big.crossovers / big.children - 0.3) < 0.03
    rng = random.Random(2)
    arch = NB201Arch(("none",) * 6)
    changed = sum(sum(a != b for a, b in zip(nb201.mutate(arch, rng, rate=0.1).ops, arch.ops,
                                                 strict=True)) for _ in range(5000))
    assert abs(changed / 30000 - 0.1) < 0.01  # each decision mutated with probability 0.1


def test_the_elite_survives_to_the_next_generation(table):
    evaluate = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
    ga = GeneticAlgorithm(nb201, seed=0, elites=2)
    run(ga, evaluate, 20)
    best_two = sorted(ga.members, key=lambda m: m[1], reverse=True)[:2]
    for _ in range(18):
        arch = ga.ask()
        ga.tell(arch, evaluate(arch).score)
    assert ga.generation == 2 and best_two == ga.members[:2]


def test_annealing_accepts_a_worse_step_as_the_temperature_says():
    sa = SimulatedAnnealing(nb201, seed=0, t0=1.0, cooling=1.0)
    first = sa.ask()
    sa.tell(first, 50.0)
    accepted = 0
    for _ in range(4000):
        sa.current = (first, 50.0)
        worse = sa.ask()
        sa.tell(worse, 49.0)  # a loss of 1 point at T = 1: accepted with probability 1/e
        accepted += sa.current[1] == 49.0
    assert abs(accepted / 4000 - 0.3679) < 0.03


def test_reinforce_learns_the_optimum_and_its_gradient_is_the_hand_computed_one(table):
    import torch

    from darts.strategies import Reinforce
    optimum = NB201Arch.from_string(max(table.rows, key=lambda a: table.rows[a]["cifar10_test"]))
    evaluate = BenchmarkEvaluator(table, "cifar10_test", "cifar10_test")
    found = 0
    for seed in range(5):
        policy = Reinforce(nb201, seed=seed, lr=0.01)  # the benchmark's 0.001 learns slower
        run(policy, evaluate, 1000)
        found += policy.best[1] == optimum
    assert found >= 3  # measured: 4 of 5 (8 of 10 seeds; random search: 0 of 10)

    # d loss / d logits for a tiny policy, by hand: -(R - b) (onehot(a) - softmax) - beta dH
    policy = Reinforce(nb201, seed=0, entropy_weight=0.5)
    with torch.no_grad():
        policy.policy.logits.copy_(torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]] * 6, dtype=torch.float64))
    choices, advantage = [2, 0, 4, 1, 3, 2], 1.7
    policy.policy.logits.grad = None
    policy.loss(choices, advantage).backward()
    p = torch.softmax(policy.policy.logits.detach(), -1)
    onehot = torch.nn.functional.one_hot(torch.tensor(choices), 5).double()
    log_p = p.log()
    entropy_grad = -p * (log_p + 1) + p * (p * (log_p + 1)).sum(-1, keepdim=True)  # dH/dlogits
    expected = -advantage * (onehot - p) - 0.5 * entropy_grad
    torch.testing.assert_close(policy.policy.logits.grad, expected)
