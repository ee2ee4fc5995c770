"""The C kernels (darts/accel/kernels.py, darts/accel/kernels.c): values, the build, the fallback."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from darts.accel import kernels
from darts.accel.fused import Conv2d

needs_kernels = pytest.mark.skipif(kernels.library() is None,
                                   reason="no C compiler: the C kernels cannot be built")


def unfold_weight_grad(g, x, k, stride, padding, dilation):
    """dW[c, i, j] = sum over n and outputs of g * the input under tap (i, j), in float64 from
    the input's patches (F.unfold), not from any convolution backward."""
    n, c = x.shape[:2]
    cols = F.unfold(x.double(), k, dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, c, k * k, -1)
    return torch.einsum("nckl,ncl->ck", cols, g.double().reshape(n, c, -1)).view(c, 1, k, k)


def count_kernel_runs(monkeypatch, name: str) -> list[bool]:
    """Wraps kernels.<name>: the returned list gets True per call that ran the kernel and
    False per call that handed back to PyTorch (None)."""
    calls = []
    real = getattr(kernels, name)

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels, name, counted)
    return calls


@needs_kernels
@pytest.mark.parametrize("k,stride,dilation,padding", [
    (3, 1, 1, 1), (5, 1, 1, 2), (3, 1, 2, 2), (5, 1, 2, 4),  # the DARTS ops at stride 1
    (3, 2, 1, 1), (5, 2, 1, 2), (3, 2, 2, 2), (5, 2, 2, 4),  # and at stride 2
    (1, 1, 1, 0), (7, 1, 1, 3), (4, 1, 1, 1), (3, 3, 3, 0), (5, 1, 1, 4)])  # and others
