"""One training loop and one evaluation loop, shared by search and final training.

Metrics are accumulated on the device and read back once per epoch (and every few steps
for the progress bar), so the loop never waits on the GPU for a number nobody looks at.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

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

    def result(self) -> EpochMetrics:
        loss, top1, top5 = (self.sums / max(self.samples, 1)).tolist()
        return EpochMetrics(loss, 100.0 * top1, 100.0 * top5, self.samples)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    return device


def split_output(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Networks return logits or (logits, auxiliary logits)."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None):
    # A bar only on a terminal: in a log file it would be thousands of carriage returns.
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()), mininterval=1.0)


def train_one_epoch(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    criterion: nn.Module, device: torch.device, *, aux_weight: float = 0.0,
                    grad_clip: float = 0.0, before_step: Callable[[int, Batch], None] | None = None,
                    forward: Callable[[torch.Tensor], object] | None = None,
                    progress: bool = False, desc: str = "train") -> EpochMetrics:
    """One pass over `loader`: forward, loss (+ weighted auxiliary loss), backward, clip, step.

    `before_step(step, batch)` runs before each weight step (the search's architect step).
    `forward(x)` replaces `model(x)` (the search passes the supernet detached alphas).
    The reported loss is the main classification loss, comparable with the validation loss.
    """
    model.train()
    meter = MetricSum(device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = _progress(loader, desc, progress, total)
    forward = forward or model
    for step, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if before_step is not None:
            before_step(step, (x, y))
        logits, logits_aux = split_output(forward(x))
        loss = criterion(logits, y)
        objective = loss
        if logits_aux is not None and aux_weight > 0:
            objective = loss + aux_weight * criterion(logits_aux, y)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        meter.update(loss, logits, y)
        if progress and step % 20 == 0:
            m = meter.result()
            bar.set_postfix(loss=f"{m.loss:.3f}", top1=f"{m.top1:.1f}")
    return meter.result()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], criterion: nn.Module,
             device: torch.device, *, progress: bool = False, desc: str = "valid") -> EpochMetrics:
    model.eval()
    meter = MetricSum(device)
    total = len(loader) if hasattr(loader, "__len__") else None
    for x, y in _progress(loader, desc, progress, total):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        logits, _ = split_output(model(x))
        meter.update(criterion(logits, y), logits, y)
    return meter.result()
