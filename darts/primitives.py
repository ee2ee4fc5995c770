"""The op vocabulary: the one place where an op name becomes a module.

`PRIMITIVES` is the DARTS search space's op list in the reference code's order, with
'none' first (decoders and alpha matrices index ops by this order). `OPS` maps every op name
that a genotype may use, including the extra ops of the published NASNet-A and AmoebaNet-A
cells, to a factory `(C, stride, affine) -> nn.Module` whose output has C channels and
1/stride the input resolution. Adding an op is one `register_op` call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from darts.errors import UserError
from darts.ops import (
    Conv7x1_1x7,
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    Zero,
)

OpFactory = Callable[[int, int, bool], nn.Module]

# The DARTS search space (Liu et al. 2019, Section 3.1.1), in the reference code's order.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

OPS: dict[str, OpFactory] = {}


def register_op(name: str, factory: OpFactory, *, overwrite: bool = False) -> None:
    """Adds an op to the vocabulary; the supernet, networks and decoder all see it."""
    if name in OPS and not overwrite:
        raise ValueError(f"op {name!r} is already registered")
    OPS[name] = factory


def build_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None
    op = factory(C, stride, affine)
    key = (name, factory, C, stride)
    if key not in _SHAPES_CHECKED:
        _check_shape(name, op, C, stride)
        _SHAPES_CHECKED.add(key)
    return op


_SHAPES_CHECKED: set[tuple] = set()
_PROBE = 8  # the probe's height and width: even, so that stride 2 halves it exactly


def _check_shape(name: str, op: nn.Module, C: int, stride: int) -> None:
    """Runs `op` once on a small input (in eval mode, without gradients: its weights and
    BatchNorm statistics are unchanged) and refuses an op whose output is not C channels at
    1/stride the input's size, naming it: cells sum their ops' outputs, so such an op would
    fail later, deep inside a forward, with a message that does not name it."""
    x = torch.zeros(2, C, _PROBE, _PROBE)
    training = op.training
    try:
        op.eval()
        with torch.no_grad():
            y = op(x)
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
    except Exception as e:  # noqa: BLE001 (any failure of a user's op is reported the same way)
        shape = f"an error ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    finally:
        op.train(training)
    want = (2, C, _PROBE // stride, _PROBE // stride)
    if shape != want:
        raise UserError(f"op {name!r} turns a {(2, C, _PROBE, _PROBE)} input at stride {stride} "
                        f"into {shape}; an op must keep the {C} channels it is built with and "
                        f"divide height and width by its stride, {want} (check its "
                        f"factory(C, stride, affine))")


def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


register_op("none", lambda C, stride, affine: Zero(stride))
register_op("max_pool_3x3", lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
register_op("avg_pool_3x3", lambda C, stride, affine: nn.AvgPool2d(
    3, stride=stride, padding=1, count_include_pad=False))
register_op("skip_connect", _skip_connect)
register_op("sep_conv_3x3", lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine))
register_op("sep_conv_5x5", lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine))
register_op("sep_conv_7x7", lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine))
register_op("dil_conv_3x3", lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine))
register_op("dil_conv_5x5", lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine))
register_op("conv_7x1_1x7", lambda C, stride, affine: Conv7x1_1x7(C, C, stride, affine))
