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

Two memory options, both off by default (the network is then exactly the DARTS one):

- `partial_channels=K > 1`: PC-DARTS (Xu et al. 2020, Section 3). Partial channel
  connections: each edge sends only the first C/K channels of its input through the mixed
  op (built with C/K channels); the other channels bypass it (through a 2x2 max pool on
  stride-2 edges) and a channel shuffle with K groups interleaves the two parts, so that
  other channels are sampled in the next cell. Edge normalisation: per-edge architecture
  parameters `betas_normal` and `betas_reduce` (shape (edges,), 1e-3 * N(0, 1)); node j's
  input is sum_i softmax_i(betas of j's incoming edges) * edge_i(x_i). The betas are arch
  parameters, `mixing_weights()` returns (ops normal, ops reduce, edges normal, edges
  reduce), and decoding ranks edges by op weight x edge weight. K = 4 keeps 0.32x the
  activations of the DARTS supernet (16 channels, 8 cells, 32x32 inputs).
- `checkpoint_cells=True`: in training mode with grad enabled each cell runs under
  non-reentrant activation checkpointing (torch.utils.checkpoint): only the cell's inputs
  are kept, and its forward is recomputed in the backward. Gradients and BatchNorm running
  statistics equal those without it (the recomputation updates scratch copies of the
  running statistics, thrown away). The cell's parameters are passed to the checkpoint explicitly, so the
  recomputation uses the weights of the forward, also under `torch.func.functional_call`
  (the architect's virtual weights). Double backpropagation (`create_graph=True`, the
  architect's exact Hessian) works: autograd re-attaches each recomputed activation to the
  forward's graph, and the second backward recomputes the cell once more. What a forward
  keeps drops to the cells' inputs (0.012x at the size above); the backward's peak adds one
  cell's activations, and each step costs one more forward of every cell.

`forward_path(x, genotype)` runs one candidate of the space through the supernet's weights:
on each edge the genotype chooses, only the chosen op of that edge's MixedOp (the single-path
one-shot model of random search with weight sharing, Li & Talwalkar 2019, and SPOS, Guo et
al. 2020). It equals `forward(x, path_weights(genotype))`, the relaxation at one-hot weights,
without computing any of the ops those weights multiply by zero.

`saved_activation_bytes(fn)` measures what a forward keeps for its backward.

This module is the definition. `darts.accel.accelerate(model)` installs on each cell an
executor that computes the same sums in fewer passes; a cell asks it first and runs the
definition below where there is none or where it declines (an op or mixing rule it does not
know returns None).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from darts.cell_topology import DARTS_SPACE, SearchSpace
from darts.genotype import Genotype
from darts.ops import FactorizedReduce, PoolBN, ReLUConvBN
from darts.primitives import build_op

# (ops normal, ops reduce), or with partial channels (ops normal, ops reduce, edges normal,
# edges reduce): softmax(alpha) rows and the normalised edge weights.
MixingWeights = tuple[torch.Tensor, ...]

def softmax_rows(alphas: torch.Tensor) -> torch.Tensor:
    """DARTS's relaxation (eq. 2): softmax over the ops of each edge."""
    return F.softmax(alphas, dim=-1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel g * (C / groups) + c moves to c * groups + g.
    The result keeps x's memory format (channels-last stays channels-last)."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    out.view(n, c // groups, groups, h, w).copy_(
        x.reshape(n, groups, c // groups, h, w).transpose(1, 2))
    return out


def normalized_edge_weights(betas: torch.Tensor, steps: int, inputs: int = 2) -> torch.Tensor:
    """PC-DARTS edge normalisation: the softmax of the betas over each node's incoming edges
    (intermediate node i has i + `inputs` of them: 2 in the DARTS cell, 1 in NAS-Bench-201's),
    concatenated in edge order."""
    sizes = [i + inputs for i in range(steps)]
    return torch.cat([F.softmax(b, dim=-1) for b in betas.split(sizes)])



class MixedOp(nn.Module):
    """All ops of the space on one edge, mixed by one row of softmax(alpha) (eq. 2).

    'none' is never built: its output is zero, so it adds nothing to the sum, but its alpha
    still takes part in the softmax and so still draws weight away from the other ops.
    Pooling ops are followed by a non-affine BatchNorm, as in the reference code, so that
    their output scale matches the convolutions' normalised outputs.

    With `partial_channels=K > 1` the ops see only the first C/K channels (PC-DARTS); the
    rest bypass them and the two parts are channel-shuffled with K groups.
    """

    def __init__(self, C: int, stride: int, primitives: tuple[str, ...],
                 partial_channels: int = 1):
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must be a positive divisor "
                             f"of the edge's {C} channels")
        self.partial_channels = partial_channels
        self.stride = stride
        C_op = C // partial_channels
        self.ops = nn.ModuleList()
        columns = []
        for k, name in enumerate(primitives):
            if name == "none":
                continue
            try:
                op = build_op(name, C_op, stride, affine=False)
            except ValueError as e:
                if partial_channels == 1:
                    raise
                raise ValueError(f"partial_channels={partial_channels}: op {name!r} on a "
                                 f"stride-{stride} edge gets {C_op} of {C} channels: {e}") from e
            if isinstance(op, (nn.MaxPool2d, nn.AvgPool2d)):
                op = PoolBN(op, C_op)
            self.ops.append(op)
            columns.append(k)
        self.columns = tuple(columns)  # the alpha column of each built op
        if partial_channels > 1 and stride == 2:
            # PC-DARTS halves the bypassed channels with a 2x2 max pool; ceil_mode matches the
            # ops' output size on odd inputs too (identical to PC-DARTS on even ones).
            self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_o weights[o] * o(x) (eq. 2); with partial channels, over the first C/K
        channels, then shuffled with the bypassed rest."""
        k = self.partial_channels
        c = x.size(1) // k
        mixed = sum(weights[col] * op(x[:, :c] if k > 1 else x)
                    for col, op in zip(self.columns, self.ops, strict=True))
        if k == 1:
            return mixed
        bypass = x[:, c:]
        if hasattr(self, "bypass_pool"):
            bypass = self.bypass_pool(bypass)
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), k)

    def forward_op(self, x: torch.Tensor, column: int) -> torch.Tensor:
        """The op of alpha column `column` alone (a single path; without partial channels):
        forward(x, w) for w one-hot on that column, running only that op."""
        return self.ops[self.columns.index(column)](x)

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor, column: int) -> torch.Tensor:
        """A hard sample (GDAS, darts.methods.mixing): `weights` one-hot in value on `column`;
        only that op runs (none: zeros), times its weight, plus the other weights as scalars
        (value 0) that carry their straight-through gradient, as GDAS's code (forward_gdas)."""
        others = torch.cat([weights[:column], weights[column + 1:]]).sum()
        if column not in self.columns:  # none
            s = self.stride
            return torch.zeros_like(x[:, :, ::s, ::s]) + others
        return weights[column] * self.forward_op(x, column) + others


class SearchCell(nn.Module):
    """A cell with every edge a MixedOp; its output concatenates the last `multiplier` nodes."""

    def __init__(self, space: SearchSpace, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, partial_channels: int = 1):
        super().__init__()
        self.reduction = reduction
        self.steps = space.steps
        self.multiplier = space.multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edge_list = tuple(space.edges())  # (target node, source state) of each edge
        # In a reduction cell only the edges leaving the two cell inputs have stride 2.
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, space.primitives, partial_channels)
            for _, j in self.edge_list)
        # A faster way to run this cell, installed by darts.accel.accelerate (None: none).
        self.executor = None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None,
                columns: tuple[int, ...] | None = None) -> torch.Tensor:
        """node_j = sum over its edges e = (i -> j) of MixedOp_e(s_i) (with PC-DARTS's edge
        normalisation, each edge weighted by `edge_weights[e]`). `columns`: a hard sample's
        op per edge (GDAS), each edge running only that op (`MixedOp.forward_sampled`)."""
        if self.executor is not None and columns is None:
            out = self.executor(s0, s1, weights, edge_weights)
            if out is not None:
                return out
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for j in range(self.steps):
            node = 0
            for e, (target, i) in enumerate(self.edge_list):
                if target == j:
                    y = (self.edges[e](states[i], weights[e]) if columns is None
                         else self.edges[e].forward_sampled(states[i], weights[e], columns[e]))
                    node = node + (y if edge_weights is None else edge_weights[e] * y)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)

    def forward_path(self, s0: torch.Tensor, s1: torch.Tensor,
                     path: tuple[tuple[tuple[int, int], ...], ...]) -> torch.Tensor:
        """The cell of one candidate: node j sums, over its chosen (edge, alpha column) pairs
        `path[j]` (in edge order), that column's op of the edge's MixedOp on the edge's input.
        No other op of the cell runs (nor the executor, which computes mixtures)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for chosen in path:
            node = 0
            for e, column in chosen:
                node = node + self.edges[e].forward_op(states[self.edge_list[e][1]], column)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class _ScratchBuffers:
    """Gives a module's buffers (BatchNorm running statistics) scratch copies for a while.

    The recomputation of a checkpointed cell re-runs its BatchNorms in training mode: their
    outputs (batch statistics) are those of the forward, but they would update the running
    statistics a second time. Recomputing on copies, thrown away afterwards, leaves the
    statistics as one forward left them, and never writes in place to a buffer that the
    graph may have saved. Reusable: a graph kept with `retain_graph` recomputes again.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.originals = []
        for m in self.module.modules():
            for name, b in m.named_buffers(recurse=False):
                self.originals.append((m, name, b))
                setattr(m, name, b.clone())

    def __exit__(self, *exc: object) -> None:
        for m, name, b in self.originals:
            setattr(m, name, b)
        del self.originals


