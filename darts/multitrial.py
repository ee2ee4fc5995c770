"""A multi-trial search run: a strategy proposes candidates, an evaluator scores them.

`train_search.py --strategy evolution --space nb201 --evaluator benchmark --benchmark t.csv`
runs here instead of the DARTS search. The run directory holds what a DARTS search's holds,
for a sequence of evaluations instead of epochs:

    config.json     the settings (`--resume RUN_DIR` continues with them)
    log.txt         one line per evaluation, with the best so far and the ETA
    events.*        TensorBoard: search/score, search/best_score, search/reported,
                    search/best_reported and search/cost_s (cumulative) per evaluation
    history.jsonl   one line per evaluated candidate: n, candidate, score, reported, cost, time
    result.json     best_arch, best_score, best_reported, evaluations, cost_s, and with a
                    NAS-Bench-201 table the best's rank and the table's optimum
    arch.json / genotype.json / cnn.json   the best candidate, as train_final.py takes it
    *.png           its picture

A history line is written (and synced) as soon as its candidate is scored; a resumed run
replays the history through the strategy (asking again, telling the recorded scores, no
evaluation repeated) and ends with the same history as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from darts import plugins
from darts.benchmarks.nb201 import BenchmarkTable
from darts.errors import UserError
from darts.evaluators import EVALUATORS
from darts.spaces import get_space, to_text
from darts.strategies import STRATEGIES, Strategy
from darts.strategies import run as run_strategy
from darts.train.config import config_from_dict, to_dict
from darts.train.files import atomic_open, save_json, write_error
from darts.train.rundir import RunClaim, claim_existing, claim_new
from darts.train.tb import RunLogger, draw_cells, format_duration

HISTORY = "history.jsonl"
ASKS = "asks.jsonl"  # an asynchronous run's asks, in order
# What a multi-trial run refuses rather than ignore: they set the gradient search's alphas.
GRADIENT_ONLY = ("method", "mixing", "regularizer", "order", "hessian",
                 "partial_channels", "checkpoint_cells")


def evaluator_name(cfg) -> str:
    """--evaluator, or its default: benchmark where a table is given, else train."""
    return cfg.evaluator or ("benchmark" if cfg.benchmark else "train")


def is_multitrial_run(resume: str | os.PathLike) -> bool:
    path = Path(resume)
    run_dir = path if path.is_dir() else path.parent
    return (run_dir / HISTORY).exists() or (
        not (run_dir / "checkpoint.pt").exists() and _saved_strategy(run_dir) not in (None, "darts"))


def _saved_strategy(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "config.json").read_text()).get("strategy")
    except (OSError, ValueError, AttributeError):
        return None


def make_strategy(cfg, space: ModuleType) -> Strategy:
    """The strategy of `cfg.strategy` with its flags (None: the strategy's own default)."""
    name = cfg.strategy
    cls = STRATEGIES.lookup(name)
    try:
        return cls(space, seed=cfg.seed, **cls.options(cfg))
    except ValueError as e:
        raise UserError(f"--strategy {name}: {e}") from None


def validate(cfg) -> Any:
    """The checks of a multi-trial run's flags (before anything is written); returns the
    space."""
    STRATEGIES.lookup(cfg.strategy)
    space = get_space(cfg.space)
    if hasattr(space, "for_config"):  # e.g. the darts space over --ops
        space = space.for_config(cfg)
    evaluator = EVALUATORS.lookup(evaluator_name(cfg))
    if cfg.budget < 1:
        raise UserError(f"--budget {cfg.budget}: must be at least 1 evaluation")
    if cfg.budget_seconds < 0:
        raise UserError(f"--budget_seconds {cfg.budget_seconds}: must be 0 (off) or more")
    from darts.methods.pieces import refuse_with_multitrial
    refuse_with_multitrial(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    if cfg.warm_start < 0:
        raise UserError(f"--warm_start {cfg.warm_start}: must be 0 (off) or more")
    if cfg.warm_start and not getattr(STRATEGIES.lookup(cfg.strategy), "warm_startable", False):
        able = ", ".join(n for n, c in STRATEGIES.items() if getattr(c, "warm_startable", False))
        raise UserError(f"--warm_start: --strategy {cfg.strategy} starts at random; the "
                        f"strategies that take a warm start: {able}")
    if cfg.warm_start:
        from darts.evaluators.proxy import parse_weights

        parse_weights(cfg.proxy)
        if not hasattr(space, "network"):
            raise UserError(f"--warm_start: the {cfg.space} space builds no network to score")
    for flag in GRADIENT_ONLY:
        if getattr(cfg, flag) != defaults[flag]:
            raise UserError(f"--{flag}: a setting of the gradient search (--strategy darts); "
                            f"--strategy {cfg.strategy} has no alphas. Leave --{flag} out")
    if cfg.ops != defaults["ops"] and not hasattr(space, "for_config"):
        raise UserError(f"--ops: the {cfg.space} space has its own ops; leave --ops out")
    evaluator.check(cfg, space)
    if cfg.executor != "local" and evaluator_name(cfg) != "train":
        raise UserError(f"--executor {cfg.executor}: only the train evaluator's evaluations run "
                        f"elsewhere; --evaluator {evaluator_name(cfg)} scores here (leave "
                        f"--executor out)")
    if cfg.max_pending is not None and cfg.max_pending < 1:
        raise UserError(f"--max_pending {cfg.max_pending}: must be at least 1")
    if _asynchronous(cfg) and cfg.budget_seconds:
        raise UserError("--budget_seconds: an asynchronous run (--max_pending, --executor ray) "
                        "counts evaluations; give --budget")
    if cfg.benchmark and not getattr(space, "SCORED_BY_TABLE", False):
        raise UserError(f"--benchmark: no benchmark table scores --space {cfg.space}")
    return space


class _History:
    """history.jsonl: read (a torn last line from a crash is dropped), appended and synced.
    Every line ends with a newline: a file whose last line lacks one (a torn write, an
    editor) is rewritten whole before anything is appended to it."""

    def __init__(self, path: Path):
        self.path = path

    def read(self, batch: int) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"{self.path}: cannot read it ({e.strerror})") from None
        lines = raw.decode("utf-8", errors="replace").splitlines()
        records = []
        for k, line in enumerate(lines, start=1):
            why = _not_a_record(line, k)
            if why is not None:
                if k == len(lines):  # the line a crash cut short
                    break
                raise UserError(f"{self.path}, line {k}: {why}; the run cannot be resumed from "
                                f"it (restore the line, or delete it and every line after it)")
            records.append(json.loads(line))
        # a crash inside a batch leaves part of it: that batch is evaluated again
        whole = len(records) - len(records) % batch
        if whole != len(lines) or (raw and not raw.endswith(b"\n")):
            self.rewrite(records[:whole])
        return records[:whole]

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        with atomic_open(self.path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
        try:
            with open(self.path, "a+b") as f:
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # never onto an unterminated line
                        line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(self.path, e) from None


def _not_a_record(line: str, n: int) -> str | None:
    """Why `line` (line `n`) is not the history record of evaluation `n`; None if it is."""
    try:
        record = json.loads(line)
    except ValueError as e:
        return f"not one JSON record ({e.msg} at column {e.colno})"
    if not isinstance(record, dict) or record.get("n") != n:
        return f"not the record of evaluation {n}"
    if not isinstance(record.get("candidate"), str):
        return "its candidate is not a string"
    bad = [f for f in ("score", "reported", "cost")
           if not isinstance(record.get(f), (int, float)) or isinstance(record.get(f), bool)
           or not math.isfinite(record[f])]
    return f"its {', '.join(bad)} not a finite number" if bad else None


def _benchmark_result(table: BenchmarkTable | None, space: ModuleType, best: Any,
                      metric: str, report: str) -> dict[str, Any]:
    """The best candidate against the table's ground truth: its rank by the searched and
    the reported metric, and the table's best values."""
    if table is None:
        return {}
    out: dict[str, Any] = {"table": table.path}
    row = table.lookup(best)
    for name in dict.fromkeys((metric, report)):
        if name not in table.metrics:
            continue
        values = [r[name] for r in table.rows.values() if not math.isnan(r[name])]
        out[name] = row[name] if row else None
        out[f"{name}_rank"] = table.rank(best, name)
        out[f"{name}_optimum"] = max(values) if values else None
    out["cells"] = len(table)
    return out


def _retrain_command(cfg, space: Any, run_dir: Path) -> str:
    from darts.train import cli

    args = [*cli.command("python train_final.py", "darts-final"),
            *space.retrain_flags(str(run_dir / space.RESULT_FILE))]
    from darts.search_config import data_args

    if cfg.dataset != "cifar10":
        args += ["--dataset", cfg.dataset]
    return shlex.join(args + data_args(cfg))


def _seconds(cost: float) -> str:
    return f"{cost:.1f}s" if cost < 60 else format_duration(cost)


def run(cfg, *, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs (or, with `resume`, continues) a multi-trial search; returns result.json's dict."""
    from darts.search_config import SearchConfig, resolved

    if resume is not None:
        path = Path(resume)
        run_dir = path if path.is_dir() else path.parent
        try:
            data = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--resume {resume}: cannot read its config.json ({e})") from None
        plugins.load_saved(data, str(run_dir / "config.json"))
        cfg = config_from_dict(SearchConfig, data, where=str(run_dir / "config.json"))
    cfg = resolved(dataclasses.replace(cfg, plugins=plugins.absolute(cfg.plugins)))
    plugins.load(cfg.plugins)
    space = validate(cfg)
    table = BenchmarkTable.load(cfg.benchmark, space) if cfg.benchmark else None
    if table is not None and hasattr(space, "for_table"):  # a NAS-Bench-101 subset table
        space = space.for_table(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.name or f"{cfg.strategy}-{cfg.space}-{evaluator_name(cfg)}-{stamp}"
    claim = (claim_existing(run_dir) if resume is not None
             else claim_new(cfg.save, name, numbered=not cfg.name))
    with claim.held():
        logger = RunLogger(claim.path, tensorboard=cfg.tensorboard, name="search")
        try:
            return _run(cfg, space, table, claim, logger, resumed=resume is not None)
        finally:
            logger.close()


def _run(cfg, space, table, claim: RunClaim, logger, resumed: bool) -> dict[str, Any]:
    run_dir = claim.path
    strategy = make_strategy(cfg, space)
    evaluator = EVALUATORS.lookup(evaluator_name(cfg)).build(cfg, space, table, run_dir, logger)
    # an evaluator that scores several candidates at once (in worker processes) gets them
    batch = (max(1, cfg.workers) if hasattr(evaluator, "evaluate_many")
             and not _asynchronous(cfg) else 1)
    history = _History(run_dir / HISTORY)
    past = history.read(batch) if resumed else []
    warm = _warm_start(cfg, space, run_dir, logger) if cfg.warm_start else []
    if warm:
        strategy.warm_start(warm)
    if not resumed:
        save_json(to_dict(cfg), run_dir / "config.json")
        history.rewrite([])  # the run exists from here on: a failure keeps the directory
        logger.config(to_dict(cfg))
        logger.info("run directory %s", run_dir)
    else:
        logger.info("resumed %s after %d evaluations", run_dir, len(past))
    budget = f"{cfg.budget} evaluations" + (
        f" or {format_duration(cfg.budget_seconds)} of evaluation cost" if cfg.budget_seconds else "")
    logger.info("%s search of the %s space, %s evaluator%s; budget %s; seed %d",
                cfg.strategy, cfg.space, evaluator_name(cfg),
                f" ({cfg.metric}, reporting {cfg.report})" if evaluator_name(cfg) == "benchmark"
                else "", budget, cfg.seed)

    def counts(n: int) -> dict[str, int]:
        """The table's queries (its evaluations) apart from the proxies' evaluations."""
        proxied = len(warm)
        own = getattr(evaluator, "counts", None)
        if own is not None:
            proxied += own().get("proxy_evaluations", 0)
        return {"table_queries": n if evaluator_name(cfg) == "benchmark" else 0,
                "proxy_evaluations": proxied}

    best: dict[str, Any] = {"score": -math.inf}
    for record in past:
        best = _better(best, record)
    spent = [sum(r["cost"] for r in past)]
    start = time.perf_counter()
    done_before = len(past)

    def on_evaluation(record: dict[str, Any]) -> None:
        nonlocal best
        claim.check()
        history.append(record)
        best = _better(best, record)
        spent[0] += record["cost"]
        n = record["n"]
        logger.scalars({"search/score": record["score"], "search/best_score": best["score"],
                        "search/reported": record["reported"],
                        "search/best_reported": best["reported"], "search/cost_s": spent[0]}, n)
        elapsed = time.perf_counter() - start
        eta = elapsed / (n - done_before) * (cfg.budget - n)
        logger.info("[%d/%d] score %.3f reported %.3f cost %s | best %.3f (evaluation %d) | "
                    "ETA %s", n, cfg.budget, record["score"], record["reported"],
                    _seconds(record["cost"]), best["score"], best["n"],
                    format_duration(eta))
        if n % batch == 0 or n == cfg.budget:
            _write_result(cfg, space, table, run_dir, best, n, spent[0], complete=False,
                          counts=counts(n))

    try:
        if _asynchronous(cfg):
            records = _run_async(cfg, strategy, evaluator, past, run_dir, resumed,
                                 on_evaluation, logger, lambda c: to_text(space, c))
        else:
            records = run_strategy(strategy, evaluator, cfg.budget, history=past,
                                   on_evaluation=on_evaluation,
                                   seconds=cfg.budget_seconds or None, batch=batch,
                                   to_text=lambda c: to_text(space, c))
    except ValueError as e:
        if "does not replay" in str(e):
            raise UserError(f"{run_dir}/{HISTORY}: {e} (was the code or the config changed?)") from None
        raise
    finally:
        close = getattr(evaluator, "close", None)
        if close is not None:
            close()
    result = _write_result(cfg, space, table, run_dir, best, len(records),
                           sum(r["cost"] for r in records), complete=True,
                           counts=counts(len(records)))
    candidate = space.parse(best["candidate"])
    space.save(candidate, run_dir / space.RESULT_FILE)
    draw_cells(candidate, logger, len(records), run_dir, graphs=getattr(space, "graphs", None))
    logger.info("done: best %s %s (score %.3f, reported %.3f) of %d evaluations, written to %s",
                cfg.space, best["candidate"], best["score"], best["reported"], len(records),
                run_dir / space.RESULT_FILE)
    if "cells" in result.get("benchmark", {}):
        b = result["benchmark"]
        logger.info("against the table's ground truth: %s", ", ".join(
            f"{m} {b[m]:.2f} (rank {b[m + '_rank']} of {b['cells']}, optimum {b[m + '_optimum']:.2f})"
            for m in dict.fromkeys((cfg.metric, cfg.report)) if b.get(m) is not None))
    logger.info("retrain it with:\n  %s", _retrain_command(cfg, space, run_dir))
    return result


def _asynchronous(cfg) -> bool:
    """Whether the run asks as evaluations finish (darts.strategies.base.run_async)."""
    return cfg.executor != "local" or cfg.max_pending is not None


def _run_async(cfg, strategy, evaluator, past, run_dir: Path, resumed: bool, on_evaluation,
               logger, text) -> list[dict[str, Any]]:
    """The asynchronous loop on `--executor`: asks.jsonl records each ask (where it fell
    among the tells), so that a resumed run replays the same interleaving."""
    from darts.executors import EXECUTORS
    from darts.strategies.base import run_async

    asks = _Asks(run_dir / ASKS)
    executor = EXECUTORS.lookup(cfg.executor)(
        evaluator, max_pending=cfg.max_pending or 1, address=cfg.ray_address,
        cpus=cfg.eval_cpus, gpus=cfg.eval_gpus, max_retries=cfg.max_retries, log=logger.info)
    pending = cfg.max_pending or getattr(executor, "slots", 1)
    logger.info("%s executor, up to %d evaluations at once, asked as they finish",
                cfg.executor, pending)
    try:
        return run_async(strategy, executor, cfg.budget, history=past,
                         asks=asks.read() if resumed else [], on_evaluation=on_evaluation,
                         on_ask=asks.append, max_pending=pending, to_text=text)
    finally:
        executor.close()


class _Asks(_History):
    """asks.jsonl: one line per candidate asked ({"ask", "after", "candidate"})."""

    def read(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for k, line in enumerate(lines):
            try:
                entry = json.loads(line)
                ok = isinstance(entry, dict) and entry.get("ask") == k
            except ValueError:
                ok = False
            if not ok:
                if k == len(lines) - 1:  # the line a crash cut short
                    break
                raise UserError(f"{self.path}, line {k + 1}: not the record of ask {k}; the run "
                                f"cannot be resumed from it")
            out.append(entry)
        return out


def _better(best: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return record if record["score"] > best["score"] else best


def _warm_start(cfg, space: Any, run_dir: Path, logger) -> list[Any]:
    """`--warm_start N`: N different random candidates (drawn by the seed) scored by `--proxy`
    into `warm_start.csv` (resumable), best first; a vote of several proxies ranks by the
    weighted mean of each proxy's rank in the sample."""
    from darts.evaluators.proxy import best_first, parse_weights, settings_of
    from darts.proxies.score import read_scores, sample_candidates, score_to_csv

    weights = parse_weights(cfg.proxy)
    candidates = sample_candidates(space, cfg.warm_start, cfg.seed, stream="warm")
    path = run_dir / "warm_start.csv"
    logger.info("warm start: %d random candidates scored by %s into %s", len(candidates),
                cfg.proxy, path)
    score_to_csv(settings_of(cfg, space, tuple(weights)), candidates, path, progress=False,
                 log=logger.info)
    _, columns = read_scores(path)
    return best_first(candidates, columns, weights)


def _write_result(cfg, space, table, run_dir: Path, best: dict[str, Any], n: int, cost: float,
                  complete: bool, counts: dict[str, int] | None = None) -> dict[str, Any]:
    result = {"complete": complete, "strategy": cfg.strategy, "space": cfg.space,
              "evaluator": evaluator_name(cfg), "seed": cfg.seed, "evaluations": n,
              **(counts or {}),
              "cost_s": cost, "best_arch": best.get("candidate"), "best_score": best.get("score"),
              "best_reported": best.get("reported"), "best_evaluation": best.get("n")}
    if table is not None and best.get("candidate") is not None:
        result["benchmark"] = _benchmark_result(table, space, space.parse(best["candidate"]),
                                                cfg.metric, cfg.report)
    save_json(result, run_dir / "result.json")
    return result
