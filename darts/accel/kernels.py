"""CPU kernels of our own, in C (`kernels.c`), built on first use with the system's C compiler.

They replace what PyTorch does slowly on a CPU at the DARTS supernet's sizes (batch 64, 16-64
channels, channels-last float32), measured on this project's 2-core machine:
- the weight gradient of a depthwise convolution (`depthwise_weight_grad`, used by
  `fused.Conv2d`): oneDNN is fast only for undilated 3x3 kernels at stride 1; the 5x5, dilated
  and strided kernels of the search space took 3-20 ms each, about 3 s of every first-order
  search step, against 0.5-2 ms here;
- BatchNorm in training mode (`batch_norm_train`, used by `fused.BatchNorm2d` and the
  supernet's mixed ops): two passes each way, 1.2-1.7x faster than PyTorch's, and the batch
  statistics come with it, where torch.var_mean on a channels-last tensor took 11 ms (the
  shared pooling outputs' statistics); fused with the running sum of a mixed op, or with the
  ReLU after it, it saves two passes over memory more; with the ReLU and a depthwise conv
  after it (`fused.BatchNorm2d.forward_relu_conv`), relu(BN(x)) is not kept for the backward
  but computed again there (`bn_relu_apply`, from the forward's constants);
- the terms that all edges leaving a cell state share (`add_shared_terms`, used by
  `cell.CellExecutor`): one pass each way for all edges, where an addcmul per term and edge
  and its backward took 3-9 passes each;
- a cell node's mixed-op BatchNorms (`node_batch_norm`, used by `cell.CellExecutor`): every
  sep_conv and dil_conv on every edge into the node ends in a non-affine BatchNorm scaled by
  its mixing weight; their sum is written once, and their backward, whose output gradients are
  all the node's gradient, reads it once per pass instead of twice per BatchNorm;
- the first depthwise convolution of relu(state) of every sep_conv and dil_conv on the edges
  leaving a state (`relu_depthwise_forward` / `_backward`, used by `fused.relu_depthwise`): 16 of
  them for a state with four edges, the state read once; the backward forms the input
  gradient (every transposed convolution and ReLU's mask) in one pass, and the weight
  gradients from the same gradients while they are in cache. One by one that was a ReLU, 16
  convolutions, 16 transposed convolutions summed by autograd, ReLU's backward, and 16 weight
  gradients each reading its output gradient again; oneDNN's transposed dilated convolutions
  at stride 2 were the slowest of them;
- a cell state's max and average pooling with their non-affine BatchNorms (`pool_batch_norm`,
  used by `cell.CellExecutor` for the pooled outputs that all edges leaving the state share):
  both pooled, summed and normalised in two passes over the state, where pooling then
  BatchNorm took eight passes over memory, and one pass back that adds both windows'
  gradients (the max's to the first tap that holds the maximum, as PyTorch's) per image.
Each is tested against float64 references (tests/test_kernels.py). Anything they do not cover
(other devices and dtypes, contiguous NCHW tensors, double backward) is PyTorch's.

The library is compiled once per source, compiler and CPU into a cache directory
(`$DARTS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/darts/kernels`, else `~/.cache/darts/kernels`),
written atomically so that ranks compiling at once do not see half a file. It needs only a C
compiler (`$CC`, else `cc`), no PyTorch headers: it takes raw pointers through ctypes. Its
threads are OpenMP's, from the libgomp that PyTorch has already loaded (see kernels.c).
Where there is no compiler or the build fails, PyTorch's own kernel is used and the reason is
logged once. `DARTS_CPU_KERNELS=0` turns the kernels off (for comparisons).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("darts.kernels")

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O3", "-shared", "-fPIC"]
_LIBS = ["-lm"]
MAX_KERNEL = 8  # MAX_KW in kernels.c
_lib: ctypes.CDLL | None = None
_tried = False


def enabled() -> bool:
    return os.environ.get("DARTS_CPU_KERNELS", "1") != "0"


def _cache_dir() -> Path:
    if os.environ.get("DARTS_KERNEL_CACHE"):
        return Path(os.environ["DARTS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "darts" / "kernels"


def _cpu_id() -> str:
    """What `-march=native` depends on: a library built for one CPU may not run on another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: list[str], target: Path) -> str | None:
    """Compile into `target` (atomically); None on success, else the reason."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    reason = None
    try:
        # OpenMP for threads, -march=native for AVX-512 where there is one: the first build
        # that the compiler accepts (without OpenMP the kernels run on one thread).
        for extra in (["-fopenmp", "-march=native"], ["-fopenmp"], ["-march=native"], []):
            cmd = [*compiler, *_FLAGS, *extra, "-o", tmp, str(_SOURCE), *_LIBS]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{shlex.join(cmd)}: {e}"
            if done.returncode == 0:
                os.replace(tmp, target)
                return None
            reason = f"{shlex.join(cmd)} failed: {done.stderr.strip()[-500:]}"
        return reason
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where they cannot be had."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    compiler = shlex.split(os.environ.get("CC", "cc"))
    key = hashlib.sha256("\0".join([
        _SOURCE.read_text(), shlex.join(compiler), " ".join(_FLAGS), platform.machine(),
        _cpu_id()]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"darts-kernels-{key}.so"
    try:
        if not path.exists():
            reason = _build(compiler, path)
            if reason is not None:
                log.warning("darts: C kernels not built, using PyTorch's (slower on the CPU): %s",
                            reason)
                return None
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("darts: C kernels not loaded from %s, using PyTorch's: %s", path, e)
        return None
    ptr, long_, int_, dbl = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
    for name, args in (("depthwise_weight_grad", [ptr] * 3 + [long_] * 11 + [int_]),
                       ("bn_forward", [ptr, ptr, long_, long_, ptr, ptr, dbl] + [ptr] * 4
                        + [int_, ptr, int_]),
                       ("bn_backward", [ptr] * 3 + [long_, long_] + [ptr] * 6 + [int_]),
                       ("bn_relu_apply", [ptr, ptr, long_, long_, ptr, int_]),
                       ("mix_forward", [ptr, long_, ptr, ptr, ptr, long_, long_, int_]),
                       ("mix_backward", [ptr, long_, ptr, long_] + [ptr] * 3 + [long_, int_]),
                       ("nbn_forward", [ptr, int_, ptr, ptr, long_, long_] + [ptr] * 5
                        + [int_]),
                       ("nbn_backward", [ptr] * 3 + [int_, long_, long_] + [ptr] * 4 + [int_]),
                       ("dw_relu_forward", [ptr] + [long_] * 4 + [int_] + [ptr] * 3
                        + [int_, int_]),
                       ("dw_relu_backward", [ptr, ptr] + [long_] * 4 + [int_] + [ptr] * 4
                        + [int_, int_]),
                       ("pool_bn_forward", [ptr] * 3 + [long_] * 7 + [dbl, dbl, ptr, int_]),
                       ("pool_bn_backward", [ptr] * 6 + [long_] * 7 + [ptr, int_])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, args
    _lib = lib
    return _lib


def prefer_depthwise_weight_grad(kernel_size: int, dilation: int) -> bool:
    """Whether ours is the faster: 3-20x for the 5x5 and dilated kernels, while oneDNN's is as
    fast or faster for undilated 3x3 ones (benchmarks/bench_kernels.py)."""
    return kernel_size > 3 or dilation > 1


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, stride: int,
                          padding: int, dilation: int) -> torch.Tensor | None:
    """The gradient of a depthwise conv's (C, 1, k, k) weight, or None where not covered.

    Covered: float32 CPU tensors, square kernels up to MAX_KERNEL, any stride, padding and
    dilation; `x` (N, C, H, W) and `grad` (N, C, OH, OW) in any memory format (channels_last
    is read in place, others are copied to it).
    """
    if not (x.device.type == "cpu" and not _compiling() and enabled()
            and x.dtype == grad.dtype == torch.float32 and x.dim() == 4
            and 1 <= kernel_size <= MAX_KERNEL):
        return None
    lib = library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    oh, ow = grad.shape[2:]
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    out = torch.empty(c, 1, kernel_size, kernel_size)
    status = lib.depthwise_weight_grad(
        x.data_ptr(), grad.data_ptr(), out.data_ptr(), n, h, w, c, oh, ow, kernel_size,
        kernel_size, stride, padding, dilation, torch.get_num_threads())
    if status != 0:  # out of memory in the kernel: PyTorch's
        return None
    return out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def covers_batch_norm(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    # More than one value per channel: PyTorch's raises its error otherwise.
    return (x.device.type == "cpu" and not _compiling() and enabled()
            and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and all(p is None or (p.dtype == torch.float32 and p.is_contiguous())
                    for p in params)
            and not torch.is_autocast_enabled("cpu") and library() is not None)


class _BatchNormFunction(torch.autograd.Function):
    """BatchNorm in training mode with the C kernels: y, and the batch's mean and unbiased
    variance (for the running statistics; not differentiable). With `acc`, y = acc + BN(x);
    with `relu`, y = relu(BN(x)) (see `batch_norm_train`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, acc, relu):
        y, mean, invstd, var, k = bn_forward_raw(x, weight, bias, eps, acc, relu)
        ctx.save_for_backward(x, weight, bias, mean, invstd, k)
        ctx.eps, ctx.relu = eps, relu
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zeros for the statistics' (absent) gradients
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _mean, _var):
        x, weight, bias, mean, invstd, k = ctx.saved_tensors
        need_x, need_w, need_b, _, need_acc = ctx.needs_input_grad[:5]
        if dy is None:
            return None, None, None, None, None, None
        d_acc = dy if need_acc else None  # y = acc + ...: acc's gradient is y's
        if torch.is_grad_enabled() or dy.dtype != torch.float32:
            # A graph of the backward is wanted (the exact Hessian): PyTorch's, differentiable.
            with torch.enable_grad():
                inputs = [t for t, need in ((x, need_x), (weight, need_w), (bias, need_b)) if need]
                y = torch.nn.functional.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps)
                if ctx.relu:
                    y = torch.relu(y)
                grads = list(torch.autograd.grad(y, inputs, dy, create_graph=True)) if inputs \
                    else []
            return (*(grads.pop(0) if need else None for need in (need_x, need_w, need_b)), None,
                    d_acc, None)
        if not (need_x or need_w or need_b):
            return None, None, None, None, d_acc, None
        dx, gw, gb = bn_backward_raw(dy, x, weight, mean, invstd, k, need_w, need_b)
        return dx if need_x else None, gw, gb, None, d_acc, None


