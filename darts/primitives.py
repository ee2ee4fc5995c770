"""The op vocabulary: the one place where an op name becomes a module.

`PRIMITIVES` is the DARTS search space's op list in the reference code's order, with
'none' first (decoders and alpha matrices index ops by this order). `OPS` maps every op name
that a genotype may use, including the extra ops of the published NASNet-A and AmoebaNet-A
cells, to a factory `(C, stride, affine) -> nn.Module` whose output has C channels and
1/stride the input resolution. Adding an op is one `register_op` call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

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
    return factory(C, stride, affine)


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
