"""One training loop and one evaluation loop, shared by search and final training.

Metrics are accumulated on the device and read back once per epoch (and every few steps
for the progress bar), so the loop never waits on the GPU for a number nobody looks at.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from darts.accel.cuda_graph import StepGraph
from darts.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EpochMetrics:
    loss: float
    top1: float
    top5: float
    samples: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/loss": self.loss, f"{prefix}/top1": self.top1, f"{prefix}/top5": self.top5}


class MetricSum:
    """Running sums of loss and top-k hits, kept as device tensors."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss*n, top1, top5
        self.samples = 0

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.size(0)
        k = min(5, logits.size(1))
        top = logits.topk(k, dim=1).indices
        hits = top.eq(target.unsqueeze(1))
        self.sums += torch.stack([loss.detach().double() * n,
                                  hits[:, :1].sum().double(), hits.sum().double()])
        self.samples += n

    @torch.no_grad()
    def add(self, loss: torch.Tensor, n: int) -> None:
        """A loss alone (mean over `n` samples), no accuracy: the alpha step's."""
        self.sums[0] += loss.detach().double() * n
        self.samples += n

    def result(self) -> EpochMetrics:
        loss, top1, top5 = (self.sums / max(self.samples, 1)).tolist()
        return EpochMetrics(loss, 100.0 * top1, 100.0 * top5, self.samples)


def pick_device(spec: str) -> torch.device:
    """The device of `--device spec`: auto (a GPU where there is one), cpu, cuda or cuda:N."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {spec}: not a device this project runs on; use auto, cpu, cuda "
                        "or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"numbered from 0")
    return device


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
    (a container's or a batch system's `--cpus`)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable now (at least this one)."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        n += stat[stat.rfind(")") + 2:stat.rfind(")") + 3] == "R"
    return max(n, 1)


def _other_running_processes(samples: int = 5, interval_s: float = 0.02) -> int:
    """Runnable tasks on the machine besides this process's own threads: the least of a few
    samples of /proc/loadavg's instantaneous count less this process's running threads, so a
    passing command is not counted; 0 where unknown."""
    least = None
    for i in range(samples):
        try:
            running = int(open("/proc/loadavg").read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        others = max(running - _own_running_threads(), 0)
        least = others if least is None else min(least, others)
        if i + 1 < samples:
            time.sleep(interval_s)
    return least or 0


class ThreadWatch:
    """Looks at the machine's load every `interval_s` seconds, between steps.

    `adapt` (--adapt_threads): torch's intra-op threads become the CPUs the other running
    processes leave free (at least 1, at most `threads`), and each change is logged (`note`).
    An OpenMP team with more threads than free CPUs waits at every parallel region for a
    thread that is not running: beside a process that keeps both of a 2-CPU machine's cores
    busy, a search step took 13x as long with 2 threads as alone, and 1.4-1.9x with 1
    (docs/performance.md). The thread count decides how the CPU kernels split their sums, so
    an adapting run is not bit-reproducible.
    Otherwise the count stays fixed and `warn` hears once that the machine is oversubscribed.
    A look takes three samples 5 ms apart, so it costs the training loop about 10 ms per
    interval. `others` and `clock` are for tests."""

    def __init__(self, threads: int, cpus: int, *, adapt: bool = False,
                 warn: Callable[[str], None] | None = None,
                 note: Callable[[str], None] | None = None, interval_s: float = 10.0,
                 others: Callable[[], int] = lambda: _other_running_processes(3, 0.005),
                 clock: Callable[[], float] = time.monotonic):
        self.threads, self.cpus, self.adapt = threads, cpus, adapt
        self.warn, self.note, self.interval_s = warn, note, interval_s
        self.others, self.clock = others, clock
        self.warned = False
        self.next_check = -math.inf

    def __call__(self) -> None:
        now = self.clock()
        if now < self.next_check:
            return
        self.next_check = now + self.interval_s
        others = self.others()
        current = torch.get_num_threads()
        if self.adapt:
            target = max(1, min(self.threads, self.cpus - others))
            if target != current:
                torch.set_num_threads(target)
                if self.note is not None:
                    self.note(f"CPU threads {current} -> {target}: {others} other process(es) "
                              f"running on {self.cpus} CPUs")
        elif not self.warned and current > 1 and others + current > self.cpus:
            self.warned = True
            if self.warn is not None:
                self.warn(f"{others} other process(es) are running on this machine's {self.cpus} "
                          f"CPUs beside this run's {current} threads, which can slow it many "
                          f"times over; --adapt_threads follows the load, --threads 1 is robust "
                          f"(docs/performance.md: CPU threads on a shared machine)")


_thread_watch: ThreadWatch | None = None


def watch_threads() -> None:
    """Between steps: the ThreadWatch that configure_cpu_threads set up, if any, looks at the
    machine's load when its interval has passed (a clock read otherwise)."""
    if _thread_watch is not None:
        _thread_watch()


