"""NAS-Bench-101 tables: convert the official file once, without TensorFlow; then read and
query a plain CSV, as NAS-Bench-201's (darts.benchmarks.nb201).

    python -m darts.nb101 convert --from nasbench_only108.tfrecord --out nb101.csv
    python -m darts.nb101 info --matrix '[[0,1,1],[0,0,1],[0,0,0]]' --ops input,conv3x3-bn-relu,output
    python -m darts.nb101 query --benchmark nb101.csv '0100110/0010000/...:conv3x3-bn-relu,...'
    python -m darts.nb101 synthetic --out synthetic101.csv      # made-up numbers, the table's shape

The official files (Ying et al., ICML 2019; `nasbench_only108.tfrecord`, 108 epochs only, or
`nasbench_full.tfrecord`, 4, 12, 36 and 108 epochs) are TFRecord files whose every record is
one training run: JSON `[hash, epochs, adjacency, ops, base64 ModelMetrics protobuf]`
(darts.benchmarks.tfrecord reads them, CRCs checked). `convert` writes one row per cell:

    hash              the benchmark's graph hash (the row's key; darts.spaces.nb101.spec_hash,
                      checked against every record)
    arch              the cell's text (darts.spaces.nb101)
    cifar10_params_m  trainable parameters of the benchmark's network (millions)
    cifar10_train, cifar10_valid, cifar10_test   accuracy (%) on the 10,000 fixed training
                      images, the validation and the test split, at the end of training, the
                      mean over the record's runs (three per budget)
    cifar10_train_s   training time (seconds), the mean over the runs

for the 108-epoch budget; for the other budgets of the full file the same columns with
`_e4`, `_e12`, `_e36` appended (e.g. `cifar10_valid_e12`). The searched column is
`cifar10_valid` and the reported one `cifar10_test`, as for NAS-Bench-201.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from darts.benchmarks.nb201 import BenchmarkTable, _csv_file
from darts.errors import InvalidCandidate, UserError
from darts.spaces import nb101
from darts.train.cli import Parser, command, report

BUDGETS = (4, 12, 36, 108)  # the epoch budgets of the full file; 108 is the default columns
ACCURACIES = {"cifar10_train": "train_accuracy", "cifar10_valid": "validation_accuracy",
              "cifar10_test": "test_accuracy"}


def columns(budget: int) -> list[str]:
    """The metric columns of one epoch budget."""
    suffix = "" if budget == 108 else f"_e{budget}"
    return [f"{c}{suffix}" for c in (*ACCURACIES, "cifar10_train_s")]


class _Cell:
    """What the records of one cell add up to: its spec, parameters, per budget the sums."""

    def __init__(self, text: str, params: int):
        self.text, self.params = text, params
        self.sums: dict[int, list[float]] = {}  # budget -> [train, valid, test, time, runs]

    def add(self, epochs: int, final: dict[str, float]) -> None:
        s = self.sums.setdefault(epochs, [0.0, 0.0, 0.0, 0.0, 0])
        for k, key in enumerate(ACCURACIES.values()):
            s[k] += 100.0 * final[key]
        s[3] += final["training_time"]
        s[4] += 1

    def row(self, budgets: Iterable[int]) -> list[Any]:
        out: list[Any] = []
        for b in budgets:
            s = self.sums.get(b)
            out += [round(v / s[4], 6) for v in s[:4]] if s else [""] * 4
        return out


def _final(metrics: dict[str, Any], where: str) -> dict[str, float]:
    """The evaluation at the end of training (nasbench's `evaluation_data[2]`)."""
    data = metrics.get("evaluation_data") or []
    if len(data) < 3:
        raise UserError(f"{where}: {len(data)} evaluations in the run's metrics; the "
                        f"benchmark's records hold 3 (start, halfway, end)")
    final = data[2]
    missing = [k for k in (*ACCURACIES.values(), "training_time")
               if not isinstance(final.get(k), (int, float))]
    if missing:
        raise UserError(f"{where}: the final evaluation lacks {', '.join(missing)}")
    return final


def read_official(path: str | Path) -> tuple[dict[str, _Cell], list[int]]:
    """Every cell of an official file, its runs added up; the budgets seen, in order.
    Each record's hash is checked against the cell's own (`spec_hash`)."""
    from darts.benchmarks.tfrecord import iter_records, parse_row

    cells: dict[str, _Cell] = {}
    budgets: set[int] = set()
    for number, payload in enumerate(iter_records(path), start=1):
        where = f"--from {path}, record {number}"
        row = parse_row(payload, where)
        cell = cells.get(row.hash)
        if cell is None:
            try:
                spec = nb101.NB101Cell.of(row.matrix, row.ops, where=where)
            except InvalidCandidate as e:
                raise UserError(str(e)) from None
            if spec.hash != row.hash:
                raise UserError(f"{where}: the record's hash {row.hash} is not its cell's "
                                f"{spec.hash}; the file is not NAS-Bench-101's")
            params = row.metrics.get("trainable_parameters")
            cell = cells[row.hash] = _Cell(spec.to_string(), int(params or 0))
        cell.add(row.epochs, _final(row.metrics, where))
        budgets.add(row.epochs)
    unknown = budgets - set(BUDGETS)
    if unknown:
        raise UserError(f"--from {path}: epoch budgets {sorted(unknown)}; the benchmark's are "
                        f"{', '.join(map(str, BUDGETS))}")
    return cells, [b for b in (108, 4, 12, 36) if b in budgets]


def write_table(cells: dict[str, _Cell], budgets: list[int], out: str | Path) -> int:
    """The CSV table of `cells` (atomic: a failure leaves no partial file)."""
    header = ["hash", "arch", "cifar10_params_m"] + [c for b in budgets for c in columns(b)]
    with _csv_file(out) as writer:
        writer.writerow(header)
        for key in sorted(cells):
            cell = cells[key]
            writer.writerow([key, cell.text, cell.params / 1e6, *cell.row(budgets)])
    return len(cells)


def convert(source: str | Path, out: str | Path) -> int:
    """`convert`: the official file at `source` -> the CSV table `out`; the rows written."""
    if not Path(source).is_file():
        raise UserError(f"--from {source}: no such file (download nasbench_only108.tfrecord "
                        f"or nasbench_full.tfrecord: docs/nb101.md)")
    cells, budgets = read_official(source)
    if not cells:
        raise UserError(f"--from {source}: no records; nothing was written")
    return write_table(cells, budgets, out)


# -- a made-up table of the benchmark's shape -----------------------------------------------
def _features(cell: nb101.NB101Cell) -> tuple[int, int, int, int, int]:
    ops = cell.ops[1:-1]
    depth = max((len(p) for p in nb101.paths(cell)), default=0)
    width = sum(cell.matrix[v][-1] for v in range(len(cell.matrix) - 1))
    return ops.count(nb101.CONV3X3), ops.count(nb101.CONV1X1), ops.count(nb101.MAXPOOL), depth, width


def synthetic_scores(cell: nb101.NB101Cell, seed: int = 0) -> dict[str, float]:
    """Made-up metrics of a cell, NAS-Bench-101's shape (nine in ten between 90 and 94 %, a
    tail of weak ones, more 3x3 convolutions and depth better up to a point, noise fixed by
    the hash): not the benchmark's numbers."""
    n3, n1, pool, depth, width = _features(cell)
    rng = random.Random(f"{seed}:{cell.hash}")
    strength = 0.55 * n3 + 0.25 * n1 - 0.15 * pool + 0.35 * min(depth, 4) + 0.1 * width
    valid = 95.2 - 7.5 * math.exp(-0.42 * strength) + rng.gauss(0.0, 0.35)
    if n3 + n1 == 0:  # only pooling: the projections alone learn
        valid -= 12.0 + 4.0 * rng.random()
    valid = min(valid, 95.1)
    test = valid - 0.6 + rng.gauss(0.0, 0.2)
    time_s = 600.0 + 420.0 * n3 + 160.0 * n1 + 60.0 * pool + 40.0 * cell.edges
    row = {"cifar10_train": min(100.0, valid + 5.5), "cifar10_valid": valid,
           "cifar10_test": test, "cifar10_train_s": time_s}
    base = list(row.values())
    for budget, factor in ((4, 0.80), (12, 0.91), (36, 0.97)):
        for column, value in zip(columns(budget), base, strict=True):
            row[column] = value * (budget / 108 if column.endswith(f"_s_e{budget}") else factor)
    return row


def synthetic_table(out: str | Path, cells: int = 20_000, seed: int = 0) -> int:
    """`cells` distinct cells drawn as the benchmark's random search draws them, with
    made-up metrics (`synthetic_scores`) and their true parameter counts."""
    rng = random.Random(seed)
    chosen: dict[str, nb101.NB101Cell] = {}
    while len(chosen) < cells:
        cell = nb101.sample(rng)
        chosen.setdefault(cell.hash, cell)
    header = ["hash", "arch", "cifar10_params_m"] + [c for b in (108, 4, 12, 36)
                                                      for c in columns(b)]
    with _csv_file(out) as writer:
        writer.writerow(header)
        for key in sorted(chosen):
            cell = chosen[key]
            scores = synthetic_scores(cell, seed)
            writer.writerow([key, cell.to_string(), nb101.parameter_count(cell) / 1e6,
                             *(round(scores[c], 4) for c in header[3:])])
    return len(chosen)


# -- info and query --------------------------------------------------------------------------
def info(matrix_text: str, ops_text: str) -> dict[str, Any]:
    """`info`: the pruned spec of a matrix and ops, its text, hash and parameter count, and
    whether it is a cell of the space (a malformed input is one UserError)."""
    try:
        matrix = json.loads(matrix_text)
    except ValueError:
        raise nb101.SpecError(f"--matrix {matrix_text[:60]!r}: not JSON; give rows of 0/1, "
                              f"e.g. '[[0,1,1],[0,0,1],[0,0,0]]'") from None
    ops = [op.strip() for op in ops_text.split(",")]
    rows, ops = nb101._check_shape(matrix, ops, "--matrix/--ops")
    pruned = nb101.prune(rows, ops)
    reason = nb101.why_invalid(pruned)
    out: dict[str, Any] = {"valid": reason is None}
    if pruned is not None:
        out.update(matrix=[list(r) for r in pruned[0]], ops=list(pruned[1]))
    if reason is not None:
        out["why_invalid"] = reason
        return out
    cell = nb101.NB101Cell(pruned[0], pruned[1], (rows, ops))
    out.update(arch=cell.to_string(), hash=cell.hash, edges=cell.edges,
               parameters=nb101.parameter_count(cell))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=" ".join(command("python -m darts.nb101", "darts-nb101")),
                    description="NAS-Bench-101: convert the official file, describe a cell, "
                                "query a table.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="the official .tfrecord file -> CSV table")
    conv.add_argument("--from", dest="source", required=True,
                      help="nasbench_only108.tfrecord or nasbench_full.tfrecord")
    conv.add_argument("--out", required=True, help="the CSV table to write")
    about = sub.add_parser("info", help="a spec's pruned form, text, hash and parameters (JSON)")
    about.add_argument("--matrix", required=True, help="the adjacency matrix as JSON rows")
    about.add_argument("--ops", required=True, help="the ops, comma-separated, input first")
    query = sub.add_parser("query", help="print a cell's row as JSON")
    query.add_argument("--benchmark", required=True, help="a CSV table")
    query.add_argument("arch", help="a cell's text (darts.spaces.nb101)")
    synth = sub.add_parser("synthetic", help="write a made-up table of the space's shape "
                                             "(not the benchmark's numbers), for trying --benchmark")
    synth.add_argument("--out", required=True, help="the CSV table to write")
    synth.add_argument("--cells", type=int, default=20_000, help="distinct cells to list")
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(f"{convert(args.source, args.out)} cells written to {args.out}")
        elif args.command == "info":
            print(json.dumps(info(args.matrix, args.ops)))
        elif args.command == "synthetic":
            if args.cells < 1:
                raise UserError("--cells must be at least 1")
            n = synthetic_table(args.out, args.cells, args.seed)
            print(f"a synthetic table of {n} cells (not NAS-Bench-101's numbers) written to "
                  f"{args.out}")
        else:
            table = BenchmarkTable.load(args.benchmark, nb101)
            print(json.dumps(table.score(nb101.parse(args.arch))))
    except UserError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
