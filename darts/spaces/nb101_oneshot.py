"""The weight-sharing search of NAS-Bench-101's space: NAS-Bench-1Shot1 (Zela, Siems & Hutter,
ICLR 2020; automl/nasbench-1shot1), whose one-shot model this rebuilds.

Its three search spaces are sub-spaces of NAS-Bench-101 in which every vertex (a *choice
block*) has a fixed number of parents (`SUBSPACES`; the input is node 0, the output the last):

    1: nodes 1-4 take 1, 2, 2, 2 parents, the output 2    (4 choice blocks)
    2: nodes 1-4 take 1, 1, 2, 2 parents, the output 3    (4 choice blocks)
    3: nodes 1-5 take 1, 1, 1, 2, 2 parents, the output 2 (5 choice blocks)

The one-shot model (their `optimizers/darts/model_search.py`):

- a 3x3 conv-BN-ReLU stem;
- `layers` cells (9), with 2x2 max-pooling that doubles the channels before the cells at
  layers // 3 and 2 * layers // 3;
- a ReLU-conv1x1-BN back to the last width, global average pooling and a linear classifier.

In a cell, each choice block k gets the cell's input through a 1x1 conv-BN-ReLU projection of
its own, together with the earlier blocks' outputs. Where its parents are a choice, these
inputs are mixed by a softmax over its candidate parents (`alphas_inputs`); otherwise they are
summed. The block applies a mixed op, the softmax of `alphas` (one row per block) over
conv3x3-bn-relu, conv1x1-bn-relu and maxpool3x3. The cell's output concatenates the input's
own projection and every block's output, each weighted by a softmax over `alphas_output`.

Decoding (their `eval_darts_one_shot_model_in_nasbench.py`): each block's op is its argmax,
each choice node keeps its top-k parents (k its number of parents), the output its top-k of
`alphas_output`. The cell is then the edges reached backwards from the output. Spaces 1 and 2
give a 6-vertex cell, which the benchmark's pruning and hash treat as the 7-vertex cell with a
dangling vertex that their code writes.

This differs from their code in three places:

- BatchNorm uses the benchmark's momentum (TensorFlow's 0.997, torch's 0.003), where their
  supernet passes 0.997 to torch;
- the 2x2 down-sampling pools without padding, as the benchmark's network (theirs pads by 1);
- ties in the top-k go to the lower index.

With `partial_channels` K > 1, each mixed op sees 1/K of the channels (PC-DARTS, channel
shuffle after).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.spaces.nb101_net import NB101_OPS, ConvBnRelu
from darts.supernet import NetworkParameters, channel_shuffle

# parents of nodes 1.. (the last: the output); nasbench-1shot1 search_space_{1,2,3}.py
SUBSPACES: dict[int, tuple[int, ...]] = {
    1: (1, 2, 2, 2, 2),
    2: (1, 1, 2, 2, 3),
    3: (1, 1, 1, 2, 2, 2),
}
OPS = tuple(NB101_OPS)  # conv3x3-bn-relu, conv1x1-bn-relu, maxpool3x3: the benchmark's order
Spec = tuple[list[list[int]], list[str]]


def steps_of(subspace: int) -> int:
    """The choice blocks of a search space."""
    return len(SUBSPACES[subspace]) - 1


def choice_nodes(subspace: int) -> list[int]:
    """The choice blocks (nodes 1..steps) whose parents are a choice: node j has j candidates
    (the input and nodes 1..j-1). The output's parents are always one (`alphas_output`)."""
    parents = SUBSPACES[subspace]
    return [j for j in range(1, len(parents)) if parents[j - 1] < j]


def top_parents(weights: Sequence[float], k: int) -> tuple[int, ...]:
    """The k candidates of largest weight (ties to the lower index), in increasing order."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    return tuple(sorted(order[:k]))


def cell_of(subspace: int, ops: Sequence[str], parents: dict[int, tuple[int, ...]]) -> Spec:
    """The NAS-Bench-101 spec (matrix, ops) of each block's op and each node's parents: the
    edges reached backwards from the output."""
    output = len(SUBSPACES[subspace])
    n = output + 1
    matrix = [[0] * n for _ in range(n)]
    stack, seen = [output], {output}
    while stack:
        node = stack.pop()
        for p in parents[node]:
            matrix[p][node] = 1
            if p and p not in seen:
                seen.add(p)
                stack.append(p)
    return matrix, ["input", *ops, "output"]


def decode(subspace: int, weights: Sequence[torch.Tensor]) -> Spec:
    """The spec of mixing weights (ops, output, then each choice node's inputs)."""
    ops_w, out_w, *in_ws = [w.detach().float().cpu() for w in weights]
    needs = SUBSPACES[subspace]
    parents: dict[int, tuple[int, ...]] = {}
    choice = dict(zip(choice_nodes(subspace), range(len(in_ws)), strict=True))
    for j in range(1, len(needs)):
        parents[j] = (top_parents(in_ws[choice[j]].tolist(), needs[j - 1]) if j in choice
                      else tuple(range(j)))
    parents[len(needs)] = top_parents(out_w.tolist(), needs[-1])
    ops = [OPS[k] for k in ops_w.argmax(-1).tolist()]
    return cell_of(subspace, ops, parents)


class MixedOp(nn.Module):
    """A choice block's op: conv3x3-bn-relu, conv1x1-bn-relu and maxpool3x3 weighted (eq. 2);
    with K > 1 on 1/K of the channels, the rest passed around (PC-DARTS)."""

    def __init__(self, C: int, partial_channels: int = 1):
        super().__init__()
        c = C // partial_channels
        self.k = partial_channels
        self.ops = nn.ModuleList([ConvBnRelu(c, c, 3), ConvBnRelu(c, c, 1),
                                  nn.MaxPool2d(3, stride=1, padding=1)])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))
        c = x.shape[1] // self.k
        mixed = sum(w * op(x[:, :c]) for w, op in zip(weights, self.ops, strict=True))
        return channel_shuffle(torch.cat([mixed, x[:, c:]], dim=1), self.k)


