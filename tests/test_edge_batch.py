"""Edge batching (darts/accel/edge_batch.py): the edges leaving a state computed together must be
the per-edge supernet exactly: same outputs, gradients, second derivatives and BatchNorm
statistics, in float64, in training and eval mode, under functional_call, checkpointing
and channels_last, and for ops the batcher does not know (computed edge by edge).

The reference is the per-edge loop (`accelerate(model, batch_edges=False)`), which is the DARTS reference
code's MixedOp sum; both networks hold the same parameters and buffers.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from darts.accel import accelerate, edge_batch
from darts.cell_topology import SearchSpace
from darts.ops import FactorizedReduce, SepConv
from darts.primitives import OPS, PRIMITIVES, register_op
from darts.search import batch_edges
from darts.supernet import SearchNetwork, saved_activation_bytes

TOL = {"rtol": 1e-11, "atol": 1e-12}


def _pair(C=4, layers=5, space=None, **kw):
    """Per-edge and batched supernets with identical float64 state and non-uniform alphas."""
    torch.manual_seed(0)
    kwargs = {"space": space} if space is not None else {}
    reference = accelerate(SearchNetwork(C, 5, layers, **kwargs, **kw).double())
    with torch.no_grad():
        for a in reference.arch_parameters():
            a.normal_(0, 0.7)
    batched = copy.deepcopy(reference)
    for cell in batched.cells:
        cell.executor.batch_edges = True
    return reference, batched


def _batch(n=4, size=12, classes=5):
    return torch.randn(n, 3, size, size, dtype=torch.float64), torch.randint(0, classes, (n,))


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], **TOL, msg=k)


def test_batched_cells_are_the_per_edge_supernet_in_training_and_eval():
    reference, batched = _pair()
    assert all(c.executor.batch_edges for c in batched.cells)
    assert not any(c.executor.batch_edges for c in reference.cells)
    x, y = _batch()
    for _ in range(2):  # twice: the second forward starts from updated running statistics
        losses = []
        for model in (reference, batched):
            model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], **TOL)
        for (name, p), q in zip(reference.named_parameters(), batched.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)
        _assert_same_state(reference, batched)  # running stats and num_batches_tracked
    reference.eval(), batched.eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(x), batched(x), **TOL)
    _assert_same_state(reference, batched)


def test_shared_input_batchnorm_keeps_each_edges_own_statistics():
    """The pooling ops' BatchNorm sees one input on all edges of a state; with running
    statistics that differ per edge (e.g. loaded), eval outputs and training updates are
    still each edge's own."""
    reference, batched = _pair()
    with torch.no_grad():
        for model in (reference, batched):
            for e, edge in enumerate(model.cells[0].edges):
                bn = edge.ops[0][1]  # max_pool_3x3's BatchNorm
                bn.running_mean.fill_(0.1 * e)
                bn.running_var.fill_(1.0 + e)
    x, y = _batch()
    reference.eval(), batched.eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(x), batched(x), **TOL)
    reference.train(), batched.train()
    reference(x), batched(x)
    _assert_same_state(reference, batched)
    stats = [e.ops[0][1].running_mean for e in batched.cells[0].edges]
    assert not torch.equal(stats[0], stats[1])


def test_under_functional_call_the_substituted_weights_are_used():
    """The architect evaluates the supernet at w' = w - xi * grad and w +- eps * v through
    torch.func.functional_call; the batched cells must read those, not the parameters."""
    reference, batched = _pair()
    x, y = _batch()
    torch.manual_seed(1)
    names = [n for n, _ in reference.named_network_parameters()]
    shifted = {n: p.detach() + 0.1 * torch.randn_like(p)
               for n, p in reference.named_network_parameters()}
    outs = [functional_call(m, shifted, (x,)) for m in (reference, batched)]
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    plain = batched(x)
    assert not torch.allclose(plain, outs[1])
    assert set(names) == set(shifted)


