"""python -m darts.compare: every strategy on every seed, one budget, one table."""

import csv
import math

import pytest

from darts import compare
from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return synthetic_table(tmp_path_factory.mktemp("cmp") / "table.csv", seed=0)


def test_the_comparison_writes_summary_curves_table_and_plot(tmp_path, table_path, capsys):
    out = tmp_path / "out"
    code = compare.main(["--benchmark", str(table_path), "--strategies", "random,evolution",
                         "--seeds", "3", "--budget", "30", "--out", str(out)])
    assert code == 0
    table = BenchmarkTable.load(table_path)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        (s, str(k)) for s in ("random", "evolution") for k in range(3)]
    for r in rows:  # each run's best is the table's row, its rank the table's
        row = table.lookup(r["best_arch"])
        assert float(r["best_score"]) == row["cifar10_valid"]
        assert float(r["best_reported"]) == row["cifar10_test"]
        assert int(r["rank"]) == table.rank(r["best_arch"], "cifar10_test")
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert len(curves) == 6 * 30
    for s in ("random", "evolution"):
        for k in range(3):
            best = [float(c["best_score"]) for c in curves
                    if c["strategy"] == s and c["seed"] == str(k)]
            assert best == sorted(best) and len(best) == 30
            final = next(r for r in rows if r["strategy"] == s and r["seed"] == str(k))
            assert best[-1] == float(final["best_score"])
    md = (out / "summary.md").read_text()
    assert "| random |" in md and "| evolution |" in md
    assert (out / "best_so_far.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written to" in capsys.readouterr().out


def test_the_summary_table_is_computed_from_the_runs():
    runs = [{"strategy": "random", "best_reported": v, "rank": k, "optimum": False}
            for v, k in ((90.0, 10), (92.0, 30))]
    runs += [{"strategy": "ga", "best_reported": v, "rank": k, "optimum": k == 1}
             for v, k in ((93.0, 1), (94.0, 3))]
    text = compare.summary_table(runs, "acc")
    assert f"| random | 91.00 ± {math.sqrt(2):.2f} | 20 | 0/2 |  |" in text
    assert f"| ga | 93.50 ± {math.sqrt(0.5):.2f} | 2 | 1/2 | +2.50 |" in text


def test_a_time_budget_is_the_tables_training_seconds(tmp_path, table_path):
    runs = compare.compare(BenchmarkTable.load(table_path), ["random"], 2, 0,
                           budget_seconds=100_000.0)
    assert all(r["evaluations"] >= 100_000 / max(row["cifar10_train_s"] for row in
                                                 BenchmarkTable.load(table_path).rows.values())
               for r in runs)


@pytest.mark.parametrize("args, message", [
    (["--strategies", "random,dart"], "--strategies random,dart: choose from"),
    (["--strategies", "random,random"], "listed twice"),
    (["--metric", "x"], "--metric x: .* no such column"),
    (["--seeds", "0"], "at least 1"),
])
def test_a_wrong_flag_is_one_line(tmp_path, table_path, capsys, args, message):
    import re
    code = compare.main(["--benchmark", str(table_path), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "o").exists()