class OneShotCell(nn.Module):
    def __init__(self, C_in: int, C: int, steps: int, partial_channels: int = 1):
        super().__init__()
        self.projections = nn.ModuleList([ConvBnRelu(C_in, C, 1) for _ in range(steps + 1)])
        self.blocks = nn.ModuleList([MixedOp(C, partial_channels) for _ in range(steps)])

    def forward(self, s0: torch.Tensor, ops_w: torch.Tensor, out_w: torch.Tensor,
                in_ws: Sequence[torch.Tensor | None]) -> torch.Tensor:
        states: list[torch.Tensor] = []
        for k, block in enumerate(self.blocks):
            inputs = [self.projections[k](s0), *states]
            w = in_ws[k]
            x = sum(inputs) if w is None else sum(
                wi * t for wi, t in zip(w, inputs, strict=True))
            states.append(block(x, ops_w[k]))
        states.insert(0, self.projections[-1](s0))
        return torch.cat([w * t for w, t in zip(out_w, states, strict=True)], dim=1)


class Topology:
    """What the collapse pieces ask of the supernet: one op matrix (a row per choice block),
    no `none`, no input choice among the op rows."""

    kinds, none_selectable, ops, nodes = ("cell",), False, OPS, 0

    def __init__(self, subspace: int, make_cell: Callable[..., Any]):
        self.subspace, self.num_edges, self.make_cell = subspace, steps_of(subspace), make_cell

    def stride_two(self, matrix: int, edge: int) -> bool:
        return False

    def decode_weights(self, weights: tuple, **meta: str) -> Any:
        return self.make_cell(*decode(self.subspace, weights))


class NB101SearchNetwork(NetworkParameters, nn.Module):
    """NAS-Bench-1Shot1's one-shot model of search space `subspace` (see the module's text)."""

    def __init__(self, num_classes: int = 10, C: int = 16, layers: int = 9, subspace: int = 3,
                 sampler: Any = None, partial_channels: int = 1,
                 make_cell: Callable[..., Any] = lambda matrix, ops: (matrix, ops)):
        """`make_cell(matrix, ops)`: the candidate of a decoded spec (NAS-Bench-101's cell)."""
        super().__init__()
        if subspace not in SUBSPACES:
            raise ValueError(f"search space {subspace}: NAS-Bench-1Shot1 has 1, 2 and 3")
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide C={C}")
        steps = steps_of(subspace)
        self.subspace, self.layers, self.sampler = subspace, layers, sampler
        self.topology = Topology(subspace, make_cell)
        if sampler is not None:
            sampler.bind(OPS)
        self.stem = ConvBnRelu(3, C, 3)
        self.cells = nn.ModuleList()
        C_prev = C_curr = C
        for i in range(layers):
            if i in self.downsampled():
                C_curr *= 2
            C_in = C_prev if i == 0 else C_prev * (steps + 1)
            self.cells.append(OneShotCell(C_in, C_curr, steps, partial_channels))
            C_prev = C_curr
        self.postprocess = nn.Sequential(nn.ReLU(), nn.Conv2d(C_prev * (steps + 1), C_curr, 1,
                                                              bias=False),
                                         nn.BatchNorm2d(C_curr, affine=False))
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(steps, len(OPS)))
        self.alphas_output = nn.Parameter(1e-3 * torch.randn(steps + 1))
        self.alphas_inputs = nn.ParameterList(
            [nn.Parameter(1e-3 * torch.randn(j)) for j in choice_nodes(subspace)])

    def downsampled(self) -> tuple[int, int]:
        return (self.layers // 3, 2 * self.layers // 3)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas, self.alphas_output, *self.alphas_inputs]

    def op_alpha_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def mixing_weights(self, detach: bool = False, *,
                       forward: bool = False) -> tuple[torch.Tensor, ...]:
        """(op weights: softmax, or the mixing rule's; the output's; each choice node's
        inputs'), all softmax but the ops."""
        arch = [p.detach() if detach else p for p in self.arch_parameters()]
        if self.sampler is not None:
            ops = self.sampler([arch[0]], sample=self.training and torch.is_grad_enabled(),
                               forward=forward)[0]
        else:
            ops = F.softmax(arch[0], dim=-1)
        return (ops, *(F.softmax(a, dim=-1) for a in arch[1:]))

    def _input_weights(self, in_ws: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        steps = steps_of(self.subspace)
        chosen = iter(in_ws)
        choice = set(choice_nodes(self.subspace))
        return [next(chosen) if j in choice else None for j in range(1, steps + 1)]

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        weights = tuple(self.mixing_weights(forward=True) if weights is None else weights)
        ops_w, out_w, *in_ws = weights
        per_block = self._input_weights(in_ws)
        s = self.stem(x)
        for i, cell in enumerate(self.cells):
            if i in self.downsampled():
                s = F.max_pool2d(s, 2, 2)
            s = cell(s, ops_w, out_w, per_block)
        s = self.postprocess(s)
        return self.classifier(s.mean((2, 3)))

    def arch(self) -> Any:
        """The decoded cell of the current alphas (`make_cell`'s)."""
        with torch.no_grad():
            return self.topology.decode_weights(self.mixing_weights())
