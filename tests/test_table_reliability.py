"""A NAS-Bench-201 table with gaps, a BOM or a zero training time; compare's --out; the
official files' conversion (a missing data set, a crafted pickle). A gap in a column the run
uses is refused at load, naming the line; a gap elsewhere is harmless and reported as null."""

import bz2
import collections
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

from darts import compare
from darts.benchmarks import nb201
from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table
from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.spaces.nb201 import EXAMPLE, NB201Arch


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_table(tmp_path_factory.mktemp("rel") / "table.csv", seed=0)


def edited(synthetic, tmp_path, edits, name="t.csv", bom=False):
    """The synthetic table with cells replaced: `edits` maps (line, column) -> text (line 1
    is the header). Returns the path and the arch of each edited line."""
    lines = synthetic.read_text().splitlines()
    header = lines[0].split(",")
    archs = {}
    for (line, column), text in edits.items():
        fields = lines[line - 1].split(",")
        fields[header.index(column)] = text
        lines[line - 1] = ",".join(fields)
        archs[line] = fields[header.index("arch")]
    path = tmp_path / name
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path, archs


def one_line_error(call):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- gaps in the columns a run uses ------------------------------------------------------

@pytest.mark.parametrize("column, text, flag", [
    ("cifar10_valid", "nan", "--metric"),
    ("cifar10_valid", "", "--metric"),
    ("cifar10_valid", "inf", "--metric"),
    ("cifar10_test", "", "--report"),
    ("cifar10_test", "NaN", "--report"),
])
def test_a_gap_in_a_used_column_is_refused_naming_its_line(synthetic, tmp_path, column, text, flag):
    path, archs = edited(synthetic, tmp_path, {(4321, column): text, (9000, column): text})
    table = BenchmarkTable.load(path)  # a table may have gaps; the run that uses one may not
    message = one_line_error(lambda: BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test"))
    assert message.startswith(f"--benchmark {path}, line 4321: {archs[4321]} has no {column}")
    assert flag in message and "fill or remove the row" in message


def test_a_nan_first_candidate_never_reaches_a_run(synthetic, tmp_path):
    # line 2 is the first row, the all-none cell: a random search's first candidate may be it
    path, archs = edited(synthetic, tmp_path, {(2, "cifar10_valid"): "nan"})
    message = one_line_error(lambda: BenchmarkEvaluator(BenchmarkTable.load(path)))
    assert "line 2:" in message and archs[2] in message


def test_an_all_nan_report_column_is_refused_at_its_first_row(synthetic, tmp_path):
    n = len(synthetic.read_text().splitlines())
    path, archs = edited(synthetic, tmp_path, {(k, "cifar100_test"): "nan" for k in range(2, n + 1)})
    table = BenchmarkTable.load(path)
    message = one_line_error(lambda: BenchmarkEvaluator(table, "cifar10_valid", "cifar100_test"))
    assert f"line 2: {archs[2]} has no cifar100_test" in message and "--report" in message
    BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")  # a run that does not use it


def test_gaps_in_unused_columns_are_harmless_and_reported_as_null(synthetic, tmp_path):
    path, archs = edited(synthetic, tmp_path, {(5, "cifar100_test"): "", (6, "cifar100_test"): "nan",
                                               (7, "ImageNet16-120_test"): "inf",
                                               (8, "cifar10_train_s"): ""})
    table = BenchmarkTable.load(path)
    evaluate = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
    for line in (5, 6, 7, 8):
        arch = NB201Arch.from_string(archs[line])
        result = evaluate(arch)
        assert all(np.isfinite([result.score, result.reported, result.cost]))
        score = table.score(arch)
        json.dumps(score, allow_nan=False)  # a gap is null, never a bare NaN
    assert table.score(NB201Arch.from_string(archs[5]))["cifar100_test"] is None
    assert table.score(NB201Arch.from_string(archs[6]))["rank_cifar100_test"] is None
    assert table.score(NB201Arch.from_string(archs[7]))["ImageNet16-120_test"] is None
    assert evaluate(NB201Arch.from_string(archs[8])).cost == 0.0


def test_a_bom_is_not_part_of_the_first_column(synthetic, tmp_path):
    path, _ = edited(synthetic, tmp_path, {}, bom=True)
    table = BenchmarkTable.load(path)
    assert "index" not in table.metrics and not any(m.startswith("\ufeff") for m in table.metrics)
    assert table.metrics[0] == "cifar10_valid" and table.indices[EXAMPLE] >= 0


# --- the training times of a time budget ---------------------------------------------------

@pytest.mark.parametrize("text", ["0", "", "nan", "-5"])
def test_a_time_budget_needs_a_time_above_zero_in_every_row(synthetic, tmp_path, text):
    path, archs = edited(synthetic, tmp_path, {(777, "cifar10_train_s"): text})
    table = BenchmarkTable.load(path)
    BenchmarkEvaluator(table)  # without a time budget the times are only recorded
    message = one_line_error(lambda: BenchmarkEvaluator(table, budget_seconds=3600.0))
    assert message.startswith(f"--benchmark {path}, line 777: {archs[777]} has a training time "
                              f"cifar10_train_s of")
    assert "--budget_seconds" in message and "--budget instead" in message
    message = one_line_error(lambda: BenchmarkEvaluator(table, budget_seconds=True))
    assert "line 777" in message


def test_a_time_budget_without_a_time_column_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(f"arch,cifar10_valid,cifar10_test\n{EXAMPLE},90,91\n")
    table = BenchmarkTable.load(path)
    BenchmarkEvaluator(table)
    message = one_line_error(lambda: BenchmarkEvaluator(table, budget_seconds=10.0))
    assert message.startswith("--budget_seconds:") and "cifar10_train_s" in message


# --- python -m darts.compare ---------------------------------------------------------------

def run_compare(capsys, table, out, *args):
    code = compare.main(["--benchmark", str(table), "--strategies", "random", "--seeds", "1",
                         "--budget", "5", "--out", str(out), *args])
    return code, capsys.readouterr()


def test_compare_refuses_a_nan_metric_before_writing_anything(synthetic, tmp_path, capsys):
    path, archs = edited(synthetic, tmp_path, {(1234, "cifar10_valid"): "nan"})
    code, io = run_compare(capsys, path, tmp_path / "out")
    assert code == 2 and io.out == "" and len(io.err.strip().splitlines()) == 1
    assert f"line 1234: {archs[1234]}" in io.err
    assert not (tmp_path / "out").exists()


def test_compare_with_a_time_budget_refuses_a_zero_time(synthetic, tmp_path, capsys):
    path, archs = edited(synthetic, tmp_path, {(99, "cifar10_train_s"): "0",
                                               (100, "cifar10_train_s"): ""})
    code, _ = run_compare(capsys, path, tmp_path / "fine")  # no time budget: only recorded
    assert code == 0
    code, io = run_compare(capsys, path, tmp_path / "out", "--budget_seconds", "5000")
    assert code == 2 and len(io.err.strip().splitlines()) == 1
    assert f"line 99: {archs[99]} has a training time cifar10_train_s of 0" in io.err
    assert not (tmp_path / "out").exists()


def test_compare_out_naming_a_file_is_one_line(synthetic, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("mine")
    code, io = run_compare(capsys, synthetic, out)
    assert code == 2 and io.out == "" and len(io.err.strip().splitlines()) == 1
    assert f"--out {out}: a file" in io.err and out.read_text() == "mine"
    code, io = run_compare(capsys, synthetic, out / "sub")
    assert code == 2 and len(io.err.strip().splitlines()) == 1 and "--out" in io.err


def test_compare_out_in_a_read_only_folder_is_refused_before_the_runs(synthetic, tmp_path,
                                                                      capsys, monkeypatch):
    real = os.access
    folder = tmp_path / "read-only"
    folder.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (  # as a read-only folder
        False if str(path).startswith(str(folder)) else real(path, mode, **kw)))
    code, io = run_compare(capsys, synthetic, folder / "out")
    assert code == 2 and io.out == "" and len(io.err.strip().splitlines()) == 1  # no run began
    assert not (folder / "out").exists()
    assert f"cannot write {folder / 'out'}" in io.err and "--out" in io.err
    assert "--save" not in io.err


def test_compare_out_failing_when_written_is_one_line(synthetic, tmp_path, capsys, monkeypatch):
    real = compare.Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "out":
            raise OSError(30, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(compare.Path, "mkdir", read_only)
    code, io = run_compare(capsys, synthetic, tmp_path / "out")
    assert code == 2 and len(io.err.strip().splitlines()) == 1
    assert "read-only" in io.err and "--out" in io.err


# --- python -m darts.benchmarks.nb201 convert on the official files ----------------------------------

nats_bench = pytest.importorskip("nats_bench")
from nats_bench.api_utils import ArchResults, ResultsCount  # noqa: E402

ARCHS = [EXAMPLE,
         "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"]
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"),
             "ImageNet16-120": ("x-valid", "x-test", "ori-test")}


def arch_results(index, arch, datasets):
    """One architecture's results as the official files hold them (2 epochs, made up)."""
    results = ArchResults(index, arch)
    for dataset in datasets:
        count = ResultsCount(dataset, None, {0: 50.0, 1: 60.0}, {0: 1.0, 1: 1.0}, 1.5, 220.0,
                             {"name": "infer.tiny", "arch_str": arch}, 777, 2, [0.01])
        count.update_train_info({0: 50.0, 1: 60.0}, {0: 1.0, 1: 0.9}, {0: 1.0, 1: 1.0},
                                {0: 10.0, 1: 10.0})
        accs = {f"{s}@{e}": 80.0 - index for s in EVAL_SETS[dataset] for e in range(2)}
        count.update_eval(accs, {k: 0.5 for k in accs}, {k: 1.0 for k in accs})
        results.update(dataset, 777, count)
    return {"200": results.state_dict()}


def pbz2(path, data):
    with bz2.open(path, "wb") as f:
        pickle.dump(data, f)
    return path


class Payload:
    """What a crafted file would run when unpickled: makes the folder `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def convert(capsys, source, out):
    code = nb201.main(["convert", "--from", str(source), "--out", str(out)])
    return code, capsys.readouterr()


def test_convert_of_a_file_without_a_data_set_is_one_line(tmp_path, capsys):
    datasets = [d for d in EVAL_SETS if d != "cifar100"]
    source = pbz2(tmp_path / "NATS-tss-partial.pickle.pbz2", {
        "meta_archs": ARCHS, "evaluated_indexes": [0, 1],
        "arch2infos": {i: arch_results(i, a, datasets) for i, a in enumerate(ARCHS)}})
    out = tmp_path / "nb201.csv"
    code, io = convert(capsys, source, out)
    assert code == 2 and len(io.err.strip().splitlines()) == 1, io.err
    assert f"--from {source}: architecture 0 has no results for the data set cifar100" in io.err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_crafted_official_file_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: plain pickle runs it
    assert marker.is_dir()
    marker.rmdir()
    source = pbz2(tmp_path / "NATS-tss-crafted.pickle.pbz2", {
        "meta_archs": ARCHS, "evaluated_indexes": [0, 1], "note": Payload(marker),
        "arch2infos": {i: arch_results(i, a, EVAL_SETS) for i, a in enumerate(ARCHS)}})
    out = tmp_path / "nb201.csv"
    code, io = convert(capsys, source, out)
    assert code == 2 and len(io.err.strip().splitlines()) == 1, io.err
    assert f"--from {source}: {source} names posix.mkdir" in io.err and "not loaded" in io.err
    assert not marker.exists() and not out.exists()
    assert nats_bench.api_utils.pickle_load.__module__ == "nats_bench.api_utils"  # restored


def test_a_crafted_file_in_the_archive_folder_is_refused_and_runs_nothing(tmp_path, capsys):
    # the "-simple" layout, read lazily: meta.pickle.pbz2, then one file per architecture;
    # the first architecture's file is genuine (and read through the restricted unpickler)
    archive = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    archive.mkdir()
    marker = tmp_path / "ran"
    pbz2(archive / "meta.pickle.pbz2", {"meta_archs": ARCHS})
    pbz2(archive / "000000.pickle.pbz2", arch_results(0, ARCHS[0], EVAL_SETS))
    pbz2(archive / "000001.pickle.pbz2", {**arch_results(1, ARCHS[1], EVAL_SETS),
                                          "x": Payload(marker)})
    out = tmp_path / "nb201.csv"
    code, io = convert(capsys, archive, out)
    assert code == 2 and len(io.err.strip().splitlines()) == 1, io.err
    assert f"{archive / '000001.pickle.pbz2'} names posix.mkdir" in io.err
    assert not marker.exists() and not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_the_restricted_unpickler_admits_what_the_official_files_hold(tmp_path):
    data = {"a": collections.OrderedDict(x=1.5), "n": np.float64(2.5), "arr": np.arange(3),
            "w": torch.tensor([1.0, 2.0]), "s": {1, 2}, "t": (None, True, "s", b"b")}
    path = pbz2(tmp_path / "ok.pickle.pbz2", data)
    loaded = nb201._safe_pickle_load("x")(str(path))
    assert loaded["a"] == data["a"] and loaded["n"] == 2.5 and list(loaded["arr"]) == [0, 1, 2]
    assert torch.equal(loaded["w"], data["w"]) and loaded["s"] == {1, 2} and loaded["t"] == data["t"]
    bad = pbz2(tmp_path / "bad.pickle.pbz2", {"f": print})
    with pytest.raises(UserError, match="names builtins.print.*not loaded"):
        nb201._safe_pickle_load("x")(str(bad))


def test_a_converted_table_with_gaps_loads_and_queries_as_json(tmp_path, capsys):
    # a real converted table can have gaps (e.g. no train time): query prints null, not NaN
    path = tmp_path / "t.csv"
    path.write_text(f"index,arch,cifar10_valid,cifar10_test,cifar10_train_s\n"
                    f"0,{ARCHS[0]},90,nan,\n1,{ARCHS[1]},80,85,100\n")
    assert nb201.main(["query", "--benchmark", str(path), ARCHS[0]]) == 0
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in {out}"))
    assert result["cifar10_test"] is None and result["cifar10_train_s"] is None
    assert result["rank_cifar10_test"] is None and result["rank_cifar10_valid"] == 1
    assert list(csv.reader(path.open()))[0][0] == "index"
