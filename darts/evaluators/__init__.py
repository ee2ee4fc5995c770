"""How a candidate is scored, apart from who proposed it.

`EVALUATORS` maps `--evaluator NAME` to an `EvaluatorKind`: `check(cfg, space)` refuses the
combinations it cannot score (before anything is written), and `build(cfg, space, table,
run_dir, logger)` makes the callable that turns a candidate into an `Evaluation`. A plugin adds
its own with `register_evaluator(name, EvaluatorKind(build, check))`.

    benchmark   a NAS-Bench-201 table lookup (darts.evaluators.benchmark)
    oneshot     a supernet trained once by uniform single paths (darts.evaluators.oneshot)
    train       training from scratch, in parallel processes (darts.evaluators.training)
    proxy       zero-cost proxies of the untrained network (darts.evaluators.proxy)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.registry import Registry


def _no_check(cfg: Any, space: Any) -> None:
    return None


@dataclass(frozen=True)
class EvaluatorKind:
    build: Callable[[Any, Any, Any, Path, Any], Callable[[Any], Evaluation]]
    check: Callable[[Any, Any], None] = _no_check


def _check_benchmark(cfg: Any, space: Any) -> None:
    if not getattr(space, "SCORED_BY_TABLE", False):
        raise UserError(f"--evaluator benchmark: no benchmark table scores --space "
                        f"{cfg.space}; use --evaluator train or oneshot")
    if not cfg.benchmark:
        raise UserError("--evaluator benchmark needs --benchmark TABLE (python -m darts.benchmarks.nb201 "
                        "convert, or python -m darts.benchmarks.nb201 synthetic for a made-up one)")


def _benchmark(cfg: Any, space: Any, table: Any, run_dir: Path, logger: Any):
    from darts.evaluators.benchmark import BenchmarkEvaluator
    return BenchmarkEvaluator(table, cfg.metric, cfg.report, budget_seconds=cfg.budget_seconds)


def _check_oneshot(cfg: Any, space: Any) -> None:
    if not hasattr(space, "supernet"):
        raise UserError(f"--evaluator oneshot: the {cfg.space} space's candidates share no "
                        f"supernet; use --evaluator train")


def _oneshot(cfg: Any, space: Any, table: Any, run_dir: Path, logger: Any):
    from darts.evaluators.oneshot import from_search_config
    return from_search_config(cfg, space, run_dir, logger)


def _train(cfg: Any, space: Any, table: Any, run_dir: Path, logger: Any):
    from darts.evaluators.training import from_search_config
    return from_search_config(cfg, space, logger, run_dir=run_dir)


def _check_proxy(cfg: Any, space: Any) -> None:
    from darts.evaluators.proxy import check
    check(cfg, space)


def _proxy(cfg: Any, space: Any, table: Any, run_dir: Path, logger: Any):
    from darts.evaluators.proxy import build
    return build(cfg, space, table, run_dir, logger)


EVALUATORS = Registry("evaluator", "--evaluator", {
    "benchmark": EvaluatorKind(_benchmark, _check_benchmark),
    "oneshot": EvaluatorKind(_oneshot, _check_oneshot),
    "train": EvaluatorKind(_train),
    "proxy": EvaluatorKind(_proxy, _check_proxy),
}.items())


def register_evaluator(name: str, kind: EvaluatorKind, *, overwrite: bool = False) -> EvaluatorKind:
    return EVALUATORS.register(name, kind, overwrite=overwrite)
