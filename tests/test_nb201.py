"""NAS-Bench-201's space: architecture strings, decoding, the network and its supernet."""

import pytest
import torch

from darts.spaces.nb201 import (
    EDGES,
    EXAMPLE,
    NB201_OPS,
    NUM_ARCHS,
    ArchStringError,
    NB201Arch,
    NB201Network,
    NB201SearchNetwork,
    all_archs,
    decode,
)


def test_every_arch_string_of_the_space_round_trips():
    seen = set()
    for arch in all_archs():
        text = arch.to_string()
        assert NB201Arch.from_string(text) == arch
        seen.add(text)
    assert len(seen) == NUM_ARCHS == 15625


def test_the_string_is_the_benchmarks_layout():
    # node 1 <- 0; node 2 <- 0, 1; node 3 <- 0, 1, 2 (the benchmark's own example cell)
    arch = NB201Arch.from_string(EXAMPLE)
    assert arch.ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect",
                        "nor_conv_3x3", "skip_connect")
    assert arch.node_inputs(3) == [("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2)]
    assert EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "expected 3 '+'-separated"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "node 2 takes 2 input(s)"),
    ("|conv_9x9~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "unknown op 'conv_9x9'"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "must be 'op~0'"),
    ("nor_conv_3x3~0+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
     "between '|' marks"),
    ("", "expected 3"),
    (42, "expected a string"),
])
def test_a_malformed_string_is_one_clear_error(text, message):
    with pytest.raises(ArchStringError, match="^arch string") as info:
        NB201Arch.from_string(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_decoding_takes_each_edges_argmax_none_included():
    w = torch.zeros(6, 5)
    # hand-made: edge e prefers op (e mod 5); edge 5 prefers none over everything
    for e in range(6):
        w[e, e % 5] = 1.0
    w[5] = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.4])
    arch = decode(w)
    assert arch.ops == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3",
                        "none")
    with pytest.raises(ValueError, match=r"\(6, 5\)"):
        decode(torch.zeros(14, 8))


def test_parameter_counts_match_the_benchmarks_figures():
    # NAS-Bench-201's cost tables (`get_cost_info`, params in millions): on CIFAR-10 the cells
    # range from 0.073306 M (no convolution) to 1.531546 M (every edge nor_conv_3x3), on
    # CIFAR-100 from 0.079156 M to 1.537396 M (Dong & Yang 2020; NATS-Bench TSS, Dong et al. 2021).
    def count(arch, classes):
        return sum(p.numel() for p in NB201Network(arch, classes).parameters())

    largest = NB201Arch(("nor_conv_3x3",) * 6)
    smallest = NB201Arch(("skip_connect",) * 6)
    assert count(largest, 10) == 1_531_546 and count(smallest, 10) == 73_306
    assert count(largest, 100) == 1_537_396 and count(smallest, 100) == 79_156
    assert count(NB201Arch(("none",) * 6), 10) == 73_306  # none and pooling have no weights


@pytest.mark.parametrize("text", [
    EXAMPLE,
    "|none~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|",
])
def test_the_supernet_at_one_hot_weights_is_the_network_of_that_cell(text):
    arch = NB201Arch.from_string(text)
    torch.manual_seed(0)
    net = NB201Network(arch, num_classes=10, C=4, N=2).double()
    supernet = NB201SearchNetwork(num_classes=10, C=4, N=2).double()
    # The supernet takes the network's weights: shared layers by name; each edge's chosen op
    # from the cell (the network's BatchNorms are affine at their initial identity, the
    # supernet's are not affine).
    state = supernet.state_dict()
    for name, value in net.state_dict().items():
        if name in state:
            state[name] = value.clone()
    for k, block in enumerate(supernet.body):
        if not hasattr(block, "edges"):
            continue
        for e, op in enumerate(arch.ops):
            if op.startswith("nor_conv"):
                col = block.edges[e].columns.index(NB201_OPS.index(op))
                conv = f"body.{k}.edges.{e}.ops.{col}.1.weight"
                state[conv] = net.state_dict()[f"body.{k}.edges.{e}.1.weight"].clone()
    supernet.load_state_dict(state)
    one_hot = torch.zeros(6, 5, dtype=torch.float64)
    for e, op in enumerate(arch.ops):
        one_hot[e, NB201_OPS.index(op)] = 1.0
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(supernet(x, (one_hot,)), net(x))
    supernet.eval(), net.eval()
    torch.testing.assert_close(supernet(x, (one_hot,)), net(x))


def test_the_supernet_has_one_alpha_matrix_apart_from_its_weights():
    model = NB201SearchNetwork(C=4, N=1)
    assert [tuple(a.shape) for a in model.arch_parameters()] == [(6, 5)]
    ids = {id(p) for p in model.network_parameters()}
    assert id(model.alphas) not in ids
    assert len(ids) + 1 == len(list(model.parameters()))
    with torch.no_grad():
        model.alphas.zero_()
        model.alphas[:, NB201_OPS.index("skip_connect")] = 1.0
    assert model.arch() == NB201Arch(("skip_connect",) * 6)
