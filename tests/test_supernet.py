"""The supernet (DARTS Section 2.2) and the decoding rule (Section 2.4)."""

import math

import pytest
import torch
import torch.nn as nn

from darts.accel import accelerate
from darts.accel.cell import FastEdge
from darts.cell_topology import DARTS_SPACE, SearchSpace
from darts.genotype import decode_genotype, genotype_from_edges, load_genotype
from darts.network import NetworkCIFAR
from darts.ops import PoolBN
from darts.primitives import PRIMITIVES
from darts.supernet import MixedOp, SearchNetwork

# ------------------------------------------------------------------------------------------
# Structure


def test_supernet_has_the_reference_size_and_alphas():
    model = SearchNetwork(16, 10, 8)
    # The reference code logs "param size = 1.930618MB" for this network (alphas excluded).
    assert sum(p.numel() for p in model.network_parameters()) == 1_930_618
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, 8)
    assert [c.reduction for c in model.cells] == [False, False, True, False, False, True, False, False]
    # 1e-3 * N(0, 1): 224 draws, so the sample std is within 20% of 1e-3.
    alphas = torch.cat([a.detach().reshape(-1) for a in model.arch_parameters()])
    assert 0.8e-3 < alphas.std().item() < 1.2e-3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_weights_and_alphas_are_disjoint_groups_covering_all_parameters():
    model = SearchNetwork(4, 10, 5)
    weights = {id(p) for p in model.network_parameters()}
    alphas = {id(p) for p in model.arch_parameters()}
    assert not weights & alphas
    assert weights | alphas == {id(p) for p in model.parameters()}
    assert dict(model.named_parameters())["alphas_normal"] is model.alphas_normal


def test_mixed_op_is_the_softmax_weighted_sum_and_builds_no_none_op():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, PRIMITIVES)
    assert len(mixed.ops) == len(PRIMITIVES) - 1  # 'none' costs nothing
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    expected = sum(w[k] * mixed.ops[i](x) for i, k in enumerate(range(1, len(PRIMITIVES))))
    torch.testing.assert_close(mixed(x, w), expected)
    # The 'none' weight changes nothing but the softmax it took part in.
    w2 = w.clone()
    w2[0] = 0.9
    torch.testing.assert_close(mixed(x, w2), expected)


def test_pooling_ops_are_followed_by_non_affine_batchnorm():
    mixed = MixedOp(4, 2, PRIMITIVES)
    for k, op in zip(mixed.columns, mixed.ops, strict=True):
        if "pool" in PRIMITIVES[k]:
            assert isinstance(op, PoolBN)
            assert not op[1].affine
        else:
            assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in op.modules())


def test_search_space_edges():
    assert DARTS_SPACE.num_edges == 14
    assert DARTS_SPACE.edges()[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert DARTS_SPACE.edge_names()[4] == "0->1"
    with pytest.raises(ValueError, match="unknown op"):
        SearchSpace(("none", "conv_9x9"))


# ------------------------------------------------------------------------------------------
# One-hot mixing weights make the supernet the final network of that genotype.

GENOTYPE = genotype_from_edges(
    normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
            ("dil_conv_5x5", 1), ("sep_conv_3x3", 3), ("skip_connect", 2), ("dil_conv_3x3", 4)],
    reduce=[("skip_connect", 0), ("sep_conv_5x5", 1), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
            ("skip_connect", 2), ("dil_conv_5x5", 1), ("sep_conv_3x3", 4), ("skip_connect", 1)])


