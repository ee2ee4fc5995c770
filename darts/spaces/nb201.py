"""NAS-Bench-201's cell space (Dong & Yang, ICLR 2020), also NATS-Bench's topology space (TSS).

A cell is a DAG of 4 nodes: node 0 is the cell's input, and node i (1..3) sums one op applied
to every earlier node, so 6 edges; the cell's output is node 3. Each edge holds one of 5 ops:

    none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3

(`nor_conv_kxk` is ReLU -> conv kxk -> BatchNorm; the pooling is 3x3, stride 1, without a
BatchNorm after it), 5^6 = 15,625 cells. The benchmark writes a cell as

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

one `+`-separated group per node 1..3, each listing `op~input` for its inputs 0..i-1 in order.
`NB201Arch` parses, validates and writes that string (a round trip); its `ops` are in the edge
order of `EDGES`, which is also the row order of the supernet's alphas (6 x 5).

The macro network (`NB201Network`, the benchmark's): a 3x3 conv stem of 16 channels and
BatchNorm, three stages of N = 5 cells at 16, 32 and 64 channels joined by residual reduction
blocks (ReLU-conv3x3 stride 2, ReLU-conv3x3, plus a 2x2 average pool and 1x1 conv shortcut),
BatchNorm -> ReLU, global average pooling and a linear classifier. Its supernet
(`NB201SearchNetwork`) is the same network with every edge a mixed op over the 5 ops; the
argmax over each edge's weights, `none` included, decodes it (the benchmark's protocol).
`forward_path(x, arch)` runs one cell's ops alone in the supernet's weights (a single path of
the one-shot model): it equals `forward(x, path_weights(arch))`, the one-hot mixture.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.errors import UserError
from darts.ops import ReLUConvBN
from darts.primitives import OPS, build_op, register_op
from darts.supernet import NetworkParameters, channel_shuffle, normalized_edge_weights

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                              "avg_pool_3x3")
NODES = 4
# (target node, input node) of every edge, node by node: the alphas' rows, the string's order.
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, NODES) for j in range(i))
NUM_ARCHS = len(NB201_OPS) ** len(EDGES)  # 15,625

# The benchmark's ReLU -> conv -> BatchNorm ops (AutoDL-Projects, cell_operations.py).
if "nor_conv_1x1" not in OPS:
    register_op("nor_conv_1x1", lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine))
if "nor_conv_3x3" not in OPS:
    register_op("nor_conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))


class ArchStringError(UserError):
    """A NAS-Bench-201 architecture string that cannot be read."""


@dataclass(frozen=True)
class NB201Arch:
    """One cell: the op of each edge, in the order of EDGES."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if len(self.ops) != len(EDGES):
            raise ArchStringError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got "
                                  f"{len(self.ops)} ops")
        for op in self.ops:
            if op not in NB201_OPS:
                raise ArchStringError(f"unknown NAS-Bench-201 op {op!r}; the ops are "
                                      f"{', '.join(NB201_OPS)}")

    @classmethod
    def from_string(cls, text: str, where: str = "arch string") -> NB201Arch:
        """Parses the benchmark's string; one ArchStringError naming what is wrong."""
        if not isinstance(text, str):
            raise ArchStringError(f"{where}: expected a string like "
                                  f"{EXAMPLE!r}, got {type(text).__name__}")
        shown = text if len(text) <= 120 else text[:117] + "..."
        groups = text.strip().split("+")
        if len(groups) != NODES - 1:
            raise ArchStringError(f"{where} {shown!r}: expected {NODES - 1} '+'-separated node "
                                  f"groups, e.g. {EXAMPLE!r}")
        ops = []
        for node, group in enumerate(groups, start=1):
            if not (group.startswith("|") and group.endswith("|")) or len(group) < 2:
                raise ArchStringError(f"{where} {shown!r}: node {node}'s group {group!r} must "
                                      f"be written between '|' marks")
            entries = group[1:-1].split("|")
            if len(entries) != node:
                raise ArchStringError(f"{where} {shown!r}: node {node} takes {node} input(s) "
                                      f"(0..{node - 1}), got {len(entries)}")
            for j, entry in enumerate(entries):
                op, sep, index = entry.partition("~")
                if not sep or index != str(j):
                    raise ArchStringError(f"{where} {shown!r}: node {node}'s entry {entry!r} "
                                          f"must be 'op~{j}' (inputs in order)")
                if op not in NB201_OPS:
                    raise ArchStringError(f"{where} {shown!r}: unknown op {op!r}; the ops are "
                                          f"{', '.join(NB201_OPS)}")
                ops.append(op)
        return cls(tuple(ops))

    def to_dict(self) -> dict[str, str]:
        return {"arch": self.to_string()}

    def to_string(self) -> str:
        groups, k = [], 0
        for node in range(1, NODES):
            groups.append("|" + "|".join(f"{self.ops[k + j]}~{j}" for j in range(node)) + "|")
            k += node
        return "+".join(groups)

    def __str__(self) -> str:
        return self.to_string()

    def node_inputs(self, node: int) -> list[tuple[str, int]]:
        """(op, input node) of every edge into `node` (1..3)."""
        return [(op, j) for op, (i, j) in zip(self.ops, EDGES, strict=True) if i == node]


