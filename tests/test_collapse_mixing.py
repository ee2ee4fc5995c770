"""--mixing and --regularizer (darts.methods) against each method's definition, on tiny cases:
GDAS's hard Gumbel-softmax sample, DrNAS's Dirichlet, FairDARTS's sigmoid and zero-one loss,
beta-DARTS's Beta-Decay, DrNAS's KL and L2 terms, the epoch hook, tiny searches of both spaces,
and the flag combinations that are refused."""

import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT
from test_architect import SMOOTH_SPACE, XI, _rel_err, _smooth

from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.errors import UserError
from darts.methods import schedule
from darts.methods.mixing import (
    Dirichlet,
    GumbelHard,
    HardSample,
    Sigmoid,
    build_sampler,
    one_sample,
)
from darts.methods.regularizers import (
    BetaDecay,
    DirichletKL,
    DirichletL2,
    ZeroOne,
    build_regularizer,
    combine,
)
from darts.search import SearchConfig, build_supernet, run
from darts.spaces.nb201 import (
    NB201_OPS,
    NB201Arch,
    NB201MixedOp,
    NB201SearchCell,
    NB201SearchNetwork,
)
from darts.supernet import MixedOp, SearchNetwork


class Alphas(nn.Module):
    """A stand-in supernet for the regularizers: just its architecture parameters."""

    def __init__(self, *alphas):
        super().__init__()
        self.params = nn.ParameterList(alphas)

    def arch_parameters(self):
        return list(self.params)


# -- GDAS ------------------------------------------------------------------------------------
def test_a_gumbel_sample_is_one_hot_with_the_gumbel_softmax_gradient():
    torch.manual_seed(1)
    a = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    sampler = GumbelHard()
    sampler.tau = 0.7
    g = sampler.noise(a.detach())
    hard = sampler.draw(a, g)
    # the Gumbel-max trick: the chosen op is argmax(log_softmax(a) + g)
    chosen = (F.log_softmax(a.detach(), -1) + g).argmax(-1)
    assert torch.equal(hard.detach(), F.one_hot(chosen, 5).double())
    # straight-through: the gradient is that of the soft sample softmax((log_softmax(a) + g) / tau)
    c = torch.randn(6, 5, dtype=torch.float64)
    (grad_hard,) = torch.autograd.grad((hard * c).sum(), a)
    soft = torch.softmax((torch.log_softmax(a, -1) + g) / 0.7, -1)
    (grad_soft,) = torch.autograd.grad((soft * c).sum(), a)
    torch.testing.assert_close(grad_hard, grad_soft, rtol=0, atol=1e-15)
    assert grad_hard.abs().min() > 0


def test_gumbel_samples_choose_each_op_with_its_softmax_probability():
    torch.manual_seed(2)
    a = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0]], dtype=torch.float64)
    sampler = GumbelHard()
    many = a.expand(40000, 5)
    chosen = sampler.draw(many, sampler.noise(many)).argmax(-1)
    freq = torch.bincount(chosen, minlength=5).double() / len(chosen)
    torch.testing.assert_close(freq, torch.softmax(a[0], -1), rtol=0, atol=0.01)


def test_the_temperature_falls_linearly_from_tau_max_to_tau_min():
    sampler = GumbelHard(tau_max=10, tau_min=0.1)
    assert sampler.tau == 10
    schedule.set_epoch([sampler, None, object()], 0, 50)
    assert sampler.tau == 10 and sampler.scalars() == {"tau": 10}
    sampler.set_epoch(49, 50)
    assert sampler.tau == pytest.approx(0.1, abs=1e-12)
    sampler.set_epoch(10, 21)
    assert sampler.tau == pytest.approx(10 - 9.9 * 10 / 20)
    sampler.set_epoch(0, 1)
    assert sampler.tau == 10


def _count_calls(model, op_types):
    """{module: number of forward calls} for every op of every mixed op, by forward hooks."""
    calls = {}

    def count(module, inputs, output):
        if module in calls:  # a deep copy's ops (with the same hook) are not counted
            calls[module] += 1

    for m in model.modules():
        if isinstance(m, op_types):
            for op in m.ops:
                calls[op] = 0
                op.register_forward_hook(count)
    return calls


