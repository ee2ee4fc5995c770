"""The collapse pieces, II (docs/collapse-pieces.md): SDARTS's perturbations, DARTS-'s
auxiliary skip, P-DARTS's skip dropout and skip cap, warm-up, DARTS+'s early stop, DARTS-PT's
projection, and the --method presets; each on a tiny case, then in tiny searches."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn

import train_search
from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.errors import UserError
from darts.methods import perturb, pieces, presets, select
from darts.methods.transforms import AuxiliarySkip, add_skip_dropout, beta_at, skip_dropout_at
from darts.primitives import PRIMITIVES
from darts.search import SearchConfig, run
from darts.spaces.nb201 import NB201_OPS, NB201Arch, NB201SearchNetwork
from darts.supernet import SearchNetwork
from darts.train.engine import MetricSum

SMALL = SearchSpace(steps=2, multiplier=2)


# float32: on this CPU the first float64 forwards of a new shape take seconds each.
def tiny_darts(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return SearchNetwork(4, 3, 3, SMALL).to(dtype)


def batch(seed=1, n=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def tiny_cfg(tmp_path, space="darts", **overrides):
    cfg = dict(dataset="synthetic", space=space, init_channels=4, image_size=8, synthetic_size=16,
               batch_size=8, workers=0, progress=False, epochs=2, save=str(tmp_path),
               device="cpu", tensorboard=False, threads=1)
    cfg.update(dict(layers=3, nodes=2) if space == "darts" else dict(layers=1))
    cfg.update(overrides)
    return SearchConfig(**cfg)


# -- SDARTS ------------------------------------------------------------------------------------
def test_sdarts_rs_stays_within_eps_before_renormalising_and_leaves_a_on_the_simplex():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(5, 8, dtype=torch.float64), -1)
    (w,), (delta,) = perturb.random_perturbation((a,), 0.3)
    assert delta.abs().max() <= 0.3 and delta.abs().max() > 0.2  # uniform over the whole ball
    assert torch.allclose(w, perturb.simplex_clip(a + delta))
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(5, dtype=torch.float64))


def test_the_eps_ramp_is_sdartss():
    assert perturb.epsilon_at(0, 50, 0.3) == pytest.approx(0.03)
    assert perturb.epsilon_at(25, 50, 0.3) == pytest.approx(0.165)
    assert perturb.epsilon_at(50, 50, 0.3) == pytest.approx(0.3)


def _loss_of(model, x, y):
    model.eval()
    return lambda w: nn.functional.cross_entropy(model(x, w), y)


def test_sdarts_adv_stays_within_eps_and_raises_the_training_loss():
    model = tiny_darts()
    x, y = batch()
    a = model.mixing_weights(detach=True)
    loss_of = _loss_of(model, x, y)
    torch.manual_seed(0)
    attack, deltas = perturb.adversarial_perturbation(loss_of, a, 0.3)
    for w, d, base in zip(attack, deltas, a, strict=True):
        assert d.abs().max() <= 0.3 + 1e-6
        assert torch.allclose(w, perturb.simplex_clip(base + d))
    with torch.no_grad():
        assert loss_of(attack) > loss_of(a) + 1e-3
        # ... and more than random noise of the same size does
        torch.manual_seed(0)
        assert loss_of(attack) > loss_of(perturb.random_perturbation(a, 0.3)[0])


def _architect(model):
    opt = torch.optim.SGD(model.network_parameters(), 0.01, momentum=0.9)
    return opt, Architect(model, nn.CrossEntropyLoss(), opt, order=1)


@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_a_perturbed_weight_step_leaves_the_alphas_and_trains_at_the_perturbed_weights(kind):
    model = tiny_darts()
    cfg = SearchConfig(perturb=kind, epochs=10)
    p = pieces.Pieces(cfg, model)
    p.start_epoch(5)
    opt, arch = _architect(model)
    step = p.side_step(arch, iter([]), 0.01, MetricSum(torch.device("cpu")))
    before = [a.detach().clone() for a in model.arch_parameters()]
    arch.optimizer.param_groups[0]["lr"] = 0.0  # isolate the perturbation from the alpha step
    step.step(batch(1), batch(2))
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before, strict=True))
    w = p.weight_step_weights()
    plain = model.mixing_weights(detach=True)
    gap = max((u - v).abs().max().item() for u, v in zip(w, plain, strict=True))
    assert 0 < gap <= 2 * p.of(pieces.Perturb).epsilon + 1e-6  # moved, by eps and the renormalisation at most


# -- DARTS- ------------------------------------------------------------------------------------
def test_the_auxiliary_skip_decays_linearly_from_beta0_to_zero():
    assert [beta_at(t, 50, 1.0) for t in (0, 25, 49)] == pytest.approx([1.0, 0.5, 0.02])
    model = tiny_darts()
    p = pieces.Pieces(SearchConfig(aux_skip=0.8, epochs=4), model)
    assert [p.start_epoch(t)["aux_skip_beta"] for t in range(4)] == pytest.approx([0.8, 0.6, 0.4, 0.2])


def _explicit_aux_skip(model, beta):
    """The paper's definition, edge by edge on the plain model: o_bar(x) + beta * x on every
    edge whose skip_connect is the identity."""
    handles = []
    for cell in model.cells:
        for e, (_, j) in enumerate(cell.edge_list):
            if not (cell.reduction and j < 2):
                handles.append(cell.edges[e].register_forward_hook(
                    lambda m, args, out: out + beta * args[0]))
    return handles


@pytest.mark.parametrize("fast", [False, True])
def test_the_auxiliary_skip_is_the_papers_and_zero_beta_is_plain_darts(fast):
    plain = tiny_darts()
    model = tiny_darts()
    if fast:
        model = accelerate(model)
    x, _ = batch()
    p = pieces.Pieces(SearchConfig(aux_skip=1.0, epochs=4), model)
    plain.train(), model.train()
    p.start_epoch(2)  # beta 0.5
    with torch.no_grad():
        handles = _explicit_aux_skip(plain, 0.5)
        expected = plain(x)
        for h in handles:
            h.remove()
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(plain(x), expected, rtol=1e-2, atol=1e-3)
        p.of(pieces.AuxSkip).aux.beta = 0.0
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)


def test_the_auxiliary_skip_on_nb201_covers_every_edge():
    torch.manual_seed(0)
    model = NB201SearchNetwork(3, C=4, N=1).double()
    aux = AuxiliarySkip(model, 1.0)
    (mask,) = aux.masks
    assert mask[:, NB201_OPS.index("skip_connect")].tolist() == [1.0] * 6 and mask.sum() == 6


# -- P-DARTS -----------------------------------------------------------------------------------
def test_skip_dropout_zeroes_at_its_rate_and_follows_pdartss_schedule():
    torch.manual_seed(0)
    model = tiny_darts(dtype=torch.float32)
    drops = add_skip_dropout(model)
    # every stride-1 skip_connect: the normal cells' 5 edges, the reduction cell's 2 from node 2
    assert len(drops) == 5 + 2
    wrapped = [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 2
               and isinstance(m[1], nn.Dropout)][0]
    for d in drops:
        d.p = 0.3
    x = torch.ones(200_000)
    y = wrapped(x)
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.3) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    wrapped.eval()
    assert torch.equal(wrapped(x), x)
    # P-DARTS: p0 (T - t - 1) / T while warming up, then p0 exp(-0.2 (t - W))
    assert skip_dropout_at(0, 25, 0.7, 10) == pytest.approx(0.7 * 24 / 25)
    assert skip_dropout_at(9, 25, 0.7, 10) == pytest.approx(0.7 * 15 / 25)
    assert skip_dropout_at(10, 25, 0.7, 10) == pytest.approx(0.7)
    assert skip_dropout_at(15, 25, 0.7, 10) == pytest.approx(0.7 * math.exp(-1.0))


def test_skip_dropout_runs_inside_the_accelerated_cell():
    model = tiny_darts(dtype=torch.float32)
    add_skip_dropout(model)
    model = accelerate(model)
    p = pieces.Pieces(SearchConfig(skip_dropout=0.5, epochs=4, order=1), model)
    x, _ = batch(dtype=torch.float32)
    skip = torch.zeros(SMALL.num_edges, len(PRIMITIVES))
    skip[:, PRIMITIVES.index("skip_connect")] = 1.0
    weights = (skip, torch.softmax(torch.zeros_like(skip), -1))
    model.train()
    for d in p.of(pieces.SkipDropout).dropouts:
        d.p = 0.0
    with torch.no_grad():
        a, b = model(x, weights), model(x, weights)
        assert torch.equal(a, b)
        for d in p.of(pieces.SkipDropout).dropouts:
            d.p = 0.5
        assert not torch.equal(model(x, weights), model(x, weights))


def _hand_built_normal(space, strengths):
    """(edges, ops) weights whose row e is one-hot-ish on op `strengths[e][0]` with weight
    `strengths[e][1]`, the rest spread evenly; second-best op: sep_conv_3x3."""
    w = torch.full((space.num_edges, len(space.primitives)), 0.01)
    for e, (op, value, second) in enumerate(strengths):
        w[e, space.primitives.index(op)] = value
        w[e, space.primitives.index("sep_conv_3x3")] = second
    return w


def test_the_skip_cap_decodes_as_pdarts():
    space = SearchSpace()
    # 4 nodes: node 2 edges 0-1, node 3 edges 2-4, node 4 edges 5-8, node 5 edges 9-13.
    s = "skip_connect"
    rows = [(s, 0.6, 0.2), (s, 0.5, 0.3),                       # node 2: two skips
            (s, 0.7, 0.1), ("dil_conv_3x3", 0.4, 0.1), ("max_pool_3x3", 0.05, 0.02),
            (s, 0.45, 0.35), ("sep_conv_5x5", 0.3, 0.1), ("avg_pool_3x3", 0.02, 0.01), ("dil_conv_5x5", 0.2, 0.1),
            (s, 0.9, 0.05), ("sep_conv_5x5", 0.5, 0.1), ("dil_conv_3x3", 0.05, 0.01),
            ("dil_conv_5x5", 0.03, 0.01), ("max_pool_3x3", 0.02, 0.01)]
    normal = _hand_built_normal(space, rows)
    reduce = _hand_built_normal(space, [(s, 0.9, 0.05)] * 14)
    plain = space.decode(normal, reduce)
    assert sum(op == s for op, _ in plain.normal) == 5
    capped = select.capped_darts_genotype(space, (normal, reduce), 2)
    # The three weakest skips (0.45 on edge 5, 0.5 on edge 1, 0.6 on edge 0) go, weakest
    # first; each such edge takes sep_conv_3x3 (its next best) and its node ranks its edges
    # again: node 4's edge 5 (sep 0.35) still beats edge 6 (0.3); node 2 keeps both edges.
    assert capped.normal == (("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
                             (s, 0), ("dil_conv_3x3", 1),
                             ("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
                             (s, 0), ("sep_conv_5x5", 1))
    assert capped.reduce == plain.reduce  # only the normal cell is capped
    assert select.capped_darts_genotype(space, (normal, reduce), 5) == plain


def test_the_skip_cap_on_nb201_gives_the_weakest_skip_edges_their_next_best_op():
    w = torch.tensor([[0.1, 0.5, 0.2, 0.1, 0.1],    # skip 0.5, then conv1x1
                      [0.1, 0.6, 0.1, 0.15, 0.05],  # skip 0.6, then conv3x3
                      [0.3, 0.4, 0.1, 0.1, 0.1],    # skip 0.4, then none
                      [0.1, 0.1, 0.6, 0.1, 0.1],
                      [0.1, 0.1, 0.1, 0.6, 0.1],
                      [0.1, 0.1, 0.1, 0.1, 0.6]])
    assert select.capped_nb201_arch(w, 3).ops.count("skip_connect") == 3
    arch = select.capped_nb201_arch(w, 1)
    assert arch.ops[:3] == ("nor_conv_1x1", "skip_connect", "none")


# -- warm-up -----------------------------------------------------------------------------------
def test_warm_up_freezes_the_alphas_for_n_epochs_then_updates_them():
    model = tiny_darts()
    p = pieces.Pieces(SearchConfig(warmup_epochs=2, epochs=4), model)
    _, arch = _architect(model)
    start = [a.detach().clone() for a in model.arch_parameters()]
    for epoch in range(2):
        assert p.start_epoch(epoch)["alphas_frozen"] == 1.0
        loss = p.side_step(arch, iter([]), 0.01, None).step(batch(1), batch(2))
        assert torch.isfinite(loss)
        assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), start, strict=True))
    assert p.start_epoch(2)["alphas_frozen"] == 0.0
    p.side_step(arch, iter([]), 0.01, None).step(batch(1), batch(2))
    assert not torch.equal(model.alphas_normal, start[0])


def test_a_warm_up_search_records_its_frozen_epochs(tmp_path):
    metrics = run(tiny_cfg(tmp_path, space="nb201", name="w", epochs=3, warmup_epochs=2, order=1))
    assert [r["alphas_frozen"] for r in metrics["history"]] == [1.0, 1.0, 0.0]
    # the alphas had not moved after two epochs: the decoded cell is the initial argmax
    assert metrics["history"][0]["genotype"] == metrics["history"][1]["genotype"]


# -- DARTS-PT ----------------------------------------------------------------------------------
def test_pt_chooses_the_op_whose_removal_hurts_most():
    projection = select.Projection.empty(1)
    top1_without = {1: 60.0, 2: 20.0, 3: 55.0, 4: 20.0}  # ops 2 and 4 tie: the loss decides
    loss_without = {1: 1.0, 2: 1.5, 3: 1.0, 4: 2.0}

    def score():
        _, e, col = projection.trial
        return select.Score(top1_without[col], loss_without[col])

    assert select.project_op(None, projection, 0, 3, [1, 2, 3, 4], score) == 4
    assert projection.chosen == [{3: 4}] and projection.trial is None
    w = torch.full((6, 5), 0.2)
    (out,) = projection((w,))
    assert out[3].tolist() == [0, 0, 0, 0, 1.0] and torch.equal(out[:3], w[:3])
    projection.trial = (0, 1, 2)
    (out,) = projection((w,))
    assert out[1, 2] == 0 and out[1].sum() == pytest.approx(0.8)  # removed, not renormalised


def test_pt_keeps_the_two_edges_whose_removal_hurts_most():
    model = SearchNetwork(4, 3, 3, SearchSpace())
    projection = select.Projection.empty(2)
    node = 2  # edges 5..8
    top1_without = {5: 50.0, 6: 10.0, 7: 45.0, 8: 20.0}

    def score():
        _, e, col = projection.trial
        assert col is None
        return select.Score(top1_without[e], 1.0)

    kept = select.project_edges(model, projection, 0, node, score)
    assert sorted(kept) == [6, 8] and projection.removed[0] == {5, 7}


class _Signal(nn.Module):
    """A hand-built 'supernet' of one edge and three ops: op 0 carries the label (logit
    10 x for class 1), op 1 a bias towards class 0, op 2 nothing."""

    def __init__(self):
        super().__init__()
        self.alphas = nn.Parameter(torch.zeros(1, 3))

    def mixing_weights(self, detach=False):
        return (torch.softmax(self.alphas.detach() if detach else self.alphas, -1),)

    def forward(self, x, weights=None):
        (w,) = self.mixing_weights() if weights is None else weights
        signal = torch.cat([torch.zeros_like(x), 10 * x], 1)
        bias = torch.tensor([[1.0, 0.0]]).expand_as(signal)
        return w[0, 0] * signal + w[0, 1] * bias


def test_pt_on_a_hand_built_supernet_picks_the_op_whose_removal_hurts_most():
    from darts.methods.transforms import WeightTransforms
    model = _Signal()
    x = torch.linspace(-1, 1, 40).unsqueeze(1)
    y = (x[:, 0] > 0).long()
    projection = select.Projection.empty(1)
    WeightTransforms(model).transforms.append(projection)

    def score():
        return select.measure(model, [(x, y)], torch.device("cpu"), nn.CrossEntropyLoss())

    assert score().top1 > 90
    assert select.project_op(model, projection, 0, 0, [0, 1, 2], score) == 0
    assert projection.log[0]["top1_without"][0] == 50.0  # without the signal: class 0 only
    assert model(x).argmax(-1).tolist() == y.tolist()  # the edge is now one-hot on it


def test_measure_restores_the_running_statistics():
    model = tiny_darts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    select.measure(model, [batch()], torch.device("cpu"), nn.CrossEntropyLoss())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_a_pt_search_records_its_projection_and_result(tmp_path, space):
    metrics = run(tiny_cfg(tmp_path, space=space, name="pt", order=1, epochs=1, select="pt",
                           pt_interval=1))
    sel = metrics["selection"]
    n_edges, nodes = (5, 2) if space == "darts" else (6, 0)
    matrices = 2 if space == "darts" else 1
    assert sel["tune_epochs"] == (n_edges + nodes - 1 + 1 if space == "darts" else n_edges - 1)
    assert len(sel["projections"]) == matrices * (n_edges + nodes)
    assert metrics["genotype"] == sel["genotype"]
    last = metrics["history"][-1]["selection"]["tune"][-1]
    assert ("skip_connect_normal" if space == "darts" else "skip_connect") in last
    assert "genotype" in last
    if space == "darts":  # the last projection, then one tuning epoch (DARTS-PT's schedule)
        assert last["genotype"] == sel["genotype"]
    result = tmp_path / "pt" / ("genotype.json" if space == "darts" else "arch.json")
    assert json.loads(result.read_text())["normal" if space == "darts" else "arch"] == \
        sel["genotype"]["normal" if space == "darts" else "arch"]
    if space == "nb201":  # every edge projected one-hot: its op is the chosen one
        chosen = {p["edge"]: NB201_OPS[p["op_column"]] for p in sel["projections"]}
        assert NB201Arch.from_string(sel["genotype"]["arch"]).ops == tuple(chosen[e] for e in range(6))


# -- DARTS+ ------------------------------------------------------------------------------------
def test_early_stopping_stops_at_the_first_epoch_with_k_skips(tmp_path, monkeypatch):
    counts = iter([0, 2, 3, 3, 3])  # skip-connections of each epoch's cell

    def decode(self, cells, meta):
        n = next(counts)
        return NB201Arch(("skip_connect",) * n + ("nor_conv_3x3",) * (6 - n))

    monkeypatch.setattr(pieces.Pieces, "decode", decode)
    cfg = tiny_cfg(tmp_path, space="nb201", name="es", epochs=5, order=1, early_stop_skips=2)
    metrics = run(cfg)
    skips = [r["skip_connect"] for r in metrics["history"]]  # NB201: one cell, no normal one
    assert skips == [0, 2] and metrics["early_stop"]["epoch"] == 2
    assert metrics["early_stop"]["skip_connect"] == 2
    assert "--early_stop_skips 2" in metrics["early_stop"]["reason"]
    assert metrics["complete"] and metrics["history"][-1]["early_stop"]
    on_disk = json.loads((tmp_path / "es" / "metrics.json").read_text())
    assert on_disk["early_stop"]["epoch"] == 2 and len(on_disk["history"]) == 2
    assert json.loads((tmp_path / "es" / "arch.json").read_text()) == metrics["history"][-1]["genotype"]
    again = run(cfg, resume=str(tmp_path / "es"))  # a stopped search stays stopped
    assert len(again["history"]) == 2


def test_the_learnable_ops_are_the_convolutions():
    assert [PRIMITIVES[k] for k in select.learnable_columns(PRIMITIVES)] == \
        ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    assert [NB201_OPS[k] for k in select.learnable_columns(NB201_OPS)] == \
        ["nor_conv_1x1", "nor_conv_3x3"]


def test_the_learnable_ranking_orders_each_edges_convolutions_by_alpha():
    model = NB201SearchNetwork(C=4, N=1)
    with torch.no_grad():  # columns: none, skip, conv 1x1, conv 3x3, avg pool
        model.alphas.copy_(torch.tensor([[9.0, 9.0, 0.2, 0.1, 9.0]] + [[0.0, 0.0, 0.1, 0.3, 0.0]] * 5))
    cfg = tiny_cfg("unused", space="nb201", early_stop_stable=2)
    ranking = pieces.Pieces(cfg, model).of(pieces.EarlyStop).ranking(NB201_OPS)
    assert ranking == [[[2, 3]] + [[3, 2]] * 5]  # the other ops' alphas do not count
    assert select.learnable_ranking([torch.zeros(1, 8)], [4, 5, 6, 7]) == [[[4, 5, 6, 7]]]  # ties


def test_a_ranking_is_stable_once_it_has_held_for_n_epochs():
    a, b = [[[2, 3]]], [[[3, 2]]]
    assert not select.ranking_stable([a, b, b], 3) and select.ranking_stable([a, b, b, b], 3)
    assert not select.ranking_stable([b, b], 3) and not select.ranking_stable([b, b, b], None)
    assert select.ranking_stable([a, b], 1)


def test_early_stopping_on_a_stable_ranking(tmp_path, monkeypatch):
    a, b = [[[2, 3]] * 6], [[[3, 2]] * 6]
    rankings = iter([a, b, b, b, b, b])
    monkeypatch.setattr(pieces.EarlyStop, "ranking", lambda self, ops: next(rankings))
    cfg = tiny_cfg(tmp_path, space="nb201", name="stable", epochs=6, order=1, early_stop_stable=3)
    metrics = run(cfg)
    assert [r["learnable_ranking"] for r in metrics["history"]] == [a, b, b, b]
    assert metrics["early_stop"]["epoch"] == 4 and metrics["complete"]
    assert "--early_stop_stable 3" in metrics["early_stop"]["reason"]
    again = run(cfg, resume=str(tmp_path / "stable"))  # a stopped search stays stopped
    assert len(again["history"]) == 4


# -- presets -----------------------------------------------------------------------------------
def test_every_preset_sets_config_fields():
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for name, preset in presets.PRESETS.items():
        unknown = set(preset) - fields
        assert not unknown, (name, unknown)
        for key, (_value, source) in preset.items():
            assert source, (name, key)


@pytest.mark.parametrize("name", list(presets.PUBLISHED))
def test_a_preset_equals_its_explicit_flags(name):
    preset = presets.PRESETS[name]
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    if set(preset) - fields:
        with pytest.raises(UserError, match=f"--method {name} sets"):
            presets.apply(SearchConfig(method=name))
        return
    explicit = SearchConfig(method=name, **{k: v for k, (v, _) in preset.items()})
    assert presets.apply(SearchConfig(method=name), explicit=set()) == explicit
    assert presets.apply(SearchConfig(method=name)) == explicit


def test_an_explicit_flag_overrides_the_preset():
    cfg = presets.apply(SearchConfig(method="pc-darts", order=2), explicit={"order"})
    assert (cfg.order, cfg.partial_channels, cfg.warmup_epochs) == (2, 4, 15)


def test_the_cli_applies_and_logs_a_preset(tmp_path):
    args = ["--dataset", "synthetic", "--space", "nb201", "--layers", "1", "--init_channels", "4",
            "--image_size", "8", "--synthetic_size", "16", "--batch_size", "8", "--workers", "0",
            "--no-progress", "--device", "cpu", "--no-tensorboard", "--save", str(tmp_path),
            "--name", "m", "--method", "sdarts-rs", "--order", "2", "--epochs", "1"]
    assert train_search.main(args) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["method"], config["perturb"], config["perturb_epsilon"], config["order"]) == \
        ("sdarts-rs", "random", 0.3, 2)
    log = (tmp_path / "m" / "log.txt").read_text()
    assert "--method sdarts-rs: --perturb random set" in log
    assert "--method sdarts-rs: --order 1 overridden by --order 2" in log


# -- bad combinations --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(aux_skip=1.0, skip_dropout=0.5, order=1), "--aux_skip with --skip_dropout"),
    (dict(aux_skip=1.0, partial_channels=2), "--aux_skip with --partial_channels"),
    (dict(skip_dropout=0.5, order=2), "--skip_dropout with --order 2 --hessian fd"),
    (dict(select="pt", max_skip=2), "--select pt with --max_skip"),
    (dict(select="pt", partial_channels=2), "--select pt with --partial_channels"),
    (dict(space="nb201", perturb="random", partial_channels=2, order=1),
     "--perturb with --partial_channels on --space nb201"),
    (dict(warmup_epochs=2, epochs=2), "--warmup_epochs 2"),
    (dict(max_skip=1, ops="none,sep_conv_3x3"), "--max_skip: acts on skip_connect"),
    (dict(skip_dropout=1.0), "--skip_dropout 1.0"),
    (dict(early_stop_skips=0), "--early_stop_skips 0"),
    (dict(early_stop_stable=0), "--early_stop_stable 0"),
    (dict(mixing="gdas", perturb="random", order=1), "--mixing gdas: --perturb"),
    (dict(mixing="drnas", aux_skip=1.0), "--mixing drnas: --perturb"),
])
def test_bad_combinations_are_one_clear_user_error(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("-", r"\-").replace(".", r"\.")):
        run(tiny_cfg(tmp_path, **overrides))
    assert not list(tmp_path.iterdir())  # refused before a run directory is made


# -- tiny searches: each piece, both spaces, both orders where the method allows -------------
PIECES = {
    "sdarts-rs": dict(perturb="random"),
    "sdarts-adv": dict(perturb="adversarial"),
    "darts-minus": dict(aux_skip=1.0),
    "skip-dropout": dict(skip_dropout=0.7),  # second order: with the exact Hessian only
    "warmup": dict(warmup_epochs=1),
    "max-skip": dict(max_skip=0),
    "pt": dict(select="pt", pt_interval=0),
    "early-stop": dict(early_stop_skips=7),
}


# First order on both spaces; second order on NAS-Bench-201's (the cheaper supernet: the
# second-order step itself is the same code in both spaces).
SEARCHES = ([(piece, space, 1) for piece in PIECES for space in ("darts", "nb201")]
            + [(piece, "nb201", 2) for piece in PIECES])


@pytest.mark.parametrize("piece, space, order", SEARCHES)
def test_a_tiny_search_runs_with_each_piece(tmp_path, piece, space, order):
    extra = dict(PIECES[piece])
    if piece == "skip-dropout" and order == 2:
        extra["hessian"] = "exact"
    metrics = run(tiny_cfg(tmp_path, space=space, name="t", order=order, **extra))
    assert metrics["complete"] and len(metrics["history"]) == 2
    skips = "skip_connect_normal" if space == "darts" else "skip_connect"
    for record in metrics["history"]:
        assert math.isfinite(record["train_loss"]) and skips in record
        if space == "nb201":
            NB201Arch.from_string(record["genotype"]["arch"])
    if piece == "max-skip":
        assert all(r[skips] == 0 for r in metrics["history"])
        assert all("skip_connect_uncapped" in r for r in metrics["history"])


def test_a_preset_value_that_cannot_work_is_named_as_the_presets(tmp_path, capsys):
    args = ["--dataset", "synthetic", "--space", "nb201", "--save", str(tmp_path),
            "--method", "pc-darts", "--init_channels", "6"]  # 4 does not divide 6
    assert train_search.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--method pc-darts sets --partial_channels" in err
    assert not list(tmp_path.iterdir())