def read_arch_json(path: str | Path, where: str) -> Any:
    """The JSON data of an arch file (at most 1 MiB); a UserError if it cannot be read."""
    path = Path(path)
    try:
        if path.stat().st_size > 1 << 20:
            raise UserError(f"{where} {path}: too large for an arch file")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{where} {path}: not a readable arch JSON file ({type(e).__name__})") from None


def load_arch(spec: Any, where: str) -> NB201Arch:
    """A NAS-Bench-201 cell: an arch string, {"arch": ...}, or a JSON file holding that."""
    if isinstance(spec, str) and spec.endswith(".json"):
        where, spec = f"{where} {Path(spec)}", read_arch_json(spec, where)
    if isinstance(spec, dict):
        spec = spec.get("arch")
    elif not isinstance(spec, str):
        spec = None
    return NB201Arch.from_string(spec, where=where)


EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def all_archs() -> Iterator[NB201Arch]:
    """Every cell of the space (15,625), the ops of the edges varying fastest at the end."""
    for ops in itertools.product(NB201_OPS, repeat=len(EDGES)):
        yield NB201Arch(ops)


# -- what multi-trial strategies need of the space (see darts.spaces) ---------------------------
NAME = "nb201"


def to_text(arch: NB201Arch) -> str:
    return arch.to_string()


def parse(text: str) -> NB201Arch:
    return NB201Arch.from_string(text)


def save(arch: NB201Arch, path: str | Path) -> None:
    """The cell as the JSON file `train_final.py --space nb201 --arch` takes."""
    from darts.train.files import save_json
    save_json(arch.to_dict(), path)


def all_candidates() -> Iterator[NB201Arch]:
    """Every candidate of the space (`python -m darts.proxies score --all`)."""
    return all_archs()


def sample(rng) -> NB201Arch:
    """A cell drawn uniformly from the 15,625 (`rng`: a random.Random)."""
    return NB201Arch(tuple(rng.choice(NB201_OPS) for _ in EDGES))


def mutate(arch: NB201Arch, rng, rate: float | None = None) -> NB201Arch:
    """One edge's op replaced by a different op, the edge and the op uniform (Real et al.
    2019's mutation, as NAS-Bench-201 applies it); with `rate`, each edge independently with
    that probability (a genetic algorithm's per-gene mutation)."""
    ops = list(arch.ops)
    edges = ([rng.randrange(len(ops))] if rate is None
             else [e for e in range(len(ops)) if rng.random() < rate])
    for e in edges:
        ops[e] = rng.choice([op for op in NB201_OPS if op != ops[e]])
    return NB201Arch(tuple(ops))


def crossover(a: NB201Arch, b: NB201Arch, rng) -> NB201Arch:
    """Uniform crossover: each edge's op from either parent with probability 1/2."""
    return NB201Arch(tuple(x if rng.random() < 0.5 else y for x, y in zip(a.ops, b.ops, strict=True)))


