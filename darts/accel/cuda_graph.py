"""Whole-step CUDA graphs (`--cuda_graphs`): a training step recorded once, then replayed.

A search step of the paper's supernet launches about 29,000 small kernels (16 channels at
32x32: each a few microseconds of work). Launched one by one from Python, the GPU waits on
the launches; a CUDA graph records the kernels of one whole step (the architect's alpha
step, the weight step's forward, backward, clipping and optimizer updates) and replays
them with one launch per step. The arithmetic is the same, kernel for kernel.

What a step must keep to be captured (the search and final training keep it):

- no host-device synchronisation inside the step: no `.item()`, no Python branch on a
  tensor's value (fp16's GradScaler has one, so fp16 runs eagerly);
- Python numbers the step reads (learning rate, xi, drop-path probability) are frozen into
  the graph: a graph lives for one epoch, across which the schedules are constant;
- optimizers that keep their state on the device (Adam with `capturable=True`);
- the same input shapes: a batch of another size (the last of an epoch) runs eagerly;
- one process: a DistributedDataParallel run stays eager.

Random numbers drawn inside a graph (drop path) are fresh on every replay: PyTorch's CUDA
generator advances its offset per replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from darts.errors import UserError

CUDA_GRAPH_FLAGS = ("auto", "on", "off")


def cuda_graphs_enabled(flag: str, device: torch.device, *, distributed: bool, amp: str,
                        compile: bool) -> bool:
    """Whether `--cuda_graphs flag` captures the steps of this run.

    auto: on a GPU when nothing rules it out (fp16, torchrun, --compile); on: the same,
    but a run where it cannot be gets an error that says why; off: eager steps.
    """
    if flag not in CUDA_GRAPH_FLAGS:
        raise UserError(f"--cuda_graphs {flag}: choose one of {', '.join(CUDA_GRAPH_FLAGS)}")
    if flag == "off":
        return False
    reasons = []
    if device.type != "cuda":
        reasons.append(f"they need a GPU (the device is {device})")
    if distributed:
        reasons.append("they run on one process (torchrun runs eager steps)")
    if amp == "fp16":
        reasons.append("fp16's loss scaling reads the gradients' finiteness on the host "
                       "(use --amp bf16)")
    if compile:
        reasons.append("--compile makes its own graphs")
    if reasons and flag == "on":
        raise UserError("--cuda_graphs on: " + "; ".join(reasons) + "; use --cuda_graphs auto or off")
    return not reasons


def _tensors(args: tuple) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _signature(args: tuple) -> tuple:
    return tuple((a.shape, a.dtype, a.stride(), a.device) if isinstance(a, torch.Tensor) else a
                 for a in args)


class StepGraph:
    """`fn(*args)` recorded in a CUDA graph on its `warmup + 1`-th call and replayed after.

    `args` are tensors (copied into the graph's static inputs on every call) or constants
    (None). The first `warmup` calls run eagerly on a side stream, as CUDA graph capture
    asks (lazy initialisations: optimizer states, cuDNN's and cuBLAS's workspaces). A call
    whose arguments differ in shape, dtype, layout or constants from the captured ones runs
    eagerly. The returned tensors of a replay are the graph's static outputs: read them
    (or enqueue work that reads them) before the next call overwrites them.

    With `enabled=False` every call runs `fn` eagerly, so callers need one code path. If the
    capture fails (an op that synchronises, say) and `on_failure` is given, it is called
    with the reason and every later call runs eagerly; without it the error propagates.
    """

    def __init__(self, fn: Callable[..., Any], *, enabled: bool = True, warmup: int = 1,
                 on_failure: Callable[[str], None] | None = None):
        self.fn, self.enabled, self.warmup, self.on_failure = fn, enabled, warmup, on_failure
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature: tuple | None = None
        self.static_inputs: list[torch.Tensor] = []
        self.static_output: Any = None
        self.calls = self.replays = self.eager_calls = 0

    def __call__(self, *args):
        self.calls += 1
        if not self.enabled:
            self.eager_calls += 1
            return self.fn(*args)
        if self.graph is None:
            if self.calls <= self.warmup:
                self.eager_calls += 1
                return self._on_side_stream(args)
            try:
                self._capture(args)
            except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly
                if self.on_failure is None:
                    raise
                self.enabled = False
                self.on_failure(f"CUDA graph capture failed ({type(e).__name__}: {e}); "
                                f"running eager steps")
                self.eager_calls += 1
                return self.fn(*args)
        elif _signature(args) != self.signature:
            self.eager_calls += 1
            return self.fn(*args)
        for static, t in zip(self.static_inputs, _tensors(args), strict=True):
            static.copy_(t)
        self.graph.replay()
        self.replays += 1
        return self.static_output

    def _on_side_stream(self, args: tuple):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, args: tuple) -> None:
        static = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                  for t in _tensors(args)]
        it = iter(static)
        static_args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronizes and empties the allocator's cache first: what the
        # eager warm-up cached goes back to the driver before the graph takes its own pool.
        with torch.cuda.graph(graph):
            output = self.fn(*static_args)
        self.graph, self.static_inputs, self.static_output = graph, static, output
        self.signature = _signature(args)
