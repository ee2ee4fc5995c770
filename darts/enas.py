"""ENAS (Pham et al., ICML 2018): a controller and the weights it shares, trained in turn.

`train_search.py --strategy enas --space nb201` runs here. The space's supernet holds every
child's weights (its `supernet(num_classes, channels, layers)`, run one child at a time by
`forward_path`: only the child's ops run). Each epoch has two phases (ENAS, Section 2.2):

1. **The shared weights**: one pass over the weight half of the training images; each SGD
   step draws a child from the controller (`strategy.ask()`, the controller fixed) and trains
   the weights on its path (cosine schedule, momentum, weight decay and gradient clip of the
   run's flags; `--method enas` sets NAS-Bench-201's ENAS recipe).
2. **The controller**: `--controller_steps` Adam steps, each averaging the policy gradients of
   `--controller_aggregate` children (`strategy.tell`); a child's reward is its accuracy (a
   fraction) on one batch of the held-out half, the supernet in eval mode, plus the entropy
   bonus (darts.strategies.reinforce.ENAS).

After each epoch `--derive_samples` children are drawn and scored on one held-out batch
each (NAS-Bench-201's ENAS, get_best_arch); the best is the epoch's derived cell: written to
metrics.json with its skip count and, with `--benchmark`, its table scores, as the gradient
search writes its decoded cell. The controller's greedy child is recorded beside it. The last
epoch's derived cell is the result (arch.json / genotype.json), retrained as every search is.

The checkpoint after each epoch holds the supernet, both optimizers, the schedule, the
controller with its generator and baseline, and every random state: a resumed run on the CPU
repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from darts import plugins
from darts.accel import accelerate
from darts.benchmarks.nb201 import BenchmarkTable, score_line
from darts.errors import UserError
from darts.methods import presets
from darts.spaces import get_space, to_text
from darts.strategies import STRATEGIES
from darts.train.checkpoint import (
    diverged,
    epoch_history,
    load_checkpoint,
    restore,
    rng_state,
    run_dir_of,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from darts.train.config import config_from_dict, to_dict
from darts.train.data import SplitLoader, build_datasets, search_split
from darts.train.engine import (
    channels_last_on,
    configure_cpu_threads,
    pick_device,
    to_device,
    train_one_epoch,
)
from darts.train.files import save_json
from darts.train.rundir import claim_existing, claim_new
from darts.train.tb import EpochTimer, RunLogger, alpha_heatmap, draw_cells, format_duration

KEYS = ("model", "optimizer", "scheduler", "controller", "history", "rng", "split")
# Passes of the held-out half: the controller's steps of epoch e read passes e * _PASSES + k,
# the derivation's e * _PASSES + _PASSES // 2 + k, so each is a function of the epoch alone.
_PASSES = 1000
# Flags of the gradient search that ENAS has no use for: refused rather than ignored.
_GRADIENT_ONLY = ("mixing", "regularizer", "order", "hessian", "partial_channels",
                  "checkpoint_cells", "evaluator")


def shares_weights(name: str) -> bool:
    """Whether `--strategy name` trains a weight-sharing supernet in turn with its controller."""
    return name in STRATEGIES and getattr(STRATEGIES.get(name), "weight_sharing", False)


def is_enas_run(resume: str | Path) -> bool:
    try:
        saved = json.loads((run_dir_of(resume) / "config.json").read_text(encoding="utf-8"))
        return shares_weights(saved.get("strategy", ""))
    except (OSError, ValueError, AttributeError):
        return False


def validate(cfg: Any) -> Any:
    """The run's space, after the checks of its flags (before anything is written)."""
    from darts.methods.pieces import refuse_with_multitrial

    space = get_space(cfg.space)
    if hasattr(space, "for_config"):
        space = space.for_config(cfg)
    missing = [f for f in ("supernet", "decisions", "from_decisions", "to_decisions")
               if not hasattr(space, f)]
    if missing:
        raise UserError(f"--strategy {cfg.strategy}: the {cfg.space} space has no "
                        f"{', '.join(missing)}; ENAS samples a space's decisions and trains "
                        f"their weights in its supernet (try --strategy reinforce --controller "
                        f"lstm, which scores each child on its own)")
    refuse_with_multitrial(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for flag in _GRADIENT_ONLY:
        if getattr(cfg, flag) != defaults[flag]:
            raise UserError(f"--{flag}: --strategy {cfg.strategy} trains its children's shared "
                            f"weights and its controller, with no alphas and no evaluator; "
                            f"leave --{flag} out")
    checks = [("epochs", cfg.epochs >= 1), ("controller_steps", cfg.controller_steps >= 1),
              ("derive_samples", cfg.derive_samples >= 1), ("batch_size", cfg.batch_size >= 1)]
    for flag, ok in checks:
        if not ok:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: must be at least 1")
    if cfg.benchmark and not getattr(space, "SCORED_BY_TABLE", False):
        raise UserError(f"--benchmark: no benchmark table scores --space {cfg.space}")
    return space


@dataclasses.dataclass
class _Run:
    """One ENAS run: its settings, the supernet and controller it trains, its data, records."""

    cfg: Any
    space: Any
    run_dir: Path
    logger: RunLogger
    claim: Any
    table: BenchmarkTable | None
    device: torch.device
    model: nn.Module
    strategy: Any  # darts.strategies.reinforce.ENAS (or a plugin's subclass)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    split: tuple[torch.Tensor, torch.Tensor]
    train_loader: SplitLoader
    valid_loader: SplitLoader
    history: list = dataclasses.field(default_factory=list)
    criterion: nn.Module = dataclasses.field(default_factory=nn.CrossEntropyLoss)

    def state(self) -> dict[str, Any]:
        return {"kind": "search", "strategy": self.cfg.strategy, "epoch": len(self.history),
                "config": to_dict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "controller": self.strategy.state_dict(), "history": self.history,
                "split": {"weights": self.split[0], "held": self.split[1]}, "rng": rng_state()}

    def batches(self, first_pass: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out batches on the device, pass after pass from `first_pass`."""
        for p in itertools.count(first_pass):
            for x, y in self.valid_loader.epoch(p):
                yield to_device(x, y, self.device, self.cfg.channels_last)

    @torch.no_grad()
    def accuracy(self, child: Any, x: torch.Tensor, y: torch.Tensor) -> float:
        """The child's top-1 accuracy (a fraction) on one batch, in the shared weights."""
        self.model.eval()
        return float((self.model.forward_path(x, child).argmax(1) == y).double().mean())


def run(cfg: Any, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Runs (or, with `resume`, continues) an ENAS search; returns metrics.json's dict."""
    from darts.search_config import SearchConfig, resolved

    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, "search", KEYS)
        plugins.load_saved(ckpt["config"], str(resume))
        cfg = config_from_dict(SearchConfig, ckpt["config"], where=str(resume))
    cfg = resolved(dataclasses.replace(cfg, plugins=plugins.absolute(cfg.plugins)))
    plugins.load(cfg.plugins)
    space = validate(cfg)
    table = BenchmarkTable.load(cfg.benchmark, space) if cfg.benchmark else None
    device = pick_device(cfg.device)
    cfg = dataclasses.replace(cfg, channels_last=channels_last_on(cfg.channels_last, device))
    seed_everything(cfg.seed)
    train_set, test_set, info = build_datasets(
        cfg.dataset, cfg.data, cutout_length=cfg.cutout_length if cfg.cutout else 0,
        image_size=cfg.image_size, num_classes=cfg.num_classes,
        synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    name = cfg.name or f"enas-{cfg.space}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    claim = (claim_existing(run_dir_of(resume)) if resume is not None
             else claim_new(cfg.save, name, numbered=not cfg.name))
    with claim.held():
        logger = RunLogger(claim.path, tensorboard=cfg.tensorboard, name="search")
        try:
            configure_cpu_threads(cfg.threads, logger.warning if device.type == "cpu" else None,
                                  logger.info, adapt=cfg.adapt_threads)
            r = _build(cfg, space, claim, logger, table, device, info, train_set, test_set, ckpt)
            return _search(r)
        finally:
            logger.close()


def _build(cfg, space, claim, logger, table, device, info, train_set, test_set, ckpt) -> _Run:
    from darts.multitrial import make_strategy

    strategy = make_strategy(cfg, space)
    with torch.random.fork_rng(devices=[]):  # the initial weights: a function of the seed
        torch.manual_seed(cfg.seed)
        model = accelerate(space.supernet(info.num_classes, cfg.init_channels, cfg.layers))
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.network_parameters(), cfg.learning_rate,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.epochs),
                                                           eta_min=cfg.learning_rate_min)
    split = search_split(len(train_set), cfg.train_portion, cfg.seed)
    plain = copy.copy(train_set)  # the held-out half scores children without augmentation
    plain.transform = test_set.transform
    pin = device.type == "cuda"
    r = _Run(cfg, space, claim.path, logger, claim, table, device, model, strategy, optimizer,
             scheduler, split,
             SplitLoader(train_set, split[0], cfg.batch_size, seed=cfg.seed, stream=0,
                         workers=cfg.workers, pin_memory=pin),
             SplitLoader(plain, split[1], cfg.batch_size, seed=cfg.seed, stream=1,
                         workers=cfg.workers, pin_memory=pin))
    if ckpt is None:
        save_json(to_dict(cfg), r.run_dir / "config.json")
        logger.config(to_dict(cfg))
        logger.info("run directory %s", r.run_dir)
        for line in presets.describe(cfg):
            logger.info("%s", line)
        return r

    def load() -> list:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        strategy.load_state_dict(ckpt["controller"])
        if not torch.equal(ckpt["split"]["weights"], split[0]):
            raise ValueError("its data split is not this data set's")
        set_rng_state(ckpt["rng"])
        return epoch_history(ckpt)[1]

    r.history = restore(r.run_dir, load)
    logger.info("resumed %s at epoch %d/%d", r.run_dir, len(r.history), cfg.epochs)
    return r


