"""The weight-sharing supernet of the DARTS search (Liu et al. 2019, Sections 2.1-2.2).

Every edge (i, j) of a cell is a MixedOp: the continuous relaxation of eq. 2,
o_bar(x) = sum_o softmax(alpha_ij)_o * o(x). A network stacks `layers` such cells (reduction
cells at 1/3 and 2/3 of the depth), all normal cells sharing `alphas_normal` and all
reduction cells `alphas_reduce`, each of shape (edges, ops) and initialised as 1e-3 * N(0, 1)
as in the reference code (quark0/darts, model_search.py).

The alphas are parameters of the network, but kept apart from the network weights:
`network_parameters()` and `arch_parameters()` are disjoint, and an optimizer takes one or
the other. `forward(x, weights)` accepts the mixing weights as an argument, so the weight
step can pass them detached (no alpha gradient, no stored op outputs for one) and tests can
pass any mixture, e.g. one-hot rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.genotype import Genotype
from darts.ops import FactorizedReduce, PoolBN, ReLUConvBN
from darts.primitives import build_op
from darts.space import DARTS_SPACE, SearchSpace

MixingWeights = tuple[torch.Tensor, torch.Tensor]


class MixedOp(nn.Module):
    """All ops of the space on one edge, mixed by one row of softmax(alpha).

    'none' is never built: its output is zero, so it adds nothing to the sum, but its alpha
    still takes part in the softmax and so still draws weight away from the other ops.
    Pooling ops are followed by a non-affine BatchNorm, as in the reference code, so that
    their output scale matches the convolutions' normalised outputs.
    """

    def __init__(self, C: int, stride: int, primitives: tuple[str, ...]):
        super().__init__()
        self.ops = nn.ModuleList()
        columns = []
        for k, name in enumerate(primitives):
            if name == "none":
                continue
            op = build_op(name, C, stride, affine=False)
            if isinstance(op, (nn.MaxPool2d, nn.AvgPool2d)):
                op = PoolBN(op, C)
            self.ops.append(op)
            columns.append(k)
        self.columns = tuple(columns)  # the alpha column of each built op

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        w = weights.unbind(0)
        out = w[self.columns[0]] * self.ops[0](x)
        for k, op in zip(self.columns[1:], self.ops[1:], strict=True):
            out = out + w[k] * op(x)
        return out


class SearchCell(nn.Module):
    """A cell with every edge a MixedOp; its output concatenates the last `multiplier` nodes."""

    def __init__(self, space: SearchSpace, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.steps = space.steps
        self.multiplier = space.multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        # In a reduction cell only the edges leaving the two cell inputs have stride 2.
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, space.primitives)
            for _, j in space.edges())

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        rows = weights.unbind(0)
        e = 0
        for _ in range(self.steps):
            node = self.edges[e](states[0], rows[e])
            for j in range(1, len(states)):
                node = node + self.edges[e + j](states[j], rows[e + j])
            e += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The supernet: stem (3*C channels), `layers` search cells, global pooling, classifier."""

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8,
                 space: SearchSpace = DARTS_SPACE, stem_multiplier: int = 3,
                 in_channels: int = 3):
        super().__init__()
        self.space = space
        self.layers = layers
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = SearchCell(space, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, space.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        shape = (space.num_edges, space.num_ops)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    # -- the two parameter groups -------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def named_network_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_network_parameters()]

    # -- the relaxation ----------------------------------------------------------------------
    def mixing_weights(self, detach: bool = False) -> MixingWeights:
        """softmax(alpha) over the ops of each edge, for the normal and the reduction cells."""
        a_normal, a_reduce = self.alphas_normal, self.alphas_reduce
        if detach:
            a_normal, a_reduce = a_normal.detach(), a_reduce.detach()
        return F.softmax(a_normal, dim=-1), F.softmax(a_reduce, dim=-1)

    def forward(self, x: torch.Tensor, weights: MixingWeights | None = None) -> torch.Tensor:
        w_normal, w_reduce = self.mixing_weights() if weights is None else weights
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))

    def genotype(self, **meta: str) -> Genotype:
        """The discrete architecture that the current alphas decode to (Section 2.4)."""
        with torch.no_grad():
            return self.space.decode(*self.mixing_weights(), **meta)
