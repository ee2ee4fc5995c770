"""train_final.py --space nb201: a NAS-Bench-201 cell trained from scratch with the
benchmark's recipe."""

import json

import pytest
import torch

from darts.errors import UserError
from darts.final import FinalConfig, run
from darts.spaces.nb201 import EXAMPLE


def tiny(tmp_path, **overrides):
    cfg = dict(space="nb201", genotype=EXAMPLE, dataset="synthetic", image_size=8,
               synthetic_size=32, layers=1, init_channels=4, batch_size=8, epochs=2, workers=0,
               progress=False, save=str(tmp_path), device="cpu", tensorboard=False)
    cfg.update(overrides)
    return FinalConfig(**cfg)


def test_the_recipe_is_the_benchmarks():
    cfg = FinalConfig(space="nb201").resolved("nb201")
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.lr_schedule, cfg.momentum,
            cfg.nesterov, cfg.weight_decay) == (200, 256, 0.1, "cosine", 0.9, True, 5e-4)
    assert (cfg.init_channels, cfg.layers, cfg.auxiliary, cfg.cutout, cfg.drop_path_prob,
            cfg.label_smooth) == (16, 5, False, False, 0.0, 0.0)
    assert FinalConfig().resolved("cifar").nesterov is False


def test_a_cell_trains_from_its_string_or_a_searchs_arch_json_and_resumes(tmp_path):
    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    whole = run(tiny(tmp_path, name="whole"))
    assert whole["complete"] and whole["epochs_done"] == 2
    assert json.loads((tmp_path / "whole" / "arch.json").read_text()) == {"arch": EXAMPLE}
    (tmp_path / "arch.json").write_text(json.dumps({"arch": EXAMPLE}))
    with pytest.raises(Stop):
        run(tiny(tmp_path, name="part", genotype=str(tmp_path / "arch.json")), on_epoch_end=stop)
    resumed = run(tiny(tmp_path), resume=str(tmp_path / "part"))
    assert resumed["final"] == whole["final"]  # bit-identical: the same loss and accuracies
    history = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["history"]
               for name in ("whole", "part")]
    assert history[0] == [{**h, "epoch_time_s": history[0][i]["epoch_time_s"]}
                          for i, h in enumerate(history[1])]


@pytest.mark.parametrize("overrides, message", [
    (dict(genotype="darts_v2"), "--genotype 'darts_v2': expected 3"),
    (dict(auxiliary=True), "--auxiliary: NAS-Bench-201's network has no auxiliary head"),
    (dict(genotype="missing.json"), "not a readable arch JSON file"),
])
def test_what_cannot_train_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(tiny(tmp_path, name="x", **overrides))
    assert not (tmp_path / "x").exists()


def test_a_deeply_nested_arch_file_is_one_user_error(tmp_path):
    from darts.spaces.nb201 import load_arch
    path = tmp_path / "deep.json"
    path.write_text("[" * 50000 + "]" * 50000)
    with pytest.raises(UserError, match="not a readable arch JSON file"):
        load_arch(str(path), "--genotype")
