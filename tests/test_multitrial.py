"""train_search.py --strategy X: a multi-trial search's run directory, resume and budgets."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table
from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.search import SearchConfig, run
from darts.spaces.nb201 import load_arch, read_arch_json


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return synthetic_table(tmp_path_factory.mktemp("mt") / "table.csv", seed=0)


def config(tmp_path, table_path, **overrides):
    values = dict(strategy="evolution", space="nb201", evaluator="benchmark",
                  benchmark=str(table_path), budget=40, seed=0, save=str(tmp_path),
                  name="run", progress=False)
    values.update(overrides)
    return SearchConfig(**values)


def untimed(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in path.read_text().splitlines()]


def test_the_run_directory_holds_history_result_best_arch_and_curves(tmp_path, table_path):
    result = run(config(tmp_path, table_path, strategy="ga"))
    run_dir = tmp_path / "run"
    history = untimed(run_dir / "history.jsonl")
    table = BenchmarkTable.load(table_path)
    assert [r["n"] for r in history] == list(range(1, 41))
    for r in history:  # each line is the table's row of its candidate
        row = table.lookup(r["candidate"])
        assert (r["score"], r["reported"], r["cost"]) == (
            row["cifar10_valid"], row["cifar10_test"], row["cifar10_train_s"])
    best = max(history, key=lambda r: r["score"])
    assert result == json.loads((run_dir / "result.json").read_text())
    assert (result["best_arch"], result["best_score"], result["best_reported"],
            result["evaluations"]) == (best["candidate"], best["score"], best["reported"], 40)
    assert result["cost_s"] == pytest.approx(sum(r["cost"] for r in history))
    assert result["benchmark"]["cifar10_test_rank"] == table.rank(best["candidate"], "cifar10_test")
    assert result["benchmark"]["cifar10_test_optimum"] == max(
        r["cifar10_test"] for r in table.rows.values())
    assert str(load_arch(read_arch_json(run_dir / "arch.json", "arch.json"), "x")) == best["candidate"]
    assert json.loads((run_dir / "config.json").read_text())["strategy"] == "ga"
    events = EventAccumulator(str(run_dir)).Reload()
    best_so_far = [e.value for e in events.Scalars("search/best_score")]
    assert len(best_so_far) == 40 and best_so_far == sorted(best_so_far)
    assert best_so_far[-1] == pytest.approx(best["score"])
    assert "retrain it with" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("strategy", ["evolution", "reinforce", "bo"])
def test_a_stopped_run_resumes_to_the_same_history(tmp_path, table_path, strategy, monkeypatch):
    run(config(tmp_path, table_path, strategy=strategy, name="whole"))
    calls = {"n": 0}
    real = BenchmarkEvaluator.__call__

    def crashing(self, arch):
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt
        return real(self, arch)

    monkeypatch.setattr(BenchmarkEvaluator, "__call__", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, table_path, strategy=strategy, name="stopped"))
    monkeypatch.setattr(BenchmarkEvaluator, "__call__", real)
    stopped = tmp_path / "stopped"
    assert len(untimed(stopped / "history.jsonl")) == 17
    with open(stopped / "history.jsonl", "a") as f:
        f.write('{"n": 18, "candidate": "|nor_co')  # a line a crash cut short
    run(None, resume=str(stopped))
    assert untimed(stopped / "history.jsonl") == untimed(tmp_path / "whole" / "history.jsonl")
    assert (json.loads((stopped / "result.json").read_text())["best_arch"]
            == json.loads((tmp_path / "whole" / "result.json").read_text())["best_arch"])


def test_a_budget_in_seconds_stops_at_the_evaluation_that_spends_it(tmp_path, table_path):
    result = run(config(tmp_path, table_path, strategy="random", budget=10_000,
                        budget_seconds=200_000.0))
    costs = [r["cost"] for r in untimed(tmp_path / "run" / "history.jsonl")]
    assert sum(costs) >= 200_000 > sum(costs[:-1])
    assert result["evaluations"] == len(costs) < 10_000


@pytest.mark.parametrize("overrides, message", [
    (dict(benchmark=""), "--evaluator benchmark needs --benchmark"),
    (dict(space="darts"), "no benchmark table scores --space darts"),
    (dict(budget=0), "--budget 0: must be at least 1"),
    (dict(metric="cifar10_x"), "--metric cifar10_x: .* has no such column"),
    (dict(population=1, strategy="ga"), "--strategy ga: "),
    (dict(evaluator="oneshot", space="cnn", benchmark=""), "share no supernet"),
])
def test_a_wrong_flag_is_one_user_error_and_leaves_nothing(tmp_path, table_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(config(tmp_path, table_path, **overrides))
    assert not (tmp_path / "run").exists()


def test_the_cnn_space_needs_a_strategy(tmp_path):
    with pytest.raises(UserError, match="--space cnn: .* add e.g. --strategy"):
        run(SearchConfig(space="cnn", dataset="synthetic", save=str(tmp_path), name="x"))


def test_the_command_line_runs_a_strategy(tmp_path, table_path):
    out = subprocess.run(
        [sys.executable, "train_search.py", "--strategy", "anneal", "--space", "nb201",
         "--evaluator", "benchmark", "--benchmark", str(table_path), "--budget", "12",
         "--seed", "1", "--save", str(tmp_path), "--name", "cli", "--no-tensorboard"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[12/12]" in out.stdout and "against the table's ground truth" in out.stdout
    bad = subprocess.run(
        [sys.executable, "train_search.py", "--strategy", "anneal", "--space", "nb201",
         "--evaluator", "benchmark", "--budget", "12", "--save", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


def test_a_cnn_search_trains_candidates_and_draws_the_best(tmp_path):
    from darts.spaces import cnn
    from darts.visualize import dot_available

    result = run(SearchConfig(strategy="random", space="cnn", evaluator="train",
                              dataset="synthetic", synthetic_size=48, image_size=8,
                              eval_epochs=1, batch_size=16, budget=2, workers=1, seed=0,
                              save=str(tmp_path), name="cnn", progress=False, device="cpu"))
    run_dir = tmp_path / "cnn"
    history = untimed(run_dir / "history.jsonl")
    assert len(history) == 2 and all(0 <= r["score"] <= 100 and r["cost"] > 0 for r in history)
    best = cnn.load_arch(str(run_dir / "cnn.json"), "cnn.json")
    assert str(best) == result["best_arch"] == max(history, key=lambda r: r["score"])["candidate"]
    log = (run_dir / "log.txt").read_text()
    assert "--arch " + str(run_dir / "cnn.json") in log
    if dot_available():
        assert (run_dir / "network.png").read_bytes()[:4] == b"\x89PNG"


def test_a_oneshot_search_trains_its_supernet_once(tmp_path, table_path):
    cfg = config(tmp_path, table_path, evaluator="oneshot", dataset="synthetic",
                 synthetic_size=32, image_size=8, layers=1, init_channels=4, oneshot_epochs=1,
                 bn_batches=1, valid_batches=1, batch_size=8, budget=4, workers=0, device="cpu")
    result = run(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "supernet.pt").exists() and result["evaluations"] == 4
    assert "benchmark" in result  # a table given beside another evaluator still scores the best
    log = (run_dir / "log.txt").read_text()
    assert log.count("epoch 1/1") == 1


def test_a_multitrial_search_of_the_darts_space_keeps_to_its_ops(tmp_path):
    from darts.spaces import darts_cells

    cfg = SearchConfig(strategy="evolution", space="darts", evaluator="oneshot",
                       ops="none,skip_connect,sep_conv_3x3", dataset="synthetic",
                       synthetic_size=32, image_size=8, layers=3, init_channels=4,
                       oneshot_epochs=1, bn_batches=1, valid_batches=1, batch_size=8, budget=12,
                       population=4, workers=0, device="cpu", save=str(tmp_path), name="ops",
                       progress=False, tensorboard=False)
    run(cfg)
    ops = set()
    for r in untimed(tmp_path / "ops" / "history.jsonl"):
        g = darts_cells.DartsCellSpace(("skip_connect", "sep_conv_3x3")).parse(r["candidate"])
        ops |= {op for op, _ in (*g.normal, *g.reduce)}
    assert ops == {"skip_connect", "sep_conv_3x3"}


@pytest.mark.parametrize("overrides, message", [
    (dict(mixing="gdas"), "--mixing: a setting of the gradient search"),
    (dict(method="gdas"), "--method: a setting of the gradient search"),
    (dict(order=1), "--order: a setting of the gradient search"),
    (dict(ops="none,skip_connect"), "--ops: the nb201 space has its own ops"),
    (dict(population=0), "--strategy evolution: need population >= 1"),
])
def test_a_flag_a_multitrial_run_would_ignore_is_refused(tmp_path, table_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(config(tmp_path, table_path, **overrides))
    assert not (tmp_path / "run").exists()
