"""Executors: the asynchronous loop, its replay, and evaluations on a local Ray."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pytest

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.executors import LocalExecutor
from darts.search import SearchConfig
from darts.search import run as search_run
from darts.spaces import nb201
from darts.strategies import STRATEGIES, run, run_async

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "plugins"))


def _score(candidate) -> Evaluation:
    rng = random.Random(str(candidate))  # deterministic, a function of the candidate
    return Evaluation(rng.uniform(0, 100), rng.uniform(0, 100), 1.0)


class OutOfOrder:
    """An executor whose evaluations finish in a scrambled (seeded) order."""

    def __init__(self, seed: int = 0):
        self.rng, self.running, self.k = random.Random(seed), [], 0

    def submit(self, candidate):
        self.k += 1
        self.running.append((self.k, candidate))
        return self.k

    def wait(self):
        token, candidate = self.running.pop(self.rng.randrange(len(self.running)))
        return token, _score(candidate)


def _untimed(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.parametrize("name", ["random", "evolution", "ga", "reinforce", "bo"])
def test_one_pending_evaluation_is_the_sequential_run(name):
    sequential = run(STRATEGIES[name](nb201, seed=1), _score, 30)
    asynchronous = run_async(STRATEGIES[name](nb201, seed=1), LocalExecutor(_score), 30,
                             max_pending=1)
    assert [(r["candidate"], r["score"]) for r in asynchronous] == \
        [(r["candidate"], r["score"]) for r in sequential]


class ByText:
    """An executor that finishes, of the evaluations running, the one whose candidate's text
    hashes lowest: out of order, yet a function of what is running (not of time)."""

    def __init__(self):
        self.running, self.k = {}, 0

    def submit(self, candidate):
        self.k += 1
        self.running[self.k] = candidate
        return self.k

    def wait(self):
        token = min(self.running, key=lambda t: (
            hashlib.sha256(str(self.running[t]).encode()).hexdigest(), t))
        return token, _score(self.running.pop(token))


@pytest.mark.parametrize("name", ["evolution", "ga", "bo"])
def test_a_killed_asynchronous_run_resumes_to_the_same_end(name):
    whole = run_async(STRATEGIES[name](nb201, seed=2), ByText(), 40, max_pending=4)
    assert [r["n"] for r in whole] == list(range(1, 41))
    assert any(r["asked"] != r["n"] - 1 for r in whole)  # finished out of order
    asks, told = [], []

    def killed(record):
        told.append(record)
        if record["n"] == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_async(STRATEGIES[name](nb201, seed=2), ByText(), 40, max_pending=4,
                  on_ask=asks.append, on_evaluation=killed)
    assert len(asks) > 17  # some were running when it was killed
    resumed = run_async(STRATEGIES[name](nb201, seed=2), ByText(), 40, history=told,
                        asks=asks, max_pending=4)
    assert _untimed(resumed) == _untimed(whole)
    with pytest.raises(ValueError, match="does not replay"):
        run_async(STRATEGIES[name](nb201, seed=3), ByText(), 40, history=told, asks=asks,
                  max_pending=4)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    import builtins

    printing = builtins.print  # Ray replaces print with its own; the other tests get it back
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="error", runtime_env={"env_vars": {
                     "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'plugins'}"}})
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"a local Ray cannot start here: {e}")
    yield ray
    ray.shutdown()
    builtins.print = printing


def test_a_ray_search_equals_the_local_one_and_faults_are_retried(local_ray, tmp_path):
    base = dict(strategy="evolution", population=3, space="cnn", dataset="synthetic",
                synthetic_size=64, image_size=8, eval_epochs=1, budget=4, batch_size=32,
                threads=1, progress=False, tensorboard=False, save=str(tmp_path),
                max_pending=1)
    local = search_run(SearchConfig(**base, name="local"))
    remote = search_run(SearchConfig(**base, name="ray", executor="ray"))
    history = [[(r["candidate"], r["score"], r["reported"])
                for r in map(json.loads, (tmp_path / d / "history.jsonl").read_text().splitlines())]
               for d in ("local", "ray")]
    assert history[0] == history[1] and local["best_arch"] == remote["best_arch"]

    from ray_faults import FlakyEvaluator

    from darts.executors import RayExecutor

    died = tmp_path / "die"
    died.mkdir()
    executor = RayExecutor(FlakyEvaluator(str(died), "die"), max_retries=2)
    executor.submit("conv3x3-16|conv3x3-16")
    assert executor.wait()[1].score == len("conv3x3-16|conv3x3-16")
    assert len(list(died.glob("attempt-*"))) == 2  # its worker died once, the retry scored
    broken = tmp_path / "raise"
    broken.mkdir()
    executor = RayExecutor(FlakyEvaluator(str(broken), "raise"), max_retries=2)
    executor.submit("x")
    with pytest.raises(UserError) as info:
        executor.wait()
    assert "the evaluation of x failed 3 time(s) on Ray: ValueError: broken evaluation of x" \
        in str(info.value) and "\n" not in str(info.value)
    assert len(list(broken.glob("attempt-*"))) == 3


def test_ray_is_refused_for_the_evaluators_that_score_here(tmp_path):
    cfg = SearchConfig(strategy="random", space="cnn", evaluator="proxy", executor="ray",
                       save=str(tmp_path), name="x", tensorboard=False)
    with pytest.raises(UserError, match="--executor ray: only the train evaluator"):
        search_run(cfg)
    with pytest.raises(UserError, match="--max_pending 0: must be at least 1"):
        search_run(SearchConfig(strategy="random", space="cnn", max_pending=0,
                                save=str(tmp_path), name="y", tensorboard=False))
    assert not list(tmp_path.iterdir())


def test_a_killed_asynchronous_search_resumes_from_its_history_and_asks(tmp_path, monkeypatch):
    from darts.benchmarks.nb201 import synthetic_table
    from darts.evaluators.benchmark import BenchmarkEvaluator

    table = synthetic_table(tmp_path / "table.csv", seed=0)
    base = dict(strategy="evolution", space="nb201", benchmark=str(table), budget=30,
                max_pending=3, save=str(tmp_path), tensorboard=False, progress=False)
    search_run(SearchConfig(**base, name="whole"))
    calls = {"n": 0}
    original = BenchmarkEvaluator.__call__

    def killed(self, candidate):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return original(self, candidate)

    monkeypatch.setattr(BenchmarkEvaluator, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        search_run(SearchConfig(**base, name="cut"))
    monkeypatch.setattr(BenchmarkEvaluator, "__call__", original)
    search_run(SearchConfig(), resume=str(tmp_path / "cut"))

    def lines(run, name):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (tmp_path / run / name).read_text().splitlines()]

    assert lines("cut", "history.jsonl") == lines("whole", "history.jsonl")
    assert lines("cut", "asks.jsonl") == lines("whole", "asks.jsonl")
    assert len(lines("whole", "history.jsonl")) == 30
