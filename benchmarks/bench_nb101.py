"""NAS-Bench-101 tables: what a query costs, what loading and converting cost.

    python benchmarks/bench_nb101.py --cells 20000 --json benchmarks/results/cpu-amd-epyc/nb101.json

Measured in one process on a synthetic table of `--cells` cells (darts.benchmarks.nb101
synthetic: made-up numbers of the benchmark's shape) and on an official-format file of
`--records` records written here (darts.benchmarks.tfrecord):

- load: `BenchmarkTable.load` of the CSV (seconds, and per row);
- query: the benchmark evaluator's lookup of a candidate whose hash is already known (a
  strategy's candidate after its first query), of a fresh candidate (the hash computed), and
  of a candidate's text (read, then hashed: what `darts.compare` does for ranks);
- convert: records per second through `convert` (CRC checks, JSON, protobuf, hash check).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from darts.benchmarks import nb101 as tables  # noqa: E402
from darts.benchmarks.nb201 import BenchmarkTable  # noqa: E402
from darts.benchmarks.tfrecord import encode_model_metrics, write_records  # noqa: E402
from darts.evaluators.benchmark import BenchmarkEvaluator  # noqa: E402
from darts.spaces import nb101  # noqa: E402


def per_call(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def official_file(path: Path, cells: list[nb101.NB101Cell]) -> int:
    """Three 108-epoch records per cell, in the official layout."""
    def record(cell, k):
        final = {"current_epoch": 108.0, "training_time": 1700.0 + k,
                 "train_accuracy": 1.0, "validation_accuracy": 0.9, "test_accuracy": 0.89}
        blob = encode_model_metrics({"evaluation_data": [{"current_epoch": 0.0},
                                                         {"current_epoch": 54.0}, final],
                                     "trainable_parameters": 1000, "total_time": 1.0})
        return json.dumps([cell.hash, 108, "".join(str(v) for r in cell.matrix for v in r),
                           ",".join(cell.ops), base64.b64encode(blob).decode()]).encode()
    return write_records(path, (record(c, k) for c in cells for k in range(3)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "synthetic101.csv"
        tables.synthetic_table(csv_path, cells=args.cells, seed=0)
        start = time.perf_counter()
        table = BenchmarkTable.load(csv_path, nb101)
        load_s = time.perf_counter() - start
        evaluator = BenchmarkEvaluator(table, "cifar10_valid", "cifar10_test")
        space = nb101.for_table(table)
        rng = random.Random(0)
        known = [space.sample(rng) for _ in range(args.queries)]
        for cell in known:
            _ = cell.hash
        fresh = [nb101.parse(c.to_string()) for c in known]  # same cells, hashes not computed
        texts = [c.to_string() for c in known]
        query = {"known_hash_us": 1e6 * per_call(evaluator, known),
                 "fresh_cell_us": 1e6 * per_call(evaluator, fresh),
                 "text_us": 1e6 * per_call(lambda t: table.lookup(t), texts)}
        records = Path(tmp) / "official.tfrecord"
        cells = [nb101.sample(rng) for _ in range(args.records // 3)]
        n = official_file(records, cells)
        start = time.perf_counter()
        tables.convert(records, Path(tmp) / "converted.csv")
        convert_s = time.perf_counter() - start
    result = {"cells": args.cells, "load_s": load_s, "load_us_per_row": 1e6 * load_s / args.cells,
              "queries": args.queries, "query": query, "convert_records": n,
              "convert_s": convert_s, "convert_records_per_s": n / convert_s,
              "official_only108_records": 423_624 * 3,
              "projected_only108_convert_min": 423_624 * 3 / (n / convert_s) / 60,
              "note": "synthetic table: made-up numbers of NAS-Bench-101's shape; records written "
                      "here in the official format"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
