"""The op vocabulary: shapes, strides, the reference definitions, drop-path."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel.fused import Conv2d, MaxPool2d, dense_grad
from darts.ops import FactorizedReduce, Identity, SepConv, Zero, drop_path
from darts.primitives import OPS, PRIMITIVES, build_op, register_op


def test_primitives_are_the_reference_order_with_none_first():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert {"sep_conv_7x7", "conv_7x1_1x7"} <= set(OPS)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_every_op_keeps_channels_and_divides_resolution_by_stride(name, stride, size):
    op = build_op(name, 6, stride, affine=True)
    y = op(torch.randn(2, 6, size, size))
    expected = -(-size // stride)  # ceil: 'same' padding at stride 2
    assert y.shape == (2, 6, expected, expected)


def test_separable_conv_is_two_stacked_depthwise_pointwise_blocks():
    op = SepConv(4, 4, 3, 2, 1)
    convs = [m for m in op if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [4, 1, 4, 1]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in op) == 2
    assert isinstance(op[0], nn.ReLU)


def test_dilated_conv_has_dilation_two():
    convs = [m for m in build_op("dil_conv_5x5", 4, 1, True) if isinstance(m, nn.Conv2d)]
    assert convs[0].dilation == (2, 2) and convs[0].padding == (4, 4)


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    assert isinstance(build_op("skip_connect", 4, 1, True), Identity)
    assert isinstance(build_op("skip_connect", 4, 2, True), FactorizedReduce)
    assert isinstance(build_op("none", 4, 2, True), Zero)


def test_factorized_reduce_matches_hand_computation_on_even_input():
    fr = FactorizedReduce(1, 2, affine=False).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = fr(x)
    # eval BN with fresh running stats (mean 0, var 1) only scales by 1/sqrt(1 + eps).
    scale = 1 / (1 + fr.bn.eps) ** 0.5
    assert torch.allclose(y[0, 0], x[0, 0, ::2, ::2] * scale)
    assert torch.allclose(y[0, 1], x[0, 0, 1::2, 1::2] * scale)


def test_register_op_rejects_duplicates_and_unknown_ops_list_known_ones():
    with pytest.raises(ValueError):
        register_op("sep_conv_3x3", lambda C, s, a: Identity())
    with pytest.raises(KeyError, match="known ops: .*sep_conv_3x3"):
        build_op("conv_9x9", 4, 1, True)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2, 2)
    y = drop_path(x, 0.3)
    per_sample = y.view(20000, -1)
    # each sample is either all zero or all 1/keep_prob
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1))
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03
    assert drop_path(x, 0.0) is x


@pytest.mark.parametrize("kind,k,stride,dilation", [
    ("pointwise", 1, 1, 1), ("depthwise", 3, 1, 1), ("depthwise", 5, 1, 1),
    ("depthwise", 3, 2, 1), ("depthwise", 3, 1, 2), ("depthwise", 5, 2, 2)])
@pytest.mark.parametrize("size", [7, 8])
def test_cpu_conv_backward_matches_native_convolution(kind, k, stride, dilation, size, monkeypatch):
    # The CPU fast path's hand-written gradients (matrix products, flipped-kernel conv, zero
    # insertion for stride 2) against PyTorch's own convolution backward, in float64, in
    # both memory formats and on odd sizes; and its double backward (the exact Hessian).
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    C = 6
    groups = C if kind == "depthwise" else 1
    pad = dilation * (k - 1) // 2
    conv = Conv2d(C, C, k, stride=stride, padding=pad, dilation=dilation, groups=groups,
                  bias=False).double()
    for channels_last in (False, True):
        x = torch.randn(3, C, size, size, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        out = conv(x)
        assert out.grad_fn is not None and "CPUConv" in type(out.grad_fn).__name__
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, conv.weight), g)
        ref = F.conv2d(x, conv.weight, None, stride, pad, dilation, groups)
        want = torch.autograd.grad(ref, (x, conv.weight), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        # Double backward: d/dw <dL/dx, v>.
        v = torch.randn_like(x)
        (gx,) = torch.autograd.grad(conv(x), x, g, create_graph=True)
        (h,) = torch.autograd.grad((gx * v).sum(), conv.weight)
        (gr,) = torch.autograd.grad(F.conv2d(x, conv.weight, None, stride, pad, dilation, groups),
                                    x, g, create_graph=True)
        (h_ref,) = torch.autograd.grad((gr * v).sum(), conv.weight)
        torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_cpu_conv_is_plain_conv2d_for_small_inputs_and_keeps_the_state_dict():
    conv = Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    out = conv(torch.randn(1, 4, 5, 5, requires_grad=True))
    assert "CPUConv" not in type(out.grad_fn).__name__
    assert set(conv.state_dict()) == set(nn.Conv2d(4, 4, 3, bias=False).state_dict())


@pytest.mark.parametrize("kind", ["pointwise", "depthwise"])
def test_cpu_conv_backward_skips_the_gradient_that_the_backward_does_not_reach(kind, monkeypatch):
    # The first-order alpha step asks only for d loss / d alpha: the weight gradients of
    # the CPU fast path must not be formed then (they were: needs_input_grad only says that
    # the weight requires grad). Counted by the ATen ops that form them, and checked for
    # the values of what is formed.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    C, k = 4, (1 if kind == "pointwise" else 3)
    conv = Conv2d(C, C, k, padding=k // 2, groups=1 if kind == "pointwise" else C,
                  bias=False).double()
    x = torch.randn(2, C, 6, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, C, 6, 6, dtype=torch.float64)

    def calls(inputs):
        out = conv(x)
        assert "CPUConv" in type(out.grad_fn).__name__
        mode = Ops()
        mode.calls = []
        with mode:
            grads = torch.autograd.grad(out, inputs, g)
        return grads, mode.calls

    (gx,), only_x = calls([x])
    (gw,), only_w = calls([conv.weight])
    _, both = calls([x, conv.weight])
    ref = torch.autograd.grad(F.conv2d(x, conv.weight, None, 1, k // 2, 1, conv.groups),
                              (x, conv.weight), g)
    torch.testing.assert_close(gx, ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ref[1], rtol=1e-12, atol=1e-12)
    if kind == "pointwise":  # one matrix product per gradient
        assert only_x.count("mm") == only_w.count("mm") == 1 and both.count("mm") == 2
    else:  # dx: a convolution with the flipped kernel; dw: ATen's weight-only backward
        assert "convolution_backward" not in only_x and "convolution" in only_x
        assert "convolution_backward" in only_w and "convolution" not in only_w
        assert "convolution_backward" in both and "convolution" in both


@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_grad_is_the_identity_with_a_dense_gradient(channels_last):
    # A cell node's gradient is a channel slice of its concatenation's gradient; dense_grad
    # hands it on dense (in the node's memory format) and unchanged in value.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    seen = []
    y = x * 2.0
    y.register_hook(lambda g: seen.append(g))
    out = torch.cat([dense_grad(y), torch.ones_like(y)], dim=1)
    torch.testing.assert_close(out[:, :3], 2.0 * x)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    assert seen[0].is_contiguous(memory_format=fmt)
    assert not g[:, :3].is_contiguous(memory_format=fmt)  # what it got: a strided slice
    torch.testing.assert_close(gx, 2.0 * g[:, :3])
    # Twice differentiable (the exact Hessian differentiates through cells).
    x2 = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad((dense_grad(x2) ** 3).sum(), x2, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x2)
    torch.testing.assert_close(g2, 6.0 * x2.detach())
    assert dense_grad(torch.ones(2)).requires_grad is False


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(3, 1, 1, False), (3, 2, 1, False),
                                                             (2, 2, 0, True)])
def test_max_pool_gradients_match_finite_differences(kernel, stride, padding, ceil_mode,
                                                     monkeypatch):
    monkeypatch.setattr(MaxPool2d, "save_input_on_cpu", True)
    pool = MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    # Distinct values: no ties, so the max is differentiable at the sample point.
    x = torch.randperm(2 * 3 * 7 * 7).double().div(50).view(2, 3, 7, 7).requires_grad_()
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_equals_torch_and_saves_no_indices(channels_last, monkeypatch):
    monkeypatch.setattr(MaxPool2d, "save_input_on_cpu", True)
    ours, torch_pool = MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 8, 9, 9).to(memory_format=fmt)
    grad = torch.randn(4, 8, 5, 5)
    saved = []
    results = []
    for pool in (ours, torch_pool):
        xi = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t, p=pool: saved.append((p, t.dtype)) or t,
                                                      lambda t: t):
            out = pool(xi)
        out.backward(grad)
        results.append((out, xi.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert [d for p, d in saved if p is ours] == [torch.float32]  # the input, no int64
    assert torch.int64 in [d for p, d in saved if p is torch_pool]
    with torch.no_grad():
        assert torch.equal(ours(x), torch_pool(x))


def test_max_pool_keeps_pytorchs_indices_on_the_cpu_by_default():
    saved = []
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        MaxPool2d(3, 1, 1)(x)
    assert torch.int64 in saved


def factorized_reduce_by_indexing(x, weights):
    """FactorizedReduce's convs from the definition, in float64: channels [0, C/2) of op e
    are W1_e . relu(x) at pixel (2i, 2j), channels [C/2, C) W2_e . relu(x) at (2i+1, 2j+1),
    zero past x's last row or column (the reference code's shifted, zero-padded input)."""
    r = F.relu(x.double())
    n, c, h, w = r.shape
    odd = torch.zeros(n, c, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64)
    odd[:, :, :h // 2, :w // 2] = r[:, :, 1::2, 1::2]
    return [torch.cat([torch.einsum("oc,nchw->nohw", w1.double().flatten(1), r[:, :, ::2, ::2]),
                       torch.einsum("oc,nchw->nohw", w2.double().flatten(1), odd)], dim=1)
            for w1, w2 in zip(weights[::2], weights[1::2], strict=True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_factorized_reduce_convs_match_the_definition(dtype, size):
    # Several FactorizedReduce ops on one channels-last input, one of them without an output
    # gradient: outputs and every gradient against the float64 definition; even and odd sizes.
    from darts.accel.fused import factorized_reduce_convs
    torch.manual_seed(0)
    frs = [FactorizedReduce(6, 8, affine=False).to(dtype) for _ in range(3)]
    weights = [w for fr in frs for w in (fr.conv_1.weight, fr.conv_2.weight)]
    x = torch.randn(3, 6, *size, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    outs = factorized_reduce_convs(frs, x)
    refs = factorized_reduce_by_indexing(x, weights)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for out, ref in zip(outs, refs, strict=True):
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), ref, **tol)
    gs = [torch.randn(ref.shape, dtype=torch.float64) for ref in refs]
    gs[1] = None
    used = [(o, r, g) for o, r, g in zip(outs, refs, gs, strict=True) if g is not None]
    got = torch.autograd.grad([o for o, _, _ in used], [x, *weights],
                              [g.to(dtype) for _, _, g in used], allow_unused=True)
    x64 = x.detach().double().requires_grad_()
    w64 = [w.detach().double().requires_grad_() for w in weights]
    refs = factorized_reduce_by_indexing(x64, w64)
    want = torch.autograd.grad([refs[0], refs[2]], [x64, *w64], [gs[0], gs[2]],
                               allow_unused=True)
    assert got[3] is None and got[4] is None  # op 1's weights: no gradient reached them
    for a, b in zip(got, want, strict=True):
        if b is not None:
            torch.testing.assert_close(a.double(), b, **tol)
    # The module gives the same on both layouts (NCHW: the convs themselves).
    frs[0].train()
    torch.testing.assert_close(frs[0](x), frs[0](x.contiguous()))


def test_factorized_reduce_convs_second_derivatives_and_skipped_gradients():
    from torch.utils._python_dispatch import TorchDispatchMode

    from darts.accel.fused import factorized_reduce_convs
    torch.manual_seed(0)
    frs = [FactorizedReduce(4, 6, affine=False).double() for _ in range(2)]
    weights = [w for fr in frs for w in (fr.conv_1.weight, fr.conv_2.weight)]
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    v = torch.randn_like(x)

    def hvp(fn, x, weights):  # d/dw <d loss/dx, v>: the exact Hessian's pattern
        x = x.clone().requires_grad_()
        loss = sum((y ** 2).sum() for y in fn(x, weights))
        (dx,) = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad((dx * v).sum(), weights)

    ours = hvp(lambda x, _: factorized_reduce_convs(frs, x), x, weights)
    w64 = [w.detach().clone().requires_grad_() for w in weights]
    for a, b in zip(ours, hvp(factorized_reduce_by_indexing, x, w64), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    # A backward that reaches only x forms no weight gradient (the first-order alpha step:
    # no gathering of relu(x) again), and one that reaches only a weight no input gradient.
    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    def calls(inputs):
        xx = x.clone().requires_grad_()
        loss = sum(y.sum() for y in factorized_reduce_convs(frs, xx))
        mode = Ops()
        mode.calls = []
        with mode:
            torch.autograd.grad(loss, [xx if t is None else t for t in inputs])
        return mode.calls

    only_x, only_w = calls([None]), calls([weights[3]])
    assert "clamp_min" not in only_x and "mul" in only_x
    assert only_x.count("mm") + only_x.count("addmm_") == 2  # the input gradient of each op
    assert "clamp_min" in only_w and "mul" not in only_w and "zeros_like" not in only_w
    assert only_w.count("mm") == 1  # conv_2 of op 1


def test_factorized_reduce_convs_leave_to_pytorch_what_they_do_not_cover():
    from darts.accel.fused import factorized_reduce_convs
    frs = [FactorizedReduce(4, 4, affine=False)]
    x = torch.randn(2, 4, 6, 6)
    assert factorized_reduce_convs(frs, x) is None  # NCHW
    x = x.contiguous(memory_format=torch.channels_last)
    assert factorized_reduce_convs(frs, x.double()) is None  # not the weights' dtype
    assert factorized_reduce_convs([nn.Identity()], x) is None
    with torch.no_grad():
        assert factorized_reduce_convs(frs, x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert factorized_reduce_convs(frs, x) is None
    hooked = [FactorizedReduce(4, 4, affine=False)]
    hooked[0].conv_2.register_forward_hook(lambda *a: None)
    assert factorized_reduce_convs(hooked, x) is None
    assert factorized_reduce_convs(frs, x) is not None