@pytest.mark.parametrize("channels", [29, 1])
def test_depthwise_weight_grad_matches_the_unfolded_input(k, stride, dilation, padding, channels):
    # 29 = 16 + 8 + 4 + 1 channels: every vector width of the kernel; odd, unequal sizes.
    torch.manual_seed(0)
    x = torch.randn(3, channels, 9, 11).contiguous(memory_format=torch.channels_last)
    oh = (9 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    ow = (11 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    g = torch.randn(3, channels, oh, ow)  # contiguous: copied to channels_last inside
    got = kernels.depthwise_weight_grad(g, x, k, stride, padding, dilation)
    want = unfold_weight_grad(g, x, k, stride, padding, dilation)
    assert got is not None and got.dtype == torch.float32 and got.shape == (channels, 1, k, k)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_depthwise_weight_grad_is_the_same_on_any_number_of_threads():
    torch.manual_seed(0)
    x = torch.randn(5, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    want = unfold_weight_grad(g, x, 5, 1, 4, 2)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 8):  # 8 threads for 5 images: at most one image each
            torch.set_num_threads(n)
            got = kernels.depthwise_weight_grad(g, x, 5, 1, 4, 2)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_the_supernets_depthwise_convs_take_their_weight_gradient_from_the_kernel(monkeypatch):
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    calls = count_kernel_runs(monkeypatch, "depthwise_weight_grad")
    torch.manual_seed(0)
    conv = Conv2d(8, 8, 5, stride=2, padding=4, dilation=2, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    out = conv(x)
    g = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, conv.weight, g)
    assert calls == [True]
    torch.testing.assert_close(gw.double(), unfold_weight_grad(g, x, 5, 2, 4, 2),
                               rtol=1e-5, atol=1e-5)
    # undilated 3x3: oneDNN's is as fast (benchmarks/bench_kernels.py)
    conv3 = Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    torch.autograd.grad(conv3(x), conv3.weight, torch.randn_like(x))
    assert calls == [True]
    # float64 (the exactness tests) and DARTS_CPU_KERNELS=0 take PyTorch's kernel
    assert kernels.depthwise_weight_grad(g.double(), x.double(), 5, 2, 4, 2) is None
    monkeypatch.setenv("DARTS_CPU_KERNELS", "0")
    assert kernels.depthwise_weight_grad(g, x, 5, 2, 4, 2) is None


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """library() as in a new process, building into an empty cache directory."""
    monkeypatch.setenv("DARTS_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)
    return tmp_path / "cache"


@needs_kernels
def test_the_library_is_built_once_into_the_cache_and_reused(fresh_build, monkeypatch):
    assert kernels.library() is not None
    (built,) = fresh_build.iterdir()  # the library, no temporary file left behind
    assert built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_tried", False)
    builds = []
    monkeypatch.setattr(kernels, "_build", lambda *args: builds.append(args) or "no build")
    assert kernels.library() is not None and builds == []  # as a new process would
    assert [p.name for p in fresh_build.iterdir()] == [built.name]
    assert built.stat().st_mtime_ns == stamp


def test_without_a_compiler_pytorchs_kernel_is_used_and_the_reason_logged(
        fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    with caplog.at_level(logging.WARNING, logger="darts.kernels"):
        assert kernels.library() is None
        assert kernels.library() is None  # tried once, said once
    assert len(caplog.records) == 1 and "/nonexistent/cc" in caplog.text
    assert not fresh_build.exists() or not any(fresh_build.iterdir())
    torch.manual_seed(0)
    conv = Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False)
    x = torch.randn(2, 4, 8, 8)
    out = conv(x)
    g = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, conv.weight, g)
    torch.testing.assert_close(gw.double(), unfold_weight_grad(g, x, 3, 1, 2, 2),
                               rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("affine", ["none", "weight", "weight_and_bias"])
@pytest.mark.parametrize("channels", [29, 3])
def test_batch_norm_matches_pytorchs_in_float64(affine, channels):
    # 29 channels: three blocks of 8 and a tail of 5; values far from zero mean.
    torch.manual_seed(0)
    x = (torch.randn(3, channels, 5, 7) * 3 + 5).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels) if affine != "none" else None
    bias = torch.randn(channels) if affine == "weight_and_bias" else None
    params = [t.requires_grad_() for t in (weight, bias) if t is not None]
    x.requires_grad_()
    y, mean, var = kernels.batch_norm_train(x, weight, bias, 1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x64, p64 = x.detach().double().requires_grad_(), [p.detach().double().requires_grad_()
                                                      for p in params]
    w64 = p64[0] if weight is not None else None
    b64 = p64[1] if bias is not None else None
    y64 = F.batch_norm(x64, None, None, w64, b64, True, 0.0, 1e-5)
    var64, mean64 = torch.var_mean(x64.detach(), dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), var64, rtol=1e-5, atol=1e-6)
    assert not mean.requires_grad and not var.requires_grad
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *params], dy)
    want = torch.autograd.grad(y64, [x64, *p64], dy.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("fusion", ["acc", "relu"])
@pytest.mark.parametrize("channels", [29, 16])
def test_fused_batch_norm_matches_pytorchs_in_float64(fusion, channels):
    # acc: y = acc + BN(x); relu: y = relu(BN(x)), its backward finding ReLU's mask from x.
    # 16 channels: vector blocks only; 29: blocks and a scalar tail. About half of the
    # outputs are clipped by the ReLU (the bias spreads the zero crossing over the channels).
    torch.manual_seed(0)
    x = (torch.randn(3, channels, 5, 7) * 3 + 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(channels) + 0.5, torch.randn(channels)
    acc = torch.randn_like(x) if fusion == "acc" else None
    leaves = [t.requires_grad_() for t in (x, weight, bias, acc) if t is not None]
    y, mean, var = kernels.batch_norm_train(x, weight, bias, 1e-5, acc=acc,
                                            relu=fusion == "relu")
    assert y.is_contiguous(memory_format=torch.channels_last)
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    y64 = F.batch_norm(l64[0], None, None, l64[1], l64[2], True, 0.0, 1e-5)
    y64 = y64 + l64[3] if fusion == "acc" else F.relu(y64)
    if fusion == "relu":
        clipped = (y64 <= 0).double().mean().item()
        assert 0.2 < clipped < 0.8
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    var64, mean64 = torch.var_mean(l64[0].detach(), dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), var64, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(y64, l64, dy.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_fused_batch_norm_accumulates_onto_any_layout_and_twice_differentiable():
    # acc in the contiguous (NCHW) format: the sum is PyTorch's; a double backward through a
    # fused ReLU is PyTorch's, with a graph.
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    acc = torch.randn(4, 5, 3, 3)
    y, _, _ = kernels.batch_norm_train(x, None, None, 1e-5, acc=acc)
    x64 = x.detach().double().requires_grad_()
    y64 = F.batch_norm(x64, None, None, None, None, True, 0.0, 1e-5)
    torch.testing.assert_close(y.double(), y64 + acc.double(), rtol=1e-5, atol=1e-5)
    w = torch.rand(5).add_(0.5).requires_grad_()
    v, dy = torch.randn_like(x), torch.randn_like(x)
    y, _, _ = kernels.batch_norm_train(x, w, None, 1e-5, relu=True)
    (gx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    got = torch.autograd.grad((gx * v).sum(), (x, w))
    w64 = w.detach().double().requires_grad_()
    y64 = F.relu(F.batch_norm(x64, None, None, w64, None, True, 0.0, 1e-5))
    (gx64,) = torch.autograd.grad(y64, x64, dy.double(), create_graph=True)
    want = torch.autograd.grad((gx64 * v.double()).sum(), (x64, w64))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="acc and relu"):
        kernels.batch_norm_train(x, None, None, 1e-5, acc=acc, relu=True)


@needs_kernels
def _graph_names(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes that t's graph reaches."""
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_sep_conv_runs_its_inner_batch_norm_relu_and_conv_as_one(monkeypatch):
    # The module's output and gradients are those of its layers run one by one in float64
    # (nn.Sequential's forward), and the fused op ran for the inner BatchNorm, ReLU and
    # depthwise conv.
    from darts.accel import accelerate
    from darts.ops import SepConv
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    op = accelerate(SepConv(8, 8, 3, 1, 1, affine=True))
    ref = copy.deepcopy(op).double()
    relus = []
    real = kernels.bn_forward_raw

    def spy(*args):
        relus.append(args[-1])
        return real(*args)

    monkeypatch.setattr(kernels, "bn_forward_raw", spy)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = op(x)
    assert relus == [True, False]
    assert "_BNReLUDepthwiseFunctionBackward" in _graph_names(y)
    x64 = x.detach().double().requires_grad_()
    y64 = torch.nn.Sequential.forward(ref, x64)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *op.parameters()], dy)
    want = torch.autograd.grad(y64, [x64, *ref.parameters()], dy.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    for a, b in zip(op.buffers(), ref.buffers(), strict=True):  # running statistics, count
        torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-6)
    # A hook on the ReLU sees the ReLU's own input and output: that pair runs unfused.
    seen = []
    op[4].register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    relus.clear()
    y = op(x)
    assert relus == [False, False] and len(seen) == 1
    assert "_BNReLUDepthwiseFunctionBackward" not in _graph_names(y)
    torch.testing.assert_close(seen[0][1], torch.relu(seen[0][0]))


# (kernel, stride, padding, dilation): sep_conv 3x3 / 5x5, dil_conv 3x3 / 5x5, at stride 1
# and 2 (a sep_conv's inner conv has stride 1; the others are covered all the same).
_DW_CONFS = [(3, 1, 1, 1), (5, 1, 2, 1), (3, 2, 1, 1), (3, 1, 2, 2), (5, 2, 4, 2)]


def _bn_relu_dw_pair(channels, conf, affine):
    from darts.accel.fused import BatchNorm2d
    k, s, p, d = conf
    bn = BatchNorm2d(channels, affine=affine)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    conv = Conv2d(channels, channels, k, s, p, d, groups=channels, bias=False)
    return bn, conv


@needs_kernels
@pytest.mark.parametrize("conf", _DW_CONFS)
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_relu_depthwise_matches_a_float64_reference(monkeypatch, conf, affine):
    # conv(relu(BN(x))) as one op (`BatchNorm2d.forward_relu_conv`) against PyTorch's three
    # ops in float64: output, the gradients of x, the conv's weight and BN's affine
    # parameters, and the running statistics; 19 channels (not a multiple of a vector) and
    # inputs with mean 3.
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    bn, conv = _bn_relu_dw_pair(19, conf, affine)
    bn64, conv64 = copy.deepcopy(bn).double(), copy.deepcopy(conv).double()
    x = (torch.randn(5, 19, 9, 11) * 2 + 3).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = bn.forward_relu_conv(x, conv)
    assert "_BNReLUDepthwiseFunctionBackward" in _graph_names(out)
    x64 = x.detach().double().requires_grad_()
    k, s, p, d = conf
    want = F.conv2d(torch.relu(bn64(x64)), conv64.weight, None, s, p, d, 19)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    params, params64 = [conv.weight, *bn.parameters()], [conv64.weight, *bn64.parameters()]
    got = torch.autograd.grad(out, [x, *params], g.float())
    ref = torch.autograd.grad(want, [x64, *params64], g)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(bn.state_dict().items(), bn64.state_dict().values(), strict=True):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-6, msg=name)


@needs_kernels
def test_batch_norm_relu_depthwise_keeps_less_and_recomputes_only_for_the_weights(monkeypatch):
    # What the fused op saves for the backward: x, not relu(BN(x)) as well (exactly that
    # tensor's bytes less than the two ops, counted with saved_activation_bytes); relu(BN(x))
    # computed again in the backward is the forward's, bit for bit; and a backward that
    # reaches x only (the first-order alpha step) forms no weight gradient and computes
    # nothing again.
    from darts.supernet import saved_activation_bytes
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    bn, conv = _bn_relu_dw_pair(16, (5, 1, 2, 1), False)
    leaf = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    x = leaf.requires_grad_() * 1.0  # an activation, not a leaf (leaves are not counted)
    fused = saved_activation_bytes(lambda: bn.forward_relu_conv(x, conv).sum())
    apart = saved_activation_bytes(lambda: conv(bn.forward_relu(x)).sum())
    assert apart - fused == x.numel() * 4

    y, _, _, _, k = kernels.bn_forward_raw(x.detach(), None, None, 1e-5, None, True)
    assert torch.equal(kernels.bn_relu_apply(x.detach(), k), y)

    recomputed = count_kernel_runs(monkeypatch, "bn_relu_apply")
    weight_grads = count_kernel_runs(monkeypatch, "depthwise_weight_grad")
    out = bn.forward_relu_conv(x, conv)
    torch.autograd.grad(out.sum(), leaf)
    assert recomputed == [] and weight_grads == []
    out = bn.forward_relu_conv(x, conv)
    torch.autograd.grad(out.sum(), conv.weight)
    assert len(recomputed) == 1 and weight_grads == [True]


@needs_kernels
def test_batch_norm_relu_depthwise_second_derivatives_and_what_it_does_not_cover(monkeypatch):
    # Double backward (the exact Hessian) goes through differentiable PyTorch: the gradient
    # of x's gradient with respect to the weights equals the three ops' in float32. Eval mode,
    # float64 and contiguous inputs run the ops one by one.
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    torch.manual_seed(0)
    bn, conv = _bn_relu_dw_pair(8, (3, 1, 2, 2), True)
    x = torch.randn(4, 8, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    v = torch.randn(4, 8, 7, 7)
    second = []
    for fused in (True, False):
        out = bn.forward_relu_conv(x, conv) if fused else conv(torch.relu(F.batch_norm(
            x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)))
        gx = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)[0]
        second.append(torch.autograd.grad((gx * v).sum(), [conv.weight, bn.weight, bn.bias]))
    for a, b in zip(*second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for inp, training in ((x, False), (x.double(), True), (x.contiguous(), True)):
        bn.train(training)
        b, c = (bn.double(), conv.double()) if inp.dtype == torch.float64 else (bn, conv)
        assert "_BNReLUDepthwiseFunctionBackward" not in _graph_names(b.forward_relu_conv(inp, c))
        bn.float()
        conv.float()


@needs_kernels
def test_batch_norm_statistics_stay_accurate_over_many_rows():
    # 2^16 rows per channel, mean 10 and variance 1: the sums in float32 alone would lose
    # digits of the variance (E[x^2] - E[x]^2 cancels 100:1).
    torch.manual_seed(0)
    x = (torch.randn(64, 16, 32, 32) + 10).contiguous(memory_format=torch.channels_last)
    _, mean, var = kernels.batch_norm_train(x, None, None, 1e-5)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=0)


@needs_kernels
def test_batch_norm_second_derivatives_are_pytorchs():
    # The exact Hessian differentiates the backward: it runs PyTorch's, with a graph.
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(5).add_(0.5).requires_grad_()
    v = torch.randn_like(x)
    dy = torch.randn_like(x)
    y, _, _ = kernels.batch_norm_train(x, w, None, 1e-5)
    (gx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    got = torch.autograd.grad((gx * v).sum(), (x, w))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = F.batch_norm(x64, None, None, w64, None, True, 0.0, 1e-5)
    (gx64,) = torch.autograd.grad(y64, x64, dy.double(), create_graph=True)
    want = torch.autograd.grad((gx64 * v.double()).sum(), (x64, w64))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_module_keeps_nn_batchnorm2d_semantics(momentum, monkeypatch):
    from darts.accel.fused import BatchNorm2d
    torch.manual_seed(0)
    ours = BatchNorm2d(6, momentum=momentum)
    ref = torch.nn.BatchNorm2d(6, momentum=momentum).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    calls = count_kernel_runs(monkeypatch, "batch_norm_train")
    for _ in range(3):
        x = (torch.randn(4, 6, 5, 5) * 2 + 1).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(x).double(), ref(x.double()), rtol=1e-5, atol=1e-5)
    assert calls == [True] * 3
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    torch.testing.assert_close(ours.running_mean.double(), ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.double(), ref.running_var, rtol=1e-5, atol=1e-6)
    ours.eval(), ref.eval()
    x = torch.randn(2, 6, 3, 3).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x).double(), ref(x.double()), rtol=1e-5, atol=1e-5)
    ours.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(1, 6, 1, 1))