def _darts_gdas(C=4, layers=3):
    return SearchNetwork(C, 3, layers, SearchSpace(steps=2, multiplier=2),
                         sampler=GumbelHard()).double()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_only_the_sampled_ops_run_in_the_darts_space(mode):
    torch.manual_seed(3)
    model = accelerate(_darts_gdas())
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    calls = _count_calls(model, MixedOp)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    getattr(model, mode)()
    weights = model.mixing_weights(forward=True)
    assert isinstance(weights, HardSample)
    if mode == "eval":  # the argmax path: the decoded cell's ops
        assert weights.columns == tuple(tuple(a.argmax(-1).tolist()) for a in model.arch_parameters())
    out = model(x, weights)
    expected = {}
    for cell in model.cells:
        for e, edge in enumerate(cell.edges):
            column = weights.columns[int(cell.reduction)][e]
            for col, op in zip(edge.columns, edge.ops, strict=True):
                expected[op] = int(col == column)
    assert calls == expected
    assert sum(calls.values()) <= len(model.cells) * 5  # at most one op per edge
    # the value of the relaxation at the sample's one-hot weights (which runs every op)
    with torch.no_grad():
        reference = SearchNetwork.forward(_plain(model), x, tuple(w.detach() for w in weights))
    torch.testing.assert_close(out, reference)


def _plain(model):
    """The same supernet without its sampler: the plain relaxation at given weights."""
    plain = copy.deepcopy(model)
    plain.sampler = None
    for cell in plain.cells:
        cell.executor = None
    return plain


def test_a_gdas_step_flows_to_every_alpha_of_the_sample_and_draws_afresh():
    torch.manual_seed(4)
    model = _darts_gdas().train()
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    F.cross_entropy(model(x), y).backward()
    for a in model.arch_parameters():
        assert torch.isfinite(a.grad).all() and (a.grad != 0).all()
    first, second = model.mixing_weights(), model.mixing_weights()
    assert first.columns != second.columns  # a fresh sample per forward
    with one_sample(model):
        same = model.mixing_weights(), model.mixing_weights(detach=True)
    assert same[0].columns == same[1].columns
    torch.testing.assert_close(same[0][0].detach(), same[1][0])
    with torch.no_grad():  # decoding and statistics: softmax(alpha)
        torch.testing.assert_close(model.mixing_weights()[0], torch.softmax(model.alphas_normal, -1))


def test_only_the_sampled_ops_run_in_nb201():
    torch.manual_seed(5)
    model = NB201SearchNetwork(10, C=4, N=1, sampler=GumbelHard()).double().train()
    calls = _count_calls(model, NB201MixedOp)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weights = model.mixing_weights()
    out = model(x, weights)
    (columns,) = weights.columns
    expected = {}
    for cell in _cells(model):
        for e, edge in enumerate(cell.edges):
            for col, op in zip(edge.columns, edge.ops, strict=True):
                expected[op] = int(col == columns[e])
    assert calls == expected
    plain = copy.deepcopy(model)
    plain.sampler = None
    with torch.no_grad():
        torch.testing.assert_close(out, plain(x, (weights[0].detach(),)))
    arch = model.eval().arch()  # the argmax path in evaluation equals the decoded cell's path
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_path(x, arch))
    assert arch == NB201Arch(tuple(NB201_OPS[k] for k in model.alphas.argmax(-1).tolist()))


def _cells(model):
    return [m for m in model.body if isinstance(m, NB201SearchCell)]


# -- DrNAS -----------------------------------------------------------------------------------
def test_dirichlet_samples_lie_on_the_simplex_with_the_concentrations_mean():
    torch.manual_seed(6)
    a = torch.tensor([[0.5, -0.3, 1.2, 0.0, -2.0], [2.0, 1.0, 0.0, -1.0, 3.0]], dtype=torch.float64)
    sampler = Dirichlet()
    many = a.expand(20000, 2, 5)
    x = sampler.draw(many, sampler.noise(many))
    assert (x >= 0).all()
    torch.testing.assert_close(x.sum(-1), torch.ones(20000, 2, dtype=torch.float64))
    concentration = F.elu(a) + 1  # DrNAS's
    mean = concentration / concentration.sum(-1, keepdim=True)
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.01)
    torch.testing.assert_close(sampler.probabilities(a), mean)


