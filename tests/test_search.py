"""train_search.py end to end on synthetic data: outputs, TensorBoard, resume, retraining."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_search
from darts import visualize
from darts.errors import UserError
from darts.genotype import genotype_from_dict, load_genotype
from darts.search import SearchConfig, paper_scale, retrain_command, run
from darts.train.checkpoint import load_checkpoint
from darts.train.data import SplitLoader, search_split

TINY = ["--dataset", "synthetic", "--layers", "3", "--init_channels", "4", "--image_size", "16",
        "--synthetic_size", "32", "--batch_size", "16", "--workers", "0", "--no-progress"]


def _tiny_config(tmp_path, **overrides):
    # Two nodes per cell (5 edges) keep these runs to seconds on a 2-core CPU.
    cfg = dict(dataset="synthetic", layers=3, nodes=2, init_channels=4, image_size=16,
               synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=2,
               save=str(tmp_path), device="cpu")
    cfg.update(overrides)
    return SearchConfig(**cfg)


def test_cli_search_writes_the_run_directory_and_its_genotype_retrains(tmp_path):
    result = subprocess.run(
        [sys.executable, "train_search.py", *TINY, "--epochs", "2", "--save", str(tmp_path),
         "--name", "s"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "s"
    for name in ("config.json", "log.txt", "metrics.json", "checkpoint.pt", "genotype.json",
                 "genotypes/epoch_001.json", "genotypes/epoch_002.json"):
        assert (run_dir / name).is_file(), name
    if visualize.dot_available():
        assert (run_dir / "normal.png").stat().st_size > 1000
        assert (run_dir / "reduce.png").stat().st_size > 1000
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["order"], config["hessian"], config["learning_rate"]) == (2, "fd", 0.025)
    log = (run_dir / "log.txt").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "eta" in log
    # The run's summary line (the speed options at their defaults on the CPU), well formed.
    assert "SearchNetwork on synthetic (10 classes, 16px): 3 cells of 4 channels" in log
    # channels_last unset: on on the CPU (the C kernels need it), recorded resolved
    assert "order 2 (fd Hessian); device cpu; DataLoader loader, amp off, channels_last\n" in log
    assert config["channels_last"] is True
    assert "Logging error" not in result.stderr
    genotype = load_genotype(run_dir / "genotype.json")
    assert genotype == load_genotype(run_dir / "genotypes/epoch_002.json")
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["history"]) == 2
    ckpt = load_checkpoint(run_dir)
    assert {"model", "optimizer", "arch_optimizer", "scheduler", "epoch", "rng", "split",
            "alpha_stream"} <= set(ckpt)
    assert len(ckpt["split"]["weights"]) == len(ckpt["split"]["alphas"]) == 16

    # The last line is the command that retrains the genotype; it runs.
    command = result.stdout.strip().splitlines()[-1].split()
    assert command[:4] == ["python", "train_final.py", "--genotype", str(run_dir / "genotype.json")]
    final = subprocess.run(
        [sys.executable, *command[1:], "--epochs", "1", "--layers", "3", "--init_channels", "4",
         "--batch_size", "16", "--workers", "0", "--save", str(tmp_path), "--name", "f"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["complete"]


def test_tensorboard_holds_scalars_heatmaps_and_cell_pictures(tmp_path):
    run(_tiny_config(tmp_path, name="tb", order=1))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/top1", "valid/loss", "valid/top1", "lr", "arch/loss",
                "arch/skip_connect_normal", "arch/entropy", "arch/entropy_normal",
                "arch/entropy_reduce"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in events.Scalars(tag)] == [1, 2]
    images = ["alphas/normal", "alphas/reduce"]
    if visualize.dot_available():
        images += ["cells/normal", "cells/reduce"]
    for tag in images:
        assert tag in tags["images"], tag
        assert {e.step for e in events.Images(tag)} >= {1, 2}
        assert events.Images(tag)[0].width > 100
    entropy = [e.value for e in events.Scalars("arch/entropy")]
    assert 0 < entropy[-1] <= 2.0795  # log(8)


def test_resume_reproduces_an_uninterrupted_search(tmp_path):
    # train_portion 0.7 of 28 images: 3 weight batches of 8 per epoch, 2 alpha batches per
    # pass, so the alpha stream is checkpointed in the middle of a pass; second order, so
    # momentum buffers enter the virtual step.
    overrides = dict(train_portion=0.7, synthetic_size=28, epochs=2, order=2, tensorboard=False)
    full = run(_tiny_config(tmp_path, name="full", **overrides))

    class Crash(Exception):
        pass

    def crash_after_first(epoch, metrics):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run(_tiny_config(tmp_path, name="resumed", **overrides), on_epoch_end=crash_after_first)
    assert load_checkpoint(tmp_path / "resumed")["alpha_stream"] == {"pass": 1, "taken": 1}
    resumed = run(SearchConfig(), resume=str(tmp_path / "resumed"))

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "resumed")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["arch_optimizer"]["state"][0]["exp_avg"].equal(b["arch_optimizer"]["state"][0]["exp_avg"])
    strip = ("epoch_time_s",)
    assert ([{k: v for k, v in r.items() if k not in strip} for r in full["history"]]
            == [{k: v for k, v in r.items() if k not in strip} for r in resumed["history"]])
    assert genotype_from_dict(full["genotype"]) == genotype_from_dict(resumed["genotype"])


def assert_same_tensors(a, b, where="checkpoint"):
    """Every tensor of `a` (a checkpoint: nested dicts and lists) equals `b`'s, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")