@needs_kernels
@pytest.mark.parametrize("partial_channels", [1, 4])
def test_a_float32_channels_last_supernet_step_matches_its_float64_copy(monkeypatch,
                                                                        partial_channels):
    # The whole CPU fast path (every kernel, shared pooling statistics, the BatchNorm modules)
    # against the same supernet in float64, where none of the kernels run; DARTS, and
    # PC-DARTS (K = 4: the ops see a dense channels-last copy of a quarter of each state).
    from darts.supernet import SearchNetwork
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    calls = {"bn": count_kernel_runs(monkeypatch, "batch_norm_train"),
             "dw": count_kernel_runs(monkeypatch, "depthwise_weight_grad"),
             "mix": count_kernel_runs(monkeypatch, "add_shared_terms"),
             "heads": count_kernel_runs(monkeypatch, "relu_depthwise_forward"),
             "heads_bwd": count_kernel_runs(monkeypatch, "relu_depthwise_backward"),
             "node": count_kernel_runs(monkeypatch, "node_batch_norm"),
             "pools": count_kernel_runs(monkeypatch, "pool_batch_norm")}
    from darts.accel import accelerate, cell, fused
    reduces = calls["reduce"] = []
    real_reduce = fused.factorized_reduce_convs

    def counted_reduce(*args):
        out = real_reduce(*args)
        reduces.append(out is not None)
        return out

    # FactorizedReduce's matrix products: the cells' preprocessing and the stride-2 edges.
    monkeypatch.setattr(fused, "factorized_reduce_convs", counted_reduce)
    monkeypatch.setattr(cell, "factorized_reduce_convs", counted_reduce)
    torch.manual_seed(0)
    c = 4 * partial_channels
    net = accelerate(SearchNetwork(C=c, num_classes=5, layers=3, partial_channels=partial_channels
                                   )).to(memory_format=torch.channels_last)
    net64 = SearchNetwork(C=c, num_classes=5, layers=3, partial_channels=partial_channels
                          ).double()
    net64.load_state_dict(net.state_dict())
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 5, (6,))
    outs, grads = [], []
    for model, inp in ((net, x.contiguous(memory_format=torch.channels_last)), (net64, x.double())):
        loss = F.cross_entropy(model(inp), y)
        params = model.arch_parameters() + model.network_parameters()
        grads.append(torch.autograd.grad(loss, params))
        outs.append(loss)
    assert all(any(c) for c in calls.values()), {k: len(c) for k, c in calls.items()}
    torch.testing.assert_close(outs[0].double(), outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(net.state_dict().items(), net64.state_dict().values(), strict=True):
        if "running" in name:
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)