def decisions() -> list[tuple[str, ...]]:
    """The choices that make a cell, in order (a controller emits one per step)."""
    return [NB201_OPS for _ in EDGES]


def to_decisions(arch: NB201Arch) -> list[int]:
    """The index of each decision's choice (the inverse of from_decisions)."""
    return [NB201_OPS.index(op) for op in arch.ops]


def from_decisions(choices: list[int]) -> NB201Arch:
    return NB201Arch(tuple(NB201_OPS[k] for k in choices))


def encode(arch: NB201Arch) -> list[float]:
    """A one-hot vector of the ops of every edge (6 x 5 = 30 numbers), for surrogate models."""
    return [float(op == o) for op in arch.ops for o in NB201_OPS]


def _paths(target: int = NODES - 1, node: int = 0) -> list[list[int]]:
    """Every path of edges from node 0 to `target`, as lists of edge indices (into EDGES)."""
    if node == target:
        return [[]]
    out = []
    for e, (j, i) in enumerate(EDGES):
        if i == node:
            out += [[e, *rest] for rest in _paths(target, j)]
    return out


PATHS = _paths()  # 0->3, 0->1->3, 0->2->3, 0->1->2->3
_LIVE_OPS = tuple(op for op in NB201_OPS if op != "none")


def path_encode(arch: NB201Arch) -> list[float]:
    """BANANAS's path encoding (White et al., AAAI 2021, Section 4): one feature per possible
    path from the input to the output node with its ops (`none` cuts a path), 1 where the
    cell has it: 4 + 16 + 16 + 64 = 100 features."""
    out: list[float] = []
    for path in PATHS:
        ops = [arch.ops[e] for e in path]
        index = None
        if "none" not in ops:
            index = 0
            for op in ops:
                index = index * len(_LIVE_OPS) + _LIVE_OPS.index(op)
        out += [float(k == index) for k in range(len(_LIVE_OPS) ** len(path))]
    return out


def decode(weights: torch.Tensor, threshold: float | None = None) -> NB201Arch:
    """The benchmark protocol's cell of (6, 5) mixing weights: per edge the argmax over all
    five ops, `none` included. With `threshold` (FairDARTS's rule, darts.methods.mixing.Sigmoid)
    an edge keeps its strongest op other than `none` whose weight reaches the threshold, and
    is `none` where no op does."""
    if tuple(weights.shape) != (len(EDGES), len(NB201_OPS)):
        raise ValueError(f"expected ({len(EDGES)}, {len(NB201_OPS)}) weights, got "
                         f"{tuple(weights.shape)}")
    if threshold is None:
        return NB201Arch(tuple(NB201_OPS[k] for k in weights.argmax(dim=-1).tolist()))
    ops = []
    for row in weights.tolist():
        kept = [(w, -k) for k, w in enumerate(row) if NB201_OPS[k] != "none" and w >= threshold]
        ops.append(NB201_OPS[-max(kept)[1]] if kept else "none")  # ties: the lower column
    return NB201Arch(tuple(ops))