def _checkpointed_cell(cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor,
                       weights: torch.Tensor, edge_w: torch.Tensor | None) -> torch.Tensor:
    """cell(s0, s1, weights, edge_w) keeping only its inputs; recomputed in the backward.

    The parameters are inputs of the checkpoint, taken now: under functional_call (the
    architect's w' and w +- eps v) the recomputation, which runs after functional_call has
    put the module's own parameters back, must use the same ones.
    """
    names, params = zip(*cell.named_parameters(), strict=True)

    def run(s0, s1, weights, edge_w, *params):
        return functional_call(cell, dict(zip(names, params, strict=True)),
                               (s0, s1, weights, edge_w), tie_weights=False)

    # A search cell draws no random numbers, so no RNG state is saved for the recomputation
    # (reading it is also not allowed inside a CUDA graph capture).
    return checkpoint(run, s0, s1, weights, edge_w, *params, use_reentrant=False,
                      preserve_rng_state=False,
                      context_fn=lambda: (contextlib.nullcontext(), _ScratchBuffers(cell)))


class NetworkParameters:
    """A supernet's weights apart from its architecture parameters (`arch_parameters()`):
    what the weights' SGD trains and the gradient clip takes."""

    def named_network_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_network_parameters()]


class SearchNetwork(NetworkParameters, nn.Module):
    """The supernet: stem (3*C channels), `layers` search cells, global pooling, classifier.
    Its `topology` (the cell's SearchSpace) is what the collapse pieces ask of it.

    `partial_channels` (K) and `checkpoint_cells` are the memory options described in the
    module docstring; K = 1 and False are the DARTS supernet.
    """

    @property
    def topology(self) -> SearchSpace:
        return self.space

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8,
                 space: SearchSpace = DARTS_SPACE, stem_multiplier: int = 3,
                 in_channels: int = 3, partial_channels: int = 1,
                 checkpoint_cells: bool = False, sampler=None):
        super().__init__()
        # The mixing rule of darts.methods.mixing (GDAS, DrNAS, FairDARTS, a plugin's);
        # None: DARTS's softmax.
        self.sampler = sampler
        if sampler is not None:
            sampler.bind(space.primitives)
        if sampler is not None and sampler.single_path and (partial_channels > 1
                                                            or checkpoint_cells):
            raise ValueError(f"mixing rule {sampler.name!r} runs one op per edge: not with "
                             f"partial channels or checkpointed cells")
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must be a positive divisor "
                             f"of the {C} initial channels (each edge's ops get C / "
                             f"partial_channels of them)")
        self.space = space
        self.layers = layers
        self.partial_channels = partial_channels
        self.checkpoint_cells = checkpoint_cells
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
            cell = SearchCell(space, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                              partial_channels)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, space.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        shape = (space.num_edges, space.num_ops)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        if partial_channels > 1:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(space.num_edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(space.num_edges))

    # -- the two parameter groups -------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """[alphas_normal, alphas_reduce], then [betas_normal, betas_reduce] with K > 1."""
        if self.partial_channels > 1:
            return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]
        return [self.alphas_normal, self.alphas_reduce]


    def op_alpha_parameters(self) -> list[nn.Parameter]:
        """The arch parameters that weight ops (not PC-DARTS's edge betas)."""
        return [self.alphas_normal, self.alphas_reduce]

    # -- the relaxation ----------------------------------------------------------------------
    def mixing_weights(self, detach: bool = False, *, forward: bool = False) -> MixingWeights:
        """The mixing rule of the alphas (softmax over the ops of each edge in DARTS), for the
        normal and the reduction cells; with K > 1 followed by both cells' edge weights
        (`normalized_edge_weights`). With a rule that draws: a sample in training with
        gradients on, else its deterministic weights (`forward`: those the supernet runs in
        evaluation)."""
        arch = [p.detach() if detach else p for p in self.arch_parameters()]
        if self.sampler is not None:
            ops = self.sampler(arch[:2], sample=self.training and torch.is_grad_enabled(),
                               forward=forward)
        else:
            ops = (softmax_rows(arch[0]), softmax_rows(arch[1]))
        if self.partial_channels == 1:
            return ops
        steps = self.space.steps
        return (*ops, normalized_edge_weights(arch[2], steps),
                normalized_edge_weights(arch[3], steps))

    def forward(self, x: torch.Tensor, weights: MixingWeights | None = None) -> torch.Tensor:
        """Logits at the given mixing weights (default: the current `mixing_weights()`)."""
        weights = self.mixing_weights(forward=True) if weights is None else weights
        columns = getattr(weights, "columns", None)  # a hard sample: one op per edge
        weights = tuple(weights)
        if len(weights) not in (2, 4) or (self.partial_channels > 1 and len(weights) != 4):
            raise ValueError(
                f"expected {'4' if self.partial_channels > 1 else '2 or 4'} mixing weights "
                f"(ops normal, ops reduce[, edges normal, edges reduce]) as mixing_weights() "
                f"returns, got {len(weights)}")
        w_normal, w_reduce = weights[:2]
        e_normal, e_reduce = weights[2:] if len(weights) == 4 else (None, None)
        checkpointed = self.checkpoint_cells and self.training and torch.is_grad_enabled()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w, e = (w_reduce, e_reduce) if cell.reduction else (w_normal, e_normal)
            if checkpointed:
                s0, s1 = s1, _checkpointed_cell(cell, s0, s1, w, e)
            elif columns is not None:
                s0, s1 = s1, cell(s0, s1, w, e, columns[int(cell.reduction)])
            else:
                s0, s1 = s1, cell(s0, s1, w, e)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))

    # -- one candidate (single path) ----------------------------------------------------------
    def candidate_path(self, genotype: Genotype) -> dict[bool, tuple[tuple[tuple[int, int], ...], ...]]:
        """For the normal (False) and the reduction cell (True): per intermediate node, its
        chosen (edge, alpha column) pairs in edge order. A ValueError names what of the
        genotype this supernet cannot run (another node count or output, an op outside the
        space, 'none', an input that is not an earlier state)."""
        space = self.space
        concat = tuple(range(2 + space.steps - space.multiplier, space.steps + 2))
        edge_index = {edge: e for e, edge in enumerate(space.edges())}
        path = {}
        for reduction, kind in ((False, "normal"), (True, "reduce")):
            edges, cell_concat = genotype.cell(reduction)
            if len(edges) != 2 * space.steps or tuple(cell_concat) != concat:
                raise ValueError(f"the {kind} cell of {genotype} does not fit this supernet: it "
                                 f"needs {2 * space.steps} edges (2 per node) and output "
                                 f"nodes {list(concat)}")
            nodes = []
            for node in range(space.steps):
                chosen = []
                for op, i in edges[2 * node:2 * node + 2]:
                    if op == "none" or op not in space.primitives:
                        raise ValueError(f"op {op!r} of the {kind} cell is not one this "
                                         f"supernet can run; its ops: "
                                         f"{', '.join(p for p in space.primitives if p != 'none')}")
                    if (node, i) not in edge_index:
                        raise ValueError(f"node {node + 2} of the {kind} cell takes input {i}; "
                                         f"it may take 0..{node + 1}")
                    chosen.append((edge_index[node, i], space.primitives.index(op)))
                nodes.append(tuple(sorted(chosen)))
            path[reduction] = tuple(nodes)
        return path

    def path_weights(self, genotype: Genotype) -> MixingWeights:
        """(normal, reduce) mixing weights that select the genotype: on each chosen edge 1 on
        its chosen op, every other entry 0. `forward(x, path_weights(g))` is
        `forward_path(x, g)`, which runs only the chosen ops."""
        path = self.candidate_path(genotype)
        weights = []
        for reduction in (False, True):
            w = torch.zeros(self.space.num_edges, self.space.num_ops,
                            dtype=self.alphas_normal.dtype, device=self.alphas_normal.device)
            for chosen in path[reduction]:
                for e, column in chosen:
                    w[e, column] += 1.0
            weights.append(w)
        return tuple(weights)

    def forward_path(self, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
        """Logits of one candidate in the supernet's weights: each cell runs only the ops its
        genotype chooses (`SearchCell.forward_path`); equals `forward(x,
        path_weights(genotype))`. Not with partial channels (a PC-DARTS edge mixes by design)."""
        if self.partial_channels > 1:
            raise ValueError("a single path needs partial_channels=1: PC-DARTS edges always "
                             "pass part of their input around the op")
        path = self.candidate_path(genotype)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell.forward_path(s0, s1, path[cell.reduction])
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))

    def genotype(self, **meta: str) -> Genotype:
        """The discrete architecture that the current alphas (and betas) decode to (Section
        2.4; PC-DARTS ranks edges by op weight x edge weight)."""
        with torch.no_grad():
            weights = self.mixing_weights()
            edges = ({"edge_normal": weights[2], "edge_reduce": weights[3]}
                     if len(weights) == 4 else {})
            return self.space.decode(*weights[:2], **edges, **meta)


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes that autograd keeps for the backward of the graph that `fn()` builds.

    Every tensor saved for backward during `fn()` is seen through
    `torch.autograd.graph.saved_tensors_hooks`; each storage is counted once, whole (a saved
    slice keeps its whole storage alive). Leaves that require grad (parameters, alphas) are
    not activations and are left out. Inside a non-reentrant checkpoint the checkpoint's own
    hooks take over and keep nothing, while the checkpoint's inputs are saved through the
    surrounding hooks, so they are counted. `fn()` runs in whatever mode the caller set
    (e.g. `model.train()`); its result is dropped, so no backward is needed afterwards.
    """
    storages: dict[tuple[torch.device, int], torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.requires_grad and t.grad_fn is None):
            storage = t.untyped_storage()
            # Holding the storage keeps its address from being reused during fn().
            storages[(t.device, storage.data_ptr())] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(s.nbytes() for s in storages.values())
