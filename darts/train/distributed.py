"""Many GPUs and machines through torchrun: process-group set-up and the collectives we need.

`torchrun --nproc_per_node=N train_search.py ...` (or train_final.py) starts N processes
with RANK, LOCAL_RANK and WORLD_SIZE in their environment; `setup()` reads them, joins the
process group (NCCL on GPUs, gloo on the CPU) and pins each process to its GPU. Without
torchrun it returns a single-process `Dist` and every helper here is a no-op, so the
scripts run one code path.

The batch size flags are per process (per GPU): N processes of batch 64 train on a global
batch of 64 N. Every rank draws its own shard of each pass (see `darts.train.data.shard`); the
gradients (of the weights and, in the search, of the alphas) are averaged over the ranks,
so the replicas stay identical. BatchNorm statistics are per rank, as in every
DistributedDataParallel training; `broadcast_buffers` makes them rank 0's once an epoch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from darts.errors import UserError
from darts.train.engine import MetricSum


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Joins torchrun's process group when WORLD_SIZE > 1; returns (Dist, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: "
                            f"use --nproc_per_node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def average_(tensors: Sequence[torch.Tensor | None], d: Dist) -> None:
    """Averages the tensors over the ranks in place (one flattened all-reduce)."""
    tensors = [t for t in tensors if t is not None]
    if not d.enabled or not tensors:
        return
    dtype = tensors[0].dtype if all(t.dtype == tensors[0].dtype for t in tensors) else torch.float32
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    dist.all_reduce(flat)
    flat /= d.world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def average_grads(params: Sequence[torch.Tensor], d: Dist) -> None:
    """Averages the .grad of `params` over the ranks (a missing gradient counts as zero)."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_([p.grad for p in params], d)


def broadcast_(tensors: Sequence[torch.Tensor], d: Dist, src: int = 0) -> None:
    if d.enabled:
        for t in tensors:
            dist.broadcast(t, src)


def broadcast_state(module: nn.Module, d: Dist) -> None:
    """Makes every rank's parameters and buffers rank 0's."""
    broadcast_([t.data for t in module.parameters()] + [b for b in module.buffers()], d)


def broadcast_buffers(module: nn.Module, d: Dist) -> None:
    broadcast_(list(module.buffers()), d)


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank (e.g. the run directory it created)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def reduce_meter(meter: MetricSum, d: Dist) -> None:
    """Sums a MetricSum over the ranks: every rank then reports the global metrics."""
    if not d.enabled:
        return
    both = torch.cat([meter.sums, meter.sums.new_tensor([float(meter.samples)])])
    dist.all_reduce(both)
    meter.sums.copy_(both[:3])
    meter.samples = int(both[3].item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def on_main(d: Dist, make):
    """`make()` on rank 0 (e.g. creating the run directory), its result on every rank; a
    UserError raised there is raised on every rank."""
    if not d.enabled:
        return make()
    result, error = None, None
    if d.is_main:
        try:
            result = make()
        except UserError as e:
            error = str(e)
    result, error = broadcast_object((result, error), d)
    if error is not None:
        raise UserError(error)
    return result