def configure_cpu_threads(threads: int = 0, warn: Callable[[str], None] | None = None,
                          note: Callable[[str], None] | None = None, adapt: bool = False) -> int:
    """Sets torch's intra-op threads: `threads`, or (0) the CPUs this process may use, unless
    OMP_NUM_THREADS says otherwise; returns the number. torch's own default counts every
    core of the machine, also those a container or `taskset` does not give the process, and
    more threads than free cores stall each parallel region on a thread that is not running.
    With `warn` (a run on the CPU) a ThreadWatch follows the load between steps: `adapt`
    changes the thread count with it, otherwise one warning says when the machine is
    oversubscribed (docs/performance.md: CPU threads on a shared machine)."""
    global _thread_watch
    cpus = available_cpus()
    if threads > 0:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), cpus))
    n = torch.get_num_threads()
    _thread_watch = None
    if warn is not None:
        _thread_watch = ThreadWatch(n, cpus, adapt=adapt, warn=warn, note=note)
        _thread_watch()
    return n


def channels_last_on(flag: bool | None, device: torch.device) -> bool:
    """`--channels_last`: given, as given; left unset (None), on on the CPU, where darts's C
    kernels run only on channels-last tensors (a search or retraining step about 2x faster
    there), and off on other devices (where `--channels_last` is worth adding: see the README)."""
    return (device.type == "cpu") if flag is None else bool(flag)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
_malloc_tuned = False


def tune_malloc(device: torch.device) -> bool:
    """On the CPU, keep freed tensor memory in the process (glibc's malloc only); True where
    it is set. Another device's tensors are not glibc's: nothing is set (False).

    A search step on the CPU allocates and frees thousands of tensors of 0.25-16 MiB. With
    glibc's defaults most of them are fresh mmap'd pages (above the mmap threshold, or in the
    per-thread arenas of the OpenMP threads, whose heaps shrink as soon as memory is freed),
    and the kernel faults in and zeroes every 4 KiB page again: 240,000-350,000 page faults and
    0.9-1.5 s of system time per standard first-order search step. One arena, the mmap
    threshold at its ceiling (32 MiB) and no trimming of the heap keep that memory in the
    process for the next tensor (35,000-41,000 faults and 0.2 s). Process-wide and for the process's life;
    set before the first parallel work it covers every thread (a thread keeps the arena it
    already has). Elsewhere (not glibc, or under another allocator's LD_PRELOAD, whose
    mallopt ignores these) it changes nothing. `--no-tune_malloc` leaves glibc's defaults.
    """
    global _malloc_tuned
    if device.type != "cpu":
        return False
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
            mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)]
    _malloc_tuned = all(done)
    return _malloc_tuned


def split_output(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Networks return logits or (logits, auxiliary logits)."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None):
    # A bar only on a terminal: in a log file it would be thousands of carriage returns.
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()), mininterval=1.0)


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """Mixed precision of a run: autocast to `dtype` (None: float32), a GradScaler for fp16."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def from_flag(cls, amp: str, device: torch.device) -> Precision:
        if amp not in AMP_DTYPES:
            raise UserError(f"--amp {amp}: choose one of {', '.join(AMP_DTYPES)}")
        dtype = AMP_DTYPES[amp]
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device.type, dtype, scaler)

    def autocast(self):
        """The forward's context: autocast to the run's dtype, or nothing for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()


FLOAT32 = Precision("cpu")


def compile_model(model: nn.Module, enabled: bool, log: Callable[[str], None]) -> None:
    """`--compile`: torch.compile the module in place (its parameter names, state dict and
    methods stay as they are, so optimizers, functional_call and checkpoints work unchanged).

    Where a graph cannot be compiled (no C++ compiler for the CPU backend, an unsupported
    op) torch.compile's error suppression runs that part eagerly, with its warning; where
    torch.compile itself is missing the run says so and stays eager.
    """
    if not enabled:
        return
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        model.compile()
    except Exception as e:  # noqa: BLE001 - any failure here means: run eagerly
        log(f"--compile: torch.compile is not available here ({type(e).__name__}: {e}); "
            f"running eagerly")
        return
    log("--compile: compiling on first use (the first steps of each kind are slow)")


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
              channels_last: bool = False) -> Batch:
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return (x.to(device, non_blocking=True, memory_format=fmt),
            y.to(device, non_blocking=True))


