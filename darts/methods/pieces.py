"""The collapse pieces: hook objects the gradient search calls (docs/collapse-pieces.md).

A piece is a `Piece`: each hook below is a no-op unless the piece overrides it, and the search
calls every hook a piece overrides, at the place named (`darts.search.search_step` and the
epoch loop):

- `prepare(model)`        once, on the plain supernet, before acceleration (P-DARTS's dropout)
- `attach(model, cells)`  once, on the supernet as it runs (what the piece acts on)
- `start_epoch(epoch, epochs)` before each epoch, also the first after a `--resume`; returns
                          the values it uses this epoch (logged, and kept in the history)
- `transform(weights)`    the mixing weights of every forward (DARTS-'s auxiliary skip)
- `arch_loss(model)`      a term added to what the alphas minimise
- `freezes_alphas()`      before the alpha step: True skips it (a warm-up)
- `after_alpha_step(batch, architect)` after it (SDARTS draws its perturbation)
- `weight_step_weights(weights)` the mixing weights of the weight step (SDARTS's perturbed
                          ones); `weights` None stands for the model's own
- `decode(model, cells, meta)` the epoch's cell (P-DARTS's skip cap); None: the next piece's,
                          else the space's decoding
- `record(record)`        adds to the epoch's history record
- `stop(history)`         why the search stops after this epoch (DARTS+), None: it goes on
- `after_search()`        the epochs are over (DARTS-PT's tuning follows)
- `state_dict()`, `load_state_dict(state)` what a piece keeps beyond the epoch's schedule,
                          saved in every checkpoint and given back on `--resume`

The published pieces are switched on by their flags (`--aux_skip`, `--skip_dropout`, ...),
which `validate` checks against each other; a plugin's piece by `--pieces
NAME[:KEY=VALUE,...]` (repeatable).
`register_piece(name, cls)` adds one; `cls(**options)` makes it.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
from collections.abc import Callable, Sequence
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
from darts.registry import Registry
from darts.train.engine import MetricSum, SideStep

Weights = tuple[torch.Tensor, ...]


class Piece:
    """A collapse piece; see the module docstring for the hooks and when each runs."""

    name = ""
    flag = ""  # a published piece: the flag that switches it on (not `--pieces`)

    @classmethod
    def from_config(cls, cfg: Any) -> Piece | None:
        """The piece as a run's flags configure it; None where they leave it off. A plugin's
        piece is made from `--pieces` instead."""
        return None

    def prepare(self, model: nn.Module) -> None:
        pass

    def attach(self, model: nn.Module, cells: Any) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        return {}

    def transform(self, weights: Weights) -> Weights:
        return weights

    def arch_loss(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def freezes_alphas(self) -> bool:
        return False

    def after_alpha_step(self, batch: Any, architect: Any) -> None:
        pass

    def weight_step_weights(self, weights: Weights | None) -> Weights | None:
        return weights

    def decode(self, model: nn.Module, cells: Any, meta: dict[str, str]) -> Any:
        return None

    def record(self, record: dict[str, Any]) -> None:
        pass

    def stop(self, history: Sequence[dict[str, Any]]) -> str | None:
        return None

    def after_search(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def overrides(piece: Piece, hook: str) -> bool:
    """Whether `piece`'s class gives hook `hook` a body of its own."""
    return getattr(type(piece), hook) is not getattr(Piece, hook)


PIECES = Registry("collapse piece", "--pieces")


def register_piece(name: str, cls: type[Piece] | None = None, *, overwrite: bool = False):
    """Adds a collapse piece, switched on with `--pieces name[:key=value,...]` (the options are
    `cls`'s keyword arguments); as a decorator without `cls`."""
    def add(c: type[Piece]) -> type[Piece]:
        if not (isinstance(c, type) and issubclass(c, Piece)):
            raise ValueError(f"collapse piece {name!r}: give a subclass of "
                             f"darts.methods.pieces.Piece, not {c!r:.60}")
        c.name = c.name or name
        return PIECES.register(name, c, overwrite=overwrite)
    return add if cls is None else add(cls)


def _value(text: str) -> Any:
    """An option's value: an int, a float, true/false, else the text (never evaluated)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_piece(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME[:KEY=VALUE,...]` -> (name, options); one UserError for a malformed spec."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--pieces {spec}: options are KEY=VALUE separated by commas, "
                            f"e.g. --pieces {name}:t0=5,t1=1")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


def make_piece(spec: str) -> Piece:
    """The piece of one `--pieces` spec; one UserError naming the spec for an unknown piece
    or option."""
    name, options = parse_piece(spec)
    cls = PIECES.lookup(name)
    if cls.flag:
        raise UserError(f"--pieces {spec}: {name} is a published piece, switched on (and "
                        f"checked against the other flags) by --{cls.flag}")
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        known = ", ".join(params) or "no options"
        raise UserError(f"--pieces {spec}: {name} has no option {unknown[0]!r} (it takes "
                        f"{known})")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise UserError(f"--pieces {spec}: {e}") from None


def pieces_of(cfg: Any) -> list[Piece]:
    """The pieces a run's settings switch on: the published ones by their flags, in registry
    order, then `--pieces`'s in the order given."""
    made = [p for cls in PIECES.values() if (p := cls.from_config(cfg)) is not None]
    return made + [make_piece(spec) for spec in getattr(cfg, "pieces", ())]


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
                        f"DARTS's softmax weights (their papers'); use --mixing softmax")
    for spec in cfg.pieces:
        make_piece(spec)


