"""train_final.py end to end on the offline synthetic dataset: outputs, learning, resume."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from darts.errors import UserError
from darts.final import FinalConfig, run
from darts.train.checkpoint import load_checkpoint
from tests.conftest import ROOT

TINY = dict(dataset="synthetic", genotype="darts_v2", epochs=2, layers=3, init_channels=4,
            batch_size=50, synthetic_size=200, workers=0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The README's quick command, scaled to seconds: 2 epochs, 6 cells, 8 channels."""
    save = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, str(ROOT / "train_final.py"), "--dataset", "synthetic",
           "--genotype", "darts_v2", "--epochs", "2", "--layers", "6", "--init_channels", "8",
           "--synthetic_size", "2000", "--batch_size", "50", "--workers", "0",
           "--save", str(save), "--name", "quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save / "quick", proc


def test_quick_run_writes_everything(cli_run):
    run_dir, proc = cli_run
    names = ["config.json", "log.txt", "checkpoint.pt", "metrics.json", "genotype.json"]
    if shutil.which("dot"):  # the cell diagrams need graphviz (.ci/run installs it)
        names += ["normal.png", "reduce.png"]
    for name in names:
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not list(run_dir.glob("*.tmp"))
    config = json.loads((run_dir / "config.json").read_text())
    # resolved recipe: the paper's CIFAR values where no flag was given
    assert config["learning_rate"] == 0.025 and config["weight_decay"] == 3e-4
    assert config["auxiliary"] and config["auxiliary_weight"] == 0.4
    assert config["cutout"] and config["cutout_length"] == 16 and config["drop_path_prob"] == 0.2
    assert config["layers"] == 6 and config["init_channels"] == 8 and config["epochs"] == 2
    log = (run_dir / "log.txt").read_text()
    for epoch in (1, 2):
        line = next(x for x in log.splitlines() if f"epoch {epoch}/2 train_loss" in x)
        assert "valid_top1" in line and "valid_top5" in line and " lr " in line and " eta " in line


def test_quick_run_beats_chance_and_reports_params_and_madds(cli_run):
    run_dir, _ = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs_done"] == 2
    assert metrics["final"]["top1"] > 20.0  # 10 classes: chance is 10%
    assert metrics["best"]["top1"] >= metrics["final"]["top1"]
    from darts.genotype import resolve_genotype
    from darts.network import NetworkCIFAR

    reference = NetworkCIFAR(8, 10, 6, False, resolve_genotype("darts_v2"))
    assert metrics["params"] == sum(p.numel() for p in reference.parameters())
    assert metrics["multiply_adds"] > 0


def test_tensorboard_holds_the_curves_and_the_cells(cli_run):
    run_dir, _ = cli_run
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/top1", "train/top5", "valid/loss", "valid/top1",
                "valid/top5", "lr", "drop_path_prob"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2]
    if shutil.which("dot"):
        assert {"cells/normal", "cells/reduce"} <= set(tags["images"])
    # drop-path ramps linearly from 0: epoch e uses 0.2 * (e - 1) / 2
    assert [round(e.value, 6) for e in acc.Scalars("drop_path_prob")] == [0.0, 0.1]
    assert any("config" in t for t in tags["tensors"])