def _one_hot_weights(genotype, space):
    weights = []
    for reduction in (False, True):
        w = torch.zeros(space.num_edges, space.num_ops, dtype=torch.float64)
        edges, _ = genotype.cell(reduction)
        for k, (op, j) in enumerate(edges):
            w[space.edges().index((k // 2, j)), space.primitives.index(op)] = 1.0
        weights.append(w)
    return tuple(weights)


def _copy_final_into_supernet(final, supernet, genotype, space):
    """Each supernet op on a genotype edge takes the weights of the final network's op."""
    src = final.state_dict()
    dst = supernet.state_dict()
    for key in dst:
        parts = key.split(".")
        if parts[0] == "cells" and parts[2] == "edges":
            cell, e, o = int(parts[1]), int(parts[3]), int(parts[5])
            node, j = space.edges()[e]
            op = space.primitives[supernet.cells[cell].edges[e].columns[o]]
            edges, _ = genotype.cell(supernet.cells[cell].reduction)
            match = [k for k, (name, i) in enumerate(edges) if k // 2 == node and i == j and name == op]
            if match:
                dst[key] = src[".".join(["cells", parts[1], "ops", str(match[0]), *parts[6:]])]
        elif key not in ("alphas_normal", "alphas_reduce"):
            dst[key] = src[key]
    supernet.load_state_dict(dst)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_hot_supernet_computes_the_final_network(mode):
    torch.manual_seed(0)
    final = NetworkCIFAR(4, 10, 5, False, GENOTYPE).double()
    supernet = SearchNetwork(4, 10, 5).double()
    _copy_final_into_supernet(final, supernet, GENOTYPE, supernet.space)
    final.train(mode == "train")
    supernet.train(mode == "train")
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    expected, _ = final(x)
    got = supernet(x, _one_hot_weights(GENOTYPE, supernet.space))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Decoding the one-hot weights gives the genotype back (edges of a node may be reordered).
    decoded = decode_genotype(*_one_hot_weights(GENOTYPE, supernet.space))
    for reduction in (False, True):
        got_edges, want_edges = decoded.cell(reduction)[0], GENOTYPE.cell(reduction)[0]
        for i in range(4):
            assert sorted(got_edges[2 * i:2 * i + 2]) == sorted(want_edges[2 * i:2 * i + 2])


def test_one_hot_on_a_wrong_op_differs_from_the_final_network():
    # The equivalence above is not vacuous: moving one edge's choice changes the output.
    torch.manual_seed(0)
    final = NetworkCIFAR(4, 10, 5, False, GENOTYPE).double()
    supernet = SearchNetwork(4, 10, 5).double()
    _copy_final_into_supernet(final, supernet, GENOTYPE, supernet.space)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    normal, reduce = _one_hot_weights(GENOTYPE, supernet.space)
    normal[0] = torch.zeros(8, dtype=torch.float64)
    normal[0, PRIMITIVES.index("dil_conv_5x5")] = 1.0
    assert not torch.allclose(supernet(x, (normal, reduce)), final(x)[0])


# ------------------------------------------------------------------------------------------
# Decoding (the reference's _parse)


def _uniform_rows(n_edges=14, n_ops=8, value=None):
    value = 1.0 / n_ops if value is None else value
    return [[value] * n_ops for _ in range(n_edges)]


def test_decode_picks_two_strongest_edges_and_their_best_non_none_op():
    w = _uniform_rows(value=0.0)
    col = {name: k for k, name in enumerate(PRIMITIVES)}
    # Node 0 (edges 0, 1): both edges, the stronger first.
    w[0][col["sep_conv_3x3"]] = 0.3
    w[1][col["skip_connect"]] = 0.6
    # Node 1 (edges 2, 3, 4): edge 2 is dominated by 'none' but its best real op still
    # beats edge 3's; edge 4 is strongest.
    w[2][col["none"]], w[2][col["max_pool_3x3"]] = 0.9, 0.25
    w[3][col["avg_pool_3x3"]] = 0.2
    w[4][col["dil_conv_5x5"]] = 0.7
    # Node 2 (edges 5-8): ties between edges 5 and 7 go to the lower index; on edge 5 the
    # tie between two ops goes to the earlier op in PRIMITIVES.
    w[5][col["sep_conv_5x5"]] = w[5][col["dil_conv_3x3"]] = 0.4
    w[7][col["sep_conv_3x3"]] = 0.4
    w[6][col["none"]] = 0.99
    # Node 3 (edges 9-13): only 'none' anywhere on edges 9-12, a real op on edge 13.
    for e in range(9, 13):
        w[e][col["none"]] = 1.0
    w[13][col["avg_pool_3x3"]] = 0.5
    g = decode_genotype(w, w)
    assert list(g.normal) == [
        ("skip_connect", 1), ("sep_conv_3x3", 0),
        ("dil_conv_5x5", 2), ("max_pool_3x3", 0),
        ("sep_conv_5x5", 0), ("sep_conv_3x3", 2),
        ("avg_pool_3x3", 4), ("max_pool_3x3", 0),  # all-zero real ops: ties -> first edge, first op
    ]
    assert list(g.normal_concat) == [2, 3, 4, 5]
    assert all(op != "none" for op, _ in g.normal + g.reduce)


def test_decode_never_returns_none_even_when_none_dominates_everything():
    torch.manual_seed(0)
    for _ in range(20):
        alphas = torch.randn(14, 8)
        alphas[:, 0] += 10.0  # 'none' holds ~all the softmax mass on every edge
        w = torch.softmax(alphas, -1)
        g = decode_genotype(w, w)
        assert all(op != "none" for op, _ in g.normal + g.reduce)
        # Still the argmax among the real ops on each kept edge.
        for k, (op, j) in enumerate(g.normal):
            row = w[DARTS_SPACE.edges().index((k // 2, j))]
            assert row[PRIMITIVES.index(op)] == row[1:].max()


def test_decode_ranks_edges_on_softmax_weights_not_raw_alphas():
    # Edge 0 has the larger raw alpha but, its row being flatter after the softmax of a row
    # with another large entry, the smaller softmax weight: the softmax decides.
    a = torch.zeros(14, 8)
    a[0, 4], a[0, 5] = 3.0, 3.0   # softmax ~0.45 each
    a[1, 4] = 2.9                 # softmax ~0.73
    a[2:, 4] = 1.0
    g = decode_genotype(torch.softmax(a, -1), torch.softmax(a, -1))
    assert g.normal[0] == ("sep_conv_3x3", 1)


def test_decoded_genotype_of_published_alphas_layout_roundtrips_through_json(tmp_path):
    from darts.genotype import save_genotype

    torch.manual_seed(1)
    model = SearchNetwork(4, 10, 3)
    g = model.genotype(name="x")
    save_genotype(g, tmp_path / "g.json")
    assert load_genotype(tmp_path / "g.json") == g
    # A decoded genotype builds a final network.
    net = NetworkCIFAR(4, 10, 3, False, g)
    assert net(torch.randn(1, 3, 16, 16))[0].shape == (1, 10)


def test_decode_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="14 x 8"):
        decode_genotype(_uniform_rows(13), _uniform_rows())


def test_entropy_starts_near_log_num_ops():
    from darts.search import arch_statistics

    model = SearchNetwork(4, 10, 3)
    stats = arch_statistics(model, model.genotype())
    assert abs(stats["arch/entropy"] - math.log(8)) < 1e-4
    assert stats["arch/skip_connect_normal"] == sum(op == "skip_connect" for op, _ in model.genotype().normal)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_mixed_op_shared_relu_and_scaled_batchnorm_are_the_plain_weighted_sum(stride, momentum):
    # FastEdge.mix shares relu(x) between the conv ops and folds each op's weight into its
    # last BatchNorm; against sum_k w_k * op_k(x) with every op called whole, in float64:
    # outputs, gradients (input and mixing weights) and running statistics, train and eval.
    import copy
    torch.manual_seed(0)
    edge = MixedOp(4, stride, PRIMITIVES).double()
    for m in edge.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    ref = copy.deepcopy(edge)
    ours = FastEdge(accelerate(edge))
    assert sum(plan is not None and plan[0] for plan in ours.plans) == 4  # the four conv ops
    assert sum(plan is not None and plan[2] is not None for plan in ours.plans) == 6
    for training in (True, True, False):
        edge.train(training)
        ref.train(training)
        x = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
        w = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0).requires_grad_()
        got = ours(x, w)
        want = sum(w[k] * op(x) for k, op in zip(ref.columns, ref.ops, strict=True))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(want, (x, w), g),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for (name, a), b in zip(edge.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("stride", [1, 2])
def test_edges_leaving_one_state_share_relu_and_pooling_and_keep_their_own_statistics(stride):
    # The edges that leave one state pass one `shared` dict: relu(x) and, in training, each
    # pooling op's batch-normalised output are computed by the first edge only. Against each
    # edge's ops called whole, in float64: outputs, gradients (input, every edge's mixing
    # weights), every edge's running statistics (after two training steps) and eval mode.
    import copy
    torch.manual_seed(0)
    ours = nn.ModuleList(MixedOp(4, stride, PRIMITIVES) for _ in range(3)).double()
    ref = copy.deepcopy(ours)
    fast = [FastEdge(edge) for edge in accelerate(ours)]
    pools = [op[0] for edge in ours for op in edge.ops if isinstance(op, PoolBN)]
    calls = []
    for pool in pools:
        pool.register_forward_hook(lambda m, i, o: calls.append(m))
    for training in (True, True, False):
        ours.train(training)
        ref.train(training)
        calls.clear()
        x = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
        ws = [torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0).requires_grad_()
              for _ in ours]
        shared = {}
        got = torch.stack([edge(x, w, shared) for edge, w in zip(fast, ws, strict=True)])
        want = torch.stack([sum(w[k] * op(x) for k, op in zip(edge.columns, edge.ops, strict=True))
                            for edge, w in zip(ref, ws, strict=True)])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert len(calls) == (2 if training else 6)  # max and avg pooling, once per state
        g = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, (x, *ws), g),
                        torch.autograd.grad(want, (x, *ws), g), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("reduction", [False, True])
def test_a_cell_is_the_sum_of_its_edges_mixed_ops(reduction):
    # The cell runs state by state, the terms that all edges leaving a state share added for
    # them at once: against node_j = sum over its edges of sum_o w_o * o(s_i), every op
    # called whole, in float64. Outputs, gradients (inputs, mixing weights, op weights) and
    # every running statistic, in training and in eval mode.
    import copy

    from darts.supernet import SearchCell
    torch.manual_seed(0)
    space = SearchSpace(steps=3, multiplier=3)
    ours = SearchCell(space, 6, 6, 4, reduction, reduction_prev=False).double()
    ref = copy.deepcopy(ours)
    accelerate(ours)
    for training in (True, True, False):
        ours.train(training)
        ref.train(training)
        s0, s1 = (torch.randn(3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
                  for _ in range(2))
        w = torch.softmax(torch.randn(space.num_edges, space.num_ops, dtype=torch.float64),
                          -1).requires_grad_()
        got = ours(s0, s1, w)
        states = [ref.preprocess0(s0), ref.preprocess1(s1)]
        for j in range(space.steps):
            states.append(sum(
                w[e, k] * op(states[i])
                for e, (node, i) in enumerate(space.edges()) if node == j
                for k, op in zip(ref.edges[e].columns, ref.edges[e].ops, strict=True)))
        want = torch.cat(states[-space.multiplier:], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, (s0, s1, w, *ours.parameters()), g),
                        torch.autograd.grad(want, (s0, s1, w, *ref.parameters()), g),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_partial_channel_edges_share_their_first_channels_work():
    # PC-DARTS edges leaving one state all take its first C/K channels: sharing there gives
    # what each edge computes alone (the unshared MixedOp, tested in test_partial_channels),
    # in float64, with every edge's statistics.
    import copy
    torch.manual_seed(0)
    ours = nn.ModuleList(MixedOp(8, 2, PRIMITIVES, partial_channels=2) for _ in range(3)).double()
    ref = copy.deepcopy(ours)
    fast = [FastEdge(edge) for edge in accelerate(ours)]
    x = torch.randn(3, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    ws = [torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0) for _ in ours]
    shared = {}
    got = torch.stack([edge(x, w, shared) for edge, w in zip(fast, ws, strict=True)])
    want = torch.stack([edge(x, w) for edge, w in zip(ref, ws, strict=True)])
    assert "relu" in shared
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_scaled_batch_norm_with_affine_parameters():
    from darts.accel.cell import _scaled_batch_norm
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).double()
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    scale = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    got = _scaled_batch_norm(bn, x, scale)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(got, 0.3 * by_hand.detach())
    (d_scale,) = torch.autograd.grad(got.sum(), scale)
    torch.testing.assert_close(d_scale, by_hand.sum().detach())
    assert bn.num_batches_tracked.item() == 1
