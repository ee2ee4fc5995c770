"""CPU kernels of our own, in C, built on first use with the system's C compiler.

One so far: the weight gradient of a depthwise convolution (`depthwise.c`). oneDNN, which
PyTorch uses for it on the CPU, is fast only for undilated 3x3 kernels at stride 1; the 5x5,
dilated and strided kernels of the DARTS search space took 3-20 ms each at the supernet's
sizes (batch 64, 16-64 channels), about 3 s of every first-order search step on a 2-core CPU.
The C kernel takes 0.5-2 ms for each of them (README, "Speed and memory").

The library is compiled once per source, compiler and CPU into a cache directory
(`$DARTS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/darts/kernels`, else `~/.cache/darts/kernels`),
written atomically so that ranks compiling at once do not see half a file. It needs only a C
compiler (`$CC`, else `cc`), no PyTorch headers: it takes raw pointers through ctypes.
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

log = logging.getLogger("darts.kernels")

_SOURCE = Path(__file__).with_name("depthwise.c")
_FLAGS = ["-O3", "-shared", "-fPIC", "-pthread"]
MAX_KERNEL = 8  # MAX_KW in depthwise.c
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
        # -march=native first (AVX-512 where there is one); some compilers lack it.
        for arch in (["-march=native"], []):
            cmd = [*compiler, *_FLAGS, *arch, "-o", tmp, str(_SOURCE)]
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
    path = _cache_dir() / f"depthwise-{key}.so"
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
    fn = lib.depthwise_weight_grad
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 11 + [ctypes.c_int]
    _lib = lib
    return _lib


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, stride: int,
                          padding: int, dilation: int) -> torch.Tensor | None:
    """The gradient of a depthwise conv's (C, 1, k, k) weight, or None where not covered.

    Covered: float32 CPU tensors, square kernels up to MAX_KERNEL, any stride, padding and
    dilation; `x` (N, C, H, W) and `grad` (N, C, OH, OW) in any memory format (channels_last
    is read in place, others are copied to it).
    """
    if not (enabled() and x.device.type == "cpu" and x.dtype == grad.dtype == torch.float32
            and x.dim() == 4 and 1 <= kernel_size <= MAX_KERNEL):
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