# -- the networks ------------------------------------------------------------------------------
class ResidualReduction(nn.Module):
    """The benchmark's reduction block between stages (a ResNet basic block at stride 2):
    ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus avgpool 2x2 -> conv 1x1 on the shortcut."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2),
                                        nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Cell(nn.Module):
    """A cell of one architecture: node i = sum over j < i of op_ij(node j); output node 3."""

    def __init__(self, arch: NB201Arch, C: int):
        super().__init__()
        self.edges = nn.ModuleList(build_op(op, C, 1, True) for op in arch.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NODES):
            nodes.append(sum(self.edges[e](nodes[j])
                             for e, (target, j) in enumerate(EDGES) if target == i))
        return nodes[-1]


class NB201MixedOp(nn.Module):
    """Eq. 2 on one edge: sum_o w_o * o(x) over the five ops (`none` adds nothing).

    With `partial_channels=K > 1` (PC-DARTS, Xu et al. 2020, Section 3.1) the ops see only the
    first C/K channels; the rest bypass them, and a channel shuffle with K groups interleaves
    the two parts."""

    def __init__(self, C: int, primitives: tuple[str, ...] = NB201_OPS, partial_channels: int = 1):
        super().__init__()
        self.partial_channels = partial_channels
        self.columns = tuple(k for k, op in enumerate(primitives) if op != "none")
        self.ops = nn.ModuleList(build_op(primitives[k], C // partial_channels, 1, False)
                                 for k in self.columns)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = self.partial_channels
        part = x if k == 1 else x[:, :x.shape[1] // k]
        mixed = sum(weights[c] * op(part) for c, op in zip(self.columns, self.ops, strict=True))
        return mixed if k == 1 else channel_shuffle(torch.cat([mixed, x[:, part.shape[1]:]], 1), k)

    def forward_op(self, x: torch.Tensor, column: int) -> torch.Tensor:
        """The op of column `column` alone: forward(x, w) for w one-hot on it (not `none`)."""
        if self.partial_channels > 1:
            raise ValueError("a single path runs whole ops: not with partial channels")
        return self.ops[self.columns.index(column)](x)

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor, column: int) -> torch.Tensor:
        """A hard sample (GDAS): only op `column` runs (none: zeros), times its weight, plus
        the other weights as scalars (value 0, their straight-through gradient)."""
        others = torch.cat([weights[:column], weights[column + 1:]]).sum()
        if column not in self.columns:
            return torch.zeros_like(x) + others
        return weights[column] * self.forward_op(x, column) + others


class NB201SearchCell(nn.Module):
    """The cell with every edge a mixed op; node i = sum over j < i of MixedOp_ij(node j)."""

    def __init__(self, C: int, primitives: tuple[str, ...] = NB201_OPS, partial_channels: int = 1):
        super().__init__()
        self.edges = nn.ModuleList(NB201MixedOp(C, primitives, partial_channels) for _ in EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                columns: tuple[int, ...] | None = None,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`columns`: a hard sample's op per edge (GDAS), each edge running only that op.
        `edge_weights` (PC-DARTS's edge normalisation): node i = sum over its edges of the
        edge's weight times its mixed op."""
        nodes = [x]
        for i in range(1, NODES):
            terms = []
            for e, (target, j) in enumerate(EDGES):
                if target != i:
                    continue
                out = (self.edges[e](nodes[j], weights[e]) if columns is None
                       else self.edges[e].forward_sampled(nodes[j], weights[e], columns[e]))
                terms.append(out if edge_weights is None else edge_weights[e] * out)
            nodes.append(sum(terms))
        return nodes[-1]

    def forward_path(self, x: torch.Tensor, columns: tuple[int, ...]) -> torch.Tensor:
        """The cell of one architecture (`columns`: each edge's op index in NB201_OPS): node i
        sums the chosen op of each edge into it; a `none` edge runs nothing and adds nothing
        (a node whose edges are all `none` is zero)."""
        none = NB201_OPS.index("none")
        nodes = [x]
        for i in range(1, NODES):
            node = 0
            for e, (target, j) in enumerate(EDGES):
                if target == i and columns[e] != none:
                    node = node + self.edges[e].forward_op(nodes[j], columns[e])
            nodes.append(torch.zeros_like(x) if isinstance(node, int) else node)
        return nodes[-1]


def _macro(C: int, N: int, make_cell) -> tuple[nn.Module, nn.ModuleList, int]:
    """The stem and the body shared by the network and its supernet: three stages of N cells
    at C, 2C and 4C channels joined by residual reductions; returns the last channel count."""
    stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
    body = nn.ModuleList()
    C_prev = C
    for stage in range(3):
        C_curr = C * 2 ** stage
        if stage:
            body.append(ResidualReduction(C_prev, C_curr))
        body.extend(make_cell(C_curr) for _ in range(N))
        C_prev = C_curr
    return stem, body, C_prev


class NB201Network(nn.Module):
    """The benchmark's network of one cell (C = 16, N = 5 on every data set)."""

    def __init__(self, arch: NB201Arch, num_classes: int = 10, C: int = 16, N: int = 5):
        super().__init__()
        self.arch = arch
        self.stem, self.body, C_last = _macro(C, N, lambda c: NB201Cell(arch, c))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU())
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        x = F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1)
        return self.classifier(x)