def refuse_with_multitrial(cfg: Any) -> None:
    """The pieces act on the gradient search; a multi-trial strategy has no alphas."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    given = [k for k in ("perturb", "aux_skip", "skip_dropout", "warmup_epochs", "max_skip",
                         "select", "early_stop_skips", "early_stop_stable", "pieces")
             if getattr(cfg, k) != defaults[k]]
    if given:
        raise UserError(f"--{given[0]}: a piece of the gradient search (--strategy darts); "
                        f"--strategy {cfg.strategy} has no alphas. Leave --{given[0]} out")


def skip_dropouts(model: nn.Module) -> list[nn.Dropout]:
    return [m[1] for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 2
            and type(m[0]) is Identity and isinstance(m[1], nn.Dropout)]


# -- the published pieces, switched on by their flags ----------------------------------------
@register_piece("aux_skip")
class AuxSkip(Piece):
    """DARTS- (`--aux_skip BETA0`): the auxiliary skip beta * x on every stride-1 edge, beta
    decaying linearly from beta0 to 0 (darts.methods.transforms.AuxiliarySkip)."""

    flag = "aux_skip"

    def __init__(self, beta0: float = 1.0):
        self.beta0 = float(beta0)
        self.aux: AuxiliarySkip | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> AuxSkip | None:
        return cls(cfg.aux_skip) if cfg.aux_skip > 0 else None

    def attach(self, model: nn.Module, cells: Any) -> None:
        self.aux = AuxiliarySkip(model, self.beta0)

    def start_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        self.aux.start_epoch(epoch, epochs)
        return {"aux_skip_beta": self.aux.beta}

    def transform(self, weights: Weights) -> Weights:
        return self.aux(weights)

    def after_search(self) -> None:
        self.aux.beta = 0.0  # DARTS-'s beta has decayed to 0 by the search's end


@register_piece("skip_dropout")
class SkipDropout(Piece):
    """P-DARTS (`--skip_dropout P0`): dropout on the identity skip-connections' outputs, its
    rate decayed per epoch as their stage loop does (`skip_dropout_at`)."""

    flag = "skip_dropout"

    def __init__(self, p0: float = 0.7, warmup: int = 0):
        self.p0, self.warmup = float(p0), int(warmup)
        self.dropouts: list[nn.Dropout] = []

    @classmethod
    def from_config(cls, cfg: Any) -> SkipDropout | None:
        return cls(cfg.skip_dropout, cfg.warmup_epochs) if cfg.skip_dropout > 0 else None

    def prepare(self, model: nn.Module) -> None:
        add_skip_dropout(model)

    def attach(self, model: nn.Module, cells: Any) -> None:
        self.dropouts = skip_dropouts(model)

    def start_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        p = skip_dropout_at(epoch, epochs, self.p0, self.warmup)
        for d in self.dropouts:
            d.p = p
        return {"skip_dropout_p": p}


@register_piece("perturb")
class Perturb(Piece):
    """SDARTS (`--perturb random|adversarial`): after each alpha step, a perturbation of the
    mixing weights that the following weight step trains at; the alphas are not changed."""

    flag = "perturb"

    def __init__(self, kind: str = "random", epsilon: float = 0.3):
        if kind not in perturbation.PERTURBATIONS or kind == "none":
            raise ValueError(f"kind {kind!r}: random or adversarial")
        self.kind, self.max_epsilon = kind, float(epsilon)
        self.epsilon = 0.0
        self.perturbed: Weights | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Perturb | None:
        return cls(cfg.perturb, cfg.perturb_epsilon) if cfg.perturb != "none" else None

    def attach(self, model: nn.Module, cells: Any) -> None:
        self.model = model

    def start_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        self.epsilon = perturbation.epsilon_at(epoch, epochs, self.max_epsilon)
        return {"perturb_epsilon": self.epsilon}

    def after_alpha_step(self, batch: Any, architect: Any) -> None:
        weights = self.model.mixing_weights(detach=True)
        if self.kind == "random":
            self.perturbed = perturbation.random_perturbation(weights, self.epsilon)[0]
            return
        x, y = batch
        model, criterion = self.model, architect.criterion
        training = model.training
        model.eval()  # SDARTS attacks with BatchNorm on running statistics

        def loss_of(w):
            with architect.precision.autocast():
                out = model(x, w)
                return criterion(out[0] if isinstance(out, tuple) else out, y).float()
        try:
            self.perturbed = perturbation.adversarial_perturbation(loss_of, weights,
                                                                   self.epsilon)[0]
        finally:
            model.train(training)

    def weight_step_weights(self, weights: Weights | None) -> Weights | None:
        return self.perturbed if self.perturbed is not None else weights


@register_piece("warmup")
class Warmup(Piece):
    """`--warmup_epochs N` (PC-DARTS, P-DARTS): the alphas are not updated in the first N
    epochs; the alpha step then only measures the validation loss."""

    flag = "warmup_epochs"

    def __init__(self, epochs: int = 15):
        self.epochs, self.epoch = int(epochs), 0

    @classmethod
    def from_config(cls, cfg: Any) -> Warmup | None:
        return cls(cfg.warmup_epochs) if cfg.warmup_epochs else None

    def start_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        self.epoch = epoch
        return {"alphas_frozen": float(self.freezes_alphas())}

    def freezes_alphas(self) -> bool:
        return self.epoch < self.epochs

    def after_search(self) -> None:
        self.epoch = self.epochs  # no warm-up while DARTS-PT tunes


@register_piece("max_skip")
class SkipCap(Piece):
    """P-DARTS (`--max_skip K`): at most K skip-connections in the decoded normal cell, the
    weakest skip edges taking their next-best op; the record keeps the uncapped count."""

    flag = "max_skip"

    def __init__(self, max_skip: int = 2):
        self.max_skip = int(max_skip)
        self.uncapped: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> SkipCap | None:
        return cls(cfg.max_skip) if cfg.max_skip is not None else None

    def decode(self, model: nn.Module, cells: Any, meta: dict[str, str]) -> Any:
        self.uncapped = cells.skip_connects(cells.decode(model, meta))  # what DARTS+ counts
        with torch.no_grad():
            weights = model.mixing_weights()
        topology = model.topology
        if topology.nodes:  # a cell whose nodes choose their inputs: the DARTS cell
            return select.capped_darts_genotype(topology, weights, self.max_skip, **meta)
        return select.capped_nb201_arch(weights[0], self.max_skip)

    def record(self, record: dict[str, Any]) -> None:
        record["skip_connect_uncapped"] = self.uncapped


@register_piece("early_stop")
class EarlyStop(Piece):
    """DARTS+ (`--early_stop_skips K`, `--early_stop_stable N`): the search stops once the
    decoded normal cell has K skip-connections (before any cap), or once the ranking of the
    learnable ops' alphas has held for N epochs."""

    flag = "early_stop_skips / --early_stop_stable"

    def __init__(self, skips: int | None = None, stable: int | None = None):
        self.skips, self.stable = skips, stable
        self.learnable: list[int] | None = None  # the learnable op columns, found once

    @classmethod
    def from_config(cls, cfg: Any) -> EarlyStop | None:
        if cfg.early_stop_skips is None and cfg.early_stop_stable is None:
            return None
        return cls(cfg.early_stop_skips, cfg.early_stop_stable)

    def attach(self, model: nn.Module, cells: Any) -> None:
        self.model, self.cells = model, cells

    def ranking(self, ops: Sequence[str]) -> list[list[list[int]]]:
        """This epoch's ranking of the learnable ops' alphas (DARTS+'s criterion 2)."""
        if self.learnable is None:
            self.learnable = select.learnable_columns(ops)
        return select.learnable_ranking(op_alphas(self.model), self.learnable)

    def record(self, record: dict[str, Any]) -> None:
        if self.stable is not None:
            record["learnable_ranking"] = self.ranking(self.cells.ops_of(self.model))

    def stop(self, history: Sequence[dict[str, Any]]) -> str | None:
        last, cells = history[-1], self.cells
        skips = last.get("skip_connect_uncapped", last[cells.skips])
        if select.should_stop(skips, self.skips):
            cell = "cell" if len(cells.kinds) == 1 else f"{cells.kinds[0]} cell"  # NB201: one
            return f"the {cell} has {skips} skip-connections (--early_stop_skips {self.skips})"
        n = self.stable
        if select.ranking_stable([r.get("learnable_ranking") for r in history], n):
            return (f"the ranking of the learnable ops' alphas has been the same for {n} "
                    f"epoch{'s' * (n != 1)} (--early_stop_stable {n})")
        return None


