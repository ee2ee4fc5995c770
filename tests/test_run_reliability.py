"""Runs of every kind own their directory, keep what they wrote, stop on NaN, and say one line.

Each test here is a failure seen in a real run: two runs writing one directory, Ctrl-C
deleting a one-shot supernet, a one-shot run that did not repeat, an unterminated history
line, a diverged run that exited 0, a write failure shown as a traceback.
"""

import errno
import json
import math
import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import ROOT

import train_search
from darts.benchmarks.nb201 import synthetic_table
from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.evaluators.oneshot import OneShotEvaluator
from darts.multitrial import _History, make_strategy
from darts.primitives import OPS, build_op, register_op
from darts.search import SearchConfig, run
from darts.spaces import nb201
from darts.supernet import MixedOp
from darts.train.files import save_json
from darts.train.rundir import claim_existing, claim_new


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return synthetic_table(tmp_path_factory.mktemp("rel") / "table.csv", seed=0)


def multitrial(tmp_path, table_path, **overrides):
    values = dict(strategy="evolution", space="nb201", evaluator="benchmark",
                  benchmark=str(table_path), budget=30, seed=0, save=str(tmp_path),
                  name="run", progress=False, tensorboard=False)
    values.update(overrides)
    return SearchConfig(**values)


ONESHOT = dict(evaluator="oneshot", strategy="random", dataset="synthetic", synthetic_size=32,
               image_size=8, layers=1, init_channels=4, oneshot_epochs=3, bn_batches=1,
               valid_batches=1, batch_size=8, budget=6, workers=0, device="cpu", benchmark="")


def tiny_search(tmp_path, **overrides):
    cfg = dict(dataset="synthetic", layers=3, nodes=2, init_channels=4, image_size=16,
               synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=2,
               save=str(tmp_path), device="cpu", tensorboard=False, order=1)
    cfg.update(overrides)
    return SearchConfig(**cfg)


def records(run_dir):
    """The history without its wall-clock fields (time, and cost where it is measured)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "cost")}
            for line in (run_dir / "history.jsonl").read_text().splitlines()]


def strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds a bare {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# -- 1. one run per directory ------------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from darts.train.rundir import claim_new
    claim = claim_new({save!r}, "c")
    print("claimed", flush=True)
    time.sleep(60)
""")


def _holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(ROOT), save=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_second_run_of_the_same_name_is_refused_while_the_first_runs(tmp_path, table_path,
                                                                       capsys):
    holder = _holder(tmp_path)  # another process's run of --name c, before its first record
    try:
        for argv in (["--strategy", "bo", "--space", "nb201", "--benchmark", str(table_path),
                      "--budget", "5", "--save", str(tmp_path), "--name", "c", "--no-progress"],
                     ["--dataset", "synthetic", "--epochs", "1", "--save", str(tmp_path),
                      "--name", "c", "--no-progress"]):
            assert train_search.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "in use by another run" in err
            assert f"process {holder.pid}" in err and "\n" not in err
        assert not (tmp_path / "c" / "history.jsonl").exists()
        assert not (tmp_path / "c" / "config.json").exists()
        with pytest.raises(UserError, match="still going on"):
            claim_existing(tmp_path / "c")
    finally:
        holder.kill()
        holder.wait()
    # a run killed with -9 leaves no claim behind: its directory can be taken at once
    claim = claim_new(tmp_path, "c")
    claim.release()


def test_runs_named_by_their_start_time_never_share_a_directory(tmp_path):
    first = claim_new(tmp_path, "search-synthetic-20261207-120000", numbered=True)
    second = claim_new(tmp_path, "search-synthetic-20261207-120000", numbered=True)
    assert (first.path.name, second.path.name) == (
        "search-synthetic-20261207-120000", "search-synthetic-20261207-120000-2")
    with pytest.raises(UserError, match="in use by another run"):
        claim_new(tmp_path, "search-synthetic-20261207-120000")  # a --name the user gave
    first.release()
    second.release()


