"""The search cell run faster: the same sums as `darts.supernet` (DARTS eq. 2, a node as the
sum of its edges; PC-DARTS's partial channels and edge normalisation), in fewer passes.

`CellExecutor` runs a `SearchCell` state by state: once a state is complete, every edge
leaving it adds its terms to its target node's running sum. On the way:

- ops that begin with ReLU share one relu(state); the first depthwise conv of every sep_conv
  and dil_conv, and the convs of every FactorizedReduce, on one state run as one op
  (fused.relu_depthwise, fused.factorized_reduce_convs);
- the terms that all edges leaving a state share (skip_connect's identity, the pooling ops'
  batch-normalised outputs) are computed once and added for all edges in one pass
  (kernels.add_shared_terms, kernels.pool_batch_norm);
- an op that ends in BatchNorm scales by its mixing weight inside the BatchNorm, and a node's
  non-affine BatchNorm terms are added all at once (kernels.node_batch_norm);
- PC-DARTS: each state is split once into what the ops see and what bypasses them, and each
  node is shuffled once, not once per edge;
- with `batch_edges`, the edges leaving each state run together (edge_batch.py).

An op this module does not know (a new `register_op`) runs through its own forward inside
the same sums; a cell whose edges are not plain `MixedOp`s (a new mixing rule) is declined
(the executor returns None) and runs its plain definition. Every path is tested against the
plain definition in float64 (tests/test_supernet.py, test_partial_channels.py,
test_edge_batch.py, test_accel.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel import edge_batch, kernels
from darts.accel.fused import (
    BatchNorm2d,
    Conv2d,
    FastFactorizedReduce,
    FusedSequential,
    MaxPool2d,
    dense_grad,
    factorized_reduce_convs,
    memory_format_of,
    relu_depthwise,
    run_layers,
    update_running_stats,
)
from darts.ops import FactorizedReduce, Identity
from darts.supernet import MixedOp, SearchCell, channel_shuffle


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


def _plan(op: nn.Module) -> tuple[bool, tuple[nn.Module, ...], nn.BatchNorm2d | None] | None:
    """How `FastEdge.mix` runs `op`: (starts with a shareable ReLU, the layers in between, a
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
    `FastEdge.mix`), with each BatchNorm's running statistics updated as its own forward would:
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
        momentum = _count_batch(bn)  # momentum None: the cumulative average, as nn.BatchNorm2d
        var, mean = stats
        update_running_stats(bn, mean, var, momentum)
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


def _pool_pair(op: FastEdge, skip: tuple[int, ...], x: torch.Tensor, shared: dict) -> None:
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


class FastEdge:
    """How `CellExecutor` runs one MixedOp: its ops and mixing weights, in fewer passes.

    Holds the MixedOp's modules (nothing registered twice, no state of its own) and, for each
    op, how `mix` runs it: its layers after a first ReLU that all such ops share (relu(x)
    computed once per state, not once per conv op), and a last BatchNorm that also applies
    the op's mixing weight (see `_scaled_batch_norm`); None: the op's own forward.
    """

    def __init__(self, edge: MixedOp):
        self.edge = edge
        self.ops = tuple(edge.ops)
        self.columns = edge.columns
        self.partial_channels = edge.partial_channels
        self.bypass_pool = getattr(edge, "bypass_pool", None)
        self.plans = tuple(_plan(op) for op in self.ops)
        # A pooling op with a non-affine BatchNorm gives the same output on every edge that
        # leaves a state (in training, where the BatchNorm uses batch statistics): its key
        # in the state's `shared` dict, or None.
        self.shared_keys = tuple(_pool_bn_key(plan) for plan in self.plans)
        # Ops whose output is the state itself (skip_connect at stride 1).
        self.identities = tuple(type(op) is Identity for op in self.ops)
        # Ops that begin with ReLU and a depthwise conv (sep_conv, dil_conv): the executor runs
        # these convs of all edges leaving a state as one (fused.relu_depthwise).
        self.relu_heads = tuple(
            i for i, plan in enumerate(self.plans)
            if plan is not None and plan[0] and plan[1] and type(plan[1][0]) is Conv2d
            and plan[1][0].depthwise_conf() is not None)
        # FactorizedReduce ops (skip_connect at stride 2): the executor runs their convs for
        # all edges leaving a state at once (fused.factorized_reduce_convs).
        self.reduce_heads = tuple(i for i, op in enumerate(self.ops)
                                  if type(op) in (FactorizedReduce, FastFactorizedReduce))

    def shared_terms(self) -> tuple[int, ...]:
        """Indices (into `ops`) of the ops whose output is the same on every edge that leaves
        a state: skip_connect's identity, and in training the pooling ops' output normalised
        by batch statistics. `CellExecutor` adds their terms for all those edges at once."""
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

        `shared`: a dict that every edge leaving the same state passes (see `CellExecutor`):
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

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, shared: dict | None = None,
                acc: torch.Tensor | None = None, skip: tuple[int, ...] = (),
                defer: list | None = None) -> torch.Tensor | None:
        """The mixed op's output; with `acc`, acc + that; `skip`: ops left out; `defer`:
        BatchNorm terms left to the caller (see `mix`)."""
        k = self.partial_channels
        if k == 1:
            return self.mix(x, weights, shared, acc, skip, defer)
        if skip or defer is not None:
            raise ValueError("FastEdge: skip and defer are for whole-channel edges "
                             "(partial_channels=1)")
        c = x.size(1) // k
        # Every edge leaving a state takes the same first c channels: they share too.
        mixed, bypass = self.mix(x[:, :c], weights, shared), x[:, c:]
        if self.bypass_pool is not None:
            bypass = self.bypass_pool(bypass)
        out = channel_shuffle(torch.cat([mixed, bypass], dim=1), k)
        return out if acc is None else acc + out