class NB201Topology:
    """What the collapse pieces ask of NAS-Bench-201's supernet (as of the DARTS cell's
    SearchSpace): one op matrix, six stride-1 edges, no input choice, `none` selectable."""

    kinds, none_selectable, ops, nodes, num_edges = ("cell",), True, NB201_OPS, 0, len(EDGES)

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold  # the mixing rule's decoding threshold (FairDARTS's)

    def stride_two(self, matrix: int, edge: int) -> bool:
        return False

    def decode_weights(self, weights: tuple, **meta: str) -> NB201Arch:
        return decode(weights[0], self.threshold)

    def pt_tune_epochs(self, interval: int) -> int:
        """DARTS-PT's tuning epochs on this cell (its code's count)."""
        return interval * (self.num_edges - 1)


class NB201SearchNetwork(NetworkParameters, nn.Module):
    """The supernet: the benchmark's network with every edge a mixed op, one (6, 5) alpha
    matrix shared by all cells (1e-3 * N(0, 1), as DARTS), softmax mixing (eq. 2).

    `partial_channels=K > 1`: PC-DARTS's partial channels on every edge (`NB201MixedOp`) and
    its edge normalisation: arch parameters `betas` (one per edge, 1e-3 * N(0, 1)); node i's
    input is sum_j softmax_j(betas of i's incoming edges) * edge_j(node j). The decoded cell
    is the alphas' (NAS-Bench-201 keeps every edge)."""

    topology = NB201Topology()  # what the collapse pieces ask of it

    def __init__(self, num_classes: int = 10, C: int = 16, N: int = 5, sampler=None,
                 partial_channels: int = 1):
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must be a positive divisor "
                             f"of C={C}")
        self.sampler = sampler  # darts.methods.mixing (GDAS, DrNAS, FairDARTS); None: softmax
        if sampler is not None:
            sampler.bind(NB201_OPS)
            self.topology = NB201Topology(sampler.threshold)
        self.partial_channels = partial_channels
        self.stem, self.body, C_last = _macro(
            C, N, lambda c: NB201SearchCell(c, partial_channels=partial_channels))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU())
        self.classifier = nn.Linear(C_last, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(NB201_OPS)))
        if partial_channels > 1:
            self.betas = nn.Parameter(1e-3 * torch.randn(len(EDGES)))

    def arch_parameters(self) -> list[nn.Parameter]:
        """[alphas], then PC-DARTS's [betas] with K > 1."""
        return [self.alphas, self.betas] if self.partial_channels > 1 else [self.alphas]

    def op_alpha_parameters(self) -> list[nn.Parameter]:
        """The arch parameters that weight ops (not PC-DARTS's edge betas)."""
        return [self.alphas]


    def mixing_weights(self, detach: bool = False, *,
                       forward: bool = False) -> tuple[torch.Tensor, ...]:
        """softmax(alpha); with a sampler, a sample in training with gradients on, else its
        deterministic weights (`forward`: those the supernet runs in evaluation)."""
        alphas = self.alphas.detach() if detach else self.alphas
        if self.sampler is not None:
            ops = self.sampler([alphas], sample=self.training and torch.is_grad_enabled(),
                               forward=forward)
        else:
            ops = (F.softmax(alphas, dim=-1),)
        if self.partial_channels == 1:
            return ops
        betas = self.betas.detach() if detach else self.betas
        return (*ops, normalized_edge_weights(betas, NODES - 1, inputs=1))

    def forward(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        weights = self.mixing_weights(forward=True) if weights is None else weights
        columns = getattr(weights, "columns", (None,))[0]  # a hard sample: one op per edge
        weights = tuple(weights)
        if len(weights) != (2 if self.partial_channels > 1 else 1):
            raise ValueError(f"expected the mixing weights mixing_weights() returns (ops"
                             f"{', edges' if self.partial_channels > 1 else ''}), got "
                             f"{len(weights)} tensors")
        w, e = weights[0], (weights[1] if len(weights) == 2 else None)
        x = self.stem(x)
        for block in self.body:
            x = block(x, w, columns, e) if isinstance(block, NB201SearchCell) else block(x)
        x = F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1)
        return self.classifier(x)

    def path_weights(self, arch: NB201Arch) -> tuple[torch.Tensor, ...]:
        """The mixing weights that select `arch`: each edge's row one-hot on its op."""
        w = torch.zeros_like(self.alphas.detach())
        w[range(len(EDGES)), to_decisions(arch)] = 1.0
        return (w,)

    def forward_path(self, x: torch.Tensor, arch: NB201Arch) -> torch.Tensor:
        """Logits of one architecture in the supernet's weights, running only its ops: equals
        `forward(x, path_weights(arch))`."""
        columns = tuple(to_decisions(arch))
        x = self.stem(x)
        for block in self.body:
            x = block.forward_path(x, columns) if isinstance(block, NB201SearchCell) else block(x)
        x = F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1)
        return self.classifier(x)

    def arch(self) -> NB201Arch:
        """The decoded cell of the current alphas (per edge the argmax, `none` included; with
        FairDARTS's mixing its threshold rule)."""
        with torch.no_grad():
            return self.topology.decode_weights(self.mixing_weights())


