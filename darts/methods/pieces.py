"""The collapse pieces of one search, put together (docs/collapse-pieces.md): what the search
loop asks of them each epoch and step.

- `validate(cfg)`: bad combinations, one UserError each;
- `prepare_supernet(model, cfg)`: P-DARTS's skip dropout wrapped in (before acceleration);
- `Pieces(cfg, model)`: installs the weight transforms (DARTS-'s auxiliary skip, DARTS-PT's
  projection), sets each epoch's schedules (beta, dropout rate, eps), wraps the alpha step
  (warm-up; SDARTS's perturbation of the following weight step), decodes (P-DARTS's skip cap)
  and says when DARTS+ stops.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from darts.errors import UserError
from darts.methods import perturb as perturbation
from darts.methods import select
from darts.methods.regularizers import op_alphas
from darts.methods.transforms import (
    AuxiliarySkip,
    WeightTransforms,
    add_skip_dropout,
    skip_dropout_at,
)
from darts.ops import Identity
from darts.train.engine import MetricSum, SideStep


def validate(cfg: Any) -> None:
    """The pieces' flags and their combinations; one UserError naming the flag and the fix."""
    checks = [
        ("perturb_epsilon", cfg.perturb_epsilon > 0, "positive"),
        ("aux_skip", cfg.aux_skip >= 0, "0 (off) or more"),
        ("skip_dropout", 0 <= cfg.skip_dropout < 1, "in [0, 1)"),
        ("warmup_epochs", 0 <= cfg.warmup_epochs, "0 or more"),
        ("max_skip", cfg.max_skip is None or cfg.max_skip >= 0, "0 or more"),
        ("early_stop_skips", cfg.early_stop_skips is None or cfg.early_stop_skips >= 1, "1 or more"),
        ("early_stop_stable", cfg.early_stop_stable is None or cfg.early_stop_stable >= 1,
         "1 or more"),
        ("pt_interval", cfg.pt_interval >= 0, "0 (no tuning) or more"),
    ]
    for flag, ok, need in checks:
        if not ok:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: must be {need}")
    if cfg.warmup_epochs >= cfg.epochs:
        raise UserError(f"--warmup_epochs {cfg.warmup_epochs}: the alphas would never be "
                        f"updated in {cfg.epochs} epochs; give fewer than --epochs")
    from darts.spaces import get_space

    skip = "skip_connect" in get_space(cfg.space).gradient.search_ops(cfg)
    for flag, on in (("aux_skip", cfg.aux_skip > 0), ("skip_dropout", cfg.skip_dropout > 0),
                     ("max_skip", cfg.max_skip is not None),
                     ("early_stop_skips", cfg.early_stop_skips is not None)):
        if on and not skip:
            raise UserError(f"--{flag}: acts on skip_connect, which --ops {cfg.ops} leaves out")
    if cfg.aux_skip > 0 and cfg.partial_channels > 1:
        raise UserError("--aux_skip with --partial_channels: a PC-DARTS edge mixes only 1/K "
                        "of its channels; DARTS-'s skip spans them all. Leave one out")
    if cfg.aux_skip > 0 and cfg.skip_dropout > 0:
        raise UserError("--aux_skip with --skip_dropout: DARTS-'s auxiliary skip runs as "
                        "skip_connect's weight + beta, which the dropout would drop too; "
                        "leave one out")
    if cfg.skip_dropout > 0 and cfg.order == 2 and cfg.hessian == "fd":
        raise UserError("--skip_dropout with --order 2 --hessian fd: the two forwards of the "
                        "finite difference draw different dropout masks, and the difference "
                        "divided by 2 eps is noise; use --order 1 (P-DARTS's) or --hessian exact")
    if cfg.select == "pt" and cfg.partial_channels > 1:
        raise UserError("--select pt with --partial_channels: DARTS-PT projects plain DARTS "
                        "edges; leave --partial_channels out")
    if cfg.select == "pt" and cfg.max_skip is not None:
        raise UserError("--select pt with --max_skip: the projection chooses every op itself; "
                        "leave one out")
    if cfg.mixing != "softmax" and (cfg.perturb != "none" or cfg.aux_skip > 0 or cfg.select == "pt"):
        raise UserError(f"--mixing {cfg.mixing}: --perturb, --aux_skip and --select pt act on "
                        f"softmax weights (their papers'); use --mixing softmax")
    sampler = getattr(cfg, "sampler", "softmax")
    if sampler != "softmax" and (cfg.perturb != "none" or cfg.aux_skip > 0 or cfg.select == "pt"):
        raise UserError(f"--sampler {sampler}: --perturb, --aux_skip and --select pt act on "
                        f"DARTS's softmax weights (their papers'); use --sampler softmax")


