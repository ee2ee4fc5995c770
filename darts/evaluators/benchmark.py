"""The `benchmark` evaluator: a candidate's score is a table lookup (NAS-Bench-201).

The metric the search sees (`metric`, e.g. `cifar10_valid`) and the one reported
(`report`, e.g. `cifar10_test`) are separate, as the benchmark's protocol asks: a search that
selects on test accuracy would report an optimistic number. Free to query; each lookup counts
as one evaluation of the budget.
"""

from __future__ import annotations

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.nb201 import BenchmarkTable
from darts.spaces.nb201 import NB201Arch


class BenchmarkEvaluator:
    def __init__(self, table: BenchmarkTable, metric: str = "cifar10_valid",
                 report: str = "cifar10_test"):
        for flag, name in (("--metric", metric), ("--report", report)):
            if name not in table.metrics:
                raise UserError(f"{flag} {name}: {table.path} has no such column; it has "
                                f"{', '.join(table.metrics)}")
        self.table, self.metric, self.report = table, metric, report

    def __call__(self, arch: NB201Arch) -> Evaluation:
        row = self.table.lookup(arch)
        if row is None:
            raise UserError(f"{arch} is not in {self.table.path}: the benchmark evaluator needs "
                            f"a table of the whole space")
        return Evaluation(row[self.metric], row[self.report])
