"""The architect's alpha gradients against independent references (DARTS Section 2.3).

The hypergradient tests run a tiny supernet in float64 built from smooth ops only: ReLU and
max-pool kinks make finite differences unreliable, so the test op set uses SiLU and average
pooling (registered through the op registry) and the cell preprocessing's ReLUs are swapped
for SiLU as well.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.primitives import register_op
from darts.supernet import SearchNetwork


class SiLUConvBN(nn.Sequential):
    def __init__(self, C, stride, affine):
        super().__init__(nn.SiLU(), nn.Conv2d(C, C, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(C, affine=affine))


register_op("test_silu_conv_3x3", lambda C, stride, affine: SiLUConvBN(C, stride, affine),
            overwrite=True)
# Two nodes (5 edges) keep the coordinate-wise central differences fast.
SMOOTH_SPACE = SearchSpace(("none", "avg_pool_3x3", "skip_connect", "test_silu_conv_3x3"),
                           steps=2, multiplier=2)
XI = 0.1  # large enough that the second-order terms matter


def _smooth(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.SiLU())
        else:
            _smooth(child)
    return module


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = accelerate(_smooth(SearchNetwork(4, 5, 3, space=SMOOTH_SPACE)).double())
    with torch.no_grad():  # alphas well away from uniform, so every op matters
        for a in model.arch_parameters():
            a.normal_(0, 0.5)
    optimizer = torch.optim.SGD(model.network_parameters(), XI, momentum=0.9, weight_decay=3e-4)
    train = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,)))
    val = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,)))
    # One real weight step, so that the virtual step has a momentum buffer to use.
    optimizer.zero_grad()
    F.cross_entropy(model(train[0]), train[1]).backward()
    optimizer.step()
    return model, optimizer, train, val


def _unrolled_objective(model, optimizer, train, val, alphas):
    """L_val(w - xi * (momentum * buf + grad_w L_train(w, alpha) + wd * w), alpha), written
    from the paper's eq. 6 independently of the architect."""
    names = [n for n, _ in model.named_network_parameters()]
    weights = [p.detach() for _, p in model.named_network_parameters()]
    arch = {"alphas_normal": alphas[0], "alphas_reduce": alphas[1]}

    def loss(ws, batch):
        out = functional_call(model, {**dict(zip(names, ws, strict=True)), **arch}, (batch[0],))
        return F.cross_entropy(out, batch[1])

    ws = [w.clone().requires_grad_() for w in weights]
    grads = torch.autograd.grad(loss(ws, train), ws)
    group = optimizer.param_groups[0]
    unrolled = [w - XI * (group["momentum"] * optimizer.state[p]["momentum_buffer"] + g
                          + group["weight_decay"] * w)
                for w, g, p in zip(weights, grads, model.network_parameters(), strict=True)]
    return loss(unrolled, val)


def _central_difference(f, alphas, h=1e-5):
    grads = []
    for i, a in enumerate(alphas):
        g = torch.zeros_like(a)
        for idx in range(a.numel()):
            plus = [b.detach().clone() for b in alphas]
            minus = [b.detach().clone() for b in alphas]
            plus[i].view(-1)[idx] += h
            minus[i].view(-1)[idx] -= h
            g.view(-1)[idx] = (f(plus) - f(minus)).detach() / (2 * h)
        grads.append(g)
    return grads


def _rel_err(a, b):
    a, b = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
    return ((a - b).norm() / b.norm()).item()


def test_exact_second_order_gradient_matches_central_difference_of_unrolled_loss(setup):
    model, optimizer, train, val = setup
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2, hessian="exact")
    exact, _ = architect.unrolled_gradient(train, val, XI)
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    reference = _central_difference(
        lambda al: _unrolled_objective(model, optimizer, train, val, al), alphas)
    assert _rel_err(exact, reference) < 1e-6
    # The test can tell the orders apart: first order is far from the unrolled derivative.
    first, _ = architect.first_order_gradient(val)
    assert _rel_err(first, reference) > 1e-2


def test_hessian_term_is_needed_for_the_unrolled_derivative(setup):
    model, optimizer, train, val = setup
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2, hessian="exact")
    full, _ = architect.unrolled_gradient(train, val, XI)
    architect.exact_hessian_vector_product = lambda v, g: [torch.zeros_like(a) for a in architect.alphas]
    without_hvp, _ = architect.unrolled_gradient(train, val, XI)
    assert _rel_err(without_hvp, full) > 1e-2