def test_a_dirichlet_sample_is_torchs_rsample_in_value_and_gradient():
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 5, dtype=torch.float64)
    torch.manual_seed(7)
    x = torch.distributions.Dirichlet(F.elu(a) + 1).rsample()
    (expected,) = torch.autograd.grad((x * c).sum(), a)
    torch.manual_seed(7)
    sampler = Dirichlet()
    y = sampler.draw(a, sampler.noise(a.detach()))
    (got,) = torch.autograd.grad((y * c).sum(), a)
    torch.testing.assert_close(y.detach(), x.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- FairDARTS -------------------------------------------------------------------------------
def test_fairdarts_weights_are_the_sigmoid_of_each_alpha_and_none_gets_none():
    model = SearchNetwork(4, 3, 3, SearchSpace(), sampler=Sigmoid()).double()
    assert model.space.primitives[0] == "none"
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    expected = 1 / (1 + torch.exp(-model.alphas_normal.detach()))
    expected[:, 0] = 0.0  # FairDARTS's space has no `none`: it gets no weight
    for ctx in (torch.enable_grad(), torch.no_grad()):
        with ctx:
            w = model.mixing_weights()
        torch.testing.assert_close(w[0].detach(), expected)
        assert torch.all(w[0][:, 0] == 0)


def test_under_fairdarts_none_has_no_alpha_nothing_moves_its_column():
    """The loss of the alpha step (L_val plus the zero-one loss) gives `none`'s column no
    gradient; the zero-one loss is the hand formula over the four other columns."""
    torch.manual_seed(3)
    model = NB201SearchNetwork(10, C=4, N=1, sampler=Sigmoid()).double()
    with torch.no_grad():
        model.alphas.normal_()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    zero_one = ZeroOne()
    loss = F.cross_entropy(model(x, model.mixing_weights()), y) + zero_one(model)
    (grad,) = torch.autograd.grad(loss, [model.alphas])
    assert torch.all(grad[:, 0] == 0) and torch.all(grad[:, 1:] != 0)
    live = torch.sigmoid(model.alphas.detach()[:, 1:])
    assert zero_one(model).item() == pytest.approx(-10 * ((live - 0.5) ** 2).mean().item(),
                                                   rel=1e-12)


def _nb201_fairdarts_with(sigmoids: list[list[float]], threshold=0.85) -> NB201SearchNetwork:
    model = NB201SearchNetwork(10, C=4, N=1, sampler=Sigmoid(threshold)).double()
    with torch.no_grad():
        p = torch.tensor(sigmoids, dtype=torch.float64)
        model.alphas.copy_(torch.log(p / (1 - p)))  # logit: sigmoid(alpha) = p
    return model


def test_fairdarts_decodes_an_nb201_edge_by_its_threshold():
    # columns: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    model = _nb201_fairdarts_with([
        [0.50, 0.95, 0.10, 0.90, 0.20],  # two kept: the strongest, skip
        [0.99, 0.80, 0.84, 0.10, 0.50],  # none kept (none's own 0.99 is no alpha): none
        [0.50, 0.10, 0.10, 0.86, 0.10],  # one just above
        [0.10, 0.10, 0.10, 0.10, 0.85],  # at the threshold: kept (the code's >=)
        [0.50, 0.84, 0.84, 0.84, 0.84],  # all just below: none
        [0.01, 0.30, 0.97, 0.20, 0.10],
    ])
    assert str(model.arch()) == ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+"
                                 "|avg_pool_3x3~0|none~1|nor_conv_1x1~2|")
    assert model.topology.decode_weights(model.mixing_weights()) == model.arch()
    strict = _nb201_fairdarts_with([[0.5, 0.95, 0.1, 0.9, 0.2]] * 6, threshold=0.96)
    assert str(strict.arch()) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


# -- the regularizers, by hand in float64 ------------------------------------------------------
def test_beta_decay_and_its_gradient_match_a_hand_computation():
    torch.manual_seed(8)
    normal, reduce = (torch.randn(14, 8, dtype=torch.float64) for _ in range(2))
    model = Alphas(nn.Parameter(normal.clone()), nn.Parameter(reduce.clone()))
    beta = BetaDecay()
    beta.set_epoch(0, 50)
    assert beta(model).item() == 0
    beta.set_epoch(10, 50)  # lambda * epoch / epochs = 50 * 10 / 50
    assert beta.scalars() == {"reg_weight": 10.0}
    loss = beta(model)
    expected = 0.0
    for a in (normal, reduce):
        expected += sum(math.log(sum(math.exp(v) for v in row)) for row in a.tolist()) / 14
    assert loss.item() == pytest.approx(10 * expected, rel=1e-12)
    grads = torch.autograd.grad(loss, model.arch_parameters())
    for a, g in zip((normal, reduce), grads, strict=True):
        e = a.exp()
        torch.testing.assert_close(g, 10 * e / e.sum(-1, keepdim=True) / 14)