def _search(r: _Run) -> dict[str, Any]:
    cfg, logger = r.cfg, r.logger
    n = sum(p.numel() for p in r.model.network_parameters())
    logger.info("ENAS on %s: %s supernet of %.3fM weights, %d/%d images train the weights/"
                "the controller; %s controller, %d steps of %d children per epoch; device %s",
                cfg.dataset, type(r.model).__name__, n / 1e6, len(r.split[0]), len(r.split[1]),
                type(r.strategy.policy).__name__, cfg.controller_steps, r.strategy.aggregate,
                r.device)
    timer = EpochTimer(cfg.epochs, len(r.history))
    for epoch in range(len(r.history), cfg.epochs):
        timer.start()
        record = _epoch(r, epoch)
        record["epoch_time_s"] = timer.stop()
        r.history.append(record)
        _log(r, record, timer)
        r.claim.check()
        save_checkpoint(r.state(), r.run_dir / "checkpoint.pt")
        save_json(_metrics(r, complete=epoch + 1 == cfg.epochs), r.run_dir / "metrics.json")
        r.logger.flush()
    return _finish(r)


def _epoch(r: _Run, epoch: int) -> dict[str, Any]:
    """The weights' pass, the controller's steps, the derivation: the epoch's record."""
    cfg, strategy = r.cfg, r.strategy
    lr = r.scheduler.get_last_lr()[0]
    train = train_one_epoch(
        r.model, r.train_loader.epoch(epoch), r.optimizer, r.criterion, r.device,
        grad_clip=cfg.grad_clip, forward=lambda x: r.model.forward_path(x, strategy.ask()),
        channels_last=cfg.channels_last, log=r.logger.warning, progress=cfg.progress,
        desc=f"epoch {epoch + 1}/{cfg.epochs}")
    r.scheduler.step()
    diverged(epoch, {"train_loss": train.loss}, r.run_dir,
             "lower --learning_rate, or keep --grad_clip on")
    told = {"reward": [], "baseline": [], "entropy": [], "accuracy": []}
    held = r.batches(epoch * _PASSES)
    for _ in range(cfg.controller_steps * strategy.aggregate):
        child = strategy.ask()
        accuracy = r.accuracy(child, *next(held))
        strategy.tell(child, accuracy)
        for k in ("reward", "baseline", "entropy"):
            told[k].append(strategy.last[k])
        told["accuracy"].append(accuracy)
    derived, derived_accuracy = _derive(r, epoch)
    greedy = strategy.greedy()
    record = {"epoch": epoch + 1, "lr": lr, "train_loss": train.loss, "train_top1": train.top1,
              **{f"controller_{k}": sum(v) / len(v) for k, v in told.items()},
              "baseline": strategy.baseline, "arch": to_text(r.space, derived),
              "derived_top1": 100 * derived_accuracy,
              "greedy_arch": None if greedy is None else to_text(r.space, greedy),
              "probabilities": strategy.policy.probabilities().tolist()}
    gradient = getattr(r.space, "gradient", None)
    if gradient is not None and hasattr(gradient, "skip_connects"):
        record[gradient.skips] = gradient.skip_connects(derived)
    if hasattr(derived, "to_dict"):
        record["genotype"] = derived.to_dict()
    if r.table is not None:
        record["benchmark"] = r.table.score(derived)
    return record


