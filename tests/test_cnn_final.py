"""train_final.py --space cnn: a plain CNN spec trained from scratch with this project's recipe
(NAS-Bench-201's optimizer and schedule over NATS-Bench's 90 epochs)."""

import json

import pytest
import torch

from darts.errors import UserError
from darts.final import FinalConfig, run
from darts.spaces import cnn
from train_final import main

SPEC = "conv3x3-16-max|conv5x5-32-avg"


def tiny(tmp_path, **overrides):
    cfg = dict(space="cnn", arch=SPEC, dataset="synthetic", image_size=8, synthetic_size=32,
               batch_size=8, epochs=2, workers=0, progress=False, save=str(tmp_path),
               device="cpu", tensorboard=False, threads=1)
    cfg.update(overrides)
    return FinalConfig(**cfg)


def test_the_recipe_is_nb201s_over_90_epochs():
    cfg = FinalConfig(space="cnn").resolved("cnn")
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.lr_schedule, cfg.momentum,
            cfg.nesterov, cfg.weight_decay) == (90, 256, 0.1, "cosine", 0.9, True, 5e-4)
    assert (cfg.init_channels, cfg.layers, cfg.auxiliary, cfg.cutout, cfg.drop_path_prob,
            cfg.grad_clip) == (None, None, False, False, 0.0, 0.0)


def test_a_saved_candidate_trains_from_the_command_line_and_resumes(tmp_path):
    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    arch = cnn.parse(SPEC)
    cnn.save(arch, tmp_path / "arch.json")
    argv = ["--space", "cnn", "--arch", str(tmp_path / "arch.json"), "--dataset", "synthetic",
            "--image_size", "8", "--synthetic_size", "32", "--batch_size", "8", "--epochs", "2",
            "--workers", "0", "--threads", "1", "--device", "cpu", "--no-tensorboard",
            "--save", str(tmp_path), "--name", "whole"]
    assert main(argv) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert whole["complete"] and whole["epochs_done"] == 2
    assert cnn.load_arch(str(tmp_path / "whole" / "arch.json"), "arch.json") == arch
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["epochs"] == 2
    with pytest.raises(Stop):
        run(tiny(tmp_path, name="part"), on_epoch_end=stop)
    resumed = run(tiny(tmp_path), resume=str(tmp_path / "part"))
    assert resumed["final"] == whole["final"]  # bit-identical: the same loss and accuracies
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert state["genotype"] == {"arch": SPEC}


def test_the_arch_flag_also_names_an_nb201_cell(tmp_path):
    from darts.spaces.nb201 import EXAMPLE
    metrics = run(tiny(tmp_path, space="nb201", arch=EXAMPLE, layers=1, init_channels=4,
                       epochs=1, name="nb201"))
    assert metrics["complete"] and metrics["genotype"] == EXAMPLE


@pytest.mark.parametrize("overrides, message", [
    (dict(arch=None), "--space cnn: give the network with --arch"),
    (dict(arch="conv3x3-16"), "--arch 'conv3x3-16': a plain CNN has 2 to 6"),
    (dict(arch="missing.json"), "not a readable arch JSON file"),
    (dict(layers=4), "--layers: a plain CNN's depth and widths are its spec's"),
    (dict(init_channels=16), "--init_channels: a plain CNN's depth and widths"),
    (dict(auxiliary=True), "--auxiliary: a plain CNN has no auxiliary head"),
])
def test_what_cannot_train_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(tiny(tmp_path, name="x", **overrides))
    assert not (tmp_path / "x").exists()
