"""Fast variants of the papers' building blocks, with the same parameters and state dicts.

`Conv2d`, `BatchNorm2d` and `MaxPool2d` are nn.Conv2d, nn.BatchNorm2d and nn.MaxPool2d whose
forward or backward runs the C kernels (darts/accel/kernels.py) or a cheaper exact form
where they apply, and exactly the torch module elsewhere. `FusedSequential` runs a BatchNorm
and the ReLU after it (and a depthwise conv after that) as one op. `relu_depthwise` and
`factorized_reduce_convs` compute the first layers of every sep_conv, dil_conv and
FactorizedReduce on one cell state at once (darts/accel/cell.py). `darts.accel.accelerate`
swaps a plain model's modules to these classes in place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel import kernels
from darts.ops import FactorizedReduce


def _will_run(node: torch.autograd.graph.Node) -> bool:
    """Whether the running backward pass reaches `node` (not a leaf's accumulator).

    A custom Function's `needs_input_grad` only says that an input requires grad; autograd's
    own backward formulas also skip what the current backward does not reach, and this asks
    the engine the same question (`torch._C._will_engine_execute_node`, as
    torch.autograd.graph.register_multi_grad_hook does). Where it is missing: True.
    """
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if will_run is None:
        return True
    try:
        return bool(will_run(node))
    except RuntimeError:  # a backward the engine cannot answer for: compute it
        return True


class _CPUConvFunction(torch.autograd.Function):
    """A convolution whose backward avoids the CPU's slow paths (see `Conv2d`)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        # Where each gradient goes (never a leaf: see `Conv2d.forward`); a backward that does
        # not reach it (the first-order alpha step's torch.autograd.grad(loss, alphas) never
        # reaches the weights) skips it.
        ctx.nodes = tuple(t.grad_fn if t.requires_grad else None for t in (x, weight))
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w = (node is not None and _will_run(node) for node in ctx.nodes)
        if torch.is_grad_enabled():
            # A graph of the backward is wanted (double backprop, the exact Hessian): the
            # native backward is differentiable, recompute the forward and use it.
            with torch.enable_grad():
                out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
                inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
                grads = list(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_x else None, grads.pop(0) if need_w else None,
                    None, None, None, None)
        c_out, c_in_g, kh, kw = weight.shape
        dx = dw = None
        ctx_grad = grad
        if kh == kw == 1 and groups == 1:
            # Pointwise: two matrix products on (pixels x channels) views.
            g2 = grad.permute(0, 2, 3, 1).reshape(-1, c_out)
            if need_x:
                n, _, h, w = grad.shape
                dx = (g2 @ weight.view(c_out, c_in_g)).view(n, h, w, c_in_g).permute(0, 3, 1, 2)
            if need_w:
                x2 = x.permute(0, 2, 3, 1).reshape(-1, c_in_g)
                dw = (g2.t() @ x2).view_as(weight)
        else:
            if need_x:
                dx = _depthwise_input_grad(grad, x.shape, weight, stride, padding, dilation)
            if need_w:
                dw = _depthwise_weight_grad(ctx_grad, x, weight, stride, padding, dilation)
        return dx, dw, None, None, None, None


def _depthwise_input_grad(grad: torch.Tensor, x_shape: torch.Size, weight: torch.Tensor,
                          stride: int, padding: int, dilation: int) -> torch.Tensor:
    """The input gradient of a depthwise conv: the transposed convolution of the output
    gradient, computed as one (undilated strided kernels) or as the stride-1 convolution of
    the (zero-inserted, for stride 2) output gradient with the flipped kernel."""
    k, groups = weight.shape[-1], weight.shape[0]
    if stride != 1 and dilation == 1:
        # A transposed convolution: oneDNN's is 4-5x faster than the zero insertion below
        # for undilated kernels (and 5-20x slower for dilated ones).
        out_pad = [x_shape[i] - ((grad.shape[i] - 1) * stride - 2 * padding + k) for i in (2, 3)]
        return F.conv_transpose2d(grad, weight, None, stride, padding, out_pad, groups)
    if stride != 1:
        # The strided outputs are every stride-th output of the stride-1 conv.
        span = dilation * (k - 1) - 2 * padding
        full = grad.new_zeros(grad.shape[:2] + (x_shape[2] - span, x_shape[3] - span))
        full[:, :, ::stride, ::stride] = grad
        grad = full
    pad = dilation * (k - 1) - padding
    return F.conv2d(grad, weight.flip(-2, -1), None, 1, pad, dilation, groups)


def _depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           stride: int, padding: int, dilation: int) -> torch.Tensor:
    """The gradient of a depthwise conv's square weight: ours (darts/accel/kernels.py) where it can
    be built and is the faster one, else oneDNN's."""
    k = weight.shape[-1]
    dw = (kernels.depthwise_weight_grad(grad, x, k, stride, padding, dilation)
          if kernels.prefer_depthwise_weight_grad(k, dilation) else None)
    if dw is None:
        dw = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2,
            False, [0, 0], weight.shape[0], [False, True, False])[1]
    return dw


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) with a faster backward on the CPU.

    On CPU, PyTorch's backward of depthwise and pointwise convolutions is 4-20x slower
    than their forward at the supernet's sizes (oneDNN's small-shape paths; dilated ones
    worst). Both gradients have cheap exact forms: a pointwise conv is a matrix product,
    and the input gradient of a depthwise conv is a depthwise conv with the flipped
    kernel. The forward is the native one; on other devices, under autocast, for small
    inputs (where the native backward is fast and a Python backward's overhead is not) or
    for other convolutions this is exactly nn.Conv2d.
    """

    MIN_ELEMENTS = 1 << 17  # below this, the native backward is as fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        fast = (x.device.type == "cpu" and self.bias is None and torch.is_grad_enabled()
                and x.numel() >= self.MIN_ELEMENTS
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and len(set(self.stride)) == len(set(self.padding)) == len(set(self.dilation)) == 1
                and ((self.kernel_size == (1, 1) and self.groups == 1 and self.stride == (1, 1))
                     or (self.groups == self.in_channels == self.out_channels
                         and self.kernel_size[0] == self.kernel_size[1]))
                and not torch.is_autocast_enabled("cpu") and x.dtype == w.dtype)
        if not fast:
            return super().forward(x)
        # The engine answers "will this backward reach it?" only for inner nodes (not for a
        # leaf's accumulator under torch.autograd.grad): a leaf gets a view, an inner node.
        x, w = (t.view_as(t) if t.requires_grad and t.grad_fn is None else t for t in (x, w))
        return _CPUConvFunction.apply(x, w, self.stride[0], self.padding[0], self.dilation[0],
                                      self.groups)

    def depthwise_conf(self) -> tuple[int, int, int, int] | None:
        """(kernel size, stride, padding, dilation) of a square depthwise conv without bias
        and with zero padding, the same along both axes; None for any other."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        if not (self.groups == self.in_channels == self.out_channels and self.bias is None
                and self.padding_mode == "zeros" and isinstance(p, tuple)
                and k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1]):
            return None
        return k[0], s[0], p[0], d[0]