class Fallback(Exception):
    """The C kernel could not run (no memory or threads): PyTorch's instead."""


def bn_forward_raw(x, weight, bias, eps, acc, relu):
    """The C BatchNorm forward (no graph): y, mean, invstd, unbiased var, and with `relu`
    the k that its backward and `bn_relu_apply` take. Raises Fallback where it cannot run."""
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean, invstd, var = (x.new_empty(c) for _ in range(3))
    k = x.new_empty(2 * c) if relu else None
    status = _lib.bn_forward(_ptr(x), _ptr(y), n * h * w, c, _ptr(weight), _ptr(bias), eps,
                             _ptr(mean), _ptr(invstd), _ptr(var), _ptr(acc), int(relu),
                             _ptr(k), torch.get_num_threads())
    if status != 0:
        raise Fallback
    return y, mean, invstd, var, k


def bn_backward_raw(dy, x, weight, mean, invstd, k, need_w, need_b):
    """The C BatchNorm backward (no graph): dx, and the weight's and bias's gradients where
    wanted (else None); `k` from a forward with relu, else None."""
    n, c, h, w = x.shape
    dy = dy.contiguous(memory_format=torch.channels_last)
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    gw = x.new_empty(c) if need_w else None
    gb = x.new_empty(c) if need_b else None
    status = _lib.bn_backward(_ptr(dy), _ptr(x), _ptr(dx), n * h * w, c, _ptr(weight),
                              _ptr(mean), _ptr(invstd), _ptr(gw), _ptr(gb), _ptr(k),
                              torch.get_num_threads())
    if status != 0:
        raise RuntimeError("darts: the C BatchNorm backward could not start its threads")
    return dx, gw, gb


