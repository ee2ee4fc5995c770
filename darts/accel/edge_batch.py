"""Edge batching: all edges that leave one state of a search cell, computed together.

A DARTS cell has 14 edges, each a MixedOp of 7 ops, so a supernet forward is thousands of
small kernels (about 30,000 per first-order search step at the paper's size), and on a GPU the
step is bound by launching them, not by arithmetic. But every edge that leaves a state
applies the same ops to the same input, with its own weights. This module computes them
together, with the per-edge parameters concatenated at call time; the cell batches the
edges of its two inputs as one group (their tensors side by side along the channels, each
state's edges reading its own channels), then those of each node:

- a layer that has no parameters (ReLU, pooling, identity) runs once on the shared input,
  once for all the ops of the group (the ReLU that starts every conv op runs once);
- a convolution on the shared input runs once with the edges' kernels stacked along the
  output channels (a depthwise one on the input repeated once per edge); after it the
  edges' tensors sit side by side along the channels ("stacked": edge e owns channels
  [e*C, (e+1)*C)) and a convolution runs as one grouped convolution (groups x edges); the
  copy of a shared input spread to every edge is made once for all the ops of the group;
- BatchNorm is per channel, so one call over the stacked channels, with the edges' running
  statistics concatenated and written back, is each edge's BatchNorm. A non-affine
  BatchNorm in training mode on the shared input (the pooling ops') gives the same output
  on every edge and runs once; each edge's running statistics are still updated. An op
  that ends in BatchNorm has its mixing weights folded into that BatchNorm's affine
  parameters (as the per-edge `cell.FastEdge` does), so no product with the weights saves its output.

The result is the same function with the same parameters, state dict and BatchNorm
statistics as the per-edge loop (`accelerate(model, batch_edges=False)`, the reference that
the tests compare against, in float64); only the order of floating-point sums differs. It
works under `torch.func.functional_call` (parameters are read when called), activation
checkpointing and double backpropagation. Ops that this module does not know run edge by
edge and are stacked, so a user's new op is always correct, if not faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel.fused import memory_format_of
from darts.ops import FactorizedReduce, Identity

# A value flowing through the batched layers: (tensor, sources). sources = 0: "stacked",
# (B, E*C, H, W), edge e in channel block e. sources = S >= 1: "shared", (B, S*C, H, W), the
# inputs of S states side by side; the E edges are ordered by state, E/S per state, and edge
# e reads state e // (E/S).
Value = tuple[torch.Tensor, int]
STACKED = 0

_STATELESS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, Identity, nn.Identity)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _spread(x: torch.Tensor, sources: int, edges: int) -> torch.Tensor:
    """A shared value as a stacked one: each state's channels once per edge that reads it,
    in x's memory format."""
    n, _, h, w = x.shape
    out = x.unflatten(1, (sources, 1, -1)).expand(n, sources, edges // sources, -1, h, w)
    return out.reshape(n, -1, h, w).contiguous(memory_format=memory_format_of(x))


def _once(cache: dict | None, key: tuple, x: torch.Tensor, make) -> torch.Tensor:
    """make(), once per (key, x) within one `mix` call (`cache` None: every time). The
    entry keeps x alive, so its id cannot be reused for another tensor meanwhile."""
    if cache is None:
        return make()
    entry = cache.get((key, id(x)))
    if entry is None:
        entry = cache[(key, id(x))] = (x, make())
    return entry[1]


def _spread_once(x: torch.Tensor, sources: int, edges: int, cache: dict | None) -> torch.Tensor:
    """`_spread`, once per input within one `mix` call (every conv op of the group reads the
    same spread relu(x): one copy, saved once for the backward, instead of one per op)."""
    return _once(cache, ("spread", sources, edges), x, lambda: _spread(x, sources, edges))


def _conv(mods: list[nn.Conv2d], x: torch.Tensor, sources: int, cache: dict | None = None) -> Value:
    m, E = mods[0], len(mods)
    weight = _cat([c.weight for c in mods])
    bias = None if m.bias is None else _cat([c.bias for c in mods])
    if sources and m.groups == 1:
        # One convolution, the kernels of a state's edges as output channels of that
        # state's group: stacked output.
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, sources), STACKED
    if sources:
        x = _spread_once(x, sources, E, cache)
    if (m.kernel_size == (1, 1) and m.groups == 1 and m.stride == (1, 1) and bias is None
            and x.is_contiguous() and x.device.type == "cpu"):
        # Pointwise per edge on the CPU: a batched matrix product (B x E products of Co x Ci
        # by Ci x HW), whose backward is two more; oneDNN's grouped 1x1 backward is slower.
        # (On an H100 cuDNN's grouped convolution is the faster of the two.)
        n, _, h, w = x.shape
        out = torch.matmul(weight.view(E, m.out_channels, m.in_channels), x.view(n, E, -1, h * w))
        return out.view(n, E * m.out_channels, h, w), STACKED
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups * E), STACKED


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unbiased variance, mean) per channel of x, in at least float32 and without a graph:
    what a BatchNorm in training mode updates its running statistics from."""
    with torch.no_grad():
        return torch.var_mean(x.detach().to(torch.promote_types(x.dtype, torch.float32)),
                              dim=(0, 2, 3), correction=1)


def _batch_norm(mods: list[nn.BatchNorm2d], x: torch.Tensor, sources: int,
                cache: dict | None = None, scale: torch.Tensor | None = None) -> Value:
    """The edges' BatchNorms. `scale` (E,): each edge's output multiplied by its entry, folded
    into the affine weight and bias of a stacked output (as `cell._scaled_batch_norm`),
    so that no product with the mixing weights has to save the output; a shared output is
    returned unscaled."""
    m, E = mods[0], len(mods)
    training = m.training or not m.track_running_stats
    track = m.track_running_stats and m.running_mean is not None
    if training and track:
        torch._foreach_add_([b.num_batches_tracked for b in mods], 1)
    if sources and not m.affine and training:
        # The same output on every edge of a state: one normalisation over the states'
        # channels; each edge's statistics updated from its state's.
        if track:
            var, mean = batch_statistics(x)
            with torch.no_grad():
                buffers = [b.running_mean for b in mods] + [b.running_var for b in mods]
                running = torch.stack(buffers).view(2, sources, E // sources, -1)
                batch = torch.stack([mean, var]).to(running.dtype).view(2, sources, 1, -1)
                running.lerp_(batch.expand_as(running), m.momentum)
                torch._foreach_copy_(buffers, list(running.flatten(0, 2).unbind(0)))
        return F.batch_norm(x, None, None, None, None, True, 0.0, m.eps), sources
    if sources:
        x = _spread_once(x, sources, E, cache)
    running_mean = _cat([b.running_mean for b in mods]) if track else None
    running_var = _cat([b.running_var for b in mods]) if track else None
    weight = _cat([b.weight for b in mods]) if m.affine else None
    bias = _cat([b.bias for b in mods]) if m.affine else None
    if scale is not None:
        per_channel = scale.view(E, 1).expand(E, m.num_features).reshape(-1)
        weight = per_channel if weight is None else weight * per_channel
        bias = None if bias is None else bias * per_channel
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training, m.momentum, m.eps)
    if training and track and E > 1:
        with torch.no_grad():
            torch._foreach_copy_([b.running_mean for b in mods] + [b.running_var for b in mods],
                                 [*running_mean.split(m.num_features),
                                  *running_var.split(m.num_features)])
    return out, STACKED


def _factorized_reduce(mods: list[FactorizedReduce], x: torch.Tensor, sources: int,
                       cache: dict | None = None) -> Value:
    if not sources:
        return _per_edge(mods, x, sources)
    E = len(mods)
    x = mods[0].relu(x)
    shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
    a, _ = _conv([m.conv_1 for m in mods], x, sources, cache)
    b, _ = _conv([m.conv_2 for m in mods], shifted, sources, cache)
    n, _, h, w = a.shape
    # Edge e's output is [conv_1 of e, conv_2 of e].
    both = torch.cat([a.view(n, E, -1, h, w), b.view(n, E, -1, h, w)], dim=2).flatten(1, 2)
    return _batch_norm([m.bn for m in mods], both, STACKED)


def _per_edge(mods: list[nn.Module], x: torch.Tensor, sources: int) -> Value:
    """The fallback: each edge's module on its own input, outputs stacked."""
    E = len(mods)
    if sources:
        states = x.chunk(sources, dim=1)
        inputs = [states[e // (E // sources)] for e in range(E)]
    else:
        inputs = x.chunk(E, dim=1)
    return torch.cat([m(xi) for m, xi in zip(mods, inputs, strict=True)], dim=1), STACKED


def apply(mods: Sequence[nn.Module], x: torch.Tensor, sources: int = 1,
          cache: dict | None = None) -> Value:
    """The edges' modules (one op of every edge: same type and configuration) on x, a value
    shared by `sources` states (0: stacked). `cache`: one dict per `mix` call, in which a
    parameter-free layer on a shared input (the ReLU that starts every conv op) and the
    spread copy of an input run once for all the ops of the call."""
    m = mods[0]
    if isinstance(m, nn.Sequential):
        value = (x, sources)
        for layers in zip(*mods, strict=True):
            value = apply(list(layers), *value, cache)
        return value
    if isinstance(m, _STATELESS):
        if not sources:
            return m(x), sources
        return _once(cache, (type(m), m.extra_repr()), x, lambda: m(x)), sources
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return _conv(mods, x, sources, cache)
    if isinstance(m, nn.BatchNorm2d) and m.momentum is not None:
        return _batch_norm(mods, x, sources, cache)
    if isinstance(m, FactorizedReduce):
        return _factorized_reduce(mods, x, sources, cache)
    return _per_edge(mods, x, sources)


def _apply_scaled(mods: Sequence[nn.Module], x: torch.Tensor, sources: int, cache: dict,
                  scale: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """`apply`, with an op that ends in a BatchNorm giving a stacked output already scaled
    by `scale` (E,) inside that BatchNorm. Returns (output, sources, scaled)."""
    m = mods[0]
    last = m[-1] if isinstance(m, nn.Sequential) and len(m) > 1 else None
    if not (isinstance(last, nn.BatchNorm2d) and last.momentum is not None):
        return (*apply(mods, x, sources, cache), False)
    value = (x, sources)
    for layers in list(zip(*mods, strict=True))[:-1]:
        value = apply(list(layers), *value, cache)
    out, shared = _batch_norm([op[-1] for op in mods], *value, cache, scale)
    return out, shared, not shared


def mix(op_lists: Sequence[Sequence[nn.Module]], columns: tuple[int, ...], x: torch.Tensor,
        weights: torch.Tensor, sources: int = 1) -> torch.Tensor:
    """sum_o weights[e, o] * op_o of edge e, for the E edges leaving the `sources` states
    whose tensors x holds side by side (edges ordered by state, E / sources each).

    `op_lists[k]` holds op k of every edge, `columns[k]` its column of `weights` (E x ops).
    Returns (B, E, C, H', W'): edge e's mixed output at [:, e].
    """
    E = weights.size(0)
    per_state = (sources, E // sources)
    w_all = weights.view(1, *per_state, 1, 1, 1, -1)
    cache: dict = {}
    total = None
    for ops, k in zip(op_lists, columns, strict=True):
        out, shared, scaled = _apply_scaled(ops, x, sources, cache, weights[:, k])
        # (B, S, E/S, C, H, W): a shared output broadcasts over each state's edges.
        out = out.unflatten(1, (sources, 1, -1) if shared else (*per_state, -1))
        if scaled:  # the weights are already in it (folded into its BatchNorm)
            total = out if total is None else total + out
        else:
            w = w_all[..., k]
            total = w * out if total is None else torch.addcmul(total, w, out)
    # The weights (float32 under autocast) promote the sum: back to the input's dtype, so
    # that the ops downstream save activations in autocast's dtype (as cell.FastEdge.mix).
    return total.to(x.dtype).flatten(1, 2)
