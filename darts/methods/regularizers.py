"""What the alpha loss adds: `--regularizer` (also spelled `--arch_loss`), terms of the alphas
that fight DARTS's collapse. One registry, `REGULARIZERS`, holds the published terms and a
plugin's (`register_regularizer`).

Each regularizer is an architecture loss (darts.architect's contract: `loss(model)` -> a
scalar added to what the alphas minimise; its alpha gradient is added to the first- or
second-order gradient of L_val), with an epoch hook (`set_epoch`, darts.methods.schedule)
for a weight that changes over the search. `--reg_weight` overrides the published weight.
The terms read the op alphas, `op_alphas(model)` (normal and reduction cells of the DARTS
space, NAS-Bench-201's one matrix; PC-DARTS's edge betas are left out).

- `beta`: beta-DARTS's Beta-Decay (Ye et al., CVPR 2022; code Sunshine-Ye/Beta-DARTS,
  optimizers/darts/architect.py `mlc_loss`): per cell type the mean over edges of
  logsumexp(alpha_e), summed over the cell types. Weight lambda * epoch / epochs, lambda 50:
  their code writes `50 * epoch / 100` with its 100 search epochs (at 50 epochs that line
  reaches 24.5, ours 49: give --reg_weight 25 for theirs).
- `zero-one`: FairDARTS's zero-one loss (Chu et al., ECCV 2020; code xiaomi-automl/FairDARTS,
  separate_loss.py ConvSeparateLoss): -mean((sigmoid(alpha) - 0.5)^2) over every entry of
  both cells' alphas, weight 10 (`--aux_loss_weight`, the paper's w_01), constant.
- `drnas-kl`: DrNAS's KL term (Chen et al., ICLR 2021; code xiangning-chen/DrNAS,
  `_get_kl_reg`): the sum over edges of KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1)),
  weight 1e-3 (`--reg_scale`); their Adam then has no weight decay on the alphas.
- `drnas-l2`: DrNAS's default regulariser (`--reg_type l2`): an L2 term, weight * ||alpha||^2
  / 2 on every architecture parameter, with Adam's weight decay on the alphas off: the
  gradient weight * alpha that their Adam's `weight_decay=reg_scale` (1e-3) adds. With the
  default weight it is DARTS's own `--arch_weight_decay 1e-3`, step for step.

The two DrNAS terms take the place of Adam's weight decay on the alphas
(`replaces_arch_weight_decay`), as DrNAS's architect does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributions import Dirichlet
from torch.distributions.kl import kl_divergence

from darts.methods import schedule
from darts.methods.mixing import dirichlet_concentration
from darts.registry import Registry


def op_alphas(model: nn.Module) -> list[torch.Tensor]:
    """The alphas that weight ops (not PC-DARTS's edge betas)."""
    ops_only = getattr(model, "op_alpha_parameters", None)
    if ops_only is not None:  # the library's supernets
        return list(ops_only())
    return list(model.arch_parameters())[:2]  # a model with its op alphas first


class Regularizer:
    """weight(epoch) * term(model); the weight kept in a tensor, updated in place by
    `set_epoch`, so a captured CUDA graph reads the current value."""

    name = ""
    default_weight = 1.0
    replaces_arch_weight_decay = False

    def __init__(self, weight: float | None = None):
        self.weight = self.default_weight if weight is None else float(weight)
        self.current = self.weight
        self._current: torch.Tensor | None = None

    def term(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def schedule(self, epoch: int, epochs: int) -> float:
        """The weight at `epoch` (0-based) of `epochs`: constant unless overridden."""
        return self.weight

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.current = self.schedule(epoch, epochs)
        if self._current is not None:
            self._current.fill_(self.current)

    def scalars(self) -> dict[str, float]:
        return {"reg_weight": self.current}

    def __call__(self, model: nn.Module) -> torch.Tensor:
        term = self.term(model)
        if self._current is None or self._current.device != term.device:
            self._current = torch.tensor(self.current, dtype=torch.float64, device=term.device)
        return self._current.to(term.dtype) * term


class BetaDecay(Regularizer):
    name, default_weight = "beta", 50.0

    def schedule(self, epoch: int, epochs: int) -> float:
        return self.weight * epoch / epochs

    def term(self, model: nn.Module) -> torch.Tensor:
        return sum(torch.logsumexp(a, dim=-1).mean() for a in op_alphas(model))


class ZeroOne(Regularizer):
    name, default_weight = "zero-one", 10.0

    def term(self, model: nn.Module) -> torch.Tensor:
        weights = torch.sigmoid(torch.cat(op_alphas(model)))
        held_out = getattr(getattr(model, "sampler", None), "none_column", None)
        if held_out is not None:  # FairDARTS's mixing: `none` has no alpha (mixing.Sigmoid)
            keep = [k for k in range(weights.shape[-1]) if k != held_out]
            weights = weights[..., keep]
        return -((weights - 0.5) ** 2).mean()


class DirichletKL(Regularizer):
    name, default_weight = "drnas-kl", 1e-3
    replaces_arch_weight_decay = True

    def term(self, model: nn.Module) -> torch.Tensor:
        total = 0
        for a in op_alphas(model):
            q = Dirichlet(dirichlet_concentration(a))
            total = total + kl_divergence(q, Dirichlet(torch.ones_like(a))).sum()
        return total


class DirichletL2(Regularizer):
    name, default_weight = "drnas-l2", 1e-3
    replaces_arch_weight_decay = True

    def term(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * sum((p * p).sum() for p in model.arch_parameters())


# name -> a function of the run's settings giving the architecture loss (None: none)
REGULARIZERS = Registry("regularizer", "--regularizer", [("none", lambda cfg: None)])


def register_regularizer(name: str, loss: Any, *, overwrite: bool = False) -> Any:
    """Adds an architecture loss, chosen with `--regularizer name`: a function (or callable
    object) of the supernet giving a scalar, or a `Regularizer` subclass (made per run at
    `--reg_weight` or its `default_weight`). The alpha step then minimises L_val +
    loss(model): its alpha gradient is added to the first- or second-order gradient of L_val
    (a term of the alphas alone has no second-order part). It runs at every alpha step,
    inside the step's CUDA graph where one is captured. Its `set_epoch(epoch, epochs)` and
    `scalars()`, where it has them, hear each epoch."""
    if isinstance(loss, type) and issubclass(loss, Regularizer):
        def make(cfg: Any) -> Regularizer:
            return loss(getattr(cfg, "reg_weight", None))
    elif callable(loss):
        def make(cfg: Any) -> Any:
            return loss
    else:
        raise ValueError(f"regularizer {name!r}: give a function of the supernet or a "
                         f"Regularizer subclass, not {type(loss).__name__}")
    REGULARIZERS.register(name, make, overwrite=overwrite)
    return loss


for _published in (BetaDecay, ZeroOne, DirichletKL, DirichletL2):
    register_regularizer(_published.name, _published)


def build_regularizer(name: str, weight: float | None = None) -> Any:
    """The architecture loss of `--regularizer name` (None for none), at `weight` or its own
    (a Regularizer's)."""
    from types import SimpleNamespace

    return REGULARIZERS.lookup(name)(SimpleNamespace(regularizer=name, reg_weight=weight))


class SumOfLosses:
    """Architecture losses added up (`--regularizer` and the collapse pieces' terms); the epoch
    hook reaches each."""

    def __init__(self, *losses):
        self.losses = [loss for loss in losses if loss is not None]

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return sum(loss(model) for loss in self.losses)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        schedule.set_epoch(self.losses, epoch, epochs)

    def scalars(self) -> dict[str, float]:
        return schedule.scalars(self.losses)


def combine(*losses):
    """One architecture loss of several (None where there is none)."""
    present = [loss for loss in losses if loss is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else SumOfLosses(*present)


def check_flags(cfg) -> None:
    """One UserError for a combination of `--mixing` and `--regularizer` flags (of a
    darts.search.SearchConfig) that cannot run or means nothing."""
    from darts.errors import UserError
    from darts.methods.mixing import MIXINGS, build_mixing

    MIXINGS.lookup(cfg.mixing)
    REGULARIZERS.lookup(cfg.regularizer)
    rule = build_mixing(cfg)
    single = rule is not None and rule.single_path  # one op per edge (GDAS)
    m = f"--mixing {cfg.mixing}"
    published = ", ".join(n for n in REGULARIZERS if n != "none")
    checks = [
        (single and cfg.partial_channels > 1,
         f"{m} runs one op per edge; a PC-DARTS edge (--partial_channels) mixes by "
         "design: leave --partial_channels out"),
        (single and cfg.checkpoint_cells,
         f"{m} keeps one op per edge's activations already; leave "
         "--checkpoint_cells out"),
        (single and cfg.compile,
         f"{m} picks each step's ops in Python (a new graph per choice); leave "
         "--compile out"),
        (rule is not None and not rule.cuda_graphs and cfg.cuda_graphs == "on",
         f"--cuda_graphs on: --mixing {cfg.mixing} draws a sample per step (or keeps Python-side "
         f"state) that a captured graph would replay unchanged; use --cuda_graphs auto (off "
         f"for it) or off"),
        (not (0 < cfg.tau_min <= cfg.tau_max),
         f"--tau_min {cfg.tau_min} --tau_max {cfg.tau_max}: need 0 < tau_min <= tau_max"),
        (cfg.reg_weight is not None and cfg.regularizer == "none",
         f"--reg_weight weights a --regularizer; name one ({published})"),
        (cfg.reg_weight is not None and cfg.reg_weight < 0,
         f"--reg_weight {cfg.reg_weight}: must be 0 or more"),
        (cfg.regularizer == "zero-one" and cfg.mixing != "fairdarts",
         "--regularizer zero-one pushes FairDARTS's sigmoid weights to 0 or 1: add "
         "--mixing fairdarts"),
        (cfg.regularizer == "drnas-kl" and cfg.mixing != "drnas",
         "--regularizer drnas-kl pulls DrNAS's Dirichlet towards its prior: add --mixing drnas"),
        (cfg.regularizer in ("drnas-kl", "drnas-l2") and cfg.arch_weight_decay != 1e-3,
         f"--arch_weight_decay {cfg.arch_weight_decay} with --regularizer {cfg.regularizer}: "
         f"DrNAS's term replaces Adam's weight decay on the alphas (off); leave "
         f"--arch_weight_decay out and set the term's weight with --reg_weight"),
    ]
    for bad, message in checks:
        if bad:
            raise UserError(message)