def test_finite_difference_hessian_vector_product_matches_exact(setup):
    model, optimizer, train, val = setup
    fd = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2, hessian="fd")
    exact = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2, hessian="exact")
    unrolled, train_grads = exact.virtual_step(train, XI, create_graph=True)
    vector = torch.autograd.grad(exact.loss(val, unrolled), unrolled)
    hvp_exact = exact.exact_hessian_vector_product(vector, train_grads)
    hvp_fd = fd.hessian_vector_product(vector, train)
    assert _rel_err(hvp_fd, hvp_exact) < 1e-3
    g_fd, _ = fd.unrolled_gradient(train, val, XI)
    g_exact, _ = exact.unrolled_gradient(train, val, XI)
    assert _rel_err(g_fd, g_exact) < 1e-3


def test_first_order_gradient_is_autograd_of_validation_loss(setup):
    model, optimizer, train, val = setup
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=1)
    grads, loss = architect.first_order_gradient(val)
    model.zero_grad()
    reference = F.cross_entropy(model(val[0]), val[1])
    reference.backward()
    assert torch.allclose(loss, reference.detach())
    for g, a in zip(grads, model.arch_parameters(), strict=True):
        assert torch.allclose(g, a.grad, rtol=1e-12, atol=1e-15)
    alphas = [a.detach().clone() for a in model.arch_parameters()]

    def val_loss(al):
        return F.cross_entropy(functional_call(
            model, {"alphas_normal": al[0], "alphas_reduce": al[1]}, (val[0],)), val[1])
    assert _rel_err(grads, _central_difference(val_loss, alphas)) < 1e-6


class Bilinear(nn.Module):
    """L(w, alpha) = s * alpha . (A w) + |w|^2 / 2: grad_alpha L is linear in w, so a central
    difference in w is exact and hess_{alpha,w} L . v = s * A v."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.randn(6, 5, generator=g, dtype=torch.float64)
        self.w = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
        self.alphas_normal = nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))

    def arch_parameters(self):
        return [self.alphas_normal]

    def named_network_parameters(self):
        return [("w", self.w)]

    def mixing_weights(self, detach=False):
        return (self.alphas_normal.detach() if detach else self.alphas_normal,)

    def forward(self, x, weights=None):
        (alphas,) = self.mixing_weights() if weights is None else weights
        return x.sum() * alphas.reshape(-1) @ (self.A @ self.w) + 0.5 * self.w @ self.w


def test_finite_difference_is_divided_by_two_eps():
    # Regression: a popular reimplementation computes (p - n) / 2. * eps, i.e. multiplies by
    # eps instead of dividing by 2 * eps. On a bilinear loss the difference quotient is exact.
    model = Bilinear()
    optimizer = torch.optim.SGD([model.w], 0.1)
    architect = Architect(model, lambda out, y: out, optimizer, order=2, hessian="fd")
    x = torch.full((3,), 0.5, dtype=torch.float64)
    v = [torch.randn(5, dtype=torch.float64)]
    hvp = architect.hessian_vector_product(v, (x, None))
    expected = (x.sum() * (model.A @ v[0])).reshape(2, 3)
    torch.testing.assert_close(hvp[0], expected, rtol=1e-9, atol=1e-12)
    # Same for a vector of another scale (eps depends on its norm).
    hvp = architect.hessian_vector_product([1e3 * v[0]], (x, None))
    torch.testing.assert_close(hvp[0], 1e3 * expected, rtol=1e-9, atol=1e-9)


def test_step_updates_only_alphas_with_adam_and_never_the_weights():
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(4, 5, 3))
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9)
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2)
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))
    weights = [p.detach().clone() for p in model.network_parameters()]
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    architect.step(batch, batch, 0.025)
    for w, p in zip(weights, model.network_parameters(), strict=True):
        assert torch.equal(w, p)
    for a, p in zip(alphas, model.arch_parameters(), strict=True):
        # Adam's first step moves every entry with a non-zero gradient by about lr.
        assert 1e-4 < (a - p).abs().max() <= 3e-4 * 1.01
        assert p.grad is None
    adam = architect.optimizer.param_groups[0]
    assert (adam["lr"], adam["betas"], adam["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    ids = {id(p) for g in architect.optimizer.param_groups for p in g["params"]}
    assert ids == {id(a) for a in model.arch_parameters()}
    assert not ids & {id(p) for g in optimizer.param_groups for p in g["params"]}


def _count_passes(model):
    counts = {"forward": 0, "backward": 0}

    def on_backward(grad):
        counts["backward"] += 1

    def on_forward(module, args, output):
        counts["forward"] += 1
        if output.requires_grad:
            output.register_hook(on_backward)

    model.register_forward_hook(on_forward)
    return counts


@pytest.mark.parametrize("order,hessian,forward,backward", [
    (1, "fd", 2, 2),      # alpha step: F + B on val; weight step: F + B
    (2, "fd", 5, 5),      # virtual step, val at w', w+ and w- (eq. 8), weight step
    (2, "exact", 3, 4),   # virtual step (graph kept), val at w', double backward, weight step
])
def test_forward_and_backward_passes_per_search_step(order, hessian, forward, backward):
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(4, 5, 3))
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9)
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=order, hessian=hessian)
    counts = _count_passes(model)
    train = (torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))
    val = (torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))
    architect.step(train, val, 0.025)
    # The weight step, as the search loop does it: alphas detached.
    loss = F.cross_entropy(model(train[0], model.mixing_weights(detach=True)), train[1])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert counts == {"forward": forward, "backward": backward}
    assert all(a.grad is None for a in model.arch_parameters())  # no alpha work in the weight step


def test_virtual_step_is_the_sgd_step_the_optimizer_would_take():
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(4, 5, 3).double())
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    train = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,)))
    for _ in range(2):  # build up a momentum buffer, then compare the third step
        optimizer.zero_grad()
        F.cross_entropy(model(train[0]), train[1]).backward()
        optimizer.step()
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    unrolled, _ = architect.virtual_step(train, 0.05)
    model.load_state_dict(state)  # the virtual step's forward updated BN running stats only
    optimizer.zero_grad()
    F.cross_entropy(model(train[0]), train[1]).backward()
    optimizer.step()
    for u, p in zip(unrolled, model.network_parameters(), strict=True):
        torch.testing.assert_close(u, p.detach(), rtol=1e-12, atol=1e-14)


class _ConvBackwardMasks(TorchDispatchMode):
    """Records which gradients (input, weight, bias) each convolution backward computes."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution_backward:
            self.masks.append(tuple(args[-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("batch_edges", [False, True])
def test_first_order_alpha_step_forms_no_weight_gradient(batch_edges):
    """The first-order alpha gradient backpropagates to the alphas only: no convolution
    backward computes a weight gradient, and no weight's .grad is touched."""
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(4, 5, 3), batch_edges=batch_edges)
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9)
    architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=1)
    val = (torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))
    with _ConvBackwardMasks() as mode:
        architect.first_order_gradient(val)
    assert mode.masks and all(m[0] for m in mode.masks)  # input gradients flow
    assert not any(m[1] for m in mode.masks)
    assert all(p.grad is None for p in model.network_parameters())
    # The recorder sees weight gradients where they are formed: the weight step.
    with _ConvBackwardMasks() as mode:
        F.cross_entropy(model(val[0], model.mixing_weights(detach=True)), val[1]).backward()
    assert all(m[1] for m in mode.masks)


