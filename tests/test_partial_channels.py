"""The supernet's memory options: PC-DARTS partial channels (Xu et al. 2020) and per-cell
activation checkpointing.

Small networks (4-8 channels, 3-5 cells, 8x8 or 16x16 inputs) keep each test to seconds.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import DARTS_SPACE
from darts.genotype import decode_genotype, genotype_from_dict
from darts.primitives import PRIMITIVES
from darts.supernet import (
    MixedOp,
    SearchNetwork,
    channel_shuffle,
    normalized_edge_weights,
    saved_activation_bytes,
)


def _batch(n=4, size=16, classes=10, dtype=torch.float32):
    return torch.randn(n, 3, size, size, dtype=dtype), torch.randint(0, classes, (n,))


# ------------------------------------------------------------------------------------------
# Partial channel connections


def test_default_network_is_unchanged_darts():
    model = SearchNetwork()
    assert sum(p.numel() for p in model.network_parameters()) == 1_930_618
    assert model.arch_parameters() == [model.alphas_normal, model.alphas_reduce]
    assert len(model.mixing_weights()) == 2
    assert not hasattr(model, "betas_normal")


def test_channel_shuffle_interleaves_the_groups():
    # 8 channels, 4 groups of 2: group g's channel c moves to position c * 4 + g.
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 3)
    out = channel_shuffle(x, 4)
    assert out[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(out[1], out[0])
    assert channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 2).flatten().tolist() == [
        0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_shuffled_cat_is_the_shuffle_of_the_concatenation_in_one_layout(fmt):
    # What a PC-DARTS node is made of: channel_shuffle(cat([mixed, bypass])) by its
    # definition (index arithmetic), the result and both gradients in mixed's memory format;
    # first and second derivatives against finite differences.
    from darts.accel.cell import _shuffled_cat
    torch.manual_seed(0)
    k, c = 4, 3
    mixed = torch.randn(2, c, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    bypass = torch.randn(2, (k - 1) * c, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    mixed.requires_grad_()
    bypass.requires_grad_()
    out = _shuffled_cat(mixed, bypass, k)
    cat = torch.cat([mixed, bypass], 1)
    for ch in range(k * c):  # output channel c' * k + g is input channel g * c + c'
        torch.testing.assert_close(out[:, ch], cat[:, (ch % k) * c + ch // k], rtol=0, atol=0)
    torch.testing.assert_close(out, channel_shuffle(cat, k), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=fmt)
    assert channel_shuffle(cat.contiguous(memory_format=fmt), k).is_contiguous(memory_format=fmt)
    g = torch.randn_like(out)
    gm, gb = torch.autograd.grad(out, (mixed, bypass), g)
    assert gm.is_contiguous(memory_format=fmt) and gb.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(torch.cat([gm, gb], 1), channel_shuffle(g, c), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a, b: _shuffled_cat(a, b, k), (mixed, bypass))
    assert torch.autograd.gradgradcheck(lambda a, b: _shuffled_cat(a, b, k) ** 2, (mixed, bypass))


def test_edge_weights_are_a_softmax_over_each_nodes_incoming_edges():
    betas = torch.randn(14)
    w = normalized_edge_weights(betas, 4)
    start = 0
    for i in range(4):
        torch.testing.assert_close(w[start:start + i + 2], F.softmax(betas[start:start + i + 2], 0))
        start += i + 2


def test_k4_network_shapes_gradients_and_arch_parameters():
    torch.manual_seed(0)
    model = SearchNetwork(8, 10, 5, partial_channels=4)
    arch = model.arch_parameters()
    assert arch == [model.alphas_normal, model.alphas_reduce, model.betas_normal, model.betas_reduce]
    assert model.betas_normal.shape == model.betas_reduce.shape == (14,)
    assert 0 < model.betas_normal.abs().max() < 1e-2  # 1e-3 * N(0, 1)
    weights = {id(p) for p in model.network_parameters()}
    assert not weights & {id(p) for p in arch}
    assert weights | {id(p) for p in arch} == {id(p) for p in model.parameters()}
    # The ops are built with C / 4 channels: a normal cell's edges get 2 of 8, a reduction
    # cell's 4 of 16.
    sep = model.cells[0].edges[0].ops[PRIMITIVES.index("sep_conv_3x3") - 1]
    assert sep[1].in_channels == 2
    sep = model.cells[1].edges[0].ops[PRIMITIVES.index("sep_conv_3x3") - 1]
    assert model.cells[1].reduction and sep[1].in_channels == 4

    mixing = model.mixing_weights()
    assert len(mixing) == 4 and mixing[2].shape == mixing[3].shape == (14,)
    x, y = _batch()
    out = model(x)
    assert out.shape == (4, 10)
    F.cross_entropy(out, y).backward()
    for a in arch:
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.network_parameters())
    # The weight step's call: detached mixing weights, no arch gradient.
    model.zero_grad()
    F.cross_entropy(model(x, model.mixing_weights(detach=True)), y).backward()
    assert all(a.grad is None for a in arch)
    with pytest.raises(ValueError, match="4 mixing weights"):
        model(x, mixing[:2])


def test_partial_channels_must_divide_the_channels():
    with pytest.raises(ValueError, match="partial_channels=3"):
        SearchNetwork(8, 10, 5, partial_channels=3)
    with pytest.raises(ValueError, match="partial_channels=0"):
        SearchNetwork(8, 10, 5, partial_channels=0)


@pytest.mark.parametrize("stride", [1, 2])
def test_only_the_first_quarter_of_the_channels_reaches_the_ops(stride):
    torch.manual_seed(0)
    mixed = MixedOp(8, stride, PRIMITIVES, partial_channels=4)
    seen = []
    for op in mixed.ops:
        op.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    x = torch.randn(2, 8, 8, 8)
    out = mixed(x, w)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    assert all(torch.equal(s, x[:, :2]) for s in seen)
    # The bypassed channels 2..7 land, unchanged (max-pooled on a stride-2 edge), at the
    # shuffled positions 1, 2, 3, 5, 6, 7; the ops' output at 0 and 4.
    bypass = x[:, 2:] if stride == 1 else F.max_pool2d(x[:, 2:], 2, 2)
    torch.testing.assert_close(out[:, [1, 2, 3, 5, 6, 7]], bypass[:, [0, 2, 4, 1, 3, 5]])
    torch.testing.assert_close(out[:, [0, 4]], sum(w[k] * op(x[:, :2]) for k, op in
                                                   zip(mixed.columns, mixed.ops, strict=True)))
    # Perturbing a bypassed channel changes nothing the ops see.
    seen.clear()
    x2 = x.clone()
    x2[:, 5] += 1.0
    out2 = mixed(x2, w)
    assert all(torch.equal(s, x[:, :2]) for s in seen)
    torch.testing.assert_close(out2[:, [0, 4]], out[:, [0, 4]])


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("k", [2, 4])
def test_a_partial_channel_cell_is_the_beta_weighted_sum_of_its_edges(reduction, k):
    # The cell runs PC-DARTS state by state (each node shuffled once; the ops of the edges
    # leaving a state share one dense copy of its first C/K channels): against PC-DARTS's
    # definition, edge by edge with every op called whole, in float64:
    # node_j = sum_e beta_e * shuffle(cat(sum_o w[e, o] * o(s_i[:, :C/K]), bypass(s_i[:, C/K:])))
    # with bypass a 2x2 max pool on a stride-2 edge. Outputs, gradients (inputs, alphas,
    # betas, op weights) and every running statistic, in training and in eval mode.
    from darts.cell_topology import SearchSpace
    from darts.supernet import SearchCell
    torch.manual_seed(0)
    space = SearchSpace(steps=3, multiplier=3)
    ours = SearchCell(space, 6, 6, 8, reduction, reduction_prev=False,
                      partial_channels=k).double()
    ref = copy.deepcopy(ours)
    accelerate(ours)
    c = 8 // k
    for training in (True, True, False):
        ours.train(training)
        ref.train(training)
        s0, s1 = (torch.randn(3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
                  for _ in range(2))
        w = torch.softmax(torch.randn(space.num_edges, space.num_ops, dtype=torch.float64),
                          -1).requires_grad_()
        beta = normalized_edge_weights(torch.randn(space.num_edges, dtype=torch.float64),
                                       space.steps).detach().requires_grad_()
        got = ours(s0, s1, w, beta)
        states = [ref.preprocess0(s0), ref.preprocess1(s1)]
        for j in range(space.steps):
            node = 0
            for e, (target, i) in enumerate(space.edges()):
                if target != j:
                    continue
                edge, x = ref.edges[e], states[i]
                mixed = sum(w[e, o] * op(x[:, :c])
                            for o, op in zip(edge.columns, edge.ops, strict=True))
                stride2 = reduction and i < 2
                bypass = F.max_pool2d(x[:, c:], 2, 2) if stride2 else x[:, c:]
                node = node + beta[e] * channel_shuffle(torch.cat([mixed, bypass], 1), k)
            states.append(node)
        want = torch.cat(states[-space.multiplier:], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, (s0, s1, w, beta, *ours.parameters()), g),
                        torch.autograd.grad(want, (s0, s1, w, beta, *ref.parameters()), g),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


# ------------------------------------------------------------------------------------------
# Decoding with edge normalisation (PC-DARTS's _parse)


def test_edge_weights_change_which_edges_are_kept():
    col = {name: k for k, name in enumerate(PRIMITIVES)}
    w = [[0.0] * 8 for _ in range(14)]
    # Node 0 (edges 0, 1) keeps both. Node 1 (edges 2, 3, 4): ops alone rank 2 > 3 > 4.
    w[0][col["sep_conv_3x3"]] = 0.5
    w[1][col["skip_connect"]] = 0.4
    w[2][col["sep_conv_5x5"]] = 0.6
    w[3][col["dil_conv_3x3"]] = 0.5
    w[4][col["max_pool_3x3"]] = 0.4
    # Node 2 (edges 5-8): ops alone 5 > 6 > 7 > 8; node 3 (edges 9-13): 9 > 10 > ... > 13.
    for e, op in zip(range(5, 9), ("avg_pool_3x3", "sep_conv_3x3", "dil_conv_5x5", "skip_connect"),
                     strict=True):
        w[e][col[op]] = 0.9 - 0.1 * (e - 5)
    for e in range(9, 14):
        w[e][col["sep_conv_3x3"]] = 0.9 - 0.1 * (e - 9)
        w[e][col["none"]] = 0.95  # 'none' never counts
    plain = decode_genotype(w, w)
    assert list(plain.normal) == [
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("sep_conv_5x5", 0), ("dil_conv_3x3", 1),
        ("avg_pool_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
    ]
    # Edge weights (softmax over each node's edges): node 1 favours edges 4 and 3, node 2
    # edges 8 and 7, node 3 edge 13 then 11; node 0 reorders its two edges.
    edges = [0.4, 0.6,
             0.1, 0.4, 0.5,          # strengths 0.06, 0.20, 0.20 -> tie: edge 3 (lower) first
             0.1, 0.1, 0.3, 0.5,     # 0.09, 0.08, 0.21, 0.30
             0.1, 0.1, 0.3, 0.1, 0.4]  # 0.09, 0.08, 0.21, 0.06, 0.20
    g = decode_genotype(w, w, edge_normal=edges, edge_reduce=None)
    assert list(g.normal) == [
        ("skip_connect", 1), ("sep_conv_3x3", 0),   # 0.24 > 0.20
        ("dil_conv_3x3", 1), ("max_pool_3x3", 2),
        ("skip_connect", 3), ("dil_conv_5x5", 2),
        ("sep_conv_3x3", 2), ("sep_conv_3x3", 4),
    ]
    assert g.reduce == plain.reduce  # no reduce edge weights: plain DARTS ranking
    # Through the space, as SearchNetwork.genotype calls it.
    assert DARTS_SPACE.decode(w, w, edge_normal=edges) == g
    with pytest.raises(ValueError, match="14 edge weights"):
        decode_genotype(w, w, edge_normal=edges[:-1])


def test_genotype_of_a_k4_network_is_valid_and_uses_the_betas():
    torch.manual_seed(0)
    model = SearchNetwork(8, 10, 5, partial_channels=4)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 1)
    g = model.genotype(name="pc")
    assert genotype_from_dict(g.to_dict()) == g  # the validator: no 'none', inputs < node
    for cell in (g.normal, g.reduce):
        assert len(cell) == 8 and all(op != "none" for op, _ in cell)
        assert all(j < k // 2 + 2 for k, (_, j) in enumerate(cell))
        for k in range(4):
            assert cell[2 * k][1] != cell[2 * k + 1][1]
    w = model.mixing_weights()
    assert g == decode_genotype(*w[:2], edge_normal=w[2], edge_reduce=w[3])
    # Betas that strongly favour c_{k-2} on every node of the normal cell show in the decode.
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.betas_normal.zero_()
        for e, (_, j) in enumerate(DARTS_SPACE.edges()):
            model.betas_normal[e] = 5.0 if j == 0 else (2.0 if j == 2 else 0.0)
    assert [j for _, j in model.genotype().normal] == [0, 1, 0, 2, 0, 2, 0, 2]


# ------------------------------------------------------------------------------------------
# Memory


def _saved_bytes(model, x, y):
    model.train()
    return saved_activation_bytes(lambda: F.cross_entropy(model(x), y))


def test_partial_channels_and_checkpointing_save_fewer_activations():
    torch.manual_seed(0)
    x, y = _batch(8, 16)
    model = accelerate(SearchNetwork(8, 10, 5))
    full = _saved_bytes(model, x, y)
    partial = _saved_bytes(accelerate(SearchNetwork(8, 10, 5, partial_channels=4)), x, y)
    checkpointed = _saved_bytes(accelerate(SearchNetwork(8, 10, 5, checkpoint_cells=True)), x, y)
    assert partial < 0.6 * full
    assert checkpointed < 0.1 * full
    with torch.no_grad():  # nothing is saved without grad
        assert saved_activation_bytes(lambda: model(x).sum()) == 0


def test_saved_activation_bytes_counts_each_storage_once_and_skips_parameters():
    w = nn.Parameter(torch.randn(64, 64))
    x = torch.randn(16, 64)

    def fn():
        h = x @ w           # saves x (and w, a parameter: not counted)
        return (h * h).sum() + h.tanh().sum()   # h saved twice: counted once; tanh output

    assert saved_activation_bytes(fn) == 3 * 16 * 64 * 4


# ------------------------------------------------------------------------------------------
# Checkpointing: same numbers, less memory


def _pair(K=1, **kw):
    torch.manual_seed(0)
    plain = accelerate(SearchNetwork(4, 5, 3, partial_channels=K, **kw).double())
    with torch.no_grad():  # alphas away from uniform, so every op matters
        for a in plain.arch_parameters():
            a.normal_(0, 0.5)
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_cells = True
    return plain, checkpointed


@pytest.mark.parametrize("K", [1, 4])
def test_checkpointing_gives_the_same_loss_gradients_and_running_stats(K):
    plain, checkpointed = _pair(K)
    x, y = _batch(4, 8, 5, torch.float64)
    losses = []
    for model in (plain, checkpointed):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    # BatchNorm running statistics are updated once, not again by the recomputation.
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12, msg=name)
    assert checkpointed.cells[0].preprocess1[2].num_batches_tracked.item() == 1
    # In eval mode the two are the same network.
    plain.eval()
    checkpointed.eval()
    torch.testing.assert_close(plain(x), checkpointed(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order,hessian", [(1, "fd"), (2, "fd"), (2, "exact")])
def test_checkpointing_inside_architect_steps_gives_the_same_alphas(order, hessian):
    # The second-order steps call the network through functional_call at w', w + eps v and
    # w - eps v; the exact Hessian backpropagates twice through the checkpointed cells.
    train, val = _batch(4, 8, 5, torch.float64), _batch(4, 8, 5, torch.float64)
    results = []
    for model in _pair(K=4):
        optimizer = torch.optim.SGD(model.network_parameters(), 0.1, momentum=0.9)
        F.cross_entropy(model(train[0]), train[1]).backward()  # a momentum buffer
        optimizer.step()
        architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=order, hessian=hessian)
        architect.step(train, val, 0.1)
        results.append(([a.detach().clone() for a in model.arch_parameters()],
                        [b.clone() for b in model.buffers()]))
    (alphas, buffers), (alphas_ck, buffers_ck) = results
    for a, b in zip(alphas, alphas_ck, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(buffers, buffers_ck, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checkpointed_recomputation_uses_the_functional_call_weights():
    # Regression guard: the recomputation runs after functional_call has restored the
    # module's own parameters, so it must be given the substituted ones.
    from torch.func import functional_call

    plain, checkpointed = _pair()
    x, y = _batch(4, 8, 5, torch.float64)
    grads = []
    for model in (plain, checkpointed):
        names = [n for n, _ in model.named_network_parameters()]
        shifted = [(p + 0.1).detach().requires_grad_() for p in model.network_parameters()]
        loss = F.cross_entropy(functional_call(model, dict(zip(names, shifted, strict=True)), (x,)), y)
        grads.append(torch.autograd.grad(loss, shifted + model.arch_parameters()))
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


# -- NAS-Bench-201's supernet with partial channels ------------------------------------------
def _shuffle_by_hand(x, k):
    """ShuffleNet's shuffle written out: output channel c * k + g is input channel g * (C/k) + c."""
    C = x.shape[1]
    out = torch.empty_like(x)
    for g in range(k):
        for c in range(C // k):
            out[:, c * k + g] = x[:, g * (C // k) + c]
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_an_nb201_partial_channel_edge_mixes_the_first_channels_and_shuffles_in_the_rest(k):
    from darts.spaces.nb201 import NB201MixedOp
    torch.manual_seed(0)
    edge = NB201MixedOp(8, partial_channels=k).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    w = torch.softmax(torch.randn(5, dtype=torch.float64), -1)
    part = 8 // k  # the ops see only x[:, :part]: columns 1..4 (none adds nothing)
    mixed = sum(w[c] * op(x[:, :part]) for c, op in zip(edge.columns, edge.ops, strict=True))
    expected = _shuffle_by_hand(torch.cat([mixed, x[:, part:]], 1), k)
    assert torch.allclose(edge(x, w), expected, atol=1e-12)
    assert all(m.in_channels == part for m in edge.modules() if isinstance(m, nn.Conv2d))


def test_an_nb201_partial_channel_cell_is_the_beta_weighted_sum_of_its_edges():
    from darts.spaces.nb201 import EDGES, NB201SearchNetwork
    torch.manual_seed(0)
    net = NB201SearchNetwork(num_classes=3, C=4, N=1, partial_channels=2).double().eval()
    with torch.no_grad():
        net.betas.copy_(torch.tensor([0.3, 1.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64))
    w, e = net.mixing_weights()
    b = net.betas.detach()  # node 1 has edge 0; node 2 edges 1, 2; node 3 edges 3, 4, 5
    expected = torch.cat([torch.ones(1, dtype=torch.float64), torch.softmax(b[1:3], 0),
                          torch.softmax(b[3:], 0)])
    assert torch.allclose(e, expected)
    cell = net.body[0]
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    nodes = [x]
    for i in range(1, 4):
        nodes.append(sum(expected[k] * cell.edges[k](nodes[j], w[k])
                         for k, (target, j) in enumerate(EDGES) if target == i))
    assert torch.allclose(cell(x, w, None, e), nodes[3], atol=1e-12)
    assert [p.shape for p in net.arch_parameters()] == [(6, 5), (6,)]
    assert net.op_alpha_parameters() == [net.alphas]
    assert all(p is not net.betas for p in net.network_parameters())
    loss = net(torch.randn(2, 3, 8, 8, dtype=torch.float64)).sum()
    loss.backward()
    assert net.betas.grad is not None and net.betas.grad[1:].abs().sum() > 0  # edge 0 has no choice


def test_pc_darts_searches_nb201(tmp_path):
    from darts.search import SearchConfig, run
    cfg = SearchConfig(dataset="synthetic", space="nb201", init_channels=4, layers=1, image_size=8,
                       synthetic_size=16, batch_size=8, workers=0, progress=False, epochs=2,
                       save=str(tmp_path), name="pc", device="cpu", tensorboard=False, threads=1,
                       order=1, partial_channels=2, warmup_epochs=1)
    metrics = run(cfg)
    assert metrics["complete"] and len(metrics["history"]) == 2
    state = torch.load(tmp_path / "pc" / "checkpoint.pt", weights_only=True)
    assert state["model"]["betas"].shape == (6,)
    assert len(state["arch_optimizer"]["state"]) == 2  # Adam stepped the alphas and the betas