def test_the_zero_one_loss_and_its_gradient_match_a_hand_computation():
    torch.manual_seed(9)
    normal, reduce = torch.randn(14, 7, dtype=torch.float64), torch.randn(14, 7, dtype=torch.float64)
    model = Alphas(nn.Parameter(normal.clone()), nn.Parameter(reduce.clone()))
    loss = ZeroOne()(model)  # weight 10, FairDARTS's aux_loss_weight
    s = [1 / (1 + torch.exp(-a)) for a in (normal, reduce)]
    n = 2 * 14 * 7
    assert loss.item() == pytest.approx(-10 * sum(((t - 0.5) ** 2).sum().item() for t in s) / n,
                                        rel=1e-12)
    grads = torch.autograd.grad(loss, model.arch_parameters())
    for t, g in zip(s, grads, strict=True):
        torch.testing.assert_close(g, -10 * 2 * (t - 0.5) * t * (1 - t) / n)


def test_the_dirichlet_kl_matches_its_closed_form():
    torch.manual_seed(10)
    a = torch.randn(6, 5, dtype=torch.float64)
    model = Alphas(nn.Parameter(a.clone()))
    c = F.elu(a) + 1
    c0 = c.sum(-1)
    # KL(Dir(c) || Dir(1)) = lnG(c0) - sum lnG(c_i) - lnG(K) + sum (c_i - 1)(psi(c_i) - psi(c0))
    kl = (torch.lgamma(c0) - torch.lgamma(c).sum(-1) - math.lgamma(5)
          + ((c - 1) * (torch.digamma(c) - torch.digamma(c0)[:, None])).sum(-1))
    assert DirichletKL()(model).item() == pytest.approx(1e-3 * kl.sum().item(), rel=1e-10)


def test_drnas_l2_is_adams_weight_decay_on_the_alphas():
    torch.manual_seed(11)
    model = SearchNetwork(4, 3, 3, SearchSpace(steps=2, multiplier=2)).double()
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    twin = copy.deepcopy(model)
    batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,)))
    crit = nn.CrossEntropyLoss()
    with_decay = Architect(model, crit, torch.optim.SGD(model.network_parameters(), 0.1),
                           order=1, weight_decay=1e-3)
    with_term = Architect(twin, crit, torch.optim.SGD(twin.network_parameters(), 0.1),
                          order=1, weight_decay=0.0, arch_loss=DirichletL2())
    for _ in range(3):
        with_decay.step(batch, batch, 0.1)
        with_term.step(batch, batch, 0.1)
    for a, b in zip(model.arch_parameters(), twin.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
        assert not torch.equal(a, torch.zeros_like(a))


def test_losses_combine_and_hear_the_epoch():
    beta, plugin = BetaDecay(2.0), (lambda m: m.arch_parameters()[0].sum())
    assert combine(None, None) is None and combine(plugin, None) is plugin
    both = combine(plugin, beta)
    schedule.set_epoch([both], 3, 4)
    assert beta.current == 1.5 and schedule.scalars([both]) == {"reg_weight": 1.5}
    model = Alphas(nn.Parameter(torch.zeros(2, 3, dtype=torch.float64)))
    assert both(model).item() == pytest.approx(1.5 * math.log(3))
    assert build_regularizer("none") is None and build_regularizer("beta", 3.0).weight == 3.0


# -- second order: one sample per step ---------------------------------------------------------
@pytest.mark.parametrize("sampler", ["gdas", "drnas"])
def test_second_order_sees_one_sample_and_its_finite_difference_matches_the_exact(sampler):
    torch.manual_seed(12)
    model = accelerate(_smooth(SearchNetwork(4, 5, 3, space=SMOOTH_SPACE,
                                             sampler=build_sampler(sampler))).double())
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 0.5)
    optimizer = torch.optim.SGD(model.network_parameters(), XI, momentum=0.9, weight_decay=3e-4)
    train = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,)))
    val = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,)))
    draws = []
    noise = model.sampler.noise
    model.sampler.noise = lambda a: draws.append(1) or noise(a)
    grads = {}
    for hessian in ("fd", "exact"):
        torch.manual_seed(13)
        draws.clear()
        # float64 and a small finite-difference step: the difference is then close to exact
        arch = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2, hessian=hessian,
                         fd_epsilon=1e-4)
        grads[hessian], _ = arch.gradient(train, val, XI)
        assert len(draws) == 2  # one per alpha matrix, for all of the step's passes
    # O(eps^2): 1e-7 for DrNAS, 3e-9 for GDAS here; a sample per pass would differ by O(1)
    assert _rel_err(grads["fd"], grads["exact"]) < 1e-5