# -- what the runs need of the space (see darts.spaces) -----------------------------------------
RESULT_FILE = "arch.json"
SCORED_BY_TABLE = True  # a NAS-Bench-201 table (darts.benchmarks.nb201) lists every cell
NETWORK_SIZES = (16, 5)  # the benchmark's C and N (cells per stage)
MIN_LAYERS, LAYERS_NOUN = 1, "cells per stage"
# The one-shot evaluator's supernet training: NAS-Bench-201's random search with parameter
# sharing (AutoDL-Projects configs/nas-benchmark/algos/RANDOM.config): 250 epochs, C 16, N 5,
# Nesterov, weight decay 5e-4 (darts.evaluators.oneshot's docstring).
ONESHOT_DEFAULTS = {"epochs": 250, "layers": 5, "weight_decay": 5e-4, "nesterov": True}


def retrain_flags(path: str) -> list[str]:
    """The train_final.py flags that retrain the cell saved at `path`."""
    return ["--space", NAME, "--genotype", path]


def network(arch: NB201Arch, num_classes: int, channels: int, layers: int, **_: Any) -> nn.Module:
    """The benchmark's network of `arch` (C = channels, N = layers)."""
    return NB201Network(arch, num_classes, C=channels, N=layers)


def supernet(num_classes: int, channels: int, layers: int) -> nn.Module:
    """The one-shot supernet, whose `forward_path(x, arch)` runs one cell's ops alone."""
    return NB201SearchNetwork(num_classes, C=channels, N=layers)


# -- the gradient search of this space (darts.search) -------------------------------------------
from darts.spaces import darts_cells as _darts_cells  # noqa: E402 (the DARTS space's search, specialised)