class _ReluDepthwiseFunction(torch.autograd.Function):
    """[depthwise conv_k(relu(x)) for each weight] with the C kernels (see `relu_depthwise`)."""

    @staticmethod
    def forward(ctx, x, confs, *weights):
        ctx.save_for_backward(x, *weights)
        ctx.confs = confs
        # Where each gradient goes; a backward that does not reach it skips it (see
        # `_CPUConvFunction`: the first-order alpha step forms no weight gradient).
        ctx.nodes = tuple(t.grad_fn if t.requires_grad else None for t in (x, *weights))
        ctx.set_materialize_grads(False)
        return tuple(kernels.relu_depthwise_forward(x, weights, confs))

    @staticmethod
    def backward(ctx, *grads):
        x, *weights = ctx.saved_tensors
        confs = ctx.confs
        if torch.is_grad_enabled():
            # Double backward (the exact Hessian): differentiable PyTorch, the forward
            # recomputed.
            with torch.enable_grad():
                inputs = [t for t, node in zip((x, *weights), ctx.nodes, strict=True)
                          if node is not None]
                relu = F.relu(x)
                outs = [F.conv2d(relu, w, None, s, p, d, w.shape[0])
                        for w, (_, s, p, d) in zip(weights, confs, strict=True)]
                pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
                found = iter(torch.autograd.grad([o for o, _ in pairs], inputs,
                                                 [g for _, g in pairs], create_graph=True,
                                                 allow_unused=True))
            return tuple(None if node is None else next(found) for node in ctx.nodes[:1]) \
                + (None,) + tuple(None if node is None else next(found) for node in ctx.nodes[1:])
        need = [node is not None and _will_run(node) for node in ctx.nodes]
        if not any(need) or all(g is None for g in grads):
            return (None,) * (2 + len(weights))
        dx, dws = kernels.relu_depthwise_backward(x, weights, confs, grads, need[0], need[1:])
        return (dx, None, *dws)


