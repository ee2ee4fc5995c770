"""train_search.py --space nb201: a search of NAS-Bench-201's cell, scored against a table."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table
from darts.errors import UserError
from darts.search import SearchConfig, resolved, run
from darts.spaces.nb201 import NB201Arch


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return synthetic_table(tmp_path_factory.mktemp("nb201") / "table.csv", seed=0)


def tiny(tmp_path, **overrides):
    cfg = dict(space="nb201", dataset="synthetic", layers=1, init_channels=4, image_size=8,
               synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=2,
               save=str(tmp_path), device="cpu")
    cfg.update(overrides)
    return SearchConfig(**cfg)


def test_the_nb201_defaults_are_its_benchmarks_darts_runs():
    cfg = resolved(SearchConfig(space="nb201"))
    assert (cfg.layers, cfg.init_channels, cfg.weight_decay, cfg.nesterov) == (5, 16, 5e-4, True)
    assert (cfg.learning_rate, cfg.learning_rate_min, cfg.momentum, cfg.batch_size,
            cfg.epochs, cfg.grad_clip) == (0.025, 0.001, 0.9, 64, 50, 5.0)
    assert (cfg.arch_learning_rate, cfg.arch_weight_decay) == (3e-4, 1e-3)
    darts = resolved(SearchConfig())
    assert (darts.layers, darts.weight_decay, darts.nesterov) == (8, 3e-4, False)


def test_a_search_is_scored_every_epoch(tmp_path, table):
    metrics = run(tiny(tmp_path, name="s", order=1, benchmark=str(table)))
    run_dir = tmp_path / "s"
    history = metrics["history"]
    assert metrics["complete"] and len(history) == 2
    rows = BenchmarkTable.load(table)
    for record in history:
        arch = NB201Arch.from_string(record["genotype"]["arch"])
        score = record["benchmark"]
        assert score["arch"] == arch.to_string()
        assert score["cifar10_test"] == rows.lookup(arch)["cifar10_test"]
        assert score["rank_cifar10_test"] == rows.rank(arch, "cifar10_test")
        assert score["cells"] == 15625
    assert metrics["benchmark"] == history[-1]["benchmark"]
    assert json.loads((run_dir / "arch.json").read_text()) == history[-1]["genotype"]
    assert (run_dir / "archs" / "epoch_002.json").is_file()
    log = (run_dir / "log.txt").read_text()
    assert log.count("benchmark cifar10_valid") == 2 and "rank" in log
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"benchmark/cifar10_test", "benchmark/rank_cifar10_test",
            "benchmark/ImageNet16-120_test"} <= set(tags["scalars"])
    assert len(events.Scalars("benchmark/cifar10_test")) == 2
    assert "alphas/cell" in tags["images"]
    from darts import visualize
    if visualize.dot_available():
        assert "cells/cell" in tags["images"] and (run_dir / "cell.png").is_file()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert tuple(ckpt["model"]["alphas"].shape) == (6, 5)


def test_second_order_and_resume(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise Stop

    whole = run(tiny(tmp_path, name="whole", order=2))
    with pytest.raises(Stop):
        run(tiny(tmp_path, name="part", order=2), on_epoch_end=stop_after_first)
    resumed = run(tiny(tmp_path, name="ignored"), resume=str(tmp_path / "part"))
    assert resumed["complete"]
    assert [r["genotype"] for r in resumed["history"]] == [r["genotype"] for r in whole["history"]]
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]


@pytest.mark.parametrize("overrides, message", [
    (dict(checkpoint_cells=True), "--checkpoint_cells: not available with --space nb201"),
    (dict(space="darts", layers=3, benchmark="t.csv"), "add --space nb201"),
    (dict(benchmark="absent.csv"), "no such file"),
    (dict(nodes=3), "--nodes: not available"),
])
def test_what_nb201_cannot_do_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(tiny(tmp_path, name="x", **overrides))
    assert not (tmp_path / "x").exists()


def test_the_exact_hessian_vector_product_runs_on_nb201(tmp_path):
    metrics = run(tiny(tmp_path, name="exact", order=2, hessian="exact", epochs=1))
    assert metrics["complete"] and metrics["hessian"] == "exact"
    NB201Arch.from_string(metrics["history"][0]["genotype"]["arch"])