def refuse_with_multitrial(cfg: Any) -> None:
    """The pieces act on the gradient search; a multi-trial strategy has no alphas."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    given = [k for k in ("perturb", "aux_skip", "skip_dropout", "warmup_epochs", "max_skip",
                         "select", "early_stop_skips", "early_stop_stable") if getattr(cfg, k) != defaults[k]]
    if given:
        raise UserError(f"--{given[0]}: a piece of the gradient search (--strategy darts); "
                        f"--strategy {cfg.strategy} has no alphas. Leave --{given[0]} out")


def prepare_supernet(model: nn.Module, cfg: Any) -> nn.Module:
    """The supernet with what must be built into it before acceleration (skip dropout)."""
    if cfg.skip_dropout > 0:
        add_skip_dropout(model)
    return model


def skip_dropouts(model: nn.Module) -> list[nn.Dropout]:
    return [m[1] for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 2
            and type(m[0]) is Identity and isinstance(m[1], nn.Dropout)]


class Pieces:
    """The pieces of one search; see the module docstring."""

    def __init__(self, cfg: Any, model: nn.Module):
        self.cfg = cfg
        self.model = model
        self.transforms = WeightTransforms(model)
        self.aux = AuxiliarySkip(model, cfg.aux_skip) if cfg.aux_skip > 0 else None
        if self.aux is not None:
            self.transforms.transforms.append(self.aux)
        self.dropouts = skip_dropouts(model)
        self.epoch = 0
        self.epsilon = 0.0
        self.perturbed: tuple[torch.Tensor, ...] | None = None
        self.learnable: list[int] | None = None  # DARTS+'s learnable op columns, found once

    # -- schedules -----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Sets epoch `epoch`'s (0-based) schedules; returns them (for the log and history)."""
        cfg, self.epoch = self.cfg, epoch
        values: dict[str, float] = {}
        if self.aux is not None:
            self.aux.start_epoch(epoch, cfg.epochs)
            values["aux_skip_beta"] = self.aux.beta
        if self.dropouts:
            p = skip_dropout_at(epoch, cfg.epochs, cfg.skip_dropout, cfg.warmup_epochs)
            for d in self.dropouts:
                d.p = p
            values["skip_dropout_p"] = p
        if cfg.perturb != "none":
            self.epsilon = perturbation.epsilon_at(epoch, cfg.epochs, cfg.perturb_epsilon)
            values["perturb_epsilon"] = self.epsilon
        if cfg.warmup_epochs:
            values["alphas_frozen"] = float(self.warming_up)
        return values

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    # -- the step ------------------------------------------------------------------------------
    def alpha_step(self, architect, batch, val, lr: float) -> torch.Tensor:
        """Algorithm 1's alpha step on the validation batch `val` (xi = `lr`, the weights'
        learning rate, for second order), except while warming up (the validation loss only);
        then SDARTS's perturbation of the coming weight step's mixing weights. Returns the
        validation loss."""
        if self.warming_up:
            with torch.no_grad():
                loss = architect.loss(val, alphas=False).detach()
        else:
            loss = architect.step(batch, val, xi=lr)
        if self.cfg.perturb != "none":
            self.perturbed = self.perturb(batch, architect)
        return loss

    def side_step(self, architect, alpha_stream, lr: float, meter: MetricSum) -> SideStep:
        """`alpha_step` before each weight step, on the next batch of `alpha_stream`."""
        return SideStep(alpha_stream, lambda batch, val: self.alpha_step(architect, batch, val, lr),
                        meter)

    def perturb(self, batch, architect) -> tuple[torch.Tensor, ...]:
        weights = self.model.mixing_weights(detach=True)
        if self.cfg.perturb == "random":
            return perturbation.random_perturbation(weights, self.epsilon)[0]
        x, y = batch
        criterion = architect.criterion
        training = self.model.training
        self.model.eval()  # SDARTS attacks with BatchNorm on running statistics

        def loss_of(w):
            with architect.precision.autocast():
                out = self.model(x, w)
                return criterion(out[0] if isinstance(out, tuple) else out, y).float()
        try:
            return perturbation.adversarial_perturbation(loss_of, weights, self.epsilon)[0]
        finally:
            self.model.train(training)

    def weight_step_weights(self) -> tuple[torch.Tensor, ...]:
        """The mixing weights of the weight step's forward: the perturbed ones (SDARTS) or
        the detached current ones."""
        if self.perturbed is not None:
            return self.perturbed
        return self.model.mixing_weights(detach=True)

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, cells, meta: dict[str, str]):
        """The epoch's cell: the space's decoding, with P-DARTS's skip cap where asked."""
        cap = self.cfg.max_skip
        if cap is None:
            return cells.decode(self.model, meta)
        with torch.no_grad():
            weights = self.model.mixing_weights()
        topology = self.model.topology
        if topology.nodes:  # a cell whose nodes choose their inputs: the DARTS cell
            return select.capped_darts_genotype(topology, weights, cap, **meta)
        return select.capped_nb201_arch(weights[0], cap)

    def uncapped_skips(self, cells, meta, genotype) -> int:
        """Skip-connections of the normal cell before any cap (what DARTS+ counts)."""
        if self.cfg.max_skip is None:
            return cells.skip_connects(genotype)
        return cells.skip_connects(cells.decode(self.model, meta))

    def learnable_ranking(self, ops) -> list[list[list[int]]]:
        """This epoch's ranking of the learnable ops' alphas (DARTS+'s criterion 2)."""
        if self.learnable is None:
            self.learnable = select.learnable_columns(ops)
        return select.learnable_ranking(op_alphas(self.model), self.learnable)

    def stop(self, skips: int, rankings: list[Any]) -> str | None:
        """Why DARTS+ stops the search after this epoch (None: it goes on). `rankings`: every
        epoch's learnable ranking so far, this one last."""
        if select.should_stop(skips, self.cfg.early_stop_skips):
            from darts.spaces import get_space

            kinds = get_space(self.cfg.space).gradient.kinds  # NB201: one cell
            cell = "cell" if len(kinds) == 1 else f"{kinds[0]} cell"
            return (f"the {cell} has {skips} skip-connections (--early_stop_skips "
                    f"{self.cfg.early_stop_skips})")
        n = self.cfg.early_stop_stable
        if select.ranking_stable(rankings, n):
            return (f"the ranking of the learnable ops' alphas has been the same for {n} "
                    f"epoch{'s' * (n != 1)} (--early_stop_stable {n})")
        return None