def test_resume_with_workers_in_the_middle_of_the_alpha_pass_is_bit_identical(tmp_path):
    # Two worker processes; train_portion 0.6 of 30 images: 3 weight batches of 8 per epoch,
    # 2 alpha batches per pass, so the stream stops after batch 1 of pass 1, and the resumed
    # run's fresh workers produce the rest of that pass. Cutout adds a draw per image.
    overrides = dict(train_portion=0.6, synthetic_size=30, epochs=2, order=1, workers=2,
                     cutout=True, cutout_length=4, tensorboard=False)
    full = run(_tiny_config(tmp_path, name="full", **overrides))

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 1:
            raise Killed  # the checkpoint of epoch 1 is on disk: all a kill -9 leaves

    with pytest.raises(Killed):
        run(_tiny_config(tmp_path, name="resumed", **overrides), on_epoch_end=kill_after_first)
    assert load_checkpoint(tmp_path / "resumed")["alpha_stream"] == {"pass": 1, "taken": 1}
    resumed = run(SearchConfig(), resume=str(tmp_path / "resumed"))

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "resumed")
    assert a["epoch"] == b["epoch"] == 2
    assert_same_tensors(a, b)
    assert genotype_from_dict(full["genotype"]) == genotype_from_dict(resumed["genotype"])
    strip = ("epoch_time_s",)
    assert ([{k: v for k, v in r.items() if k not in strip} for r in full["history"]]
            == [{k: v for k, v in r.items() if k not in strip} for r in resumed["history"]])


def test_first_order_and_exact_second_order_runs(tmp_path):
    for name, extra in (("o1", dict(order=1)), ("exact", dict(order=2, hessian="exact"))):
        metrics = run(_tiny_config(tmp_path, name=name, epochs=1, tensorboard=False, **extra))
        assert metrics["complete"]
        assert load_genotype(tmp_path / name / "genotype.json").steps == 2


def test_search_beats_chance_on_synthetic_data(tmp_path):
    metrics = run(_tiny_config(tmp_path, name="learn", order=1, epochs=3, synthetic_size=320,
                               init_channels=8, batch_size=16, learning_rate=0.1,
                               tensorboard=False))
    # 10 classes: chance is 10% (binomial std 2.4% on the 160 images of the alpha half, which
    # never train the weights); 17.5% is three standard deviations above it.
    assert metrics["final"]["valid_top1"] > 17.5


def test_bad_flags_give_one_clear_message(tmp_path, capsys):
    assert train_search.main([*TINY, "--train_portion", "1.0", "--save", str(tmp_path)]) == 2
    assert "--train_portion 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_search.main(["--dataset", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err
    final_dir = tmp_path / "final"
    final_dir.mkdir()
    torch.save({"kind": "final"}, final_dir / "checkpoint.pt")
    assert train_search.main(["--resume", str(final_dir)]) == 2
    assert "not a train_search.py checkpoint" in capsys.readouterr().err
    graphs_dir = tmp_path / "graphs"
    assert train_search.main([*TINY, "--device", "cpu", "--cuda_graphs", "on", "--save",
                              str(graphs_dir)]) == 2
    assert "--cuda_graphs on: they need a GPU" in capsys.readouterr().err
    assert not graphs_dir.exists()  # checked before the run directory is made


