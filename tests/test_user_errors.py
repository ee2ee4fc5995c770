"""Every user-facing failure is one line on standard error, exit status 2, and leaves no
half-made run behind: bad flags, foreign or damaged checkpoints, a full disk, and errors
raised inside DataLoader worker processes. Checkpoint and config loading are fuzzed."""

import errno
import io
import os
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import train_final
import train_search
from darts.errors import UserError, one_line
from darts.final import FinalConfig
from darts.search import SearchConfig
from darts.train import checkpoint as checkpoint_module
from darts.train import files
from darts.train.checkpoint import load_checkpoint
from darts.train.config import config_from_dict, to_dict

TINY = ["--dataset", "synthetic", "--layers", "3", "--nodes", "2", "--init_channels", "4",
        "--image_size", "16", "--synthetic_size", "32", "--batch_size", "8", "--workers", "0",
        "--no-progress", "--no-tensorboard", "--device", "cpu", "--order", "1"]
FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _one_line_exit_2(code, capsys, *expected):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _search(tmp_path, *flags):
    return train_search.main([*TINY, "--save", str(tmp_path), *flags])


# ---------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize("flags, expected", [
    (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["--epoch", "1"], "unrecognized arguments: --epoch 1"),  # no abbreviation of --epochs
    (["--learning_rate", "inf"], "argument --learning_rate: 'inf' is not a finite number"),
    (["--arch_learning_rate", "nan"], "argument --arch_learning_rate: 'nan' is not a finite number"),
    (["--momentum", "fast"], "argument --momentum: 'fast' is not a number"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as stop:
        _search(tmp_path, *flags)
    _one_line_exit_2(stop.value.code, capsys, expected, "--help")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("device, expected", [
    ("foo", "--device foo: not a device"), ("tpu", "--device tpu: not a device"),
    ("cuda:0" if not torch.cuda.is_available() else "cuda:99", "--device cuda"),
])
def test_a_bad_device_is_one_line_and_leaves_nothing(tmp_path, capsys, device, expected):
    _one_line_exit_2(_search(tmp_path, "--device", device), capsys, expected)
    assert not any(tmp_path.iterdir())


def test_train_final_refuses_a_bad_flag_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_final.main(["--dataset", "synthetic", "--learning_rate", "-inf",
                          "--save", str(tmp_path)])
    _one_line_exit_2(stop.value.code, capsys, "--learning_rate")


# ---------------------------------------------------------------------------------------------
# Checkpoints


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_checkpoint_is_refused_in_one_line_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    with open(run_dir / "checkpoint.pt", "wb") as f:
        pickle.dump({"kind": "search", "model": _Payload(marker)}, f)
    err = _one_line_exit_2(train_search.main(["--resume", str(run_dir)]), capsys,
                           "is not a checkpoint of this project and was not loaded")
    assert "weights_only" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [
    ({"kind": "search"}, "incomplete train_search.py checkpoint"),
    ([1, 2, 3], "not a train_search.py checkpoint"),
    ({"kind": "final", "epoch": 1}, "not a train_search.py checkpoint"),
    ("just a string", "not a train_search.py checkpoint"),
])
def test_a_checkpoint_of_another_shape_is_one_line(tmp_path, capsys, content, expected):
    run_dir = tmp_path / "other"
    run_dir.mkdir()
    torch.save(content, run_dir / "checkpoint.pt")
    _one_line_exit_2(train_search.main(["--resume", str(run_dir)]), capsys, expected)


def test_a_truncated_checkpoint_is_one_line(tmp_path, capsys):
    assert _search(tmp_path, "--epochs", "1", "--name", "run") == 0
    capsys.readouterr()
    path = tmp_path / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_exit_2(train_search.main(["--resume", str(tmp_path / "run")]), capsys,
                     "is not a readable checkpoint: it is truncated or corrupt")


class _Checkpoint(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing example
        return "<a finished search's checkpoint>"


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A two-epoch search's checkpoint, to be damaged by the tests."""
    save = tmp_path_factory.mktemp("runs")
    assert train_search.main([*TINY, "--save", str(save), "--epochs", "2", "--name", "ok"]) == 0
    return _Checkpoint(load_checkpoint(save / "ok", "search"))


def _resume_code(tmp_path, state):
    run_dir = tmp_path / "damaged"
    run_dir.mkdir(exist_ok=True)
    torch.save(state, run_dir / "checkpoint.pt")
    return train_search.main(["--resume", str(run_dir)])


def test_a_checkpoint_of_another_network_is_one_line(tmp_path, capsys, finished_search):
    state = dict(finished_search, epoch=1)
    state["config"] = dict(state["config"], init_channels=8)  # not the saved weights' shape
    _one_line_exit_2(_resume_code(tmp_path, state), capsys, "does not fit this run")


@pytest.mark.parametrize("history", ["0", "", [], [{"epoch": 1}]])
def test_a_checkpoint_whose_history_disagrees_with_its_epoch_is_one_line(tmp_path, capsys,
                                                                         finished_search, history):
    state = dict(finished_search, history=history)  # the finished search did 2 epochs
    _one_line_exit_2(_resume_code(tmp_path, state), capsys, "one record per epoch done")


# Small numbers: a checkpoint asking for a valid but huge network is not an error to test here.
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True),
                  st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@FUZZ
