"""The seam between the model and darts.accel: a new op or mixing rule needs no edit to the
accelerated code, and the accelerated supernet computes DARTS eq. 2."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.accel import accelerate, kernels
from darts.accel.cell import CellExecutor
from darts.accel.fused import BatchNorm2d, Conv2d
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.ops import ReLUConvBN
from darts.primitives import OPS, PRIMITIVES, register_op
from darts.supernet import MixedOp, SearchNetwork
from darts.train.engine import channels_last_on


@pytest.fixture
def conv_3x3():
    """A ReLU-Conv-BN op of kernel 3, registered for the test only."""
    register_op("conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))
    yield "conv_3x3"
    del OPS["conv_3x3"]


def _eq2_logits(model: SearchNetwork, x: torch.Tensor, alphas) -> torch.Tensor:
    """The supernet by the paper: node_j = sum_{i<j} sum_o softmax(alpha_(i,j))_o * o(s_i),
    every op called whole, in edge order; nothing of SearchCell's or MixedOp's forward."""
    space = model.space
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        w = F.softmax(alphas[1] if cell.reduction else alphas[0], dim=-1)
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for j in range(space.steps):
            states.append(sum(
                w[e, k] * op(states[i])
                for e, (node, i) in enumerate(space.edges()) if node == j
                for k, op in zip(cell.edges[e].columns, cell.edges[e].ops, strict=True)))
        s0, s1 = s1, torch.cat(states[-space.multiplier:], dim=1)
    return model.classifier(torch.flatten(model.global_pooling(s1), 1))


@pytest.mark.parametrize("batch_edges", [False, True])
def test_a_new_op_runs_in_the_accelerated_supernet_as_eq2(conv_3x3, batch_edges):
    torch.manual_seed(0)
    space = SearchSpace(PRIMITIVES + (conv_3x3,), steps=2, multiplier=2)
    plain = SearchNetwork(4, 5, 3, space).double()
    with torch.no_grad():  # alphas away from uniform, so every op's weight matters
        for a in plain.arch_parameters():
            a.normal_(0, 0.7)
    ref = copy.deepcopy(plain)
    model = accelerate(plain, batch_edges=batch_edges)
    # The new op's layers became their fast variants, and no cell declined.
    new_op = model.cells[0].edges[0].ops[-1]
    assert type(new_op[1]) is Conv2d and type(new_op[2]) is BatchNorm2d
    assert all(isinstance(c.executor, CellExecutor) and c.executor.known for c in model.cells)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (3,))
    for training in (True, False):
        model.train(training)
        ref.train(training)
        got = model(x)
        want = _eq2_logits(ref, x, ref.arch_parameters())
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g_got = torch.autograd.grad(F.cross_entropy(got, y), model.arch_parameters())
        g_want = torch.autograd.grad(F.cross_entropy(want, y), ref.arch_parameters())
        for a, b in zip(g_got, g_want, strict=True):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_a_search_step_runs_with_a_new_op_on_the_cpu_defaults(conv_3x3, monkeypatch):
    # channels_last on (the CPU's default) and the fast path on: the C kernels run where the
    # library is built, and the new op's conv and BatchNorm are swapped like the others.
    cpu = torch.device("cpu")
    assert channels_last_on(None, cpu)
    ran = []
    real = kernels.batch_norm_train
    monkeypatch.setattr(kernels, "batch_norm_train",
                        lambda *a, **k: (lambda out: ran.append(out is not None) or out)(
                            real(*a, **k)))
    torch.manual_seed(0)
    space = SearchSpace(PRIMITIVES + (conv_3x3,), steps=2, multiplier=2)
    model = accelerate(SearchNetwork(8, 5, 3, space)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9)
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=1)
    fmt = torch.channels_last
    train = (torch.randn(8, 3, 16, 16).contiguous(memory_format=fmt), torch.randint(0, 5, (8,)))
    val = (torch.randn(8, 3, 16, 16).contiguous(memory_format=fmt), torch.randint(0, 5, (8,)))
    before = [a.detach().clone() for a in model.arch_parameters()]
    architect.step(train, val, 0.05)
    loss = F.cross_entropy(model(train[0], model.mixing_weights(detach=True)), train[1])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), before, strict=True))
    new_op = model.cells[0].edges[0].ops[-1]
    assert new_op[1].weight.grad is not None and new_op[1].weight.grad.abs().sum() > 0
    if kernels.library() is not None and kernels.enabled():
        assert any(ran)


class ArgmaxMixedOp(MixedOp):
    """A mixing rule the executor does not know: only the strongest op of the edge."""

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        i = max(range(len(self.ops)), key=lambda i: weights[self.columns[i]].item())
        return weights[self.columns[i]] * self.ops[i](x)


def test_a_new_mixing_rule_runs_on_the_plain_path():
    torch.manual_seed(0)
    plain = SearchNetwork(4, 5, 3, SearchSpace(steps=2, multiplier=2)).double()
    for cell in plain.cells:
        for edge in cell.edges:
            edge.__class__ = ArgmaxMixedOp
    ref = copy.deepcopy(plain)
    model = accelerate(plain)
    assert all(not c.executor.known for c in model.cells)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-12)


def test_accel_switched_off_leaves_the_model_plain(monkeypatch):
    monkeypatch.setenv("DARTS_ACCEL", "0")
    model = accelerate(SearchNetwork(4, 5, 3, SearchSpace(steps=2, multiplier=2)))
    assert all(c.executor is None for c in model.cells)
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))


def test_cumulative_batchnorm_statistics_match_the_plain_supernet():
    """BatchNorm momentum None (a cumulative average, as BatchNorm recalibration uses) set after
    acceleration: every running statistic after three training batches equals the plain
    supernet's, including the pooling edges whose normalised output is shared."""
    torch.manual_seed(0)
    plain = SearchNetwork(8, 10, 3, SearchSpace(steps=2, multiplier=2))
    fast = accelerate(copy.deepcopy(plain))
    for net in (plain, fast):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        net.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 3, 16, 16, generator=g)
            plain(x), fast(x)
    fast_buffers = dict(fast.named_buffers())
    for name, buf in plain.named_buffers():
        if "running" in name or "num_batches" in name:
            assert torch.allclose(fast_buffers[name].float(), buf.float(), atol=1e-5), name