@needs_kernels
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_shared_terms_match_a_float64_reference(layout):
    # out[e] = acc[e] + sum_k w[e, k] * y[k], E = 4 edges (one without a running sum yet),
    # K = 3 terms; 5 x 7 x 7 x 9 elements: not a multiple of the kernel's blocks or vectors.
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    make = lambda: torch.randn(5, 7, 7, 9).contiguous(memory_format=fmt).requires_grad_()  # noqa: E731
    ys = [make() for _ in range(3)]
    accs = [make(), None, make(), make()]
    w = torch.rand(4, 3).requires_grad_()
    outs = kernels.add_shared_terms(w, accs, ys)
    assert outs is not None and len(outs) == 4
    assert all(o.stride() == ys[0].stride() for o in outs)
    leaves = [w, *ys, *(a for a in accs if a is not None)]
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    w64, ys64, it = l64[0], l64[1:4], iter(l64[4:])
    acc64 = [next(it) if a is not None else None for a in accs]
    want = [sum(w64[e, k] * ys64[k] for k in range(3)) + (0 if a is None else a)
            for e, a in enumerate(acc64)]
    for a, b in zip(outs, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    gs = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, leaves, gs)
    ref = torch.autograd.grad(want, l64, [g.double() for g in gs])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    # Only what is asked for: no weight gradient when w needs none (the weight step).
    outs = kernels.add_shared_terms(w.detach(), accs, ys)
    got = torch.autograd.grad(outs, ys, gs)
    for a, b in zip(got, ref[1:4], strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_shared_terms_second_derivatives_and_what_they_do_not_cover():
    torch.manual_seed(0)
    ys = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(2)]
    w = torch.rand(2, 2, requires_grad=True)
    outs = kernels.add_shared_terms(w, [None, None], ys)
    gs = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(2)]
    (dw,) = torch.autograd.grad(outs, w, gs, create_graph=True)
    got = torch.autograd.grad(dw.sum(), (*ys, *gs))
    # d/dy_k sum_e <g_e, y_k> = sum_e g_e; d/dg_e = sum_k y_k
    for a, b in zip(got, [gs[0] + gs[1]] * 2 + [ys[0] + ys[1]] * 2, strict=True):
        torch.testing.assert_close(a, b.detach())
    # Mixed layouts, float64 or too many terms: PyTorch's (None).
    cl = ys[1].detach().contiguous(memory_format=torch.channels_last)
    assert kernels.add_shared_terms(w, [None, None], [ys[0], cl]) is None
    assert kernels.add_shared_terms(w.double(), [None, None], [y.double() for y in ys]) is None
    assert kernels.add_shared_terms(torch.rand(1, 9), [None], [ys[0]] * 9) is None


