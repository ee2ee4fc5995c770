"""The `benchmark` evaluator: a candidate's score is a table lookup (NAS-Bench-201).

The metric the search sees (`metric`, e.g. `cifar10_valid`) and the one reported
(`report`, e.g. `cifar10_test`) are separate, as the benchmark's protocol asks: a search that
selects on test accuracy would report an optimistic number. Free to query; each lookup counts
as one evaluation of the budget, and costs (for a budget in seconds, as the benchmark's paper
simulates one) the training time the table lists for the metric's data set
(`<dataset>_train_s`, e.g. `cifar10_train_s`).

A table with a gap (an empty, NaN or infinite cell) in a column the run uses, the metric, the
reported column and, under a time budget, the training times (which must also be above 0, or
the budget would never be spent), is refused here, before anything runs: one UserError naming
the file, the row's line, its arch and the column. Gaps in other columns are allowed.
"""

from __future__ import annotations

import math

from darts.benchmarks.nb201 import BenchmarkTable
from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.spaces.nb201 import NB201Arch


class BenchmarkEvaluator:
    def __init__(self, table: BenchmarkTable, metric: str = "cifar10_valid",
                 report: str = "cifar10_test", *, budget_seconds: float | bool | None = None):
        """`budget_seconds`: true (a number of seconds, or True) where the run's budget is in
        training seconds: then the table must list a training time above 0 for every row."""
        for flag, name in (("--metric", metric), ("--report", report)):
            if name not in table.metrics:
                raise UserError(f"{flag} {name}: {table.path} has no such column; it has "
                                f"{', '.join(table.metrics)}")
        self.table, self.metric, self.report = table, metric, report
        # what a query would have cost: the training time of the metric's data set, if listed
        column = f"{metric.rsplit('_', 1)[0]}_train_s"
        self.time_column = column if column in table.metrics else None
        table.require(metric, "--metric")
        if report != metric:
            table.require(report, "--report")
        if budget_seconds:
            if self.time_column is None:
                raise UserError(f"--budget_seconds: {table.path} lists no training time for "
                                f"--metric {metric} (a column {column}); give --budget instead")
            table.require_times(self.time_column)

    def __call__(self, arch: NB201Arch) -> Evaluation:
        row = self.table.lookup(arch)
        if row is None:
            raise UserError(f"{arch} is not in {self.table.path}: the benchmark evaluator needs "
                            f"a table of the whole space")
        cost = row[self.time_column] if self.time_column else 0.0
        return Evaluation(row[self.metric], row[self.report], cost if math.isfinite(cost) else 0.0)
