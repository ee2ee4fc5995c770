"""What a newcomer meets first: the space is the candidate's, a run directory names its cell,
a finished run is not silently "extended", the logs say what they count, and an NB201
search ends with the command that retrains its cell."""

import json
import shlex
import shutil
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_final
import train_search
from darts.errors import UserError
from darts.final import FinalConfig, with_candidate_space
from darts.genotype import GENOTYPE_DIR
from darts.search import SearchConfig, run
from darts.spaces.nb201 import EXAMPLE

CNN = "conv3x3-16-max|conv5x5-32-avg"
# train_final.py flags that keep a run to a second or two on the CPU
TINY_FINAL = ["--dataset", "synthetic", "--image_size", "8", "--synthetic_size", "32",
              "--batch_size", "8", "--epochs", "1", "--workers", "0", "--threads", "1",
              "--device", "cpu", "--no-progress", "--no-tensorboard"]


def _one_line_exit_2(code, capsys, *expected):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _search_dir(path, space, name, content):
    """A finished search's run directory as the search leaves it: config.json, its cell."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"space": space, "epochs": 50}))
    (path / name).write_text(json.dumps(content))
    return path


# -- 1. the space is the candidate's; a run directory names its cell ---------------------------
@pytest.mark.parametrize("name, content, space", [
    ("arch.json", {"arch": EXAMPLE}, "nb201"),
    ("cnn.json", {"arch": CNN}, "cnn"),
    ("arch.json", {"arch": CNN}, "cnn"),  # train_final.py's own copy of a plain CNN
    ("genotype.json", None, "darts"),
])
def test_the_space_is_read_from_the_file_or_the_run_directory(tmp_path, name, content, space):
    if content is None:
        content = json.loads((GENOTYPE_DIR / "darts_v2.json").read_text())
    run_dir = _search_dir(tmp_path / "run", space, name, content)
    for given in (str(run_dir / name), str(run_dir)):
        for key in ("genotype", "arch"):
            cfg = with_candidate_space(FinalConfig(**{key: given}))
            assert cfg.space == space and getattr(cfg, key) == str(run_dir / name), (given, key)
    # the recipe follows the space found
    recipe = {"nb201": (200, True), "cnn": (90, True), "darts": (600, False)}[space]
    network = space if space != "darts" else "cifar"
    resolved = with_candidate_space(FinalConfig(genotype=str(run_dir))).resolved(network)
    assert (resolved.epochs, resolved.nesterov) == recipe


def test_an_arch_string_needs_no_space_flag_and_a_name_stays_darts():
    assert with_candidate_space(FinalConfig(genotype=EXAMPLE)).space == "nb201"
    assert with_candidate_space(FinalConfig(arch=CNN)).space == "cnn"
    assert with_candidate_space(FinalConfig(genotype="darts_v2")).space == "darts"
    assert with_candidate_space(FinalConfig(space="nb201", genotype=EXAMPLE)).space == "nb201"


def test_a_search_run_directory_retrains_without_space_flag(tmp_path):
    run_dir = _search_dir(tmp_path / "search", "nb201", "arch.json", {"arch": EXAMPLE})
    argv = ["--genotype", str(run_dir), *TINY_FINAL, "--layers", "1", "--init_channels", "4",
            "--save", str(tmp_path), "--name", "f"]
    assert train_final.main(argv) == 0
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    assert config["space"] == "nb201" and config["genotype"] == str(run_dir / "arch.json")
    assert (config["nesterov"], config["weight_decay"], config["auxiliary"]) == (True, 5e-4, False)
    assert json.loads((tmp_path / "f" / "arch.json").read_text()) == {"arch": EXAMPLE}


@pytest.mark.parametrize("space, message", [
    ("darts", "--space darts: --genotype {file} is a NAS-Bench-201 cell, not a DARTS genotype; "
              "leave --space out"),
    ("cnn", "--space cnn: --genotype {file} is a NAS-Bench-201 cell, not a plain CNN"),
])
def test_a_space_flag_that_contradicts_the_file_is_one_line(tmp_path, capsys, space, message):
    _search_dir(tmp_path / "run", "nb201", "arch.json", {"arch": EXAMPLE})
    file = tmp_path / "run" / "arch.json"
    code = train_final.main(["--space", space, "--genotype", str(file), *TINY_FINAL,
                             "--save", str(tmp_path), "--name", "x"])
    _one_line_exit_2(code, capsys, message.format(file=file))
    assert not (tmp_path / "x").exists()


def test_a_run_directory_without_a_cell_is_one_line(tmp_path):
    (tmp_path / "run" / "genotypes").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"space": "darts"}))
    with pytest.raises(UserError, match=r"--genotype .*run: a folder without genotype\.json; a "
                                        r"search writes its result there when it ends"):
        with_candidate_space(FinalConfig(genotype=str(tmp_path / "run")))
    with pytest.raises(UserError, match="without genotype.json or arch.json or cell.json or cnn.json"):
        with_candidate_space(FinalConfig(genotype=str(tmp_path / "run" / "genotypes")))


# -- 2, 3. --epochs with --resume; the parameter line of the retraining log --------------------
def test_resuming_with_other_epochs_is_refused_and_the_log_counts_params_truly(tmp_path, capsys):
    run_dir = tmp_path / "f"
    argv = ["--genotype", "darts_v2", *TINY_FINAL, "--layers", "3", "--init_channels", "4",
            "--save", str(tmp_path), "--name", "f"]
    assert train_final.main(argv) == 0
    before = (run_dir / "checkpoint.pt").read_bytes()
    code = train_final.main(["--resume", str(run_dir), "--epochs", "3"])
    _one_line_exit_2(code, capsys, "--epochs 3 with --resume: a run's epochs fix its schedule",
                     "start a new run with --epochs 3")
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    # its own epochs again: the finished run is read back, nothing changes
    assert train_final.main(["--resume", str(run_dir), "--epochs", "1"]) == 0
    assert (run_dir / "checkpoint.pt").read_bytes() == before

    # 3: the CIFAR recipe trains the auxiliary head; the count leaves it out, and says so
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    line = next(x for x in (run_dir / "log.txt").read_text().splitlines() if "parameters" in x)
    assert config["auxiliary"] and "no auxiliary head" not in line
    assert (f"{metrics['params'] / 1e6:.3f}M parameters without the auxiliary head, as the paper "
            f"counts them (the head is on, weight 0.4:") in line


def test_the_parameter_line_says_when_the_head_is_off(tmp_path):
    argv = ["--genotype", "darts_v2", *TINY_FINAL, "--layers", "3", "--init_channels", "4",
            "--no-auxiliary", "--save", str(tmp_path), "--name", "f"]
    assert train_final.main(argv) == 0
    log = (tmp_path / "f" / "log.txt").read_text()
    assert "M parameters (auxiliary head off)," in log


def test_a_finished_search_is_not_extended_by_epochs(tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--layers", "3", "--nodes", "2", "--init_channels", "4",
            "--image_size", "8", "--synthetic_size", "16", "--batch_size", "8", "--workers", "0",
            "--epochs", "1", "--order", "1", "--device", "cpu", "--no-progress",
            "--no-tensorboard", "--save", str(tmp_path), "--name", "s"]
    assert train_search.main(argv) == 0
    code = train_search.main(["--resume", str(tmp_path / "s"), "--epochs", "4"])
    _one_line_exit_2(code, capsys, "--epochs 4 with --resume", "(the learning rate and the "
                     "ramps end at its last epoch, 1)")
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["epochs"] == 1


# -- 4, 5. an NB201 search: its skip count's name, and the command that retrains its cell --------
def test_an_nb201_search_names_its_one_cell_and_prints_its_retrain_command(tmp_path):
    cfg = SearchConfig(space="nb201", dataset="synthetic", layers=1, init_channels=4,
                       image_size=8, synthetic_size=32, batch_size=8, workers=0, progress=False,
                       epochs=1, order=1, save=str(tmp_path), name="s", device="cpu")
    metrics = run(cfg)
    run_dir = tmp_path / "s"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert "arch/skip_connect" in scalars and "arch/entropy_cell" in scalars
    assert not any("normal" in tag for tag in scalars)
    assert "skip_connect" in metrics["history"][0] and "skip_connect" in metrics["final"]
    assert not any("normal" in key for key in metrics["history"][0])
    log = (run_dir / "log.txt").read_text()
    assert " skip_connect " in log and "skip_connect_normal" not in log

    command = log.split("retrain it with:\n")[1].strip().splitlines()[0].strip()
    argv = shlex.split(command)
    assert argv[:6] == ["python", "train_final.py", "--space", "nb201", "--genotype",
                        str(run_dir / "arch.json")]
    assert argv[6:] == ["--dataset", "synthetic", "--image_size", "8", "--synthetic_size", "32",
                        "--layers", "1", "--init_channels", "4", "--epochs", "1",
                        "--batch_size", "8"]
    # it runs, and trains the searched cell
    assert train_final.main([*argv[2:], "--workers", "0", "--device", "cpu", "--no-progress",
                             "--no-tensorboard", "--save", str(tmp_path), "--name", "f"]) == 0
    assert (json.loads((tmp_path / "f" / "arch.json").read_text())
            == json.loads((run_dir / "arch.json").read_text()))
    shutil.rmtree(tmp_path / "f")


def test_an_installed_command_prints_installed_commands(monkeypatch, tmp_path):
    """Run as `darts-search`, the search's retrain hint is `darts-final ...` (an installed
    user has no train_final.py); from a checkout it stays `python train_final.py ...`."""
    from darts.search import SearchConfig, retrain_command
    from darts.train import cli

    cfg = SearchConfig(dataset="synthetic")
    monkeypatch.setattr(sys, "argv", ["train_search.py"])
    assert retrain_command(tmp_path, cfg)[0].startswith("python train_final.py --genotype")
    assert cli.command("python -m darts.compare", "darts-compare") == ["python", "-m", "darts.compare"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/darts-search"])
    assert retrain_command(tmp_path, cfg)[0].startswith("darts-final --genotype")
    assert cli.command("python -m darts.compare", "darts-compare") == ["darts-compare"]