# -- tiny searches -----------------------------------------------------------------------------
def tiny(tmp_path, space, **overrides):
    cfg = dict(space=space, dataset="synthetic", layers=1 if space == "nb201" else 3,
               init_channels=4, image_size=8, synthetic_size=32, batch_size=8, workers=0,
               progress=False, epochs=2, save=str(tmp_path), device="cpu", tensorboard=False,
               name="s", threads=1)
    if space == "darts":
        cfg["nodes"] = 2
    cfg.update(overrides)
    return SearchConfig(**cfg)


# NAS-Bench-201 (a second each): every sampler and regularizer, first and second order; the
# DARTS space (a few seconds each): each sampler once, second order where it is stochastic.
SEARCHES = [("nb201", "gdas", "none", 1), ("nb201", "gdas", "none", 2),
            ("nb201", "drnas", "drnas-kl", 1), ("nb201", "drnas", "drnas-kl", 2),
            ("nb201", "fairdarts", "zero-one", 1), ("nb201", "fairdarts", "zero-one", 2),
            ("nb201", "softmax", "beta", 1), ("nb201", "softmax", "beta", 2),
            ("nb201", "drnas", "drnas-l2", 1), ("nb201", "gdas", "beta", 1),
            ("darts", "gdas", "none", 2), ("darts", "drnas", "drnas-kl", 2),
            ("darts", "fairdarts", "zero-one", 1), ("darts", "softmax", "beta", 1)]


@pytest.mark.parametrize("space, sampler, regularizer, order", SEARCHES)
def test_a_tiny_search_runs_with_each_sampler_and_regularizer(tmp_path, space, sampler,
                                                                regularizer, order):
    metrics = run(tiny(tmp_path, space, mixing=sampler, regularizer=regularizer, order=order))
    history = metrics["history"]
    assert metrics["complete"] and all(math.isfinite(r["train_loss"]) for r in history)
    if sampler == "gdas":
        assert [r["tau"] for r in history] == [10.0, pytest.approx(0.1)]
    if regularizer == "beta":
        assert [r["reg_weight"] for r in history] == [0.0, 25.0]
    elif regularizer != "none":
        assert history[0]["reg_weight"] == build_regularizer(regularizer).weight
    ckpt = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    alphas = [v for k, v in ckpt["model"].items() if k.startswith("alphas")]
    assert alphas and all(torch.isfinite(a).all() for a in alphas)


def test_softmax_builds_the_darts_supernet_without_a_sampler():
    for space in ("darts", "nb201"):
        cfg = tiny("unused", space)
        assert build_supernet(cfg, 10, torch.device("cpu")).sampler is None


# -- flags that cannot go together -------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(mixing="gdas", partial_channels=2), "leave --partial_channels out"),
    (dict(mixing="gdas", checkpoint_cells=True), "leave --checkpoint_cells out"),
    (dict(mixing="gdas", compile=True), "leave --compile out"),
    (dict(mixing="drnas", cuda_graphs="on"), "--cuda_graphs on: --mixing drnas"),
    (dict(regularizer="zero-one"), "add --mixing fairdarts"),
    (dict(regularizer="drnas-kl", mixing="gdas"), "add --mixing drnas"),
    (dict(reg_weight=1.0), "--reg_weight weights a --regularizer"),
    (dict(regularizer="beta", reg_weight=-1.0), "must be 0 or more"),
    (dict(mixing="gdas", tau_min=2.0, tau_max=1.0), "0 < tau_min <= tau_max"),
    (dict(regularizer="drnas-l2", arch_weight_decay=0.0), "leave --arch_weight_decay out"),
])
def test_flags_that_cannot_go_together_are_one_user_error(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as info:
        run(tiny(tmp_path, "darts", **overrides))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_the_command_line_says_it_in_one_line(tmp_path):
    argv = [sys.executable, str(ROOT / "train_search.py"), "--dataset", "synthetic",
            "--sampler", "gdas", "--partial_channels", "2", "--save", str(tmp_path)]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--mixing gdas" in result.stderr
    assert not any(tmp_path.iterdir())