@pytest.mark.parametrize("kw", [{}, {"partial_channels": 4}, {"batch_edges": True}])
def test_supernet_ties_no_parameters(kw):
    """The architect's functional_call skips the search for tied parameters; that is only
    right while no parameter is reachable under two names."""
    kw = dict(kw)
    batched = kw.pop("batch_edges", False)
    model = accelerate(SearchNetwork(8, 10, 5, **kw), batch_edges=batched)
    assert len(list(model.named_parameters(remove_duplicate=False))) == len(list(model.named_parameters()))


@pytest.mark.parametrize("order,hessian,checkpoint_cells", [
    (1, "fd", False), (1, "fd", True), (2, "fd", False), (2, "fd", True), (2, "exact", False)])
def test_alpha_gradient_is_the_same_through_the_cpu_conv_backward(order, hessian,
                                                                 checkpoint_cells, monkeypatch):
    # The CPU convolution backward (darts/accel/fused.py) skips the gradients a backward does not
    # reach; under every pass of the architect (functional_call, the fd perturbations,
    # double backward, checkpointed cells recomputed in the backward) the alpha gradient and
    # the weight step's gradients equal those of PyTorch's native convolution backward.
    from darts.accel.fused import Conv2d

    def run(min_elements):
        monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", min_elements)
        torch.manual_seed(0)
        model = accelerate(SearchNetwork(4, 5, 3, checkpoint_cells=checkpoint_cells).double())
        with torch.no_grad():
            for a in model.arch_parameters():
                a.normal_(0, 0.5)
        optimizer = torch.optim.SGD(model.network_parameters(), 0.1, momentum=0.9)
        architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=order,
                              hessian=hessian)
        train = (torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (3,)))
        val = (torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (3,)))
        grads, _ = (architect.first_order_gradient(val) if order == 1
                    else architect.unrolled_gradient(train, val, 0.1))
        F.cross_entropy(model(train[0], model.mixing_weights(detach=True)), train[1]).backward()
        return grads, [p.grad for p in model.network_parameters()]

    custom, native = run(0), run(1 << 40)
    for a, b in zip(custom[0] + custom[1], native[0] + native[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # The custom backward did run: at these sizes only MIN_ELEMENTS=0 selects it.
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    monkeypatch.setattr(Conv2d, "MIN_ELEMENTS", 0)
    assert "CPUConv" in type(Conv2d(4, 4, 1, bias=False)(x).grad_fn).__name__