def _derive(r: _Run, epoch: int) -> tuple[Any, float]:
    """The best of `--derive_samples` children drawn from the controller, each scored on one
    held-out batch (NAS-Bench-201's ENAS): (child, accuracy)."""
    held = r.batches(epoch * _PASSES + _PASSES // 2)
    best = None
    for _ in range(r.cfg.derive_samples):
        child = r.strategy.ask()
        accuracy = r.accuracy(child, *next(held))
        if best is None or accuracy > best[1]:
            best = (child, accuracy)
    return best


def _log(r: _Run, record: dict[str, Any], timer: EpochTimer) -> None:
    cfg, logger, step = r.cfg, r.logger, record["epoch"]
    score = record.get("benchmark") or {}
    logger.scalars({"train/loss": record["train_loss"], "train/top1": record["train_top1"],
                    "lr": record["lr"], "enas/reward": record["controller_reward"],
                    "enas/baseline": record["baseline"],
                    "enas/entropy": record["controller_entropy"],
                    "enas/child_top1": 100 * record["controller_accuracy"],
                    "enas/derived_top1": record["derived_top1"],
                    **{f"benchmark/{k}": v for k, v in score.items()
                       if isinstance(v, (int, float)) and k not in ("index", "cells")}}, step)
    decisions = r.space.decisions()
    names = getattr(r.space, "decision_names", None)
    rows = list(names()) if names else [f"decision {d + 1}" for d in range(len(decisions))]
    same = all(tuple(c) == tuple(decisions[0]) for c in decisions)
    cols = list(decisions[0]) if same else [str(k) for k in range(max(map(len, decisions)))]
    logger.image("controller/probabilities", alpha_heatmap(
        torch.tensor(record["probabilities"]), rows, cols,
        f"controller, greedy path, epoch {step}"), step)
    logger.text("arch", f"`{record['arch']}`", step)
    draw_cells(r.space.parse(record["arch"]), logger, step,
               graphs=getattr(r.space, "graphs", None))
    skips = getattr(getattr(r.space, "gradient", None), "skips", None)
    logger.info("epoch %d/%d train_loss %.4f train_top1 %.2f child_top1 %.2f reward %.4f "
                "baseline %.4f entropy %.3f lr %.5f%s time %.1fs eta %s", step, cfg.epochs,
                record["train_loss"], record["train_top1"], 100 * record["controller_accuracy"],
                record["controller_reward"], record["baseline"], record["controller_entropy"],
                record["lr"], f" {skips} {record[skips]}" if skips in record else "",
                record["epoch_time_s"], format_duration(timer.eta()))
    logger.info("derived %s (%.2f%% on a held-out batch); greedy %s", record["arch"],
                record["derived_top1"], record["greedy_arch"])
    if score:
        logger.info("benchmark %s", score_line(score))


def _metrics(r: _Run, complete: bool) -> dict[str, Any]:
    last = r.history[-1]
    return {"complete": complete, "strategy": r.cfg.strategy, "dataset": r.cfg.dataset,
            "epochs_done": last["epoch"], "epochs": r.cfg.epochs, "arch": last["arch"],
            **({"genotype": last["genotype"]} if "genotype" in last else {}),
            "search_time_s": sum(h["epoch_time_s"] for h in r.history),
            **({"benchmark": last["benchmark"]} if "benchmark" in last else {}),
            "history": r.history}


def _finish(r: _Run) -> dict[str, Any]:
    from darts.multitrial import _retrain_command

    cfg, space, logger = r.cfg, r.space, r.logger
    child = space.parse(r.history[-1]["arch"])
    space.save(child, r.run_dir / space.RESULT_FILE)
    draw_cells(child, logger, len(r.history), r.run_dir, graphs=getattr(space, "graphs", None))
    metrics = _metrics(r, complete=len(r.history) >= cfg.epochs)
    save_json(metrics, r.run_dir / "metrics.json")
    logger.info("done: %s written to %s", r.history[-1]["arch"], r.run_dir / space.RESULT_FILE)
    if "benchmark" in r.history[-1]:
        logger.info("its benchmark scores: %s", score_line(r.history[-1]["benchmark"]))
    logger.info("retrain it with:\n  %s", _retrain_command(cfg, space, r.run_dir))
    return metrics