class CellExecutor:
    """Runs a `SearchCell` (installed as its `executor` by `darts.accel.accelerate`).

    Returns None, and the cell runs its plain definition, where an edge is not a plain
    MixedOp (a mixing rule of its own) or the cell's edges were replaced after installing.
    """

    def __init__(self, cell: SearchCell, batch_edges: bool = False):
        self.cell = cell
        self.steps, self.multiplier = cell.steps, cell.multiplier
        self.known = all(type(e).forward is MixedOp.forward for e in cell.edges)
        self.edges = [FastEdge(e) for e in cell.edges] if self.known else []
        # Edge batching (edge_batch.py): groups of states whose outgoing edges run together,
        # the edges ordered by state: the two cell inputs (ready together, the same number of
        # edges and the same stride), then each node but the last. PC-DARTS cells are not
        # edge-batched.
        self.batch_edges = batch_edges and self.known and cell.edges[0].partial_channels == 1
        edges = self.edge_list = cell.edge_list  # (target node, source state) of each edge
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
            tuple(tuple(self.edges[e].ops[k] for e in ids)
                  for k in range(len(self.edges[ids[0]].ops)))
            for _, ids, _ in self.groups) if self.known else ()

    def __call__(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                 edge_weights: torch.Tensor | None = None) -> torch.Tensor | None:
        cell = self.cell
        if not self.known or len(cell.edges) != len(self.edges) \
                or any(e.edge is not m for e, m in zip(self.edges, cell.edges, strict=True)):
            return None
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        if self.batch_edges and edge_weights is None:
            return self._forward_batched(states, weights.unbind(0))
        return self._forward_by_state(states, weights, edge_weights)

    def _forward_by_state(self, states: list[torch.Tensor], weights: torch.Tensor,
                          edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """node_j = sum over the edges e = (i -> j) of sum_o w[e, o] * o(s_i), state by state:
        once a state is complete, every edge leaving it adds its terms to its target node's
        running sum (each node still sums its edges in edge order). The terms that all those
        edges share (`FastEdge.shared_terms`: the state through skip_connect, its pooled
        outputs) are added for all of them at once (`_add_shared_terms`), the others edge by
        edge, each op that ends in BatchNorm adding its output in the BatchNorm's own pass
        (`FastEdge.mix`), and the BatchNorm terms of a node all at once when it is complete
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
                pool = self.edges[e].bypass_pool
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


def _relu_heads(ops: list[FastEdge], x: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """What the edges `ops` (that leave state x) start with, computed for all of them at
    once, keyed by module id: the first depthwise conv of relu(x) of every sep_conv and
    dil_conv (fused.relu_depthwise, keyed by the conv), and the convs of every
    FactorizedReduce (fused.factorized_reduce_convs, keyed by the op). None where neither
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


class GenotypeCellExecutor:
    """Runs a final network's `Cell` (darts.network) with each node's gradient made dense
    (`fused.dense_grad`): the same sums, installed by `darts.accel.accelerate`."""

    def __init__(self, cell: nn.Module):
        self.cell = cell

    def __call__(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        cell = self.cell
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for i in range(cell.steps):
            states.append(dense_grad(cell.node(i, states, drop_prob)))
        return torch.cat([states[i] for i in cell.concat], dim=1)