# -- the pieces of one search ------------------------------------------------------------------
class _PiecesLoss:
    """The pieces' architecture losses, added (one term of the architect's alpha loss)."""

    def __init__(self, pieces: list[Piece]):
        self.pieces = pieces

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return sum(p.arch_loss(model) for p in self.pieces)


class Pieces:
    """The pieces of one search (`pieces_of(cfg)` unless given) and the calls the search
    makes on them, each reaching every piece that overrides the hook, in order. With `model`,
    attached at once (to the space's gradient search of `cfg`)."""

    def __init__(self, cfg: Any, model: nn.Module | None = None,
                 pieces: Sequence[Piece] | None = None):
        self.cfg = cfg
        self.pieces = pieces_of(cfg) if pieces is None else list(pieces)
        self._hooks: dict[str, list[Piece]] = {}
        self.model: nn.Module | None = None
        self.transforms: WeightTransforms | None = None
        self.epoch = 0
        if model is not None:
            from darts.spaces import get_space

            self.attach(model, get_space(cfg.space).gradient)

    def _with(self, hook: str) -> list[Piece]:
        """The pieces that override `hook`, found once per hook (the step asks every batch)."""
        found = self._hooks.get(hook)
        if found is None:
            found = self._hooks[hook] = [p for p in self.pieces if overrides(p, hook)]
        return found

    def of(self, cls: type[Piece]) -> Piece | None:
        """The first piece of class `cls` (None: none)."""
        return next((p for p in self.pieces if isinstance(p, cls)), None)

    # -- built ---------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        for p in self._with("prepare"):
            p.prepare(model)
        return model

    def attach(self, model: nn.Module, cells: Any) -> None:
        self.model, self.cells = model, cells
        self.transforms = WeightTransforms(model)
        for p in self.pieces:
            p.attach(model, cells)
        self.transforms.transforms.extend(p.transform for p in self._with("transform"))

    def arch_loss(self) -> _PiecesLoss | None:
        """The pieces' terms of the alpha loss, as one architecture loss (None: none)."""
        losses = self._with("arch_loss")
        return _PiecesLoss(losses) if losses else None

    # -- each epoch ----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Sets epoch `epoch`'s (0-based) schedules; returns them (for the log and history)."""
        self.epoch = epoch
        values: dict[str, float] = {}
        for p in self._with("start_epoch"):
            values.update(p.start_epoch(epoch, self.cfg.epochs))
        return values

    # -- each step -----------------------------------------------------------------------------
    def alpha_step(self, architect, batch, val, lr: float) -> torch.Tensor:
        """Algorithm 1's alpha step on the validation batch `val` (xi = `lr`, the weights'
        learning rate, for second order), unless a piece freezes the alphas (then the
        validation loss only); then each piece's `after_alpha_step`. Returns the validation
        loss."""
        if any(p.freezes_alphas() for p in self._with("freezes_alphas")):
            with torch.no_grad():
                loss = architect.loss(val, alphas=False).detach()
        else:
            loss = architect.step(batch, val, xi=lr)
        for p in self._with("after_alpha_step"):
            p.after_alpha_step(batch, architect)
        return loss

    def side_step(self, architect, alpha_stream, lr: float, meter: MetricSum) -> SideStep:
        """`alpha_step` before each weight step, on the next batch of `alpha_stream`."""
        return SideStep(alpha_stream, lambda batch, val: self.alpha_step(architect, batch, val, lr),
                        meter)

    def weight_step_weights(self) -> Weights:
        """The mixing weights of the weight step's forward: what the pieces give (SDARTS's
        perturbed ones), else the detached current ones."""
        weights = None
        for p in self._with("weight_step_weights"):
            weights = p.weight_step_weights(weights)
        return self.model.mixing_weights(detach=True) if weights is None else weights

    # -- each epoch's end ----------------------------------------------------------------------
    def decode(self, cells, meta: dict[str, str]):
        """The epoch's cell: the first piece's that decodes (P-DARTS's skip cap), else the
        space's decoding."""
        for p in self._with("decode"):
            candidate = p.decode(self.model, cells, meta)
            if candidate is not None:
                return candidate
        return cells.decode(self.model, meta)

    def record(self, record: dict[str, Any]) -> None:
        for p in self._with("record"):
            p.record(record)

    def stop(self, history: Sequence[dict[str, Any]]) -> str | None:
        """Why a piece stops the search after the last record of `history` (None: none)."""
        for p in self._with("stop"):
            why = p.stop(history)
            if why is not None:
                return why
        return None

    def after_search(self) -> None:
        self.epoch = self.cfg.epochs
        for p in self._with("after_search"):
            p.after_search()

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Each piece's state (those that keep one), by position and name."""
        states = {f"{i}:{p.name}": p.state_dict() for i, p in enumerate(self.pieces)}
        return {k: v for k, v in states.items() if v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, p in enumerate(self.pieces):
            saved = state.get(f"{i}:{p.name}")
            if saved:
                p.load_state_dict(saved)


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
    pieces.after_search()  # DARTS-'s beta at 0, no warm-up while tuning

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