def test_existing_run_directory_is_never_overwritten(tmp_path):
    run(_tiny_config(tmp_path, name="once", epochs=1, tensorboard=False))
    before = (tmp_path / "once" / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        run(_tiny_config(tmp_path, name="once", epochs=1, tensorboard=False))
    assert (tmp_path / "once" / "checkpoint.pt").read_bytes() == before


# ------------------------------------------------------------------------------------------
# The data split and the architect's persistent batch stream


class _Indexed(torch.utils.data.Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor(i), 0


def test_search_split_is_a_random_partition_even_of_class_sorted_data():
    w, a = search_split(50, 0.5, seed=0)
    assert len(w) == len(a) == 25
    assert sorted(w.tolist() + a.tolist()) == list(range(50))
    # An ImageFolder lists images class by class: both halves must see every class.
    w200, a200 = search_split(200, 0.5, seed=0)
    labels = torch.arange(200) // 20  # 10 classes, sorted
    assert set(labels[w200].tolist()) == set(labels[a200].tolist()) == set(range(10))
    assert torch.equal(search_split(50, 0.5, seed=0)[0], w)
    assert not torch.equal(search_split(50, 0.5, seed=1)[0], w)
    assert len(search_split(50, 0.7)[0]) == 35
    with pytest.raises(UserError, match="--train_portion"):
        search_split(50, 0.01)


def test_split_stream_is_persistent_reshuffled_and_resumable():
    _, alpha_idx = search_split(50, 0.5)
    stream = SplitLoader(_Indexed(), alpha_idx, 10, seed=3, stream=1)
    assert len(stream) == 3  # 25 images in batches of 10
    first_pass = [next(stream)[0].tolist() for _ in range(3)]
    seen = sorted(i for b in first_pass for i in b)
    assert seen == alpha_idx.tolist()  # every image of the alpha half, once per pass
    second = next(stream)[0].tolist()  # a new pass starts by itself, in a new order
    assert second != first_pass[0]
    state = stream.state_dict()
    assert state == {"pass": 1, "taken": 1}
    rest = [next(stream)[0].tolist() for _ in range(4)]

    again = SplitLoader(_Indexed(), alpha_idx, 10, seed=3, stream=1)
    again.load_state_dict(state)
    assert [next(again)[0].tolist() for _ in range(4)] == rest
    # epoch(p) reproduces pass p.
    fresh = SplitLoader(_Indexed(), alpha_idx, 10, seed=3, stream=1)
    assert [b[0].tolist() for b in fresh.epoch(0)] == first_pass


def test_a_missing_graphviz_skips_pictures_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(visualize, "dot_available", lambda: False)
    metrics = run(_tiny_config(tmp_path, name="nodot", order=1, tensorboard=False))
    assert metrics["complete"]
    log = (tmp_path / "nodot" / "log.txt").read_text()
    assert log.count("cell diagrams skipped") == 1
    assert not (tmp_path / "nodot" / "normal.png").exists()
    assert (tmp_path / "nodot" / "genotype.json").is_file()


def test_search_reads_cifar10_from_its_real_on_disk_format(tmp_path, monkeypatch):
    from test_data import tiny_cifar10

    tiny_cifar10(tmp_path / "data", monkeypatch)  # 20 training images in the archive's pickles
    cfg = _tiny_config(tmp_path, dataset="cifar10", data=str(tmp_path / "data"), image_size=None,
                       name="c10", epochs=1, order=1, tensorboard=False)
    metrics = run(cfg)
    assert metrics["complete"] and metrics["dataset"] == "cifar10"
    assert len(load_checkpoint(tmp_path / "c10")["split"]["alphas"]) == 10


def test_search_on_an_image_folder(tmp_path):
    from test_data import write_folder

    write_folder(tmp_path / "imgs", "train", per_class=4)
    write_folder(tmp_path / "imgs", "test", per_class=1)
    cfg = _tiny_config(tmp_path, dataset="folder", data=str(tmp_path / "imgs"), name="folder",
                       epochs=1, order=1, tensorboard=False)
    assert run(cfg)["complete"]
    assert "--data" in retrain_command(tmp_path / "folder", cfg)[0]


def test_channels_last_defaults_to_on_on_the_cpu_only_and_obeys_the_flag():
    from darts.final import FinalConfig
    from darts.train.cli import parse_args
    from darts.train.config import from_arguments
    from darts.train.engine import channels_last_on
    for argv, want in (([], None), (["--channels_last"], True), (["--no-channels_last"], False)):
        cfg = from_arguments(SearchConfig, parse_args(SearchConfig, "", "search", argv))
        assert cfg.channels_last is want
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert channels_last_on(None, cpu) is True and channels_last_on(None, gpu) is False
    assert channels_last_on(False, cpu) is False and channels_last_on(True, gpu) is True
    for cls in (SearchConfig, FinalConfig):  # --tune_malloc: on unless turned off
        for argv, want in (([], True), (["--no-tune_malloc"], False)):
            assert from_arguments(cls, parse_args(cls, "", "x", argv)).tune_malloc is want


def test_the_retrain_command_matches_the_search_size(tmp_path):
    paper = SearchConfig()  # CIFAR-10, 8 cells of 16 channels, 50 epochs: the paper's search
    command, what = retrain_command(tmp_path, paper)
    assert "--layers" not in command and "--epochs" not in command
    assert "paper's recipe" in what and "600 epochs" in what
    small = SearchConfig(dataset="synthetic", layers=5, init_channels=8, epochs=4, image_size=16,
                         batch_size=32)
    command, what = retrain_command(tmp_path, small)
    assert command.endswith("--layers 5 --init_channels 8 --epochs 4 --batch_size 32 "
                            "--cutout_length 8")
    assert "smaller than the paper's" in what and "leave out --layers" in what
    assert not paper_scale(dataclasses.replace(paper, epochs=10))
    assert not paper_scale(dataclasses.replace(paper, dataset="synthetic"))