@given(key=st.sampled_from(sorted(SearchConfig.__dataclass_fields__) + [
    "epoch", "model", "optimizer", "arch_optimizer", "scheduler", "split", "alpha_stream",
    "history", "rng"]), value=_JUNK)
def test_fuzzed_checkpoints_resume_or_fail_in_one_line(tmp_path, capsys, finished_search, key,
                                                       value):
    state = dict(finished_search)  # finished: a resume that loads it has nothing left to run
    if key in SearchConfig.__dataclass_fields__:
        state["config"] = dict(state["config"], **{key: value})
    else:
        state[key] = value
    code = _resume_code(tmp_path, state)
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzzed_checkpoint_bytes_fail_in_one_line(tmp_path, data):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(UserError):
        load_checkpoint(path, "final")


@FUZZ
@given(data=st.dictionaries(st.sampled_from(sorted(FinalConfig.__dataclass_fields__)), _JUNK,
                            max_size=6))
def test_fuzzed_configs_load_or_raise_a_user_error(data):
    try:
        cfg = config_from_dict(FinalConfig, data, where="config.json")
    except UserError as e:
        assert "config.json" in str(e) and "\n" not in str(e)
    else:
        assert to_dict(cfg) == {**to_dict(FinalConfig()), **data}


# ---------------------------------------------------------------------------------------------
# A full disk


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_last_checkpoint_resumes(
        tmp_path, capsys, monkeypatch):
    saves = []
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"half a checkpoint")  # as a real write does before the disk runs out
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_is_full)
    code = _search(tmp_path, "--epochs", "3", "--name", "full")
    _one_line_exit_2(code, capsys, "No space left on device", "free some space",
                     f"--resume {tmp_path / 'full'}")
    assert not (tmp_path / "full" / "checkpoint.pt.tmp").exists()
    assert load_checkpoint(tmp_path / "full", "search")["epoch"] == 1

    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert train_search.main(["--resume", str(tmp_path / "full")]) == 0
    assert load_checkpoint(tmp_path / "full", "search")["epoch"] == 3


def test_torch_saves_full_disk_error_is_found_behind_its_runtime_error(tmp_path):
    class FullDisk(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:  # torch.save reports a failed write as a RuntimeError whose context is the OSError
        torch.save({"w": torch.zeros(1000)}, FullDisk())
    except Exception as e:
        found = files._os_error_in(e)
    assert found is not None and found.errno == errno.ENOSPC


# ---------------------------------------------------------------------------------------------
# Errors inside DataLoader workers, and runs that fail before their first checkpoint


class _BrokenImages(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise UserError(f"images/{i}.png: not a readable image; remove or replace it")


def test_a_user_error_from_a_worker_process_is_its_own_one_line():
    loader = DataLoader(_BrokenImages(), batch_size=2, num_workers=1)
    with pytest.raises(UserError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # what torch hands the main process
    assert one_line(caught.value) == "images/0.png: not a readable image; remove or replace it"


def test_a_run_that_fails_in_its_first_epoch_leaves_no_run_directory(tmp_path, capsys,
                                                                     monkeypatch):
    import darts.search

    def fail(*args, **kwargs):
        raise UserError("images/3.png: not a readable image; remove or replace it")

    monkeypatch.setattr(darts.search, "train_one_epoch", fail)
    _one_line_exit_2(_search(tmp_path, "--epochs", "2", "--name", "broken"), capsys,
                     "images/3.png")
    assert not (tmp_path / "broken").exists()


def test_a_failed_run_never_removes_a_directory_it_did_not_make(tmp_path, capsys, monkeypatch):
    import darts.search

    def fail(*args, **kwargs):
        raise UserError("stop")

    monkeypatch.setattr(darts.search, "train_one_epoch", fail)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    assert _search(tmp_path, "--epochs", "1", "--name", "mine") == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's"
