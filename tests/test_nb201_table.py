"""NAS-Bench-201 tables: the CSV reader, scoring and ranks, conversion from nats_bench's API,
the synthetic table's shape and the command line. No benchmark file is downloaded."""

import csv
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from darts.benchmarks import nb201
from darts.benchmarks.nb201 import BenchmarkTable, convert, synthetic_table
from darts.errors import UserError
from darts.spaces.nb201 import EXAMPLE, NB201_OPS, NB201Arch

A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
B = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
C = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def tiny(tmp_path):
    return write(tmp_path / "t.csv", f"index,arch,cifar10_valid,cifar10_test\n"
                                     f"7,{A},91.5,94.0\n3,{B},40.0,54.3\n,{C},10.0,10.0\n"
                                     f"9,{EXAMPLE},88.0,\n")


def test_a_table_reads_and_scores_a_cell(tiny):
    table = BenchmarkTable.load(tiny)
    assert len(table) == 4 and table.metrics == ["cifar10_valid", "cifar10_test"]
    assert table.lookup(NB201Arch.from_string(B)) == {"cifar10_valid": 40.0, "cifar10_test": 54.3}
    # ranks by hand: by test accuracy A (94.0) > B (54.3) > C (10.0); EXAMPLE has no test value
    assert [table.rank(x, "cifar10_test") for x in (A, B, C, EXAMPLE)] == [1, 2, 3, None]
    assert table.rank(EXAMPLE, "cifar10_valid") == 2
    score = table.score(NB201Arch.from_string(B))
    assert score == {"arch": B, "index": 3, "cifar10_valid": 40.0, "cifar10_test": 54.3,
                     "rank_cifar10_valid": 3, "rank_cifar10_test": 2, "cells": 4}
    assert "index" not in table.score(NB201Arch.from_string(C))
    missing = NB201Arch(("nor_conv_1x1",) * 6)
    assert table.lookup(missing) is None and table.score(missing) == {
        "arch": missing.to_string(), "in_table": False}


@pytest.mark.parametrize("content, message", [
    ("cifar10_test\n94.0\n", "header with an 'arch' column"),
    (f"arch,cifar10_test\n{A},high\n", "line 2: cifar10_test is 'high', not a number"),
    (f"arch,cifar10_test\n{A}\n", "line 2: 1 fields, the header has 2"),
    (f"arch,cifar10_test\n{A},1\n{A},2\n", "line 3: " + A + " is listed twice"),
    ("arch,cifar10_test\n|conv~0|,1\n", "line 2: arch '|conv~0|'"),
    (f"arch,index,cifar10_test\n{A},x,1\n", "index is 'x', not an integer"),
    ("arch,arch\n", "named twice"),
    ("arch,cifar10_test\n", "no rows"),
    (b"\x80\x03}q\x00.", "not a CSV text file"),
])
def test_a_malformed_table_is_one_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match="^--benchmark .*bad.csv") as info:
        BenchmarkTable.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="no such file"):
        BenchmarkTable.load(tmp_path / "absent.csv")
    with pytest.raises(UserError, match="a folder"):
        BenchmarkTable.load(tmp_path)


class FakeTopologyAPI:
    """What nats_bench.create(path, 'tss') answers, for three cells (its method names and
    keys; accuracies made up)."""

    archs = [A, B, EXAMPLE]

    def __len__(self):
        return len(self.archs)

    def arch(self, index):
        return self.archs[index]

    def get_more_info(self, index, dataset, hp="12", is_random=True):
        assert hp == "200" and is_random is False  # the 200-epoch schedule, mean over seeds
        base = {"cifar10-valid": 90, "cifar10": 93, "cifar100": 70, "ImageNet16-120": 40}[dataset]
        return {"valid-accuracy": base - index - 0.5, "test-accuracy": base - index,
                "train-all-time": 1000.0 + index}

    def get_cost_info(self, index, dataset, hp="12"):
        return {"params": 1.5 - index, "flops": 200.0 - index, "latency": 0.01}