def relu_depthwise(x: torch.Tensor, convs) -> list[torch.Tensor] | None:
    """[conv(relu(x)) for each depthwise `Conv2d` in convs], as one op on the CPU: the C
    kernels read x once for all the convolutions, and in the backward sum all their
    transposed convolutions and ReLU's mask into x's gradient in one pass (darts/accel/kernels.py).
    None where not covered (other devices, dtypes and layouts; convs with hooks or other
    than square depthwise ones): the caller runs them one by one."""
    confs = []
    for conv in convs:
        conf = conv.depthwise_conf() if type(conv) is Conv2d else None
        if conf is None or conv._forward_hooks or conv._forward_pre_hooks:
            return None
        confs.append(conf)
    weights = [conv.weight for conv in convs]
    if not kernels.covers_relu_depthwise(x, weights, confs):
        return None
    # The engine answers "will this backward reach it?" only for inner nodes: a leaf (a
    # network weight) gets a view, an inner node (as in `Conv2d.forward`).
    x, *weights = (t.view_as(t) if t.requires_grad and t.grad_fn is None else t
                   for t in (x, *weights))
    return list(_ReluDepthwiseFunction.apply(x, tuple(confs), *weights))


def _relu_subsample(x: torch.Tensor) -> torch.Tensor:
    """(N, H', W', 2C): relu(x) at the even pixels (rows and columns) next to relu(x) at the
    odd ones, zero past the last odd row or column of an odd size; x channels-last, H' and W'
    the halves rounded up. What FactorizedReduce's two 1x1 stride-2 convs read."""
    n, c, h, w = x.shape
    xl = x.permute(0, 2, 3, 1)
    out = (x.new_zeros if h % 2 or w % 2 else x.new_empty)(n, (h + 1) // 2, (w + 1) // 2, 2 * c)
    torch.clamp_min(xl[:, ::2, ::2], 0, out=out[..., :c])
    torch.clamp_min(xl[:, 1::2, 1::2], 0, out=out[:, :h // 2, :w // 2, c:])
    return out


def _block_weight(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """(2C, C_out): the two convs' weights (C_out / 2, C, 1, 1) as one matrix on
    `_relu_subsample`'s channels, conv_1 on the even pixels, conv_2 on the odd ones."""
    half, c = w1.shape[:2]
    out = w1.new_zeros(2 * c, 2 * half)
    out[:c, :half] = w1.view(half, c).t()
    out[c:, half:] = w2.view(half, c).t()
    return out


def _factorized_reduce_reference(x: torch.Tensor, weights) -> list[torch.Tensor]:
    """FactorizedReduce's convolutions, as nn.Module's forward computes them (differentiable)."""
    relu = F.relu(x)
    shifted = F.pad(relu[:, :, 1:, 1:], (0, 1, 0, 1))
    return [torch.cat([F.conv2d(relu, w1, None, 2), F.conv2d(shifted, w2, None, 2)], dim=1)
            for w1, w2 in zip(weights[::2], weights[1::2], strict=True)]


class _FactorizedReduceFunction(torch.autograd.Function):
    """[cat(conv_1(relu(x)), conv_2(shifted relu(x)))] of several FactorizedReduce ops on one
    input (see `factorized_reduce_convs`)."""

    @staticmethod
    def forward(ctx, x, *weights):
        ctx.save_for_backward(x, *weights)
        # Where each gradient goes; a backward that does not reach it skips it (see
        # `_CPUConvFunction`: the first-order alpha step forms no weight gradient).
        ctx.nodes = tuple(t.grad_fn if t.requires_grad else None for t in (x, *weights))
        ctx.set_materialize_grads(False)
        sub = _relu_subsample(x)
        flat = sub.view(-1, sub.shape[-1])
        outs = []
        for w1, w2 in zip(weights[::2], weights[1::2], strict=True):
            y = flat @ _block_weight(w1, w2)
            outs.append(y.view(*sub.shape[:3], -1).permute(0, 3, 1, 2))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x, *weights = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Double backward (the exact Hessian): differentiable PyTorch, the forward
            # recomputed.
            with torch.enable_grad():
                inputs = [t for t, node in zip((x, *weights), ctx.nodes, strict=True)
                          if node is not None]
                outs = _factorized_reduce_reference(x, weights)
                pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
                found = iter(torch.autograd.grad([o for o, _ in pairs], inputs,
                                                 [g for _, g in pairs], create_graph=True,
                                                 allow_unused=True))
            return tuple(None if node is None else next(found) for node in ctx.nodes)
        need = [node is not None and _will_run(node) for node in ctx.nodes]
        dx, dws = None, [None] * len(weights)
        n, c, h, w = x.shape
        flats = [None if g is None
                 else g.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
                 .reshape(-1, g.shape[1]) for g in grads]
        if need[0]:
            dsub = None
            for g, w1, w2 in zip(flats, weights[::2], weights[1::2], strict=True):
                if g is not None:
                    block = _block_weight(w1, w2).t()
                    dsub = g @ block if dsub is None else dsub.addmm_(g, block)
            if dsub is not None:
                # relu's mask at the pixels read, the rest zero.
                dsub = dsub.view(n, (h + 1) // 2, (w + 1) // 2, 2 * c)
                dx = torch.zeros_like(x, memory_format=torch.channels_last)
                dxl, xl = dx.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)
                torch.mul(dsub[..., :c], xl[:, ::2, ::2] > 0, out=dxl[:, ::2, ::2])
                torch.mul(dsub[:, :h // 2, :w // 2, c:], xl[:, 1::2, 1::2] > 0,
                          out=dxl[:, 1::2, 1::2])
        if any(need[1:]):
            flat = _relu_subsample(x).view(-1, 2 * c)
            for i, g in enumerate(flats):
                if g is None:
                    continue
                half = g.shape[1] // 2
                for j, (cols, rows) in enumerate(((slice(None, half), slice(None, c)),
                                                  (slice(half, None), slice(c, None)))):
                    if need[1 + 2 * i + j]:
                        dws[2 * i + j] = (g[:, cols].t() @ flat[:, rows]).view_as(
                            weights[2 * i + j])
        return (dx, *dws)


def factorized_reduce_convs(ops, x: torch.Tensor) -> list[torch.Tensor] | None:
    """[cat(conv_1(relu(x)), conv_2(shifted relu(x))) for each FactorizedReduce in ops]: the
    ops' outputs before their BatchNorms, on the CPU as matrix products.

    FactorizedReduce's 1x1 stride-2 convs read half the pixels of relu(x), the even and the
    odd ones: those are gathered once, relu applied, for all the ops on x, and each op's two
    convs are one matrix product on them. The backward writes x's gradient at the pixels
    read and applies relu's mask there, where autograd would form and mask whole-size
    gradients of the slice, the padding and relu, and PyTorch's backward of a strided 1x1
    convolution is slow on the CPU (a state's four edges, forward and backward, 4.3x faster
    measured at 64x32x32x32, with their BatchNorms). None where not covered (other devices,
    dtypes and layouts, autocast, torch.compile, hooks): the caller runs the ops themselves.
    """
    if not (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous(memory_format=torch.channels_last) and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not kernels._compiling() and ops):
        return None
    weights = []
    for op in ops:
        if type(op) not in (FactorizedReduce, FastFactorizedReduce) or any(
                m._forward_hooks or m._forward_pre_hooks
                for m in (op, op.relu, op.conv_1, op.conv_2, op.bn)):
            return None
        for conv in (op.conv_1, op.conv_2):
            if conv.weight.dtype != x.dtype or conv.weight.shape[1] != x.shape[1]:
                return None
            weights.append(conv.weight)
    # A leaf gets a view, so that the engine can say whether a backward reaches it (see
    # `Conv2d.forward`).
    x, *weights = (t.view_as(t) if t.requires_grad and t.grad_fn is None else t
                   for t in (x, *weights))
    return list(_FactorizedReduceFunction.apply(x, *weights))


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and state dict) whose training-mode forward on
    float32 channels-last CPU tensors runs the C kernels (darts/accel/kernels.py: PyTorch's is 1.2-1.7x
    slower there in each direction); elsewhere exactly nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, relu=False)

    def forward_relu(self, x: torch.Tensor) -> torch.Tensor:
        """relu(self(x)), in one pass of the C kernel where it runs (see `run_layers`)."""
        return self._forward(x, relu=True)

    def forward_relu_conv(self, x: torch.Tensor, conv: Conv2d) -> torch.Tensor:
        """conv(relu(self(x))) for a depthwise `conv` (the middle of a sep_conv). Where the C
        kernels run, in training with a graph, one op keeps only x for the backward and
        computes relu(self(x)) again there where the conv's weight gradient needs it (one
        pass), instead of keeping it from the forward: one activation of each sep_conv less
        held between the forward and the backward (`_BNReLUDepthwiseFunction`)."""
        conf = conv.depthwise_conf()
        w = conv.weight
        if not (self.training and torch.is_grad_enabled() and conf is not None
                and x.numel() >= Conv2d.MIN_ELEMENTS and w.dtype == torch.float32
                and kernels.covers_batch_norm(x, self.weight, self.bias)):
            return conv(self.forward_relu(x))
        # Leaves get views, inner nodes (see `Conv2d.forward`).
        x, bw, bb, w = (t.view_as(t) if t is not None and t.requires_grad and t.grad_fn is None
                        else t for t in (x, self.weight, self.bias, w))
        try:
            out, mean, var = _BNReLUDepthwiseFunction.apply(x, bw, bb, self.eps, w, conf)
        except kernels.Fallback:
            return conv(self.forward_relu(x))
        self._update_running_stats(mean, var)
        return out

    def _forward(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        fast = (kernels.batch_norm_train(x, self.weight, self.bias, self.eps, relu=relu)
                if self.training else None)
        if fast is None:
            y = super().forward(x)
            return F.relu(y) if relu else y
        y, mean, var = fast
        self._update_running_stats(mean, var)
        return y

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                        else self.momentum)
            update_running_stats(self, mean, var, momentum)


class _BNReLUDepthwiseFunction(torch.autograd.Function):
    """conv(relu(BN(x))) for a training-mode BatchNorm and a depthwise conv, with the C
    BatchNorm kernels, keeping x but not the conv's input relu(BN(x)): the backward forms
    the conv's input gradient from the weights alone and computes relu(BN(x)) again (from the
    forward's constants, the same values) only where the conv's weight gradient is wanted.
    Outputs: the conv's output, and the batch's mean and unbiased variance (not
    differentiable)."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, eps, weight, conf):
        y, mean, invstd, var, k = kernels.bn_forward_raw(x, bn_weight, bn_bias, eps, None, True)
        _, stride, padding, dilation = conf
        out = F.conv2d(y, weight, None, stride, padding, dilation, weight.shape[0])
        ctx.save_for_backward(x, bn_weight, bn_bias, mean, invstd, k, weight)
        ctx.conf, ctx.eps = conf, eps
        # Where each gradient goes; a backward that does not reach it skips it (see
        # `_CPUConvFunction`).
        ctx.nodes = tuple(t.grad_fn if t is not None and t.requires_grad else None
                          for t in (x, bn_weight, bn_bias, weight))
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):
        x, bn_weight, bn_bias, mean, invstd, k, weight = ctx.saved_tensors
        _, stride, padding, dilation = ctx.conf
        if grad is None:
            return (None,) * 6
        if torch.is_grad_enabled():
            # Double backward (the exact Hessian): differentiable PyTorch, the forward
            # recomputed.
            with torch.enable_grad():
                inputs = [t for t, node in zip((x, bn_weight, bn_bias, weight), ctx.nodes,
                                               strict=True) if node is not None]
                y = F.relu(F.batch_norm(x, None, None, bn_weight, bn_bias, True, 0.0, ctx.eps))
                out = F.conv2d(y, weight, None, stride, padding, dilation, weight.shape[0])
                found = iter(torch.autograd.grad(out, inputs, grad, create_graph=True,
                                                 allow_unused=True))
            dx, dbw, dbb, dw = (None if node is None else next(found) for node in ctx.nodes)
            return dx, dbw, dbb, None, dw, None
        need_x, need_bw, need_bb, need_w = (node is not None and _will_run(node)
                                            for node in ctx.nodes)
        dx = dbw = dbb = dw = None
        if need_w:
            y = kernels.bn_relu_apply(x, k)
            dw = _depthwise_weight_grad(grad, y, weight, stride, padding, dilation)
            del y
        if need_x or need_bw or need_bb:
            dy = _depthwise_input_grad(grad, x.shape, weight, stride, padding, dilation)
            dx, dbw, dbb = kernels.bn_backward_raw(dy, x, bn_weight, mean, invstd, k,
                                                   need_bw, need_bb)
        return dx if need_x else None, dbw, dbb, None, dw, None


def run_layers(layers, x: torch.Tensor) -> torch.Tensor:
    """The layers one after another, as nn.Sequential runs them, but a `BatchNorm2d` followed
    by an nn.ReLU runs as one (`BatchNorm2d.forward_relu`): on the CPU the C kernel writes
    relu(BN(x)) in one pass and its backward takes ReLU's mask from BN's input, which saves
    two passes over memory each way; followed by a depthwise `Conv2d` too, the three run as
    one that does not keep relu(BN(x)) for the backward (`BatchNorm2d.forward_relu_conv`).
    Layers with forward hooks run alone (the hooks see what they expect)."""
    i, n = 0, len(layers)
    while i < n:
        layer = layers[i]
        if type(layer) is BatchNorm2d and i + 1 < n and type(layers[i + 1]) is nn.ReLU \
                and not any(m._forward_hooks or m._forward_pre_hooks
                            for m in (layer, layers[i + 1])):
            conv = layers[i + 2] if i + 2 < n else None
            if type(conv) is Conv2d and conv.depthwise_conf() is not None \
                    and not (conv._forward_hooks or conv._forward_pre_hooks):
                x = layer.forward_relu_conv(x, conv)
                i += 3
                continue
            x = layer.forward_relu(x)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


class FusedSequential(nn.Sequential):
    """nn.Sequential (same modules and state dict) that runs its layers with `run_layers`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self, x)


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor,
                         momentum: float) -> None:
    """What a BatchNorm in training mode does with its batch's mean and unbiased variance."""
    with torch.no_grad():
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(var.to(bn.running_var.dtype), momentum)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where x is a dense channels-last 4-d tensor (and not also contiguous),
    else contiguous_format: the layout to give a tensor made from x."""
    return (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a dense gradient (see `dense_grad`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.fmt = memory_format_of(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.fmt)


def dense_grad(x: torch.Tensor) -> torch.Tensor:
    """x, with a backward that makes x's gradient dense (one copy where it is strided).

    A cell node's gradient from the cell's output is a channel slice of the concatenation's
    gradient, and every op into the node receives it as it is; on the CPU, BatchNorm's
    backward on such a strided gradient is about 7x slower than on a dense one (channels_last,
    the supernet's sizes). Cells pass their nodes through this.
    """
    return _DenseGrad.apply(x) if x.requires_grad else x


class _MaxPoolFunction(torch.autograd.Function):
    """max_pool2d that saves its input instead of the argmax indices, and finds them again
    in the backward (one more pooling pass, over the input only).

    PyTorch's max pooling saves int64 indices, 8 bytes per output element: four times a
    bf16 activation, and in the supernet the input is one cell state that every edge's
    pooling shares, saved once, while each edge saved its own indices.
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode):
        ctx.save_for_backward(x)
        ctx.config = (kernel_size, stride, padding, ceil_mode)
        return F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        kernel_size, stride, padding, ceil_mode = ctx.config
        with torch.no_grad():
            _, indices = F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode,
                                      return_indices=True)
        # Differentiable in `grad` (the exact second-order step's double backward).
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, kernel_size, stride, padding, [1, 1], ceil_mode, indices)
        return grad_x, None, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (same arguments, state and output) whose backward keeps the input, not
    the indices (`_MaxPoolFunction`); without dilation or returned indices.

    Not on the CPU unless `save_input_on_cpu` is set: there the extra pooling pass costs
    time (measured: a forward and backward at 64x16x32x32 takes 54 ms against PyTorch's
    28 ms, contiguous; 10.6 against 6.2 ms, channels_last), and time is the CPU's limit.
    """

    save_input_on_cpu = False

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not (torch.is_grad_enabled() and x.requires_grad)
                or (x.device.type == "cpu" and not self.save_input_on_cpu)):
            return super().forward(x)
        pair = torch.nn.modules.utils._pair
        return _MaxPoolFunction.apply(x, pair(self.kernel_size), pair(self.stride),
                                      pair(self.padding), self.ceil_mode)


class FastFactorizedReduce(FactorizedReduce):
    """FactorizedReduce (same modules and state dict) whose two convs run as one matrix
    product on the CPU (`factorized_reduce_convs`); elsewhere exactly FactorizedReduce."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = factorized_reduce_convs([self], x)  # None: not covered
        return super().forward(x) if fast is None else self.bn(fast[0])


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    """cls (an nn.Sequential subclass that keeps Sequential's forward) with FusedSequential's
    forward: isinstance checks against cls still hold."""
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "forward": FusedSequential.forward, "__module__": cls.__module__,
            "__doc__": cls.__doc__})
    return _FUSED_CLASSES[cls]