def test_two_searches_started_together_get_two_directories(tmp_path, table_path, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda fmt: "20261207-120000")
    cfg = multitrial(tmp_path, table_path, name="", budget=5)
    holder = claim_new(tmp_path, "evolution-nb201-benchmark-20261207-120000")
    try:
        run(cfg)
    finally:
        holder.release()
    assert len(records(tmp_path / "evolution-nb201-benchmark-20261207-120000-2")) == 5
    assert not (tmp_path / "evolution-nb201-benchmark-20261207-120000" / "history.jsonl").exists()


def test_a_run_whose_directory_is_removed_stops_instead_of_writing_a_new_one(
        tmp_path, table_path, monkeypatch):
    real, calls = BenchmarkEvaluator.__call__, [0]

    def removing(self, arch):
        calls[0] += 1
        if calls[0] == 5:
            shutil.rmtree(tmp_path / "run")
        return real(self, arch)

    monkeypatch.setattr(BenchmarkEvaluator, "__call__", removing)
    with pytest.raises(UserError, match="was removed while the run was going on"):
        run(multitrial(tmp_path, table_path))
    assert not (tmp_path / "run").exists()


# -- 2, 3. the one-shot evaluator: Ctrl-C keeps the supernet; the seed fixes the run -----------
def test_ctrl_c_in_the_supernets_training_keeps_the_run_and_resume_equals_a_whole_run(
        tmp_path, table_path, monkeypatch):
    torch.manual_seed(1)  # another global state than the interrupted run's: the seed decides
    run(multitrial(tmp_path, table_path, name="whole", **ONESHOT))
    real = OneShotEvaluator._save

    def interrupted(self, epoch):
        real(self, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(OneShotEvaluator, "_save", interrupted)
    torch.manual_seed(2)
    with pytest.raises(KeyboardInterrupt):
        run(multitrial(tmp_path, table_path, name="stopped", **ONESHOT))
    stopped = tmp_path / "stopped"
    assert (stopped / "supernet.pt").exists() and (stopped / "config.json").exists()
    monkeypatch.setattr(OneShotEvaluator, "_save", real)
    run(None, resume=str(stopped))
    log = (stopped / "log.txt").read_text()
    assert "resuming the supernet's training at epoch 3/3" in log
    assert records(stopped) == records(tmp_path / "whole")


def test_one_seed_gives_one_oneshot_run(tmp_path, table_path):
    results = []
    for k, global_seed in enumerate((5, 6)):
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        results.append(run(multitrial(tmp_path, table_path, name=f"r{k}",
                                      **{**ONESHOT, "oneshot_epochs": 1})))
    assert records(tmp_path / "r0") == records(tmp_path / "r1")
    assert results[0]["best_arch"] == results[1]["best_arch"]


_ONESHOT_ARGS = ["--strategy", "random", "--space", "nb201", "--evaluator", "oneshot",
                 "--dataset", "synthetic", "--synthetic_size", "32", "--image_size", "8",
                 "--layers", "1", "--init_channels", "4", "--oneshot_epochs", "4",
                 "--bn_batches", "1", "--valid_batches", "1", "--batch_size", "8",
                 "--budget", "8", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--no-tensorboard", "--threads", "1"]


def _kill_when(proc, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_in_training_and_in_scoring_then_resume_equals_an_uninterrupted_run(tmp_path):
    script = [sys.executable, str(ROOT / "train_search.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*script, *_ONESHOT_ARGS, "--save", str(tmp_path), "--name", "whole"],
                   check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*script, *_ONESHOT_ARGS, "--save", str(tmp_path), "--name", "killed"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # in the supernet's training, once its first epoch is saved
    _kill_when(proc, lambda: (killed / "supernet.pt").exists())
    assert not (killed / "history.jsonl").read_text()
    proc = subprocess.Popen([*script, "--resume", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def scored_some():  # in the scoring, after three candidates
        try:
            return len((killed / "history.jsonl").read_text().splitlines()) >= 3
        except OSError:
            return False

    _kill_when(proc, scored_some)
    subprocess.run([*script, "--resume", str(killed)], check=True, env=env, capture_output=True)
    assert records(killed) == records(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert json.loads((killed / "result.json").read_text())["best_arch"] == whole["best_arch"]


# -- 5. history lines always end with a newline -------------------------------------------------
def test_a_history_without_its_last_newline_resumes_to_whole_lines(tmp_path, table_path,
                                                                    monkeypatch):
    run(multitrial(tmp_path, table_path, name="whole"))
    real, calls = BenchmarkEvaluator.__call__, [0]

    def crashing(self, arch):
        calls[0] += 1
        if calls[0] == 12:
            raise KeyboardInterrupt
        return real(self, arch)

    monkeypatch.setattr(BenchmarkEvaluator, "__call__", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(multitrial(tmp_path, table_path, name="torn"))
    monkeypatch.setattr(BenchmarkEvaluator, "__call__", real)
    history = tmp_path / "torn" / "history.jsonl"
    history.write_bytes(history.read_bytes().rstrip(b"\n"))  # an editor dropped the newline
    run(None, resume=str(tmp_path / "torn"))
    lines = history.read_text().splitlines()
    assert len(lines) == 30 and history.read_bytes().endswith(b"\n")
    assert records(tmp_path / "torn") == records(tmp_path / "whole")
    run(None, resume=str(tmp_path / "torn"))  # and it resumes again


def test_an_append_never_continues_an_unterminated_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"n": 1, "candidate": "a", "score": 1, "reported": 1, "cost": 0}')
    _History(path).append({"n": 2, "candidate": "b", "score": 2, "reported": 2, "cost": 0})
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_bad_history_line_is_named(tmp_path):
    path = tmp_path / "history.jsonl"
    good = [json.dumps({"n": k, "candidate": "a", "score": 1, "reported": 1, "cost": 0})
            for k in (1, 2, 3)]
    path.write_text(good[0] + "\n" + good[1] + good[2] + "\n" + good[2] + "\n")
    with pytest.raises(UserError, match=r"history.jsonl, line 2: not one JSON record \(Extra data"):
        _History(path).read(1)


# -- 6. write failures and odd plugins are one line ---------------------------------------------
def test_a_file_size_limit_in_the_history_append_is_one_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        with pytest.raises(UserError, match=r"cannot write .*history.jsonl: File too large.*ulimit"):
            _History(path).append({"n": 1, "candidate": "x" * 200, "score": 1.0,
                                   "reported": 1.0, "cost": 0.0})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("args", [
    ["--strategy", "random", "--space", "nb201", "--budget", "3"],  # a multi-trial run
    ["--dataset", "synthetic", "--epochs", "1"],  # a gradient search
])
def test_a_read_only_save_folder_is_one_line(tmp_path, table_path, args, monkeypatch, capsys):
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *a, **kw):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    if "nb201" in args:
        args = [*args, "--benchmark", str(table_path)]
    assert train_search.main([*args, "--save", str(tmp_path / "ro"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write") and "read-only" in err and "\n" not in err


def test_a_plugin_op_of_the_wrong_shape_is_named_when_the_supernet_is_built():
    register_op("halves_channels", lambda C, stride, affine: torch.nn.Conv2d(C, C // 2, 1, stride),
                overwrite=True)
    register_op("keeps_size", lambda C, stride, affine: torch.nn.Conv2d(C, C, 1), overwrite=True)
    try:
        with pytest.raises(UserError, match=r"op 'halves_channels' .* into \(2, 4, 8, 8\);"):
            MixedOp(8, 1, ("none", "skip_connect", "halves_channels"))
        with pytest.raises(UserError, match=r"op 'keeps_size' .* stride 2 .* \(2, 8, 4, 4\)"):
            build_op("keeps_size", 8, 2, False)
        assert build_op("keeps_size", 8, 1, False)(torch.ones(1, 8, 5, 5)).shape == (1, 8, 5, 5)
    finally:
        OPS.pop("halves_channels")
        OPS.pop("keeps_size")


# -- 7. a NaN loss stops the run --------------------------------------------------------------
def nan_validation_loss(monkeypatch, module, from_call: int):
    """`module.evaluate` (the epoch's validation) gives a NaN loss from its `from_call`-th call;
    returns the real one."""
    real, calls = module.evaluate, [0]

    def evaluate(*args, **kwargs):
        calls[0] += 1
        metrics = real(*args, **kwargs)
        if calls[0] >= from_call:
            metrics.loss = float("nan")
        return metrics

    monkeypatch.setattr(module, "evaluate", evaluate)
    return real


def test_a_nan_loss_stops_the_search_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import darts.search as search

    nan_validation_loss(monkeypatch, search, from_call=2)
    with pytest.raises(UserError, match=r"diverged in epoch 2 \(valid_loss nan\).*checkpoint of "
                                        r"epoch 1 .* is kept"):
        run(tiny_search(tmp_path, name="nan", epochs=3))
    ckpt = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert strict_json(tmp_path / "nan" / "metrics.json")["epochs_done"] == 1
    assert not (tmp_path / "nan" / "genotype.json").exists()


def test_a_nan_loss_stops_final_training(tmp_path, monkeypatch):
    import darts.final as final

    nan_validation_loss(monkeypatch, final, from_call=1)
    cfg = final.FinalConfig(dataset="synthetic", genotype="darts_v2", epochs=2, layers=3,
                            init_channels=4, batch_size=50, synthetic_size=100, workers=0,
                            progress=False, device="cpu", save=str(tmp_path), name="f",
                            tensorboard=False)
    with pytest.raises(UserError, match=r"diverged in epoch 1 \(valid_loss nan\).*nothing is kept"):
        final.run(cfg)
    assert not (tmp_path / "f").exists()


def test_json_files_hold_null_for_a_missing_number(tmp_path):
    save_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}},
              tmp_path / "m.json")
    assert strict_json(tmp_path / "m.json") == {"a": None, "b": [1.0, None], "c": {"d": None}}


# -- 9. odd cases -------------------------------------------------------------------------------
def test_the_gp_sampler_without_scipy_is_refused_before_the_first_evaluation(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(UserError, match="--strategy bo: sampler gp needs scipy"):
        make_strategy(SearchConfig(strategy="bo", bo_sampler="gp"), nb201)


# -- the history reader, fuzzed -----------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_RECORDS = [{"n": k, "candidate": f"c{k}", "score": k / 3, "reported": 1.0, "cost": 0.5}
            for k in range(1, 7)]
_WHOLE = "".join(json.dumps(r) + "\n" for r in _RECORDS).encode()


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(_WHOLE)), edits=st.lists(st.tuples(
    st.integers(0, len(_WHOLE)), st.sampled_from([b"", b"\n", b"x", b"{", b"\r\n", b"\x00"])),
    max_size=3), batch=st.sampled_from([1, 2]))
def test_a_torn_or_edited_history_reads_as_whole_records_or_names_its_bad_line(
        tmp_path, cut, edits, batch):
    data = bytearray(_WHOLE[:cut])
    for at, text in edits:  # an insertion, or with b"" the deletion of one byte
        at = min(at, len(data))
        data[at:at + (0 if text else 1)] = text
    path = tmp_path / "history.jsonl"
    path.write_bytes(bytes(data))
    try:
        got = _History(path).read(batch)
    except UserError as e:
        assert "history.jsonl, line " in str(e) and "\n" not in str(e)
        return
    # whole records in order (an edit inside one may leave another valid record: a user's)
    assert [r["n"] for r in got] == list(range(1, len(got) + 1)) and len(got) % batch == 0
    if cut == len(_WHOLE) and not edits:
        assert got == _RECORDS[:6 - 6 % batch]
    _History(path).append(_RECORDS[len(got)] if len(got) < 6 else {**_RECORDS[0], "n": 7})
    lines = path.read_bytes().decode().split("\n")
    assert lines[-1] == "" and [json.loads(line)["n"] for line in lines[:-1]] == list(
        range(1, len(got) + 2))


# -- a diverged run goes on from its last good checkpoint with a smaller step -------------------
@pytest.mark.parametrize("eta_min", [0.0, 0.001])
def test_a_new_base_learning_rate_continues_the_schedule_from_the_epoch_reached(eta_min):
    from darts.train.checkpoint import change_base_lr

    def schedule(lr):
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10.0, eta_min=eta_min)

    opt, sched = schedule(1e3)
    for _ in range(4):
        opt.step()
        sched.step()
    change_base_lr(opt, sched, 0.05)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # the paper's closed form from the new base: eta + (lr - eta)(1 + cos(pi t / T)) / 2
    want = [eta_min + (0.05 - eta_min) * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(4, 10)]
    assert seen == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_resume_after_a_diverged_epoch_with_a_smaller_learning_rate(tmp_path, monkeypatch, capsys):
    import darts.search as search

    real = nan_validation_loss(monkeypatch, search, from_call=2)
    args = ["--dataset", "synthetic", "--layers", "3", "--nodes", "2", "--init_channels", "4",
            "--image_size", "16", "--synthetic_size", "32", "--batch_size", "8", "--workers", "0",
            "--epochs", "2", "--order", "1", "--device", "cpu", "--no-progress",
            "--no-tensorboard", "--save", str(tmp_path), "--name", "d"]
    assert train_search.main(args) == 2
    assert "diverged in epoch 2" in capsys.readouterr().err
    monkeypatch.setattr(search, "evaluate", real)
    assert train_search.main(["--resume", str(tmp_path / "d"), "--learning_rate", "0.01",
                              "--layers", "5"]) == 0
    err = capsys.readouterr().err
    assert "ignoring --layers" in err and "learning_rate" not in err
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (config["learning_rate"], config["layers"]) == (0.01, 3)
    metrics = strict_json(tmp_path / "d" / "metrics.json")
    assert metrics["complete"] and metrics["epochs_done"] == 2
    # epoch 2's rate is the cosine schedule's from the new base (T = 2 epochs, eta_min 0.001)
    assert metrics["history"][1]["lr"] == pytest.approx(0.001 + (0.01 - 0.001) * (1 + math.cos(math.pi / 2)) / 2)
    log = (tmp_path / "d" / "log.txt").read_text()
    assert "resumed with --learning_rate 0.01 (was 0.025)" in log
    with pytest.raises(UserError, match="only --learning_rate, --arch_learning_rate, --grad_clip "
                                        "may change, not --layers"):
        run(None, resume=str(tmp_path / "d"), changes={"layers": 5})


# -- 4, 8. a table with a gap in a column the run uses is refused before anything is written ----
def _with_cell(table_path, tmp_path, line, column, value):
    rows = table_path.read_text().splitlines()
    header = rows[0].split(",")
    fields = rows[line - 1].split(",")
    fields[header.index(column)] = value
    rows[line - 1] = ",".join(fields)
    out = tmp_path / "gappy.csv"
    out.write_text("\n".join(rows) + "\n")
    return out


@pytest.mark.parametrize("column, value, flags, message", [
    ("cifar10_valid", "nan", {}, r"line 7: .*cifar10_valid"),
    ("cifar10_test", "", {}, r"line 7: .*cifar10_test"),
    ("cifar10_train_s", "0", {"budget_seconds": 1e5, "budget": 10_000}, r"line 7: .*cifar10_train_s"),
])
def test_a_multitrial_run_refuses_a_table_with_a_gap_it_would_read(
        tmp_path, table_path, column, value, flags, message):
    gappy = _with_cell(table_path, tmp_path, 7, column, value)
    with pytest.raises(UserError, match=message):
        run(multitrial(tmp_path, gappy, **flags))
    assert not (tmp_path / "run").exists()
    # a gap in a column the run does not read is no reason to refuse it
    other = _with_cell(table_path, tmp_path, 7, "cifar100_test", "")
    assert run(multitrial(tmp_path, other, name="fine", budget=5))["evaluations"] == 5