def test_convert_writes_every_metric_of_the_api(tmp_path):
    out = tmp_path / "nb201.csv"
    assert convert(FakeTopologyAPI(), out) == 3
    rows = list(csv.DictReader(out.open()))
    assert [r["arch"] for r in rows] == FakeTopologyAPI.archs
    assert rows[1]["index"] == "1"
    assert float(rows[1]["cifar10_valid"]) == 88.5 and float(rows[1]["cifar10_test"]) == 92.0
    assert float(rows[2]["ImageNet16-120_test"]) == 38.0
    assert float(rows[0]["cifar10_params_m"]) == 1.5 and float(rows[2]["cifar10_train_s"]) == 1002.0
    table = BenchmarkTable.load(out)
    assert table.indices[B] == 1 and table.rank(A, "cifar100_test") == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_convert_without_nats_bench_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nats_bench", None)
    with pytest.raises(UserError, match="pip install nats_bench"):
        nb201._open_official(str(tmp_path))


def test_the_synthetic_table_has_the_benchmarks_shape(tmp_path):
    table = BenchmarkTable.load(synthetic_table(tmp_path / "s.csv", seed=0))
    assert len(table) == len(NB201_OPS) ** 6
    test = sorted(r["cifar10_test"] for r in table.rows.values())
    best = max(table.rows, key=lambda a: table.rows[a]["cifar10_test"])
    assert table.rank(best, "cifar10_test") == 1 and test[-1] > test[-2]  # one optimum
    assert table.lookup(C)["cifar10_test"] == 10.0  # all-none: chance
    assert table.rank(B, "cifar10_test") > 0.85 * len(table)  # all-skip: among the worst
    median = test[len(test) // 2]
    assert 80 < median < 90 and sum(t > median + 8 for t in test) < 0.01 * len(test)


def test_query_prints_the_row_as_json(tiny):
    env = {"PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "darts.benchmarks.nb201", "query", "--benchmark", str(tiny), A],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rank_cifar10_test"] == 1
    bad = subprocess.run([sys.executable, "-m", "darts.benchmarks.nb201", "query", "--benchmark", str(tiny),
                          "|nor_conv_1x1~0|"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "expected 3" in bad.stderr


# Fuzzing: any text as an arch string or as a table gives a result or the project's own error.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PIECES = st.sampled_from(["|", "+", "~", "0", "1", "2", "3", "none", "skip_connect",
                          "nor_conv_3x3", "avg_pool_3x3", ",", "\n", "x", " ", "\x00", "é"])


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=80), st.lists(PIECES, max_size=30).map("".join)))
def test_any_arch_string_parses_or_is_an_arch_string_error(text):
    from darts.spaces.nb201 import ArchStringError
    try:
        arch = NB201Arch.from_string(text)
    except ArchStringError as e:
        assert "\n" not in str(e).replace(repr(text), "")
    else:
        assert NB201Arch.from_string(arch.to_string()) == arch


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.one_of(PIECES, st.just(A), st.just("arch"), st.just("9.5")),
                          max_size=40).map(lambda p: "".join(p).encode())))
def test_any_table_file_loads_or_is_a_user_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "t.csv"
    path.write_bytes(content)
    try:
        table = BenchmarkTable.load(path)
    except UserError:
        return
    assert len(table) >= 1 and all(isinstance(v, float) for r in table.rows.values() for v in r.values())


@pytest.mark.parametrize("content", [b"\r\x00", b"arch,cifar10_test\r\x00x",
                                     b'arch,x\n"' + b"a" * 140_000 + b'",1\n'],
                         ids=["lone-cr", "cr-in-row", "over-long-field"])
def test_a_file_the_csv_reader_refuses_is_a_user_error(tmp_path, content):
    # A lone carriage return once escaped as csv.Error; an over-long field still raises one.
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match="t.csv"):
        BenchmarkTable.load(path)