# (kernel, stride, padding, dilation): the DARTS ops' first convs at stride 1 and 2, and others
# (1x1, an even kernel, stride 3, a padding wider than the kernel's reach).
HEAD_CONFS = [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2), (1, 1, 0, 1),
              (4, 1, 1, 1), (5, 1, 4, 1)]
HEAD_CONFS_STRIDED = [(3, 2, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2), (5, 2, 4, 2), (2, 2, 0, 1),
                      (3, 3, 1, 1)]


def head_convs(channels, confs):
    return [Conv2d(channels, channels, k, stride=s, padding=p, dilation=d, groups=channels,
                   bias=False) for k, s, p, d in confs]


@needs_kernels
@pytest.mark.parametrize("confs", [HEAD_CONFS, HEAD_CONFS_STRIDED], ids=["stride1", "strided"])
@pytest.mark.parametrize("channels", [29, 16])
def test_relu_depthwise_matches_a_float64_reference(confs, channels):
    # 29 = 16 + 8 + 4 + 1 channels: every vector width; 16: whole blocks only. Widths 11 and
    # 13: register blocks of 8 outputs and a remainder. Gradients from all outputs but one.
    from darts.accel.fused import relu_depthwise
    torch.manual_seed(0)
    convs = head_convs(channels, confs)
    x = torch.randn(3, channels, 11, 13).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ys = relu_depthwise(x, convs)
    assert ys is not None
    x64 = x.detach().double().requires_grad_(True)
    w64 = [c.weight.detach().double().requires_grad_(True) for c in convs]
    refs = [F.conv2d(F.relu(x64), w, None, s, p, d, channels)
            for w, (_, s, p, d) in zip(w64, confs, strict=True)]
    gs = [torch.randn_like(r) for r in refs]
    gs[1] = None  # an output that gets no gradient
    used = [(r, g) for r, g in zip(refs, gs, strict=True) if g is not None]
    ref_grads = torch.autograd.grad([r for r, _ in used], [x64, *w64], [g for _, g in used],
                                    allow_unused=True)
    for y, r in zip(ys, refs, strict=True):
        assert y.shape == r.shape and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), r, rtol=1e-5, atol=1e-5)
    pairs = [(y, g.float()) for y, g in zip(ys, gs, strict=True) if g is not None]
    grads = torch.autograd.grad([y for y, _ in pairs], [x, *[c.weight for c in convs]],
                                [g for _, g in pairs], allow_unused=True)
    # x's gradient is the sum of every conv's transposed conv, masked by relu.
    assert (grads[0][x <= 0] == 0).all()
    torch.testing.assert_close(grads[0].double(), ref_grads[0], rtol=1e-5, atol=1e-4)
    for k, (a, b) in enumerate(zip(grads[1:], ref_grads[1:], strict=True)):
        if gs[k] is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_relu_depthwise_second_derivatives_and_skipped_gradients(monkeypatch):
    from darts.accel.fused import relu_depthwise
    torch.manual_seed(0)
    confs = [(3, 1, 1, 1), (5, 1, 4, 2), (3, 2, 2, 2)]
    convs = head_convs(5, confs)
    x = torch.randn(2, 5, 9, 9).contiguous(memory_format=torch.channels_last)
    # Second derivatives (the exact Hessian): d/dw of <d loss/dx, v> against float64.
    v = torch.randn(2, 5, 9, 9)

    def second(xx, weights, fused):
        xx = xx.clone().requires_grad_(True)
        if fused:
            ys = relu_depthwise(xx, convs)
        else:
            ys = [F.conv2d(F.relu(xx), w, None, s, p, d, 5)
                  for w, (_, s, p, d) in zip(weights, confs, strict=True)]
        loss = sum((y ** 2).sum() for y in ys)
        dx, = torch.autograd.grad(loss, xx, create_graph=True)
        return torch.autograd.grad((dx * v.to(dx.dtype)).sum(), weights)

    ours = second(x, [c.weight for c in convs], True)
    ref = second(x.double(), [c.weight.detach().double().requires_grad_(True) for c in convs],
                 False)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    # A backward that reaches only x forms no weight gradient (the first-order alpha step),
    # and one that reaches only a weight no input gradient.
    formed = []
    real = kernels.relu_depthwise_backward

    def recorded(x, weights, confs, grads, need_x, need_w):
        dx, dws = real(x, weights, confs, grads, need_x, need_w)
        formed.append((dx is not None, [dw is not None for dw in dws]))
        return dx, dws

    monkeypatch.setattr(kernels, "relu_depthwise_backward", recorded)
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(sum(y.sum() for y in relu_depthwise(xx, convs)), xx)
    torch.autograd.grad(sum(y.sum() for y in relu_depthwise(xx, convs)), convs[1].weight)
    assert formed == [(True, [False] * 3), (False, [False, True, False])]