@pytest.mark.parametrize("checkpoint_cells", [False, True])
def test_second_derivatives_match(checkpoint_cells):
    """d/dw of (d loss / d alpha) . v: the double backprop of the exact Hessian-vector
    product, through batched (and checkpointed) cells."""
    reference, batched = _pair(C=4, layers=3)
    batched.checkpoint_cells = checkpoint_cells
    x, y = _batch(3, 8)
    torch.manual_seed(2)
    v = [torch.randn_like(a) for a in reference.arch_parameters()]
    results = []
    for model in (reference, batched):
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, model.arch_parameters(), create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
        results.append(torch.autograd.grad(dot, model.network_parameters()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_channels_last_batched_equals_contiguous_per_edge():
    reference, batched = _pair()
    batched = batched.to(memory_format=torch.channels_last)
    x, y = _batch()
    losses = []
    for model, inp in ((reference, x), (batched, x.to(memory_format=torch.channels_last))):
        loss = F.cross_entropy(model(inp), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], **TOL)
    for p, q in zip(reference.parameters(), batched.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL)


class _Gelu(nn.Module):  # a layer the batcher does not know: run edge by edge
    def forward(self, x):
        return F.gelu(x)


def test_unknown_ops_and_affine_layers_fall_back_correctly():
    """A user's op: a biased convolution, an unknown layer and an affine BatchNorm."""
    name = "test_gelu_conv"
    register_op(name, lambda C, stride, affine: nn.Sequential(
        nn.Conv2d(C, C, 3, stride=stride, padding=1, bias=True), _Gelu(),
        nn.BatchNorm2d(C, affine=True)), overwrite=True)
    try:
        space = SearchSpace(primitives=(*PRIMITIVES, name), steps=3, multiplier=3)
        reference, batched = _pair(C=4, layers=3, space=space)
        with torch.no_grad():  # affine parameters away from 1 and 0
            for model in (reference, batched):
                torch.manual_seed(3)
                for p in model.network_parameters():
                    if p.dim() == 1:
                        p.add_(0.3 * torch.randn_like(p))
        x, y = _batch(3, 8)
        for model in (reference, batched):
            F.cross_entropy(model(x), y).backward()
        for p, q in zip(reference.parameters(), batched.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, **TOL)
        _assert_same_state(reference, batched)
    finally:
        del OPS[name]


class _CountConvolutions(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.bmm,
                                   torch.ops.aten.mm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_batching_launches_fewer_kernels():
    """The point of it: the per-edge supernet runs every op of every edge; batched, each
    convolution runs once per group of states. A 4-node cell's 14 edges form 4 groups: the
    two inputs' 8 edges, then nodes 0, 1 and 2 (3, 2 and 1 edges)."""
    reference, batched = _pair(C=4, layers=3)
    x, _ = _batch(2, 8)
    counts = []
    for model in (reference, batched):
        with torch.no_grad(), _CountConvolutions() as mode:
            model(x)
        counts.append(mode.count)
    assert counts[1] < 0.45 * counts[0], counts


def test_apply_handles_stacked_inputs_of_known_ops():
    """Ops applied to an already stacked input (each edge its own) equal each edge's op."""
    torch.manual_seed(0)
    E, C = 3, 4
    for make in (lambda: SepConv(C, C, 3, 1, 1, affine=False),
                 lambda: FactorizedReduce(C, C, affine=False)):
        mods = [make().double() for _ in range(E)]
        xs = [torch.randn(2, C, 8, 8, dtype=torch.float64) for _ in range(E)]
        out, sources = edge_batch.apply(mods, torch.cat(xs, 1), sources=0)
        assert sources == 0  # stacked
        expected = torch.cat([copy.deepcopy(m)(x) for m, x in zip(mods, xs, strict=True)], 1)
        torch.testing.assert_close(out, expected, **TOL)


def test_bf16_autocast_stays_close_to_the_per_edge_path():
    torch.manual_seed(0)
    reference = accelerate(SearchNetwork(4, 5, 3))
    batched = copy.deepcopy(reference)
    for cell in batched.cells:
        cell.executor.batch_edges = True
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = reference(x), batched(x)
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)


def test_the_flag_resolves_per_device():
    assert batch_edges("auto", torch.device("cuda")) is True
    assert batch_edges("auto", torch.device("cpu")) is False
    assert batch_edges("on", torch.device("cpu")) is True
    assert batch_edges("off", torch.device("cuda")) is False


def test_partial_channels_cells_run_edge_by_edge():
    model = accelerate(SearchNetwork(8, 10, 3, partial_channels=4), batch_edges=True)
    assert not any(c.executor.batch_edges for c in model.cells)


def test_batched_cells_keep_little_more_than_the_per_edge_ones(monkeypatch):
    # Within one group, the conv ops share one relu(x) and one spread copy of it (one
    # `_spread` per group, not one per conv op), and an op that ends in BatchNorm gets its
    # mixing weight folded into that BatchNorm, so no product with the weights keeps the
    # op's output. What the batched cells keep beyond the per-edge ones is then little more
    # than the spread copies and the concatenated cell inputs: before both changes it was
    # 1.65x the per-edge saved activations here (1.38x at the paper's size), now 1.18x.
    reference, batched = _pair(C=8, layers=5)
    x, _ = _batch(n=4, size=16)
    spreads = []
    spread = edge_batch._spread
    monkeypatch.setattr(edge_batch, "_spread", lambda *a: spreads.append(a) or spread(*a))
    per_edge = saved_activation_bytes(lambda: reference(x))
    together = saved_activation_bytes(lambda: batched(x))
    # Three batched groups per cell (the inputs', node 0's, node 1's; node 2 has one edge).
    assert len(spreads) == 3 * len(batched.cells)
    assert together < 1.3 * per_edge, together / per_edge
