"""The op vocabulary: shapes, strides, the reference definitions, drop-path."""

import pytest
import torch
import torch.nn as nn

from darts.ops import FactorizedReduce, Identity, SepConv, Zero, drop_path
from darts.primitives import OPS, PRIMITIVES, build_op, register_op


def test_primitives_are_the_reference_order_with_none_first():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert {"sep_conv_7x7", "conv_7x1_1x7"} <= set(OPS)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_every_op_keeps_channels_and_divides_resolution_by_stride(name, stride, size):
    op = build_op(name, 6, stride, affine=True)
    y = op(torch.randn(2, 6, size, size))
    expected = -(-size // stride)  # ceil: 'same' padding at stride 2
    assert y.shape == (2, 6, expected, expected)


def test_separable_conv_is_two_stacked_depthwise_pointwise_blocks():
    op = SepConv(4, 4, 3, 2, 1)
    convs = [m for m in op if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [4, 1, 4, 1]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in op) == 2
    assert isinstance(op[0], nn.ReLU)


def test_dilated_conv_has_dilation_two():
    convs = [m for m in build_op("dil_conv_5x5", 4, 1, True) if isinstance(m, nn.Conv2d)]
    assert convs[0].dilation == (2, 2) and convs[0].padding == (4, 4)


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    assert isinstance(build_op("skip_connect", 4, 1, True), Identity)
    assert isinstance(build_op("skip_connect", 4, 2, True), FactorizedReduce)
    assert isinstance(build_op("none", 4, 2, True), Zero)


def test_factorized_reduce_matches_hand_computation_on_even_input():
    fr = FactorizedReduce(1, 2, affine=False).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = fr(x)
    # eval BN with fresh running stats (mean 0, var 1) only scales by 1/sqrt(1 + eps).
    scale = 1 / (1 + fr.bn.eps) ** 0.5
    assert torch.allclose(y[0, 0], x[0, 0, ::2, ::2] * scale)
    assert torch.allclose(y[0, 1], x[0, 0, 1::2, 1::2] * scale)


def test_register_op_rejects_duplicates_and_unknown_ops_list_known_ones():
    with pytest.raises(ValueError):
        register_op("sep_conv_3x3", lambda C, s, a: Identity())
    with pytest.raises(KeyError, match="known ops: .*sep_conv_3x3"):
        build_op("conv_9x9", 4, 1, True)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2, 2)
    y = drop_path(x, 0.3)
    per_sample = y.view(20000, -1)
    # each sample is either all zero or all 1/keep_prob
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1))
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03
    assert drop_path(x, 0.0) is x