@needs_kernels
def test_relu_depthwise_leaves_to_pytorch_what_it_does_not_cover():
    from darts.accel.fused import relu_depthwise
    convs = head_convs(4, [(3, 1, 1, 1)])
    x = torch.randn(2, 4, 6, 6)
    assert relu_depthwise(x, convs) is None  # NCHW
    x = x.contiguous(memory_format=torch.channels_last)
    assert relu_depthwise(x.double(), convs) is None
    assert relu_depthwise(x, [Conv2d(4, 4, 3, padding=1, bias=False)]) is None  # not depthwise
    assert relu_depthwise(x, head_convs(4, [(9, 1, 4, 1)])) is None  # wider than MAX_KERNEL
    hooked = head_convs(4, [(3, 1, 1, 1)])
    hooked[0].register_forward_hook(lambda *a: None)
    assert relu_depthwise(x, hooked) is None
    assert relu_depthwise(x, convs) is not None


@needs_kernels
@pytest.mark.parametrize("channels", [29, 16])
@pytest.mark.parametrize("with_acc", [True, False])
def test_node_batch_norm_matches_a_float64_reference(channels, with_acc):
    # out = acc + sum_k w_k * BN_k(x_k) for 5 non-affine BatchNorms in training mode; inputs
    # with mean 5 and scale 3 (a variance formed from float32 sums alone would suffer).
    torch.manual_seed(0)
    cl = torch.channels_last
    xs = [(torch.randn(6, channels, 7, 9) * 3 + 5).contiguous(memory_format=cl) for _ in range(5)]
    acc = torch.randn(6, channels, 7, 9).contiguous(memory_format=cl) if with_acc else None
    w = torch.rand(5)
    leaves = [t.requires_grad_() for t in (w, *xs, *([acc] if with_acc else []))]
    out, mean, var = kernels.node_batch_norm(acc, xs, w, [1e-5, 1e-5, 1e-3, 1e-5, 1e-5])
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    w64, xs64 = leaves64[0], leaves64[1:6]
    eps = [1e-5, 1e-5, 1e-3, 1e-5, 1e-5]
    ref = sum(w64[k] * F.batch_norm(x, None, None, None, None, True, 0.0, eps[k])
              for k, x in enumerate(xs64))
    if with_acc:
        ref = ref + leaves64[6]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(mean.double(), torch.stack([x.mean((0, 2, 3)) for x in xs64]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), torch.stack([x.var((0, 2, 3)) for x in xs64]),
                               rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(out, leaves, g.float())
    theirs = torch.autograd.grad(ref, leaves64, g)
    # Each mixing weight's gradient is a float32 sum of 6 x C x 63 products g * BN_k(x_k): its
    # rounding error scales with the sum of their magnitudes (about 2e-4 at C = 29 from an
    # AMD Zen 5 build, at about 3e-8 of that sum), so its bound is relative to that sum.
    terms = torch.stack([(g * F.batch_norm(x, None, None, None, None, True, 0.0, eps[k]))
                         .abs().sum() for k, x in enumerate(xs64)]).detach()
    assert ((ours[0].double() - theirs[0]).abs() <= 1e-4 + 1e-7 * terms).all()
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-4)
    # Only what is asked for: x's gradients without w's.
    out = kernels.node_batch_norm(acc, xs, w.detach(), eps)[0]
    assert torch.autograd.grad(out, xs[0], g.float())[0] is not None