def bn_relu_apply(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """relu(BN(x)) again from the k of the forward that computed it (`bn_forward_raw`)."""
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    _lib.bn_relu_apply(_ptr(x), _ptr(y), n * h * w, c, _ptr(k), torch.get_num_threads())
    return y


def batch_norm_train(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, acc: torch.Tensor | None = None, relu: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """BatchNorm of `x` with its own batch statistics: (y, mean, unbiased variance), the
    statistics without a graph (what the running statistics are updated from); None where
    not covered: float32 channels-last CPU tensors.

    Fused, each saving whole passes over memory: `acc` (a tensor of y's shape) gives
    y = acc + BN(x) (where `acc` is not float32 channels-last, the sum is PyTorch's), and
    `relu` gives y = relu(BN(x)), its backward taking ReLU's mask from x.

    PyTorch's CPU BatchNorm on channels-last tensors is 1.2-1.7x slower in each direction, and
    torch.var_mean there is 5-20x slower than a pass over the tensor.
    """
    if not covers_batch_norm(x, weight, bias):
        return None
    if relu and acc is not None:
        raise ValueError("batch_norm_train: acc and relu do not go together")
    fused_acc = acc is not None and acc.shape == x.shape and acc.dtype == torch.float32 \
        and acc.device == x.device and acc.is_contiguous(memory_format=torch.channels_last)
    try:
        y, mean, var = _BatchNormFunction.apply(x, weight, bias, eps,
                                                acc if fused_acc else None, relu)
    except Fallback:
        return None
    if acc is not None and not fused_acc:
        y = acc + y
    return y, mean, var


_MIX_MAX = 8  # MIX_MAX in kernels.c


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(_ptr(t) for t in tensors))


class _SharedTermsFunction(torch.autograd.Function):
    """out[e] = acc[e] + sum_k w[e, k] * y[k] for E outputs (see `add_shared_terms`)."""

    @staticmethod
    def forward(ctx, w, has_acc, *tensors):
        n_acc = sum(has_acc)
        accs, ys = tensors[:n_acc], tensors[n_acc:]
        it = iter(accs)
        acc_of = [next(it) if has else None for has in has_acc]
        outs = [torch.empty_like(ys[0]) for _ in has_acc]
        w32 = w.detach().contiguous()
        status = _lib.mix_forward(_pointers(ys), len(ys), _ptr(w32), _pointers(acc_of),
                                  _pointers(outs), len(outs), ys[0].numel(),
                                  torch.get_num_threads())
        if status != 0:
            raise Fallback
        # The terms are needed only for w's gradient (not in the weight step): kept only then.
        ctx.save_for_backward(w, *(ys if ctx.needs_input_grad[0] else ()))
        ctx.has_acc, ctx.n_y = has_acc, len(ys)
        ctx.like = (ys[0].shape, ys[0].stride())
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        w, *ys = ctx.saved_tensors
        has_acc = ctx.has_acc
        need_w = ctx.needs_input_grad[0]
        n_acc = sum(has_acc)
        need_y = ctx.needs_input_grad[2 + n_acc:]
        d_acc = [g for g, has in zip(grads, has_acc, strict=True) if has]  # acc's: out's
        d_acc = [g if need else None for g, need in zip(d_acc, ctx.needs_input_grad[2:2 + n_acc],
                                                          strict=True)]
        given = next((g for g in grads if g is not None), None)
        if given is None:
            return (None,) * (2 + n_acc + ctx.n_y)
        like = torch.empty_strided(*ctx.like, dtype=given.dtype, device=given.device)
        gs = [torch.zeros_like(like) if g is None else g for g in grads]
        if torch.is_grad_enabled() or any(g.dtype != torch.float32 for g in gs):
            # Double backward (the exact Hessian): differentiable PyTorch.
            dw = torch.stack([torch.stack([(g * y).sum() for y in ys]) for g in gs]) \
                if need_w else None
            dys = [sum(w[e, k] * gs[e] for e in range(len(gs))) if need else None
                   for k, need in enumerate(need_y)]
            return (dw, None, *d_acc, *dys)
        gs = [g if g.stride() == like.stride() else torch.empty_like(like).copy_(g) for g in gs]
        dys = [torch.empty_like(like) if need else None for need in need_y]
        dw = torch.empty(w.shape, dtype=torch.float64) if need_w else None
        w32 = w.detach().contiguous()
        status = _lib.mix_backward(_pointers(gs), len(gs), _pointers(ys), ctx.n_y, _ptr(w32),
                                   _pointers(dys), _ptr(dw), like.numel(),
                                   torch.get_num_threads())
        if status != 0:
            raise RuntimeError("darts: the C shared-terms backward could not start its threads")
        return (dw.to(w.dtype) if need_w else None, None, *d_acc, *dys)


def _dense_alike(tensors) -> bool:
    first = tensors[0]
    dense = first.is_contiguous() or (first.dim() == 4
                                      and first.is_contiguous(memory_format=torch.channels_last))
    return dense and all(t.shape == first.shape and t.stride() == first.stride()
                         and t.dtype == torch.float32 and t.device.type == "cpu"
                         for t in tensors)


def add_shared_terms(w: torch.Tensor, accs: list[torch.Tensor | None],
                     ys: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """[acc[e] + sum_k w[e, k] * ys[k] for each e] (acc[e] None: zero) in one pass over the
    tensors, and one pass back; None where not covered: float32 CPU tensors, all of one shape
    and one dense memory layout, up to 8 each of ys and accs."""
    tensors = [*ys, *(a for a in accs if a is not None)]
    if not (enabled() and not _compiling() and not torch.is_autocast_enabled("cpu")
            and 0 < len(ys) <= _MIX_MAX and 0 < len(accs) <= _MIX_MAX
            and w.shape == (len(accs), len(ys)) and w.dtype == torch.float32
            and _dense_alike(tensors) and library() is not None):
        return None
    has_acc = tuple(a is not None for a in accs)
    try:
        return list(_SharedTermsFunction.apply(
            w, has_acc, *(a for a in accs if a is not None), *ys))
    except Fallback:
        return None


# (kernel size, stride, padding, dilation) of a square depthwise convolution
DepthwiseConf = tuple[int, int, int, int]


def _depthwise_out(size: int, conf: DepthwiseConf) -> int:
    k, stride, pad, dil = conf
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def covers_relu_depthwise(x: torch.Tensor, weights, confs) -> bool:
    """Whether `relu_depthwise_forward` and `_backward` run for these: float32 channels-last
    CPU input, float32 (C, 1, k, k) weights with k up to MAX_KERNEL, outputs not empty."""
    if not (enabled() and not _compiling() and not torch.is_autocast_enabled("cpu")
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and len(weights) > 0):
        return False
    c = x.shape[1]
    for w, conf in zip(weights, confs, strict=True):
        k, stride, pad, dil = conf
        if not (w.dtype == torch.float32 and w.device.type == "cpu"
                and tuple(w.shape) == (c, 1, k, k) and 1 <= k <= MAX_KERNEL
                and stride >= 1 and pad >= 0 and dil >= 1
                and min(_depthwise_out(s, conf) for s in x.shape[2:]) >= 1):
            return False
    return library() is not None


def _taps(weights) -> list[torch.Tensor]:
    """Each (C, 1, k, k) weight as (k * k, C): the taps with the channels innermost."""
    return [w.detach().reshape(w.shape[0], -1).t().contiguous() for w in weights]


def _conf_array(x: torch.Tensor, confs) -> ctypes.Array:
    h, w = x.shape[2:]
    flat = [v for conf in confs
            for v in (conf[0], conf[0], conf[1], conf[2], conf[3],
                      _depthwise_out(h, conf), _depthwise_out(w, conf))]
    return (ctypes.c_long * len(flat))(*flat)


def relu_depthwise_forward(x: torch.Tensor, weights, confs, relu: bool = True
                           ) -> list[torch.Tensor]:
    """[conv2d(relu(x), w, stride, pad, dil, groups=C) for each weight] (without ReLU where
    `relu` is False), x read once; for what `covers_relu_depthwise` accepts (not checked)."""
    lib = library()
    n, c, h, w = x.shape
    outs = [torch.empty(n, c, _depthwise_out(h, conf), _depthwise_out(w, conf),
                        memory_format=torch.channels_last) for conf in confs]
    taps = _taps(weights)
    status = lib.dw_relu_forward(x.data_ptr(), n, h, w, c, len(confs), _pointers(taps),
                                  _pointers(outs), _conf_array(x, confs), int(relu),
                                  torch.get_num_threads())
    if status != 0:
        raise MemoryError("darts: the C depthwise kernel could not allocate its buffers")
    return outs


def relu_depthwise_backward(x: torch.Tensor, weights, confs, grads, need_x: bool,
                            need_w, relu: bool = True
                            ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """The gradients of `relu_depthwise_forward(x, weights, confs, relu)` given its outputs'
    gradients `grads` (None: no gradient from that output), in one pass: towards x (with
    `need_x`) the sum of every output's transposed convolution, masked by x > 0 with `relu`;
    towards weight k (where need_w[k]) its weight gradient, reading the same gradients."""
    lib = library()
    n, c, h, w = x.shape
    dx = torch.empty_like(x, memory_format=torch.channels_last) if need_x else None
    gs = [None if g is None else g.contiguous(memory_format=torch.channels_last)
          for g in grads]
    dws = [torch.empty_like(wk) if need and g is not None else None
           for wk, need, g in zip(weights, need_w, gs, strict=True)]
    taps = _taps(weights)
    status = lib.dw_relu_backward(x.data_ptr(), _ptr(dx), n, h, w, c, len(confs),
                                  _pointers(taps), _pointers(gs), _conf_array(x, confs),
                                  _pointers(dws), int(relu), torch.get_num_threads())
    if status != 0:
        raise MemoryError("darts: the C depthwise kernel could not allocate its buffers")
    return dx, dws


class _NodeBatchNormFunction(torch.autograd.Function):
    """out = acc + sum_k w[k] * BN_k(x_k), non-affine BatchNorms in training mode (see
    `node_batch_norm`); also returns each BatchNorm's batch mean and unbiased variance."""

    @staticmethod
    def forward(ctx, w, eps, has_acc, *tensors):
        acc, xs = (tensors[0], tensors[1:]) if has_acc else (None, tensors)
        k = len(xs)
        n, c, h, width = xs[0].shape
        out = torch.empty_like(xs[0], memory_format=torch.channels_last)
        mean, invstd, var = (xs[0].new_empty(k, c) for _ in range(3))
        w32 = w.detach().contiguous()
        eps_arr = (ctypes.c_double * k)(*eps)
        status = _lib.nbn_forward(_pointers(xs), k, _ptr(acc), out.data_ptr(), n * h * width, c,
                                  w32.data_ptr(), eps_arr, mean.data_ptr(), invstd.data_ptr(),
                                  var.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise Fallback
        ctx.save_for_backward(w, mean, invstd, *xs)
        ctx.eps, ctx.has_acc = eps, has_acc
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return out, mean, var

    @staticmethod
    def backward(ctx, g, _mean, _var):
        w, mean, invstd, *xs = ctx.saved_tensors
        need_w, need_acc = ctx.needs_input_grad[0], ctx.has_acc and ctx.needs_input_grad[3]
        need_x = ctx.needs_input_grad[3 + int(ctx.has_acc):]
        d_acc = (g if need_acc else None,) if ctx.has_acc else ()
        if g is None:
            return (None, None, None, *d_acc, *(None for _ in xs))
        if torch.is_grad_enabled() or g.dtype != torch.float32:
            # Double backward (the exact Hessian): differentiable PyTorch, the BatchNorms
            # recomputed.
            with torch.enable_grad():
                inputs = [t for t, need in ((w, need_w), *zip(xs, need_x, strict=True))
                          if need]
                out = sum(w[k] * F.batch_norm(x, None, None, None, None, True, 0.0, ctx.eps[k])
                          for k, x in enumerate(xs))
                found = iter(torch.autograd.grad(out, inputs, g, create_graph=True))
            dw = next(found) if need_w else None
            return (dw, None, None, *d_acc, *(next(found) if need else None for need in need_x))
        g = g.contiguous(memory_format=torch.channels_last)
        n, c, h, width = g.shape
        dxs = [torch.empty_like(g) if need else None for need in need_x]
        dw = torch.empty(len(xs), dtype=torch.float64) if need_w else None
        w32 = w.detach().contiguous()
        status = _lib.nbn_backward(g.data_ptr(), _pointers(xs), _pointers(dxs), len(xs),
                                   n * h * width, c, w32.data_ptr(), mean.data_ptr(),
                                   invstd.data_ptr(), _ptr(dw), torch.get_num_threads())
        if status != 0:
            raise MemoryError("darts: the C node BatchNorm backward could not allocate")
        return (dw.to(w.dtype) if need_w else None, None, None, *d_acc, *dxs)


def node_batch_norm(acc: torch.Tensor | None, xs: list[torch.Tensor],
                    w: torch.Tensor | list[torch.Tensor], eps: list[float]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """acc + sum_k w[k] * BN_k(x_k) for non-affine BatchNorms in training mode (batch
    statistics; acc None: zero), with each BatchNorm's batch mean and unbiased variance (K, C)
    for its running statistics; None where not covered: float32 channels-last CPU tensors of
    one shape, w K float32 weights (a vector, or a list of scalars, stacked here).

    A cell node sums many such terms (every sep_conv and dil_conv on every edge into it ends in
    one, scaled by its mixing weight). Their backward shares the node's gradient, so one pass
    each way serves them all (kernels.c, nbn_forward / nbn_backward)."""
    first = xs[0] if xs else None
    if first is None or not covers_batch_norm(first):
        return None
    if isinstance(w, (list, tuple)):
        if not all(s.dim() == 0 for s in w):
            return None
        w = torch.stack(w)
    if not (w.dtype == torch.float32
            and w.shape == (len(xs),) and len(eps) == len(xs)
            and all(x.shape == first.shape and x.dtype == torch.float32
                    and x.is_contiguous(memory_format=torch.channels_last) for x in xs)
            and (acc is None or (acc.shape == first.shape and acc.dtype == torch.float32
                                 and acc.is_contiguous(memory_format=torch.channels_last)))):
        return None
    tensors = (acc, *xs) if acc is not None else tuple(xs)
    try:
        return _NodeBatchNormFunction.apply(w, tuple(eps), acc is not None, *tensors)
    except Fallback:
        return None


class _PoolBatchNormFunction(torch.autograd.Function):
    """(BN(maxpool(x)), BN(avgpool(x))) with the C kernels (see `pool_batch_norm`), and each
    one's batch mean and unbiased variance (not differentiable)."""

    @staticmethod
    def forward(ctx, x, conf, eps_max, eps_avg):
        k, s, p = conf
        n, c, h, w = x.shape
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        ymax, yavg = (torch.empty(n, c, oh, ow, memory_format=torch.channels_last)
                      for _ in range(2))
        stats = x.new_empty(6, c)
        status = _lib.pool_bn_forward(_ptr(x), _ptr(ymax), _ptr(yavg), n, h, w, c, k, s, p,
                                      eps_max, eps_avg, _ptr(stats), torch.get_num_threads())
        if status != 0:
            raise Fallback
        ctx.save_for_backward(x, ymax, yavg, stats)
        ctx.conf, ctx.eps = conf, (eps_max, eps_avg)
        mean_max, _, var_max, mean_avg, _, var_avg = stats.unbind(0)
        ctx.mark_non_differentiable(mean_max, var_max, mean_avg, var_avg)
        ctx.set_materialize_grads(False)
        return ymax, yavg, mean_max, var_max, mean_avg, var_avg

    @staticmethod
    def backward(ctx, gmax, gavg, *_stats):
        x, ymax, yavg, stats = ctx.saved_tensors
        if (gmax is None and gavg is None) or not ctx.needs_input_grad[0]:
            return None, None, None, None
        k, s, p = ctx.conf
        if torch.is_grad_enabled() or any(g is not None and g.dtype != torch.float32
                                          for g in (gmax, gavg)):
            # Double backward (the exact Hessian): differentiable PyTorch, the forward
            # recomputed.
            with torch.enable_grad():
                outs = _pool_batch_norm_reference(x, ctx.conf, *ctx.eps)
                pairs = [(o, g) for o, g in zip(outs, (gmax, gavg), strict=True) if g is not None]
                (dx,) = torch.autograd.grad([o for o, _ in pairs], x, [g for _, g in pairs],
                                            create_graph=True)
            return dx, None, None, None
        n, c, h, w = x.shape
        gmax, gavg = (None if g is None else g.contiguous(memory_format=torch.channels_last)
                      for g in (gmax, gavg))
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        status = _lib.pool_bn_backward(_ptr(x), _ptr(gmax), _ptr(gavg), _ptr(ymax), _ptr(yavg),
                                       _ptr(dx), n, h, w, c, k, s, p, _ptr(stats),
                                       torch.get_num_threads())
        if status != 0:
            raise RuntimeError("darts: the C pooling backward could not allocate its sums")
        return dx, None, None, None


def _pool_batch_norm_reference(x: torch.Tensor, conf: tuple[int, int, int], eps_max: float,
                               eps_avg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What `pool_batch_norm` computes, in differentiable PyTorch."""
    k, s, p = conf
    ymax = F.max_pool2d(x, k, s, p)
    yavg = F.avg_pool2d(x, k, s, p, count_include_pad=False)
    return (F.batch_norm(ymax, None, None, None, None, True, 0.0, eps_max),
            F.batch_norm(yavg, None, None, None, None, True, 0.0, eps_avg))


def pool_batch_norm(x: torch.Tensor, kernel_size: int, stride: int, padding: int,
                    eps_max: float, eps_avg: float) -> tuple[torch.Tensor, ...] | None:
    """A cell state's two pooling ops with their non-affine BatchNorms in training mode:
    (BN(max_pool2d(x)), BN(avg_pool2d(x, count_include_pad=False)), mean and unbiased variance
    of the max pooling's output, the same of the average's), the statistics without a graph,
    in two passes over x each way; None where not covered: float32 channels-last CPU tensors,
    padding below the kernel size, more than one output value per channel.
    """
    if not (x.device.type == "cpu" and not _compiling() and enabled()
            and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu")
            and kernel_size >= 1 and stride >= 1 and 0 <= padding < kernel_size):
        return None
    n, _, h, w = x.shape
    oh, ow = ((size + 2 * padding - kernel_size) // stride + 1 for size in (h, w))
    if min(oh, ow) < 1 or n * oh * ow < 2 or library() is None:
        return None
    try:
        return _PoolBatchNormFunction.apply(x, (kernel_size, stride, padding), eps_max, eps_avg)
    except Fallback:
        return None