def _has_bn_relu(seq: nn.Sequential) -> bool:
    """Whether a BatchNorm is followed by a ReLU that does not work in place."""
    layers = list(seq)
    return any(isinstance(a, nn.BatchNorm2d) and type(b) is nn.ReLU and not b.inplace
               for a, b in zip(layers, layers[1:], strict=False))


def swap_modules(model: nn.Module) -> None:
    """Each module of `model` of a class that has a fast variant here becomes that variant,
    in place (`module.__class__`): nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d (without dilation
    or returned indices), FactorizedReduce, and an nn.Sequential with a BatchNorm followed by
    a ReLU (FusedSequential's forward). Same parameters, buffers and state dict keys;
    subclasses with their own forward are left alone."""
    for m in model.modules():
        cls = type(m)
        if cls is nn.Conv2d:
            m.__class__ = Conv2d
        elif cls is nn.BatchNorm2d:
            m.__class__ = BatchNorm2d
        elif cls is nn.MaxPool2d and not m.return_indices \
                and nn.modules.utils._pair(m.dilation) == (1, 1):
            m.__class__ = MaxPool2d
        elif cls is FactorizedReduce:
            m.__class__ = FastFactorizedReduce
        elif isinstance(m, nn.Sequential) and cls.forward is nn.Sequential.forward \
                and _has_bn_relu(m):
            m.__class__ = _fused_class(cls)