@needs_kernels
def test_node_batch_norm_second_derivatives_and_what_it_does_not_cover():
    torch.manual_seed(0)
    cl = torch.channels_last
    xs = [torch.randn(4, 3, 5, 5).contiguous(memory_format=cl).requires_grad_() for _ in range(3)]
    w = torch.rand(3, requires_grad=True)
    v = torch.randn(4, 3, 5, 5)

    def hvp(xs, w, fused):
        if fused:
            out = kernels.node_batch_norm(None, xs, w, [1e-5] * 3)[0]
        else:
            out = sum(w[k] * F.batch_norm(x, None, None, None, None, True, 0.0, 1e-5)
                      for k, x in enumerate(xs))
        dx = torch.autograd.grad((out ** 2).sum(), xs[0], create_graph=True)[0]
        return torch.autograd.grad((dx * v.to(dx.dtype)).sum(), [w, *xs])

    theirs = hvp([x.detach().double().requires_grad_() for x in xs],
                 w.detach().double().requires_grad_(), False)
    for a, b in zip(hvp(xs, w, True), theirs, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    x = xs[0].detach()
    assert kernels.node_batch_norm(None, [x.contiguous()], w[:1], [1e-5]) is None  # NCHW
    assert kernels.node_batch_norm(None, [x.double()], w[:1].double(), [1e-5]) is None
    assert kernels.node_batch_norm(None, [x, x[:2]], w[:2], [1e-5] * 2) is None  # shapes
    assert kernels.node_batch_norm(x.contiguous(), [x], w[:1], [1e-5]) is None  # acc NCHW
    assert kernels.node_batch_norm(None, [x], w[:1], [1e-5]) is not None


def pooled_reference(x, stride, eps=1e-5):
    """max_pool_3x3 and avg_pool_3x3 (count_include_pad=False) of the DARTS space, each through
    a non-affine training-mode BatchNorm, in float64; and the pooled outputs themselves."""
    x = x.double()
    pooled = (F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
    return [(p - p.mean((0, 2, 3), keepdim=True))
            / (p.var((0, 2, 3), unbiased=False, keepdim=True) + eps).sqrt() for p in pooled], pooled


@needs_kernels
@pytest.mark.parametrize("stride,size", [(1, (7, 9)), (2, (8, 7)), (2, (9, 9)), (1, (16, 16))])
@pytest.mark.parametrize("channels", [19, 16])
@pytest.mark.parametrize("ties", [False, True])
def test_pool_batch_norm_matches_a_float64_reference(stride, size, channels, ties):
    # Inputs with mean 5 and scale 3; with ties (whole numbers) the max's gradient must go to
    # the first tap holding the maximum, as PyTorch's does. Outputs, statistics, and x's
    # gradient with both outputs' gradients and with either alone.
    torch.manual_seed(0)
    x = torch.randn(3, channels, *size) * 3 + 5
    if ties:
        x = x.round()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ymax, yavg, mean_max, var_max, mean_avg, var_avg = kernels.pool_batch_norm(
        x, 3, stride, 1, 1e-5, 1e-5)
    x64 = x.detach().double().requires_grad_()
    refs, pooled = pooled_reference(x64, stride)
    for out, ref in zip((ymax, yavg), refs, strict=True):
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)
    for (mean, var), p in zip(((mean_max, var_max), (mean_avg, var_avg)), pooled, strict=True):
        torch.testing.assert_close(mean.double(), p.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var.double(), p.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    gs = [torch.randn(r.shape, dtype=torch.float64) for r in refs]
    for use in ((0, 1), (0,), (1,)):
        (dx,) = torch.autograd.grad([(ymax, yavg)[i] for i in use], x,
                                    [gs[i].float() for i in use], retain_graph=True)
        (want,) = torch.autograd.grad([refs[i] for i in use], x64, [gs[i] for i in use],
                                      retain_graph=True)
        torch.testing.assert_close(dx.double(), want, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_pool_batch_norm_second_derivatives_and_what_it_does_not_cover():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    v = torch.randn(2, 5, 6, 7, dtype=torch.float64)

    def second(xx, fused):  # d/dx of <d loss/dx, v>: the exact Hessian's pattern
        xx = xx.clone().requires_grad_()
        outs = kernels.pool_batch_norm(xx, 3, 1, 1, 1e-5, 1e-5)[:2] if fused \
            else pooled_reference(xx, 1)[0]
        loss = sum((o ** 3).sum() for o in outs)
        (dx,) = torch.autograd.grad(loss, xx, create_graph=True)
        return torch.autograd.grad((dx * v.to(dx.dtype)).sum(), xx)[0]

    torch.testing.assert_close(second(x, True).double(), second(x.double(), False),
                               rtol=1e-3, atol=1e-3)
    assert kernels.pool_batch_norm(x.contiguous(), 3, 1, 1, 1e-5, 1e-5) is None  # NCHW
    assert kernels.pool_batch_norm(x.double(), 3, 1, 1, 1e-5, 1e-5) is None
    assert kernels.pool_batch_norm(x, 3, 1, 3, 1e-5, 1e-5) is None  # padding >= kernel
    assert kernels.pool_batch_norm(x[:1, :, :1, :1], 3, 1, 1, 1e-5, 1e-5) is None  # 1 value
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.pool_batch_norm(x, 3, 1, 1, 1e-5, 1e-5) is None
    assert kernels.pool_batch_norm(x, 3, 1, 1, 1e-5, 1e-5) is not None
