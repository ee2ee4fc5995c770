"""The same math, faster: C kernels, fused autograd functions, the accelerated search cell,
edge batching, CUDA graphs and the device-resident loader.

The model (darts.ops, darts.supernet, darts.network) is built plainly and knows nothing of
this package; `accelerate(model)` is the one seam:

- each module with a fast variant (fused.swap_modules: nn.Conv2d, nn.BatchNorm2d,
  nn.MaxPool2d, FactorizedReduce, a Sequential with BatchNorm -> ReLU) becomes that variant
  in place, with the same parameters, buffers and state dict keys;
- each `SearchCell` gets a `cell.CellExecutor` and each final-network `Cell` a
  `cell.GenotypeCellExecutor` as its `executor`; a cell asks its executor first and runs its
  plain definition where the executor returns None (a mixing rule it does not know).

An op added with `primitives.register_op` needs no edit here: its modules are swapped where
they are torch's, and the executor runs it through its own forward inside the same sums.
`DARTS_ACCEL=0` leaves the model plain (every result the definition's); `DARTS_CPU_KERNELS=0`
keeps the Python fast paths but turns the C kernels off.
"""

from __future__ import annotations

import os

import torch.nn as nn


def enabled() -> bool:
    """False where `DARTS_ACCEL=0`: `accelerate` then leaves models plain."""
    return os.environ.get("DARTS_ACCEL", "1") != "0"


def accelerate(model: nn.Module, *, batch_edges: bool = False) -> nn.Module:
    """`model`, its modules swapped to their fast variants and its cells given executors, in
    place; `batch_edges`: the search cells compute the edges leaving each state together
    (edge_batch.py; not for PC-DARTS cells). Returns the model."""
    if not enabled():
        return model
    from darts.accel.cell import CellExecutor, GenotypeCellExecutor
    from darts.accel.fused import swap_modules
    from darts.network import Cell
    from darts.supernet import SearchCell

    swap_modules(model)
    for m in model.modules():
        if isinstance(m, SearchCell):
            m.executor = CellExecutor(m, batch_edges)
        elif isinstance(m, Cell):
            m.executor = GenotypeCellExecutor(m)
    return model


def edges_batched(model: nn.Module) -> bool:
    """Whether any search cell of `model` runs its edges batched."""
    return any(getattr(getattr(m, "executor", None), "batch_edges", False)
               for m in model.modules())
