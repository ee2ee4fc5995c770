"""The C kernels (darts/kernels.py, darts/depthwise.c): values, the build, the fallback."""

import logging

import pytest
import torch
import torch.nn.functional as F

from darts import kernels
from darts.ops import Conv2d

needs_kernels = pytest.mark.skipif(kernels.library() is None,
                                   reason="no C compiler: the C kernels cannot be built")


def unfold_weight_grad(g, x, k, stride, padding, dilation):
    """dW[c, i, j] = sum over n and outputs of g * the input under tap (i, j), in float64 from
    the input's patches (F.unfold), not from any convolution backward."""
    n, c = x.shape[:2]
    cols = F.unfold(x.double(), k, dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, c, k * k, -1)
    return torch.einsum("nckl,ncl->ck", cols, g.double().reshape(n, c, -1)).view(c, 1, k, k)


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
    calls = []
    real = kernels.depthwise_weight_grad

    def counted(*args):
        out = real(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "depthwise_weight_grad", counted)
    torch.manual_seed(0)
    conv = Conv2d(8, 8, 5, stride=2, padding=4, dilation=2, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    out = conv(x)
    g = torch.randn_like(out)
    (gw,) = torch.autograd.grad(out, conv.weight, g)
    assert calls == [True]
    torch.testing.assert_close(gw.double(), unfold_weight_grad(g, x, 5, 2, 4, 2),
                               rtol=1e-5, atol=1e-5)
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