def pt_select(pieces: Pieces, cells, *, architect, criterion, device, valid_loader, weight_data,
              alpha_stream, precision, meta: dict[str, str], log,
              resume: dict[str, Any] | None = None,
              checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """DARTS-PT's projection after the search (darts.methods.select), tuning between
    projections as their code does; returns what metrics.json records of it, the cell
    included.

    After each projection step `checkpoint(progress)` gets the projection's progress
    (`projection_progress`): with the model, the alpha stream and the random generators, which
    the caller saves beside it, what a run killed mid-projection needs to go on. `resume` is
    that progress: the projection continues at the next undone step, and ends as it would have.
    """
    from darts.train.engine import train_one_epoch

    cfg, model = pieces.cfg, pieces.model
    projection = select.Projection.empty(len(cells.kinds))
    pieces.transforms.transforms.insert(0, projection)
    if pieces.aux is not None:
        pieces.aux.beta = 0.0  # DARTS-'s beta has decayed to 0 by the search's end
    pieces.epoch = cfg.epochs  # no warm-up while tuning

    def score() -> select.Score:
        return select.measure(model, valid_loader, device, criterion, cfg.channels_last)

    def decode():
        with torch.no_grad():
            weights = projection(model.mixing_weights())
        return model.topology.decode_weights(weights, **meta)

    total = select.tune_epochs(model, cfg.pt_interval)
    optimizer, scheduler, tuner = _tuning(cfg, model, architect, criterion, precision, total)
    records: list[dict[str, Any]] = []
    steps = select.projection_steps(model, random.Random(cfg.seed))
    done = 0
    if resume is not None:
        steps, done, records = _resume_projection(resume, cfg, projection, optimizer, scheduler,
                                                  tuner)

    def tune(k: int) -> None:
        lr = scheduler.get_last_lr()[0]
        meter = MetricSum(device)
        train = train_one_epoch(
            model, weight_data.epoch(cfg.epochs + k), optimizer, criterion, device,
            grad_clip=cfg.grad_clip, side_step=pieces.side_step(tuner, alpha_stream, lr, meter),
            forward=lambda x: model(x, pieces.weight_step_weights()), precision=precision,
            channels_last=cfg.channels_last)
        scheduler.step()
        s = score()
        genotype = decode()
        records.append({"tune_epoch": k + 1, "lr": lr, "train_loss": train.loss,
                        "valid_top1_train_mode": s.top1, "valid_loss_train_mode": s.loss,
                        "projections": len(projection.log),
                        cells.skips: cells.skip_connects(genotype),
                        "genotype": genotype.to_dict()})
        log(f"DARTS-PT tuning epoch {k + 1}/{total}: train_loss {train.loss:.4f} "
            f"valid_top1 {s.top1:.2f} (train-mode BatchNorm) lr {lr:.5f}; {cells.noun} {genotype}")

    def save(k: int) -> None:
        if checkpoint is not None:
            checkpoint(projection_progress(cfg, steps, k, projection, records, optimizer,
                                           scheduler, tuner))

    select.run_projection(model, projection, score, tune if total else None, cfg.pt_interval,
                          cfg.seed, log, steps=steps, done=done, checkpoint=save)
    genotype = decode()
    return {"method": "pt", "interval": cfg.pt_interval, "tune_epochs": total,
            "projections": projection.log, "tune": records,
            cells.skips: cells.skip_connects(genotype), "genotype": genotype.to_dict()}


def _tuning(cfg: Any, model: nn.Module, architect, criterion, precision, total: int):
    """DARTS-PT's tuning: SGD at lr / 10, cosine-annealed over its `total` epochs, and an
    architect that starts from the search's alpha optimizer."""
    from darts.architect import Architect
    optimizer = torch.optim.SGD(model.network_parameters(), cfg.learning_rate / 10,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max(total, 1)),
                                                           eta_min=cfg.learning_rate_min)
    tuner = Architect(model, criterion, optimizer, order=architect.order,
                      hessian=architect.hessian, lr=cfg.arch_learning_rate,
                      weight_decay=cfg.arch_weight_decay, fd_epsilon=architect.fd_epsilon,
                      precision=precision, dist=architect.dist, capturable=False,
                      arch_loss=architect.arch_loss)
    tuner.optimizer.load_state_dict(architect.optimizer.state_dict())
    return optimizer, scheduler, tuner