@dataclass
class SideStep:
    """A step that runs before each weight step on a batch of its own (the search's alpha
    step): `batches` yields its batches, `step(batch, side_batch)` takes the step and returns
    its loss on `side_batch`, which `meter` sums."""

    batches: Iterator[Batch]
    step: Callable[[Batch, Batch], torch.Tensor]
    meter: MetricSum


def train_one_epoch(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    criterion: nn.Module, device: torch.device, *, aux_weight: float = 0.0,
                    grad_clip: float = 0.0, side_step: SideStep | None = None,
                    forward: Callable[[torch.Tensor], object] | None = None,
                    precision: Precision = FLOAT32, channels_last: bool = False,
                    after_backward: Callable[[], None] | None = None,
                    reduce: Callable[[MetricSum], None] | None = None,
                    cuda_graph: bool = False, log: Callable[[str], None] | None = None,
                    progress: bool = False, desc: str = "train",
                    step: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
                    | None = None) -> EpochMetrics:
    """One pass over `loader`: forward, loss (+ weighted auxiliary loss), backward, clip, step.

    `step(x, y, x_side, y_side) -> (loss, logits, side loss)` replaces that iteration whole
    (the search's Algorithm 1, `darts.search.search_step`); `side_step` then only supplies the
    side batches and the meter of their losses.

    `side_step` runs before each weight step (the search's architect step).
    `forward(x)` replaces `model(x)` (the search passes the supernet detached alphas).
    `after_backward()` runs between backward and clipping (the search's gradient all-reduce
    on many GPUs; `reduce(meter)` sums the ranks' metrics). `precision` runs the forward under autocast (and scales fp16 losses).
    `cuda_graph`: the whole step (side step included) is captured once and replayed
    (`darts.accel.cuda_graph`; `log` hears why if the capture fails, and the epoch runs eagerly).
    The reported loss is the main classification loss, comparable with the validation loss.
    """
    model.train()
    meter = MetricSum(device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = _progress(loader, desc, progress, total)
    forward = forward or model

    def default_step(x, y, x_side, y_side):
        side_loss = None
        if side_step is not None:
            side_loss = side_step.step((x, y), (x_side, y_side)).detach()
        with precision.autocast():
            logits, logits_aux = split_output(forward(x))
            loss = criterion(logits, y)
            objective = loss
            if logits_aux is not None and aux_weight > 0:
                objective = loss + aux_weight * criterion(logits_aux, y)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(objective)
        if after_backward is not None:
            after_backward()
        if grad_clip > 0:
            precision.unscale(optimizer)
            nn.utils.clip_grad_norm_(params, grad_clip)
        precision.step(optimizer)
        return loss.detach(), logits.detach(), side_loss

    graphed = StepGraph(step or default_step, enabled=cuda_graph, on_failure=log)
    for index, (x, y) in enumerate(bar):
        watch_threads()
        x, y = to_device(x, y, device, channels_last)
        x_side = y_side = None
        if side_step is not None:
            x_side, y_side = to_device(*next(side_step.batches), device, channels_last)
        loss, logits, side_loss = graphed(x, y, x_side, y_side)
        meter.update(loss, logits, y)
        if side_step is not None:
            side_step.meter.add(side_loss, y_side.size(0))
        if progress and index % 20 == 0:
            m = meter.result()
            bar.set_postfix(loss=f"{m.loss:.3f}", top1=f"{m.top1:.1f}")
    if reduce is not None:
        reduce(meter)
    return meter.result()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], criterion: nn.Module,
             device: torch.device, *, precision: Precision = FLOAT32, channels_last: bool = False,
             reduce: Callable[[MetricSum], None] | None = None, cuda_graph: bool = False,
             log: Callable[[str], None] | None = None,
             progress: bool = False, desc: str = "valid") -> EpochMetrics:
    """Loss and top-1/top-5 over `loader`; `reduce(meter)` sums the meters of all ranks.
    `cuda_graph`: each batch's forward is a replay of one captured forward."""
    model.eval()
    meter = MetricSum(device)
    total = len(loader) if hasattr(loader, "__len__") else None

    def step(x, y):
        with precision.autocast():
            logits, _ = split_output(model(x))
            return criterion(logits, y), logits

    graphed = StepGraph(step, enabled=cuda_graph, on_failure=log)
    for x, y in _progress(loader, desc, progress, total):
        watch_threads()
        x, y = to_device(x, y, device, channels_last)
        loss, logits = graphed(x, y)
        meter.update(loss, logits, y)
    if reduce is not None:
        reduce(meter)
    return meter.result()
