"""The NAS-Bench-101 network is the benchmark's model builder: the dataset's parameter counts,
the builder's vertex widths, its truncation and projections, and a forward/backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from darts.spaces.nb101_net import (
    BN_EPSILON,
    BN_MOMENTUM,
    NB101Module,
    NB101Network,
    NB101SpecError,
    count_parameters,
    truncate,
    vertex_channels,
)

CONV3, CONV1, POOL = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"

# The first record of nasbench_only108.tfrecord (module hash 00005c142e6f48ac74fdcf73e3439874).
PUBLISHED_MATRIX = [[0, 1, 0, 0, 1, 1, 0],
                    [0, 0, 1, 0, 0, 0, 0],
                    [0, 0, 0, 1, 0, 0, 1],
                    [0, 0, 0, 0, 0, 1, 0],
                    [0, 0, 0, 0, 0, 1, 0],
                    [0, 0, 0, 0, 0, 0, 1],
                    [0, 0, 0, 0, 0, 0, 0]]
PUBLISHED_OPS = ["input", CONV3, POOL, CONV3, CONV3, CONV1, "output"]
# nasbench's `trainable_parameters` of hash 00005c142e6f48ac74fdcf73e3439874.
PUBLISHED_PARAMETERS = 8_555_530

INPUT_TO_OUTPUT = ([[0, 1], [0, 0]], ["input", "output"])
MAXPOOL_ONLY = ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", POOL, "output"])
# Three vertices feed the output, so 128 splits 43/43/42; vertex 1 (43) also feeds vertex 3
# (42), which drops vertex 1's last channel.
TRUNCATING = ([[0, 1, 1, 0, 0],
               [0, 0, 0, 1, 1],
               [0, 0, 0, 0, 1],
               [0, 0, 0, 0, 1],
               [0, 0, 0, 0, 0]], ["input", CONV3, POOL, CONV1, "output"])


def _maxpool_chain(k: int) -> tuple[list[list[int]], list[str]]:
    """input -> 1 -> 2 -> ... -> k, every vertex also feeding the output: k-way split widths
    and a single projection of the input."""
    n = k + 2
    matrix = [[0] * n for _ in range(n)]
    matrix[0][1] = 1
    for v in range(1, k + 1):
        matrix[v][n - 1] = 1
        if v < k:
            matrix[v][v + 1] = 1
    return matrix, ["input"] + [POOL] * k + ["output"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: these full-width networks are quick alone and slow when threads contend on
    a busy machine; the other test files get their thread count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_published_cell_has_the_datasets_trainable_parameters():
    net = NB101Network(PUBLISHED_MATRIX, PUBLISHED_OPS)
    assert count_parameters(net) == PUBLISHED_PARAMETERS


def _conv_bn(C_in: int, C_out: int, k: int) -> int:
    return k * k * C_in * C_out + 2 * C_out


def test_the_input_to_output_cell_counts_as_by_hand():
    stem = _conv_bn(3, 128, 3)
    # Each cell is a single 1x1 projection conv + BN from its input width to its output width.
    stacks = (_conv_bn(128, 128, 1) * 3
              + _conv_bn(128, 256, 1) + _conv_bn(256, 256, 1) * 2
              + _conv_bn(256, 512, 1) + _conv_bn(512, 512, 1) * 2)
    classifier = 512 * 10 + 10
    by_hand = stem + stacks + classifier
    assert by_hand == 882_570  # not the 227,274 of the dataset's smallest network
    assert count_parameters(NB101Network(*INPUT_TO_OUTPUT)) == by_hand


def test_a_chain_of_four_maxpools_has_227274_parameters():
    # The value believed to be the dataset's smallest `trainable_parameters` (not checked
    # against the dataset here): the cell with the least projection, 6 vertices and 8 edges.
    assert count_parameters(NB101Network(*_maxpool_chain(4))) == 227_274


def test_the_output_splits_evenly_with_the_remainder_on_the_first_vertices():
    matrix, _ = TRUNCATING
    assert vertex_channels(128, 128, matrix) == [128, 43, 43, 42, 128]
    assert vertex_channels(128, 256, matrix) == [128, 86, 85, 85, 256]
    assert vertex_channels(64, 129, _maxpool_chain(2)[0]) == [64, 65, 64, 129]


def test_a_vertex_feeding_only_vertices_takes_the_widest_of_them():
    # Vertices 2, 3, 4 feed the output (43, 43, 42); vertex 1 feeds only 3 and 4.
    matrix = [[0, 1, 1, 0, 0, 0],
              [0, 0, 0, 1, 1, 0],
              [0, 0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0, 0]]
    assert vertex_channels(32, 128, matrix) == [32, 43, 43, 43, 42, 128]
    assert vertex_channels(16, 128, PUBLISHED_MATRIX) == [16, 64, 64, 64, 64, 64, 128]


def test_the_input_to_output_cell_has_no_interior_widths():
    assert vertex_channels(128, 256, INPUT_TO_OUTPUT[0]) == [128, 256]


def test_truncate_keeps_the_first_channels():
    x = torch.randn(2, 5, 3, 3)
    assert truncate(x, 5) is x
    assert torch.equal(truncate(x, 4), x[:, :4])


@pytest.mark.parametrize("cell", [(PUBLISHED_MATRIX, PUBLISHED_OPS), INPUT_TO_OUTPUT,
                                  MAXPOOL_ONLY, TRUNCATING],
                         ids=["published", "input-output", "maxpool-only", "truncating"])
def test_the_network_gives_logits_and_gradients(cell):
    net = NB101Network(*cell)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 10)
    net.train()
    net(x).logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_cell_wires_projections_where_the_input_goes():
    cell = NB101Module(*TRUNCATING, C_in=16, C_out=128)
    assert sorted(cell.projections) == ["1", "2"]
    assert cell.output_projection is None
    assert cell(torch.randn(1, 16, 4, 4)).shape == (1, 128, 4, 4)
    only = NB101Module(*INPUT_TO_OUTPUT, C_in=16, C_out=32)
    assert isinstance(only.output_projection, nn.Module)
    published = NB101Module(PUBLISHED_MATRIX, PUBLISHED_OPS, C_in=16, C_out=32)
    assert sorted(published.projections) == ["1", "4", "5"]
    assert published.output_projection is None  # no input -> output edge


def test_an_odd_input_size_pools_as_tensorflow_same_padding():
    # 31 -> 16 -> 8, as TensorFlow's 2x2 stride-2 'same' max-pool rounds up.
    net = NB101Network(*MAXPOOL_ONLY, stem_channels=8).eval()
    sizes = []
    for m in net.cells:
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
    with torch.no_grad():
        assert net(torch.randn(2, 3, 31, 31)).shape == (2, 10)
    assert sizes == [16, 8]


def test_batchnorm_and_initialisation_follow_the_builder():
    net = NB101Network(*MAXPOOL_ONLY, stem_channels=8, num_classes=5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.affine and m.momentum == pytest.approx(BN_MOMENTUM) and m.eps == BN_EPSILON
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
            bound = 2 * (1 / m.weight[0].numel()) ** 0.5 / 0.87962566103423978
            assert m.weight.abs().max() <= bound
    assert BN_MOMENTUM == pytest.approx(0.003)
    assert torch.equal(net.classifier.bias, torch.zeros(5))


@pytest.mark.parametrize("matrix, ops, message", [
    ([[0, 1, 0], [0, 0, 1]], ["input", POOL, "output"], "square"),
    ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], ["input", POOL, "output"], "upper-triangular"),
    ([[1, 1], [0, 0]], ["input", "output"], "upper-triangular"),
    ([[0, 2], [0, 0]], ["input", "output"], "0 and 1"),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "conv5x5-bn-relu", "output"], "unknown"),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "output"], "needs 3 ops"),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [POOL, POOL, "output"], "must start"),
    ([[0, 1, 1], [0, 0, 0], [0, 0, 0]], ["input", POOL, "output"], "feeds the output"),
    ([[0, 0, 0], [0, 0, 1], [0, 0, 0]], ["input", POOL, "output"], "no input"),
    ([[0, 0], [0, 0]], ["input", "output"], "no input"),
])
def test_a_spec_the_builder_cannot_build_is_a_clear_value_error(matrix, ops, message):
    with pytest.raises(ValueError, match=message):
        NB101Network(matrix, ops)
    assert issubclass(NB101SpecError, ValueError)