def projection_progress(cfg: Any, steps: list[list[select.Step]], done: int,
                        projection: select.Projection, records: list[dict[str, Any]],
                        optimizer, scheduler, tuner) -> dict[str, Any]:
    """DARTS-PT's progress after `done` projection steps, in a checkpoint's plain values: the
    step order drawn (from the seed), the decisions, the tuning epochs' records, and the
    tuning's own weight optimizer, learning-rate schedule and alpha optimizer."""
    return {"seed": cfg.seed, "interval": cfg.pt_interval, "done": done,
            "steps": [[list(step) for step in event] for event in steps],
            "projection": projection.state_dict(), "tune": list(records),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "arch_optimizer": tuner.state_dict()}


def _resume_projection(progress: dict[str, Any], cfg: Any, projection: select.Projection,
                       optimizer, scheduler, tuner) -> tuple[list[list[select.Step]], int, list]:
    """Loads `projection_progress`'s values; returns (the step order, steps done, records)."""
    try:
        if (progress["seed"], progress["interval"]) != (cfg.seed, cfg.pt_interval):
            raise ValueError(f"it was made with --seed {progress['seed']} --pt_interval "
                             f"{progress['interval']}")
        steps = [[(str(kind), int(m), int(i)) for kind, m, i in event]
                 for event in progress["steps"]]
        projection.load_state_dict(progress["projection"])
        optimizer.load_state_dict(progress["optimizer"])
        scheduler.load_state_dict(progress["scheduler"])
        tuner.load_state_dict(progress["arch_optimizer"])
        return steps, int(progress["done"]), list(progress["tune"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"--resume: the checkpoint's DARTS-PT projection does not fit this run "
                        f"({type(e).__name__}: {reason})") from None