class GradientSearch(_darts_cells.GradientSearch):
    """DARTS's gradient search of NAS-Bench-201's cell: its supernet (`NB201SearchNetwork`),
    the benchmark's argmax decoding, an arch string saved as {"arch": ...}."""

    noun, folder, result_file, kinds = "arch", "archs", RESULT_FILE, ("cell",)
    inline_in_history = True  # an arch string is one short line
    skips = "skip_connect"  # one cell, no normal one
    space_flags, paper_layers, cutout = ("--space", NAME), 5, False
    recipe, recipe_size = ("NAS-Bench-201's recipe",
                           "200 epochs, 3 stages of 5 cells of 16 channels")
    recipe_cost = "as every cell of its table was trained"
    # NAS-Bench-201's published DARTS runs (AutoDL-Projects, configs/nas-benchmark/algos/
    # DARTS.config: SGD 0.025 cosine to 0.001, momentum 0.9, Nesterov, weight decay 5e-4,
    # batch 64, 50 epochs; C = 16, N = 5; exps/NAS-Bench-201-algos/DARTS-V1.py: gradient clip
    # 5, Adam 3e-4 / 1e-3 on the alphas).
    defaults = {"layers": 5, "weight_decay": 5e-4, "nesterov": True}

    def check(self, cfg) -> None:
        from darts.primitives import PRIMITIVES

        for flag, ok in (("checkpoint_cells", not cfg.checkpoint_cells),
                         ("ops", _darts_cells.op_list(cfg.ops) == PRIMITIVES),
                         ("nodes", cfg.nodes == 4)):
            if not ok:
                raise UserError(f"--{flag}: not available with --space {NAME} (its cell has "
                                f"4 nodes and the benchmark's 5 ops; leave --{flag} out)")
        if cfg.perturb != "none" and cfg.partial_channels > 1:
            raise UserError(f"--perturb with --partial_channels on --space {NAME}: SDARTS "
                            f"perturbs the op weights only, which this supernet's mixing "
                            f"weights do not set apart from PC-DARTS's edge weights; leave one "
                            f"out")

    def search_ops(self, cfg) -> tuple[str, ...]:
        return NB201_OPS

    def supernet(self, cfg, num_classes: int, sampler):
        return NB201SearchNetwork(num_classes, C=cfg.init_channels, N=cfg.layers, sampler=sampler,
                                  partial_channels=cfg.partial_channels)

    def decode(self, model, meta):
        return model.arch()

    def from_dict(self, data, where):
        if not isinstance(data, dict) or not isinstance(data.get("arch"), str):
            raise UserError(f"{where}: no NAS-Bench-201 arch string in the run's history")
        return NB201Arch.from_string(data["arch"], where=where)

    def save(self, arch, path):
        save(arch, path)

    def skip_connects(self, arch) -> int:
        return arch.ops.count("skip_connect")

    def edge_names(self, model):
        return [f"{j}->{i}" for i, j in EDGES]

    def ops_of(self, model):
        return NB201_OPS

    def nodes(self, cfg):
        return NODES

    def describe(self, cfg):
        return f"3 stages of {cfg.layers} cells"


gradient = GradientSearch()


# -- the retraining of a cell (darts.final) -----------------------------------------------------
# NAS-Bench-201's training of every cell (Dong & Yang 2020, Section 2.3; AutoDL-Projects,
# configs/nas-benchmark/hyper-opts/200E.config): SGD 0.1 Nesterov, momentum 0.9, weight decay
# 5e-4, cosine to 0 over 200 epochs, batch 256, random crop and flip only; C = 16, N = 5.
NB201_RECIPE: dict[str, Any] = dict(
    init_channels=16, layers=5, batch_size=256, learning_rate=0.1, lr_schedule="cosine",
    momentum=0.9, weight_decay=5e-4, epochs=200, auxiliary=False, auxiliary_weight=0.0,
    cutout=False, cutout_length=16, drop_path_prob=0.0, grad_clip=0.0, label_smooth=0.0,
    lr_gamma=0.97, nesterov=True,
)


class FinalTraining(_darts_cells.FinalTraining):
    """train_final.py's NAS-Bench-201 cells: the benchmark's network and recipe."""

    noun, network_noun = "a NAS-Bench-201 cell", "NAS-Bench-201's network"
    result_files, saved_as, has_auxiliary = ("arch.json",), "arch.json", False
    arch_type: Any = NB201Arch  # its from_string reads a candidate's text

    def recipe(self, family: str) -> dict:
        return NB201_RECIPE

    def reads(self, data) -> bool:
        text = data.get("arch") if isinstance(data, dict) else data
        try:
            self.arch_type.from_string(text)
            return True
        except UserError:
            return False

    def claims(self, data) -> bool:
        return isinstance(data, dict) and "arch" in data and "~" in str(data["arch"])

    def load(self, spec, where: str) -> NB201Arch:
        return load_arch(spec, where)

    def check(self, cfg) -> None:
        for flag, ok in (("auxiliary", not cfg.auxiliary), ("drop_path_prob", not cfg.drop_path_prob)):
            if not ok:
                raise UserError(f"--{flag}: {self.network_noun} has no auxiliary head and no "
                                f"drop path; leave --{flag} out with --space {NAME}")

    def label(self, spec: str, arch: NB201Arch) -> str:
        return NAME


final = FinalTraining()
