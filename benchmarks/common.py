"""Shared measurement code of the benchmarks: step timing, peak memory, FLOPs, JSON.

A step is timed from one batch request to the next, so it includes the data pipeline;
on CUDA the device is synchronized at each mark. Peak memory is CUDA's max allocated
on a GPU and the process's peak resident set (VmHWM, reset between measurements through
/proc/self/clear_refs) on the CPU. The peak covers the warm-up steps as well as the measured
ones: a CUDA graph's memory is allocated while it is captured, during the warm-up, and
reused by every replay (on CUDA the JSON also holds the allocator's peak reserved memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from darts.accel import kernels  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Wraps a batch iterable: yields `warmup + steps` batches and records the time between
    consecutive requests (one training step each, data included)."""

    def __init__(self, batches: Iterable, warmup: int, steps: int, device: torch.device):
        self.batches, self.warmup, self.steps, self.device = batches, warmup, steps, device
        self.times: list[float] = []

    def __len__(self) -> int:
        return self.warmup + self.steps

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        last = None
        for i in range(self.warmup + self.steps + 1):
            sync(self.device)
            now = time.perf_counter()
            if last is not None and i > self.warmup:
                self.times.append(now - last)
            last = now
            if i == self.warmup + self.steps:
                return
            yield next(it)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_reserved(device: torch.device) -> dict:
    """{"peak_reserved_mib": ...} on CUDA (the caching allocator's peak), {} elsewhere."""
    if device.type != "cuda":
        return {}
    return {"peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward: each of the input and the weight gradient costs
    what the forward did. (torch's own formula ignores `groups` and counts a depthwise
    convolution's backward as a dense one's: 16x too much for the supernet's 16-channel
    depthwise convolutions.)"""
    outputs = x_shape if transposed else grad_out_shape  # the side the kernel slides over
    forward = 2 * math.prod(outputs) * math.prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(step: Callable[[], None]) -> float:
    """FLOPs of one call of `step` (convolutions and matrix products, forward and backward)."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return float(counter.get_total_flops())


def summary(times: list[float], batch_size: int, flops: float | None, peak_mib: float,
            **extra) -> dict:
    median = statistics.median(times)
    out = {"median_step_s": median, "images_per_s": batch_size / median,
           "peak_mem_mib": peak_mib, "steps": len(times),
           "min_step_s": min(times), "max_step_s": max(times)}
    if flops is not None:
        out["gflop_per_step"] = flops / 1e9
        out["achieved_gflop_s"] = flops / 1e9 / median
    out.update(extra)
    return out


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def steal_s() -> float | None:
    """CPU time that a virtual machine's host gave to others while this one wanted it (Linux
    /proc/stat "steal", all cores, seconds); None where not known."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def with_steal(measure: Callable[..., dict], *args) -> dict:
    """measure(*args), with `cpu_steal_s` over the whole measurement where it is known: on a
    shared virtual machine, timings are only comparable when it is small."""
    before = steal_s()
    out = measure(*args)
    after = steal_s()
    if before is not None and after is not None:
        out["cpu_steal_s"] = round(after - before, 2)
    return out


@contextlib.contextmanager
def cpu_kernels(on: bool) -> Iterator[None]:
    """The C kernels on or off inside the block (DARTS_CPU_KERNELS, read at every call)."""
    old = os.environ.get("DARTS_CPU_KERNELS")
    os.environ["DARTS_CPU_KERNELS"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["DARTS_CPU_KERNELS"]
        else:
            os.environ["DARTS_CPU_KERNELS"] = old


def write_json(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        Path(tmp).write_text(text + "\n")
        os.replace(tmp, path)


def add_arguments(p) -> None:
    """The flags both benchmarks share: device, steps, output, and the fast path's options."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="measured steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--compare", action="store_true", help="plain path and fast path, and their ratio")
    p.add_argument("--loader", choices=("device", "torch"), default="device", help="fast path's loader")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="fast path's precision")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="fast path's memory format (default: channels_last, the faster one measured "
                        "on the CPU and, with CUDA graphs, on an H100)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda_graphs", choices=("auto", "on", "off"), default="auto",
                   help="fast path: whole steps as CUDA graphs (auto: on a GPU unless fp16 or --compile)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torch loader")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no_flops", action="store_true", help="skip counting FLOPs")
    add_malloc_argument(p)
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark for both paths (the DARTS reference code "
                        "sets it; the training scripts do not)")


def add_malloc_argument(p) -> None:
    p.add_argument("--tune_malloc", action=argparse.BooleanOptionalAction, default=True,
                   help="on the CPU, both paths: glibc's malloc keeps freed memory in the process "
                        "(darts.train.engine.tune_malloc, what the training scripts do); "
                        "--no-tune_malloc for glibc's defaults")


def apply_malloc(args, device: torch.device) -> str:
    """Sets the process's malloc as --tune_malloc asks (on the CPU): what the JSON records."""
    from darts.train.engine import tune_malloc

    return "tuned" if args.tune_malloc and tune_malloc(device) else "system"


def run(p, argv, header: Callable[[argparse.Namespace, torch.device], dict],
        measure: Callable[[argparse.Namespace, dict, torch.device], dict],
        extra_fast: Callable[[argparse.Namespace], dict] = lambda args: {}) -> int:
    """Parses the flags, measures the fast path (and with --compare the plain path first),
    writes the JSON. A path is a dict of the run's speed flags, passed to `measure`."""
    from darts.train.engine import pick_device

    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    malloc = apply_malloc(args, device)
    channels_last = True if args.channels_last is None else args.channels_last
    fast = {"name": "fast", "loader": args.loader, "amp": args.amp,
            "channels_last": channels_last, "compile": args.compile,
            "cuda_graphs": args.cuda_graphs, **extra_fast(args)}
    # The C kernels (darts/accel/kernels.py) where they run: CPU, built, not DARTS_CPU_KERNELS=0.
    fast["cpu_kernels"] = device.type == "cpu" and kernels.enabled() and kernels.library() is not None
    plain = {**{k: v for k, v in fast.items() if k not in extra_fast(args)},
             "name": "plain", "loader": "torch", "amp": "off", "channels_last": False,
             "compile": False, "cuda_graphs": "off", "cpu_kernels": False}
    result = {**header(args, device), "device": str(device), "environment": environment(device),
              "cudnn_benchmark": args.cudnn_benchmark, "malloc": malloc}
    if args.compare:
        with cpu_kernels(False):
            slow = with_steal(measure, args, plain, device)
        quick = with_steal(measure, args, fast, device)
        result.update(quick)
        result["plain"], result["fast"] = slow, quick
        result.update(compare(slow, quick))
    else:
        result.update(with_steal(measure, args, fast, device))
    write_json(result, args.json)
    return 0


def compare(plain: dict, fast: dict) -> dict:
    ratio = plain["median_step_s"] / fast["median_step_s"]
    mem = plain["peak_mem_mib"] / fast["peak_mem_mib"]
    print(f"fast path: {ratio:.2f}x the plain path's speed "
          f"({plain['median_step_s']:.3f} s -> {fast['median_step_s']:.3f} s per step), "
          f"peak memory {plain['peak_mem_mib']:.0f} -> {fast['peak_mem_mib']:.0f} MiB "
          f"({mem:.2f}x lower)", file=sys.stderr)
    return {"speedup": ratio, "memory_ratio": mem}
