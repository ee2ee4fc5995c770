"""Changes to the supernet: DARTS-'s auxiliary skip, P-DARTS's dropout on skip-connections,
and the seam they (and DARTS-PT's projection) act through.

DARTS- (Chu et al., ICLR 2021, Section 3.2; Meituan-AutoML/DARTS-, src/search/model_search.py):
every edge's mixed output gets an auxiliary skip, o_bar(x) + beta * x, with beta decaying
linearly from beta0 = 1 to 0 over the search (their `--skip_beta 1 --decay linear`:
beta_t = beta0 * (T - t) / T at epoch t, 0-based, of T). On an edge whose skip_connect is the
identity (stride 1) beta * x is skip_connect's own output times beta, so the auxiliary skip
is exactly skip_connect's mixing weight raised by beta in the forward (`AuxiliarySkip`);
the alphas, the decoding and the statistics keep the plain softmax. Stride-2 edges (a
reduction cell's edges from its two inputs) get none here: the authors' code gives each a
FactorizedReduce of its own weights there, which this supernet does not have (a deviation,
docs/collapse-pieces.md).

P-DARTS (Chen et al., ICCV 2019, Section 3.3; chenxin061/pdarts, model_search.py and
train_search.py): dropout on the output of every skip-connection that is the identity
(`nn.Sequential(Identity(), nn.Dropout(p))`, as their MixedOp builds it), with the rate
decayed per epoch as their stage loop does: p0 * (T - t - 1) / T while the alphas are frozen
(epochs t < W, their eps_no_arch), then p0 * exp(-0.2 * (t - W)).

`WeightTransforms` is the seam: a forward pre-hook on the supernet that maps the mixing
weights of every forward (the weight step's, the alpha step's, the virtual step's under
functional_call, evaluation's) through a list of functions. No supernet or accel code
changes: a fast cell executor takes weights, not the rule that made them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from darts.ops import Identity

Weights = tuple[torch.Tensor, ...]
Transform = Callable[[Weights], Weights]


class WeightTransforms:
    """Maps the mixing weights of every `model(x[, weights])` call through `transforms`, in
    order (weights left out are the model's `mixing_weights()`)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.transforms: list[Transform] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not self.transforms:
            return None
        x, *rest = args
        weights = kwargs.pop("weights", rest[0] if rest else None)
        weights = module.mixing_weights() if weights is None else tuple(weights)
        return (x, self(weights)), kwargs

    def __call__(self, weights: Weights) -> Weights:
        for transform in self.transforms:
            weights = transform(weights)
        return weights

    def remove(self) -> None:
        self.handle.remove()


def skip_rows(model: nn.Module) -> list[torch.Tensor]:
    """Per op-weight matrix of the supernet (normal, reduce; NB201's one cell): a 0/1 mask,
    1 at (edge, skip_connect) where the edge's skip_connect is the identity (stride 1).
    Raises ValueError where the space has no skip_connect."""
    topology = model.topology
    ops = topology.ops
    if "skip_connect" not in ops:
        raise ValueError("the space has no skip_connect op")
    col = ops.index("skip_connect")
    masks = []
    for matrix in range(len(topology.kinds)):  # the DARTS cell: a reduction cell's edges
        m = torch.zeros(topology.num_edges, len(ops))  # from its inputs have stride 2
        for e in range(topology.num_edges):
            if not topology.stride_two(matrix, e):
                m[e, col] = 1.0
        masks.append(m)
    return masks


class AuxiliarySkip:
    """DARTS-'s o_bar(x) + beta * x on every stride-1 edge, as skip_connect's weight + beta."""

    def __init__(self, model: nn.Module, beta0: float):
        self.beta0 = beta0
        self.beta = beta0
        self.masks = skip_rows(model)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.beta = beta_at(epoch, epochs, self.beta0)

    def __call__(self, weights: Weights) -> Weights:
        if self.beta == 0:
            return weights
        k = len(self.masks)
        out = tuple(w + self.beta * m.to(w.device, w.dtype)
                    for w, m in zip(weights[:k], self.masks, strict=True))
        return out + tuple(weights[k:])


def beta_at(epoch: int, epochs: int, beta0: float) -> float:
    """DARTS-'s linear decay (their DecayScheduler, 'linear'): beta0 * (T - t) / T."""
    return beta0 * (epochs - epoch) / epochs


def add_skip_dropout(model: nn.Module) -> list[nn.Dropout]:
    """Wraps every identity skip-connection of the supernet's mixed ops in
    Sequential(Identity(), Dropout(0)), as P-DARTS's MixedOp does; returns the dropouts (their
    rate is set per epoch). Call before `darts.accel.accelerate`, which then runs the wrapped
    op through its own forward."""
    dropouts = []
    for m in model.modules():
        ops = getattr(m, "ops", None)
        if not isinstance(ops, nn.ModuleList) or not hasattr(m, "columns"):
            continue
        for i, op in enumerate(ops):
            if type(op) is Identity:
                drop = nn.Dropout(0.0)
                ops[i] = nn.Sequential(op, drop)
                dropouts.append(drop)
    return dropouts


def skip_dropout_at(epoch: int, epochs: int, p0: float, warmup: int) -> float:
    """P-DARTS's rate at epoch t (0-based) of T: p0 * (T - t - 1) / T during the W warm-up
    epochs, then p0 * exp(-0.2 * (t - W)) (train_search.py, scale_factor = 0.2)."""
    if epoch < warmup:
        return p0 * (epochs - epoch - 1) / epochs
    return p0 * math.exp(-(epoch - warmup) * 0.2)