def test_checkpoint_is_safe_to_load_and_complete(cli_run):
    run_dir, _ = cli_run
    ckpt = load_checkpoint(run_dir)  # weights_only=True inside
    assert ckpt["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "rng", "config", "genotype"} <= set(ckpt)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    full = run(FinalConfig(**TINY, save=str(tmp_path), name="full", tensorboard=False))

    class Crash(Exception):
        pass

    def crash_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run(FinalConfig(**TINY, save=str(tmp_path), name="split", tensorboard=False),
            on_epoch_end=crash_after_first_epoch)
    assert load_checkpoint(tmp_path / "split")["epoch"] == 1
    resumed = run(FinalConfig(), resume=str(tmp_path / "split"))

    a = load_checkpoint(tmp_path / "full")["model"]
    b = load_checkpoint(tmp_path / "split")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["final"] == full["final"]
    # resuming a finished run changes nothing
    assert run(FinalConfig(), resume=str(tmp_path / "split")) == resumed


def test_resume_with_workers_is_bit_identical(tmp_path):
    from test_search import assert_same_tensors

    # Two worker processes, Cutout (the CIFAR recipe's) and drop path, which draws from the
    # main process's generator: the workers' draws must not touch it, nor depend on them.
    tiny = {**TINY, "workers": 2, "cutout_length": 8, "synthetic_size": 60, "batch_size": 16}
    full = run(FinalConfig(**tiny, save=str(tmp_path), name="full", tensorboard=False))

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(FinalConfig(**tiny, save=str(tmp_path), name="split", tensorboard=False),
            on_epoch_end=kill_after_first_epoch)
    resumed = run(FinalConfig(), resume=str(tmp_path / "split"))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 2
    assert_same_tensors(a, b)
    assert resumed["final"] == full["final"]


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run(FinalConfig(**{**TINY, "epochs": 1}, save=str(tmp_path), name="x", tensorboard=False))
    before = (tmp_path / "x" / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run: pass --resume"):
        run(FinalConfig(**{**TINY, "epochs": 1}, save=str(tmp_path), name="x", tensorboard=False))
    assert (tmp_path / "x" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--init_channels", "7"], "--init_channels 7: must be an even number"),
    (["--resume", "nowhere"], "--resume: no checkpoint at nowhere"),
    (["--dataset", "cifar10", "--data", "nowhere"], "--dataset synthetic"),
    (["--device", "cpu", "--cuda_graphs", "on"], "--cuda_graphs on: they need a GPU"),
])
def test_bad_flags_get_one_clear_message(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, str(ROOT / "train_final.py"), "--dataset", "synthetic",
                           "--save", str(tmp_path), *flags],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert not list(tmp_path.glob("final-*"))  # no run directory left behind


def test_imagenet_recipe_is_the_papers():
    cfg = FinalConfig(dataset="imagenet").resolved("imagenet")
    assert (cfg.init_channels, cfg.layers, cfg.batch_size, cfg.epochs) == (48, 14, 128, 250)
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.lr_gamma) == (0.1, "step", 0.97)
    assert (cfg.weight_decay, cfg.label_smooth, cfg.auxiliary_weight) == (3e-5, 0.1, 0.4)
    cfg = FinalConfig(layers=8).resolved("cifar")
    assert (cfg.init_channels, cfg.layers, cfg.batch_size, cfg.epochs) == (36, 8, 96, 600)
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.drop_path_prob, cfg.grad_clip) == (0.025, "cosine", 0.2, 5.0)


def test_large_folder_images_train_the_imagenet_network_with_its_recipe(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "data" / split / f"class{c}").mkdir(parents=True)
            for i in range(4):
                arr = (torch.rand(96, 96, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(tmp_path / "data" / split / f"class{c}" / f"{i}.png")
    metrics = run(FinalConfig(dataset="folder", data=str(tmp_path / "data"), image_size=96,
                              epochs=2, layers=3, init_channels=8, batch_size=4, workers=0,
                              progress=False, save=str(tmp_path), name="big", tensorboard=False))
    config = json.loads((tmp_path / "big" / "config.json").read_text())
    assert config["lr_schedule"] == "step" and config["label_smooth"] == 0.1
    assert metrics["complete"] and metrics["image_size"] == 96
    ckpt = load_checkpoint(tmp_path / "big")
    assert any(k.startswith("stem0.") for k in ckpt["model"])  # NetworkImageNet
    # lr decays by 0.97 per epoch
    assert [round(r["lr"], 6) for r in ckpt["history"]] == [0.1, 0.097]
