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

`saved_activation_bytes(fn)` measures what a forward keeps for its backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from darts.accel import edge_batch, kernels
from darts.genotype import Genotype
from darts.ops import (
    BatchNorm2d,
    Conv2d,
    FactorizedReduce,
    FusedSequential,
    Identity,
    MaxPool2d,
    PoolBN,
    ReLUConvBN,
    dense_grad,
    factorized_reduce_convs,
    memory_format_of,
    relu_depthwise,
    run_layers,
    update_running_stats,
)
from darts.primitives import build_op
from darts.space import DARTS_SPACE, SearchSpace

# (ops normal, ops reduce), or with partial channels (ops normal, ops reduce, edges normal,
# edges reduce): softmax(alpha) rows and the normalised edge weights.
MixingWeights = tuple[torch.Tensor, ...]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel g * (C / groups) + c moves to c * groups + g.
    The result keeps x's memory format (channels-last stays channels-last)."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    out.view(n, c // groups, groups, h, w).copy_(
        x.reshape(n, groups, c // groups, h, w).transpose(1, 2))
    return out


def _grouped_copy(parts: list[torch.Tensor], out: torch.Tensor, groups: int,
                  inverse: bool) -> None:
    """The permutation of channel_shuffle(cat(parts)): group 0 = parts[0] (C / groups
    channels), groups 1.. = parts[1]; `inverse`: from out into parts instead."""
    n, c, h, w = parts[0].shape
    grouped = out.view(n, c, groups, h, w)
    pairs = ((parts[0], grouped[:, :, 0]),
             (parts[1].view(n, groups - 1, c, h, w).transpose(1, 2), grouped[:, :, 1:]))
    for part, slot in pairs:
        if inverse:
            part.copy_(slot)
        else:
            slot.copy_(part)


class _ShuffledCat(torch.autograd.Function):
    """channel_shuffle(cat([mixed, bypass], 1), groups) in one pass each way, the result and
    both gradients in mixed's memory format (autograd's copies into slices gave contiguous
    gradients to channels-last states, and every op upstream then mixed the two layouts)."""

    @staticmethod
    def forward(ctx, mixed, bypass, groups):
        fmt = memory_format_of(mixed)
        ctx.groups, ctx.fmt = groups, fmt
        out = mixed.new_empty((mixed.size(0), mixed.size(1) * groups) + mixed.shape[2:])
        out = out.contiguous(memory_format=fmt)
        _grouped_copy([mixed, bypass.contiguous(memory_format=fmt)], out, groups, False)
        return out

    @staticmethod
    def backward(ctx, grad):
        n, cg, h, w = grad.shape
        c = cg // ctx.groups
        grad = grad.contiguous(memory_format=ctx.fmt)
        if torch.is_grad_enabled():  # double backward: the same permutation, differentiable
            grouped = grad.view(n, c, ctx.groups, h, w)
            return (grouped[:, :, 0], grouped[:, :, 1:].transpose(1, 2).reshape(n, cg - c, h, w),
                    None)
        parts = [grad.new_empty(shape).contiguous(memory_format=ctx.fmt)
                 for shape in ((n, c, h, w), (n, cg - c, h, w))]
        _grouped_copy(parts, grad, ctx.groups, True)
        return parts[0], parts[1], None


def _shuffled_cat(mixed: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """channel_shuffle(cat([mixed, bypass], 1), groups): mixed (C / groups channels) is
    group 0, bypass the other groups; one pass, in mixed's memory format."""
    return _ShuffledCat.apply(mixed, bypass, groups)


def normalized_edge_weights(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: the softmax of the betas over each node's incoming edges
    (node i has i + 2 of them), concatenated in edge order."""
    sizes = [i + 2 for i in range(steps)]
    return torch.cat([F.softmax(b, dim=-1) for b in betas.split(sizes)])


def _plan(op: nn.Module) -> tuple[bool, tuple[nn.Module, ...], nn.BatchNorm2d | None] | None:
    """How `MixedOp.mix` runs `op`: (starts with a shareable ReLU, the layers in between, a
    last BatchNorm2d to scale in), or None to call `op` itself. Only an nn.Sequential that
    keeps Sequential's forward (or FusedSequential's, the same) is taken apart (SepConv,
    DilConv, PoolBN: not FactorizedReduce or a user's op with its own forward)."""
    if not isinstance(op, nn.Sequential) or len(op) < 2 \
            or type(op).forward not in (nn.Sequential.forward, FusedSequential.forward):
        return None
    layers = tuple(op)
    shares_relu = type(layers[0]) is nn.ReLU and not layers[0].inplace
    bn = layers[-1] if type(layers[-1]) in (nn.BatchNorm2d, BatchNorm2d) else None
    if not (shares_relu or bn is not None):
        return None
    body = layers[int(shares_relu):len(layers) - int(bn is not None)]
    return shares_relu, body, bn


def _scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor,
                       acc: torch.Tensor | None = None) -> torch.Tensor:
    """scale * bn(x) in one BatchNorm call: the scale folded into the affine weight (and bias);
    with `acc`, acc + scale * bn(x), in the same pass where the C kernel runs.

    The same running-statistics update as `bn(x)` (nn.BatchNorm2d.forward, momentum None
    included); a ones weight becomes `scale` per channel, so the BatchNorm's weight gradient,
    summed over the channels, is the gradient of `scale`.
    """
    momentum = _count_batch(bn)
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    if bn.affine:
        weight, bias = bn.weight * scale, bn.bias * scale
    else:
        # contiguous: with a stride-0 weight the CPU's channels_last BatchNorm is 4x slower
        weight, bias = scale.expand(bn.num_features).contiguous(), None
    if use_batch:
        fast = kernels.batch_norm_train(x, weight, bias, bn.eps, acc=acc)  # None: not a CPU
        if fast is not None:
            y, mean, var = fast
            if track and bn.running_mean is not None:
                update_running_stats(bn, mean, var, momentum)
            return y
    y = F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                     weight, bias, use_batch, momentum, bn.eps)
    return y if acc is None else acc + y


def _count_batch(bn: nn.BatchNorm2d) -> float:
    """What nn.BatchNorm2d.forward does before normalising: count the batch (in training,
    where tracked) and return the momentum of the running statistics' update."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    return momentum


def _deferrable(bn: nn.BatchNorm2d) -> bool:
    """A BatchNorm that `_node_sum` can run with its node's others: non-affine, training."""
    return bn.training and not bn.affine


def _node_sum(acc: torch.Tensor | None, pending: list) -> torch.Tensor | None:
    """acc + sum of scale * bn(y) over the (bn, y, scale) in `pending` (deferred by
    `MixedOp.mix`), with each BatchNorm's running statistics updated as its own forward would:
    in one pass of the C kernel on the CPU (kernels.node_batch_norm), else one by one."""
    if not pending:
        return acc
    fast = kernels.node_batch_norm(acc, [y for _, y, _ in pending],
                                   [scale for _, _, scale in pending],
                                   [bn.eps for bn, _, _ in pending])
    if fast is None:
        for bn, y, scale in pending:
            acc = _scaled_batch_norm(bn, y, scale, acc=acc)
        return acc
    out, means, variances = fast
    for (bn, _, _), mean, var in zip(pending, means, variances, strict=True):
        momentum = _count_batch(bn)
        if bn.track_running_stats and bn.running_mean is not None:
            update_running_stats(bn, mean, var, momentum)
    return out


def _pool_bn_key(plan) -> tuple | None:
    """The key under which edges share a PoolBN's normalised output (None: not shareable)."""
    if plan is None:
        return None
    shares_relu, body, bn = plan
    if shares_relu or len(body) != 1 or bn is None or bn.affine or bn.momentum is None \
            or type(body[0]) not in (nn.MaxPool2d, nn.AvgPool2d, MaxPool2d):
        return None
    return ("pool_bn", type(body[0]).__name__, body[0].extra_repr(), bn.eps)


def _shared_pool_bn(pool: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, shared: dict,
                    key: tuple) -> torch.Tensor:
    """bn(pool(x)) of a non-affine BatchNorm in training mode: the pooled input normalised
    by its batch statistics, computed once per state (the first edge) and kept in `shared`;
    each edge's running statistics are still updated, as its own BatchNorm would."""
    entry = shared.get(key)
    if entry is None:
        pooled = pool(x)
        fast = kernels.batch_norm_train(pooled, None, None, bn.eps)  # None: not on a CPU
        if fast is not None:
            out, mean, var = fast
            stats = (var, mean)
        else:
            stats = edge_batch.batch_statistics(pooled) if bn.track_running_stats else None
            out = F.batch_norm(pooled, None, None, None, None, True, 0.0, bn.eps)
        entry = shared[key] = (out, stats)
    out, stats = entry
    if stats is not None and bn.track_running_stats and bn.running_mean is not None:
        bn.num_batches_tracked.add_(1)
        var, mean = stats
        update_running_stats(bn, mean, var, bn.momentum)
    return out


def _pool_conf(pool: nn.Module) -> tuple[str, int, int, int] | None:
    """(kind, kernel size, stride, padding) of a square max or average pooling that
    kernels.pool_batch_norm computes (average: count_include_pad=False), else None."""
    pair = torch.nn.modules.utils._pair
    if type(pool) in (nn.MaxPool2d, MaxPool2d):
        if pool.return_indices or pair(pool.dilation) != (1, 1):
            return None
        kind = "max"
    elif type(pool) is nn.AvgPool2d:
        if pool.count_include_pad or pool.divisor_override is not None:
            return None
        kind = "avg"
    else:
        return None
    k, s, p = (pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
    if pool.ceil_mode or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
        return None
    return kind, k[0], s[0], p[0]


def _pool_pair(op: MixedOp, skip: tuple[int, ...], x: torch.Tensor, shared: dict) -> None:
    """A max and an average pooling among the shared terms `skip` of op (with the same window,
    stride and padding), each with its non-affine training-mode BatchNorm: both outputs and
    their statistics in one C kernel (kernels.pool_batch_norm, on the CPU), put in `shared`
    for `_shared_pool_bn` to find. Nothing where that does not run."""
    found = {}
    for i in skip:
        key = op.shared_keys[i]
        if key is None or key in shared:
            continue
        pool, bn = op.plans[i][1][0], op.plans[i][2]
        conf = _pool_conf(pool)
        if conf is not None and not (pool._forward_hooks or pool._forward_pre_hooks):
            found.setdefault(conf[0], (conf[1:], key, bn))
    if len(found) != 2 or found["max"][0] != found["avg"][0]:
        return
    (k, s, p), key_max, bn_max = found["max"]
    _, key_avg, bn_avg = found["avg"]
    out = kernels.pool_batch_norm(x, k, s, p, bn_max.eps, bn_avg.eps)
    if out is not None:
        ymax, yavg, mean_max, var_max, mean_avg, var_avg = out
        shared[key_max] = (ymax, (var_max, mean_max))
        shared[key_avg] = (yavg, (var_avg, mean_avg))


class MixedOp(nn.Module):
    """All ops of the space on one edge, mixed by one row of softmax(alpha).

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
        # How each op runs in `mix` (plain tuples: the same modules, nothing registered
        # twice): its layers after a first ReLU that all such ops share (relu(x) computed
        # once per edge, not once per conv op), and a last BatchNorm that also applies the
        # op's mixing weight (see `_scaled_batch_norm`). None: the op's own forward.
        self.plans = tuple(_plan(op) for op in self.ops)
        # A pooling op with a non-affine BatchNorm gives the same output on every edge that
        # leaves a state (in training, where the BatchNorm uses batch statistics): its key
        # in the state's `shared` dict, or None.
        self.shared_keys = tuple(_pool_bn_key(plan) for plan in self.plans)
        # Ops whose output is the state itself (skip_connect at stride 1).
        self.identities = tuple(type(op) is Identity for op in self.ops)
        # Ops that begin with ReLU and a depthwise conv (sep_conv, dil_conv): `SearchCell` runs
        # these convs of all edges leaving a state as one (ops.relu_depthwise).
        self.relu_heads = tuple(
            i for i, plan in enumerate(self.plans)
            if plan is not None and plan[0] and plan[1] and type(plan[1][0]) is Conv2d
            and plan[1][0].depthwise_conf() is not None)
        # FactorizedReduce ops (skip_connect at stride 2): `SearchCell` runs their convs for
        # all edges leaving a state at once (ops.factorized_reduce_convs).
        self.reduce_heads = tuple(i for i, op in enumerate(self.ops)
                                  if type(op) is FactorizedReduce)
        if partial_channels > 1 and stride == 2:
            # PC-DARTS halves the bypassed channels with a 2x2 max pool; ceil_mode matches the
            # ops' output size on odd inputs too (identical to PC-DARTS on even ones).
            self.bypass_pool = MaxPool2d(2, 2, ceil_mode=True)

    def shared_terms(self) -> tuple[int, ...]:
        """Indices (into `ops`) of the ops whose output is the same on every edge that leaves
        a state: skip_connect's identity, and in training the pooling ops' output normalised
        by batch statistics. `SearchCell` adds their terms for all those edges at once."""
        return tuple(i for i, (key, plan, identity) in enumerate(
            zip(self.shared_keys, self.plans, self.identities, strict=True))
            if identity or (key is not None and plan[2].training))

    def shared_output(self, i: int, x: torch.Tensor, shared: dict) -> torch.Tensor:
        """The output of op i (one of `shared_terms()`) on state x; a pooling op's is
        computed by the first edge and reused, each edge updating its BatchNorm's running
        statistics."""
        if self.identities[i]:
            return x
        plan = self.plans[i]
        return _shared_pool_bn(plan[1][0], plan[2], x, shared, self.shared_keys[i])

    def mix(self, x: torch.Tensor, weights: torch.Tensor, shared: dict | None = None,
            acc: torch.Tensor | None = None, skip: tuple[int, ...] = (),
            defer: list | None = None) -> torch.Tensor | None:
        """sum_o w_o * o(x), as the sum of eq. 2 but in fewer passes over memory: ops that
        begin with ReLU share one relu(x), and an op that ends in BatchNorm scales by its
        weight inside the BatchNorm (its weight gradient comes from the BatchNorm's backward)
        and, where the C kernel runs, adds to the running sum in the same pass.

        `shared`: a dict that every edge leaving the same state passes (see `SearchCell`):
        what depends on the state alone, relu(x) and, in training, the pooling ops' output
        normalised by batch statistics, is computed by the first edge and reused.
        `acc`: a tensor of the output's shape to add the sum to (a node's other edges).
        `skip`: indices of ops left out (their terms added by the caller).
        `defer`: a list that gets (bn, y, scale) for each op that ends in a non-affine
        BatchNorm in training, instead of adding scale * bn(y); the caller adds them all to the
        node at once (`_node_sum`). The result may then be None (nothing added yet)."""
        w = weights.unbind(0)
        relu = heads = None
        out = acc
        if shared is not None:
            relu, heads = shared.get("relu"), shared.get("heads")
        for i, (k, op, plan, key) in enumerate(zip(self.columns, self.ops, self.plans,
                                                   self.shared_keys, strict=True)):
            if i in skip:
                continue
            if plan is None:
                head = heads.get(id(op)) if heads else None
                if head is not None:  # a FactorizedReduce's convs, with the state's other edges
                    if defer is not None and _deferrable(op.bn):
                        defer.append((op.bn, head, w[k]))
                    else:
                        out = _scaled_batch_norm(op.bn, head, w[k], acc=out)
                    continue
                y, scale = op(x), w[k]
            elif key is not None and shared is not None and plan[2].training:
                y, scale = _shared_pool_bn(plan[1][0], plan[2], x, shared, key), w[k]
            else:
                shares_relu, body, bn = plan
                head = heads.get(id(body[0])) if heads and body else None
                if head is not None:  # conv(relu(x)), computed with the state's other edges
                    y = run_layers(body[1:], head)
                elif shares_relu:
                    if relu is None:
                        relu = op[0](x)
                        if shared is not None:
                            shared["relu"] = relu
                    y = run_layers(body, relu)
                else:
                    y = run_layers(body, x)
                if bn is not None:
                    if defer is not None and _deferrable(bn):
                        defer.append((bn, y, w[k]))
                    else:
                        out = _scaled_batch_norm(bn, y, w[k], acc=out)
                    continue
                scale = w[k]
            out = _add_term(out, scale, y)
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor, shared: dict | None = None,
                acc: torch.Tensor | None = None, skip: tuple[int, ...] = (),
                defer: list | None = None) -> torch.Tensor | None:
        """The mixed op's output; with `acc`, acc + that; `skip`: ops left out; `defer`:
        BatchNorm terms left to the caller (see `mix`)."""
        k = self.partial_channels
        if k == 1:
            return self.mix(x, weights, shared, acc, skip, defer)
        if skip or defer is not None:
            raise ValueError("MixedOp: skip and defer are for whole-channel edges "
                             "(partial_channels=1)")
        c = x.size(1) // k
        # Every edge leaving a state takes the same first c channels: they share too.
        mixed, bypass = self.mix(x[:, :c], weights, shared), x[:, c:]
        if hasattr(self, "bypass_pool"):
            bypass = self.bypass_pool(bypass)
        out = channel_shuffle(torch.cat([mixed, bypass], dim=1), k)
        return out if acc is None else acc + out


class SearchCell(nn.Module):
    """A cell with every edge a MixedOp; its output concatenates the last `multiplier` nodes."""

    def __init__(self, space: SearchSpace, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, partial_channels: int = 1,
                 batch_edges: bool = False):
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
            MixedOp(C, 2 if reduction and j < 2 else 1, space.primitives, partial_channels)
            for _, j in space.edges())
        # Edge batching (darts/accel/edge_batch.py): groups of states whose outgoing edges run
        # together, the edges ordered by state: the two cell inputs (ready together, the
        # same number of edges and the same stride), then each node but the last.
        # PC-DARTS cells are not edge-batched.
        self.batch_edges = batch_edges and partial_channels == 1
        edges = space.edges()
        self.edge_list = tuple(edges)  # (target node, source state) of each edge
        groups = [(0, 1)] + [(src,) for src in range(2, self.steps + 1)]
        self.groups = tuple(
            (states,
             tuple(e for src in states for e, (_, j) in enumerate(edges) if j == src),
             tuple(i for src in states for i, j in edges if j == src))
            for states in groups)
        # The edges leaving each state, as (edge, target node), for the state-major forward.
        self.out_edges = tuple(
            tuple((e, j) for e, (j, src) in enumerate(edges) if src == state)
            for state in range(2 + self.steps))
        # Op k of every edge of each group, gathered once (not on every forward).
        self.group_ops = tuple(
            tuple(tuple(self.edges[e].ops[k] for e in ids) for k in range(len(self.edges[ids[0]].ops)))
            for _, ids, _ in self.groups)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if self.batch_edges and edge_weights is None:
            return self._forward_batched(states, weights.unbind(0))
        return self._forward_by_state(states, weights, edge_weights)

    def _forward_by_state(self, states: list[torch.Tensor], weights: torch.Tensor,
                          edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """node_j = sum over the edges e = (i -> j) of sum_o w[e, o] * o(s_i), state by state:
        once a state is complete, every edge leaving it adds its terms to its target node's
        running sum (each node still sums its edges in edge order). The terms that all those
        edges share (`MixedOp.shared_terms`: the state through skip_connect, its pooled
        outputs) are added for all of them at once (`_add_shared_terms`), the others edge by
        edge, each op that ends in BatchNorm adding its output in the BatchNorm's own pass
        (`MixedOp.mix`), and the BatchNorm terms of a node all at once when it is complete
        (`_node_sum`).

        PC-DARTS (`edge_weights`, partial channels K) runs the same way: an edge's output
        beta_e * shuffle(cat(mix_e(s_i[:, :C/K]), bypass_e(s_i[:, C/K:]))) is linear in both
        parts and the shuffle, so node_j = shuffle(cat(sum_e mix_e with the weights
        beta_e * w[e], sum_e beta_e * bypass_e)): the ops of every edge leaving a state see
        one dense copy of its first C/K channels, and each node is shuffled once, not once
        per edge."""
        k = self.edges[0].partial_channels
        if edge_weights is not None:  # beta_e * sum_o w[e, o] o(x) = sum_o (beta_e w[e, o]) o(x)
            weights = weights * edge_weights.unsqueeze(1)
        rows = weights.unbind(0)
        inputs, tails = states, []
        if k > 1:  # what the ops see of each state (its first C/K channels), and the rest
            inputs = []
            for s in states:
                _split_state(s, k, inputs, tails)
        nodes: list[torch.Tensor | None] = [None] * self.steps
        # Each node's BatchNorm terms, added when the node is complete (`_node_sum`).
        pending: list[list] = [[] for _ in range(self.steps)]
        for state, out_edges in enumerate(self.out_edges[:-1]):
            if state >= 2:  # node state - 2 has all its edges now
                self._complete_node(state - 2, states, inputs, tails, nodes, pending,
                                    edge_weights)
            x, shared = inputs[state], {}
            ops = [self.edges[e] for e, _ in out_edges]
            skip = ops[0].shared_terms()
            if skip and all(op.shared_terms() == skip for op in ops[1:]):
                _pool_pair(ops[0], skip, x, shared)
                ys = [ops[0].shared_output(i, x, shared) for i in skip]
                for op in ops[1:]:  # their BatchNorms' running statistics
                    for i in skip:
                        op.shared_output(i, x, shared)
                rows_of, columns = self._shared_index(state, skip, weights.device)
                w = weights.index_select(0, rows_of).index_select(1, columns)
                sums = _add_shared_terms(w, [nodes[j] for _, j in out_edges], ys)
                for (_, j), node in zip(out_edges, sums, strict=True):
                    nodes[j] = node
            else:
                skip = ()
            heads = _relu_heads(ops, x)
            if heads is not None:
                shared["heads"] = heads
            for (e, j), op in zip(out_edges, ops, strict=True):
                nodes[j] = op.mix(x, rows[e], shared, acc=nodes[j], skip=skip,
                                  defer=pending[j])
        self._complete_node(self.steps - 1, states, inputs, tails, nodes, pending, edge_weights)
        return torch.cat(states[-self.multiplier:], dim=1)

    def _complete_node(self, j: int, states: list[torch.Tensor], inputs: list[torch.Tensor],
                       tails: list[list[torch.Tensor]], nodes: list, pending: list,
                       edge_weights: torch.Tensor | None) -> None:
        """Appends node j (all its edges' terms added) to `states`; with partial channels,
        first its bypassed channels (each edge's, weighted by its beta) and the shuffle, and
        after it what the ops see of it to `inputs` and what bypasses them to `tails`."""
        node = _node_sum(nodes[j], pending[j])
        k = self.edges[0].partial_channels
        if k > 1:
            bypass = None
            for e, (target, i) in enumerate(self.edge_list):
                if target != j:
                    continue
                pool = getattr(self.edges[e], "bypass_pool", None)
                if pool is not None and len(tails[i]) == 1:  # every stride-2 edge pools alike
                    tails[i].append(pool(tails[i][0]))
                y = tails[i][-1] if pool is not None else tails[i][0]
                if edge_weights is None:
                    bypass = y if bypass is None else bypass + y
                else:
                    bypass = _add_term(bypass, edge_weights[e], y)
            node = _shuffled_cat(node, bypass, k)
        states.append(dense_grad(node))
        if k > 1:
            _split_state(states[-1], k, inputs, tails)

    def _shared_index(self, state: int, skip: tuple[int, ...],
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The alpha rows of the edges leaving `state` and the alpha columns of the ops
        `skip`, as index tensors on `device`, made once (a CUDA graph's capture may not copy
        a Python list to the device)."""
        cache = self.__dict__.setdefault("_index_cache", {})
        key = (state, skip, device)
        if key not in cache:
            edge = self.edges[self.out_edges[state][0][0]]
            cache[key] = (torch.tensor([e for e, _ in self.out_edges[state]], device=device),
                          torch.tensor([edge.columns[i] for i in skip], device=device))
        return cache[key]

    def _forward_batched(self, states: list[torch.Tensor],
                         rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The same cell, the edges leaving each state computed together (edge_batch.py).
        Each node still sums its inputs in edge order."""
        nodes: list[torch.Tensor | None] = [None] * self.steps
        for (sources, ids, targets), op_lists in zip(self.groups, self.group_ops, strict=True):
            while len(states) <= sources[-1]:  # the nodes these edges leave are complete
                states.append(dense_grad(nodes[len(states) - 2]))
            if len(ids) == 1:
                mixed = self.edges[ids[0]](states[sources[0]], rows[ids[0]]).unsqueeze(1)
            else:
                x = torch.cat([states[s] for s in sources], dim=1) if len(sources) > 1 \
                    else states[sources[0]]
                weights = torch.stack([rows[e] for e in ids])
                mixed = edge_batch.mix(op_lists, self.edges[ids[0]].columns, x, weights,
                                       len(sources))
            for t, node in enumerate(targets):
                nodes[node] = mixed[:, t] if nodes[node] is None else nodes[node] + mixed[:, t]
        states.append(dense_grad(nodes[-1]))
        return torch.cat(states[-self.multiplier:], dim=1)


def _add_shared_terms(w: torch.Tensor, accs: list[torch.Tensor | None],
                      ys: list[torch.Tensor]) -> list[torch.Tensor]:
    """[acc + sum_k w[e, k] * ys[k] for each edge e] (acc None: zero): one pass of the C
    kernel each way on the CPU (kernels.add_shared_terms), else an addcmul per term."""
    fast = kernels.add_shared_terms(w, accs, ys)
    if fast is not None:
        return fast
    outs = []
    for e, out in enumerate(accs):
        for k, y in enumerate(ys):
            out = _add_term(out, w[e, k], y)
        outs.append(out)
    return outs


def _relu_heads(ops: list[MixedOp], x: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """What the edges `ops` (that leave state x) start with, computed for all of them at
    once, keyed by module id: the first depthwise conv of relu(x) of every sep_conv and
    dil_conv (ops.relu_depthwise, keyed by the conv), and the convs of every
    FactorizedReduce (ops.factorized_reduce_convs, keyed by the op). None where neither
    runs (not the CPU, or hooks on the modules); each part is left out where it does not."""
    heads = {}
    relus = [op.ops[i][0] for op in ops for i in op.relu_heads]
    convs = [] if any(m._forward_hooks or m._forward_pre_hooks for m in relus) \
        else [op.plans[i][1][0] for op in ops for i in op.relu_heads]
    ys = relu_depthwise(x, convs) if convs else None
    if ys is not None:
        heads.update((id(conv), y) for conv, y in zip(convs, ys, strict=True))
    reduces = [op.ops[i] for op in ops for i in op.reduce_heads]
    ys = factorized_reduce_convs(reduces, x) if reduces else None
    if ys is not None:
        heads.update((id(op), y) for op, y in zip(reduces, ys, strict=True))
    return heads or None


def _split_state(x: torch.Tensor, k: int, inputs: list[torch.Tensor],
                 tails: list[list[torch.Tensor]]) -> None:
    """PC-DARTS: appends x's first C/k channels, dense in x's memory format, to `inputs` (what
    every op of every edge leaving the state reads; a channel slice of a channels-last tensor
    is strided) and [the other channels] to `tails`. One split: its backward is one
    concatenation of the two gradients, where a slice per use would add zero-filled
    full-size gradients."""
    fmt = memory_format_of(x)
    c = x.size(1) // k
    head, tail = x.split([c, x.size(1) - c], dim=1)
    inputs.append(head.contiguous(memory_format=fmt))
    tails.append([tail])


def _add_term(out: torch.Tensor | None, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """out + scale * y (out None: scale * y)."""
    return scale * y if out is None else torch.addcmul(out, scale, y)


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


class SearchNetwork(nn.Module):
    """The supernet: stem (3*C channels), `layers` search cells, global pooling, classifier.

    `partial_channels` (K) and `checkpoint_cells` are the memory options described in the
    module docstring; K = 1 and False are the DARTS supernet.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8,
                 space: SearchSpace = DARTS_SPACE, stem_multiplier: int = 3,
                 in_channels: int = 3, partial_channels: int = 1,
                 checkpoint_cells: bool = False, batch_edges: bool = False):
        super().__init__()
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
            BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = SearchCell(space, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                              partial_channels, batch_edges)
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

    def named_network_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_network_parameters()]

    # -- the relaxation ----------------------------------------------------------------------
    def mixing_weights(self, detach: bool = False) -> MixingWeights:
        """softmax(alpha) over the ops of each edge, for the normal and the reduction cells;
        with K > 1 followed by both cells' edge weights (`normalized_edge_weights`)."""
        arch = [p.detach() if detach else p for p in self.arch_parameters()]
        ops = (F.softmax(arch[0], dim=-1), F.softmax(arch[1], dim=-1))
        if self.partial_channels == 1:
            return ops
        steps = self.space.steps
        return (*ops, normalized_edge_weights(arch[2], steps),
                normalized_edge_weights(arch[3], steps))

    def forward(self, x: torch.Tensor, weights: MixingWeights | None = None) -> torch.Tensor:
        """Logits at the given mixing weights (default: the current `mixing_weights()`)."""
        weights = self.mixing_weights() if weights is None else tuple(weights)
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
            else:
                s0, s1 = s1, cell(s0, s1, w, e)
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
