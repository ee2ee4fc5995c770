"""Zero-cost proxies (darts.proxies): each against a hand computation or its defining property,
on tiny networks in float64; the scorer's CSV (order, resume after a kill, bad input)."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT

from darts.proxies import PROXIES, measures

LOSS = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def chain(*sizes, bias=False, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batch(n=6, d=4, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def manual_grad(w, x, y):
    """dL/dW of mean cross-entropy of a single bias-free linear layer, by hand."""
    p = F.softmax(x @ w.T, -1)
    return (p - F.one_hot(y, w.shape[0])).T @ x / len(x)


# -- saliencies --------------------------------------------------------------------------------
def test_synflow_of_a_linear_chain_is_the_layer_count_times_the_product_of_abs_weights():
    net = chain(4, 3, 2)
    x, y = batch()
    w1, w2 = (m.weight.detach().abs() for m in measures.prunable(net))
    r = float(torch.ones(2) @ (w2 @ (w1 @ torch.ones(4))))  # 1^T |W2| |W1| 1
    # R is linear in each layer's weights: sum theta dR/dtheta over one layer is R
    assert measures.synflow(net, x, y, LOSS) == pytest.approx(2 * r, rel=1e-12)


def test_synflow_leaves_out_batch_norm_and_runs_in_float64():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False)).float()
    plain = nn.Sequential(net[0], nn.Identity(), net[2])
    x, y = batch()
    assert measures.synflow(net, x.float(), y, LOSS) == pytest.approx(
        measures.synflow(plain, x.float(), y, LOSS), rel=1e-12)
    deep = nn.Sequential(*[nn.Linear(8, 8, bias=False) for _ in range(60)]).float()
    with torch.no_grad():
        for m in deep:
            m.weight.fill_(10.0)  # 80^60 overflows float32
    assert math.isfinite(measures.synflow(deep, torch.ones(1, 8).float(), y[:1], LOSS))


def test_snip_plain_and_grad_norm_of_one_layer_are_their_definitions():
    net = chain(4, 3)
    x, y = batch()
    w = net[0].weight.detach().clone()
    g = manual_grad(w, x, y)
    assert measures.snip(net, x, y, LOSS) == pytest.approx(float((w * g).abs().sum()), rel=1e-10)
    assert measures.plain(net, x, y, LOSS) == pytest.approx(float((w * g).sum()), rel=1e-10)
    assert measures.grad_norm(net, x, y, LOSS) == pytest.approx(float(g.norm()), rel=1e-10)
    assert measures.l2_norm(net, x, y, LOSS) == pytest.approx(float(w.norm()), rel=1e-12)


def test_grasp_is_minus_theta_times_the_hessian_gradient_product():
    net = chain(4, 3)
    x, y = batch()
    w = net[0].weight.detach().clone()
    g = manual_grad(w, x, y)
    eps = 1e-6  # H g by a central difference of the hand gradient
    hg = (manual_grad(w + eps * g, x, y) - manual_grad(w - eps * g, x, y)) / (2 * eps)
    assert measures.grasp(net, x, y, LOSS) == pytest.approx(float(-(w * hg).sum()), rel=1e-6)


def test_fisher_of_one_layer_is_half_the_mean_squared_activation_times_its_gradient():
    net = chain(4, 3)
    x, y = batch()
    a = x @ net[0].weight.detach().T
    da = (F.softmax(a, -1) - F.one_hot(y, 3)) / len(x)
    expected = float(0.5 * (a * da).pow(2).mean(0).sum())
    assert measures.fisher(net, x, y, LOSS) == pytest.approx(expected, rel=1e-10)


# -- Jacobians and activation codes --------------------------------------------------------------
def test_jacov_of_a_linear_map_sees_identical_jacobians():
    net = chain(4, 3)
    x, y = batch(n=5)
    # every image's Jacobian is the column sums of W: the correlation matrix is all ones,
    # eigenvalues 5 and 0 (4 times)
    k = 1e-5
    expected = -((math.log(5 + k) + 1 / (5 + k)) + 4 * (math.log(k) + 1 / k))
    assert measures.jacov(net, x, y, LOSS) == pytest.approx(expected, rel=1e-6)
    # EPE-NAS: per class an all-ones correlation matrix of its n_c images
    counts = torch.bincount(y).tolist()
    want = sum(n * n * math.log(1 + k) for n in counts if n)
    assert measures.epe_nas(net, x, y, LOSS) == pytest.approx(want, rel=1e-6)


def test_nwot_kernel_counts_matching_activation_codes():
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0], [1.0, -2.0], [-1.0, -1.0]])
    codes = [[1, 1, 1], [1, 0, 0], [0, 0, 0]]  # the ReLU's input > 0, per image
    want = torch.tensor([[sum(a == b for a, b in zip(ci, cj, strict=True)) for cj in codes] for ci in codes],
                        dtype=torch.float64)
    k = measures.nwot_kernel(net, x)
    assert torch.equal(k, want)
    assert measures.nwot(net, x, torch.zeros(3, dtype=torch.long), LOSS) == pytest.approx(
        float(torch.linalg.slogdet(want)[1]))


def test_zen_grows_by_log_two_when_the_perturbation_doubles_on_a_linear_network():
    def net():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))

    x = torch.randn(4, 3, 6, 6)
    y = torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    a = measures.zen(net(), x, y, LOSS, mixup_gamma=0.01)
    torch.manual_seed(0)
    b = measures.zen(net(), x, y, LOSS, mixup_gamma=0.02)
    assert b - a == pytest.approx(math.log(2), rel=1e-9)
    torch.manual_seed(0)
    assert measures.zen(net(), 5 * x + 1, y, LOSS, mixup_gamma=0.01) == pytest.approx(a)  # x's shape only


def test_params_and_flops_count_the_network():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    x = torch.zeros(2, 3, 5, 5)
    assert measures.params(net, x, None, LOSS) == 3 * 4 * 9 + 4 * 2 + 2
    assert measures.flops(net, x, None, LOSS) == 5 * 5 * 4 * 3 * 9 + 4 * 2


def test_every_proxy_scores_a_network_of_every_space_finitely():
    import random

    from darts.proxies import score_candidate
    from darts.spaces import SPACES

    torch.set_default_dtype(torch.float32)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    sizes = {"nb201": (4, 1), "darts": (4, 2), "cnn": (None, None)}
    for name, (channels, layers) in sizes.items():
        space = SPACES[name]
        c = space.sample(random.Random(0))
        scores, seconds = score_candidate(space, c, list(PROXIES), x, y, num_classes=4,
                                          channels=channels, layers=layers, family="cifar",
                                          seed=1)
        bad = {k: v for k, v in scores.items() if not (math.isfinite(v) or k == "nwot")}
        assert not bad, (name, bad)
        assert set(seconds) == set(PROXIES)


# -- the scorer --------------------------------------------------------------------------------
def score(tmp_path, *args, out="s.csv", check=True):
    """`python -m darts.proxies score ...` run here, in `tmp_path`: (exit status, stderr)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from darts.proxies.__main__ import main

    argv = ["score", "--dataset", "synthetic", "--synthetic_size", "64", "--image_size", "8",
            "--batch_size", "8", "--channels", "4", "--layers", "1", "--threads", "1",
            "--no-progress", "--out", str(tmp_path / out), *args]
    err, cwd, dtype = io.StringIO(), os.getcwd(), torch.get_default_dtype()
    os.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)  # as a fresh process (this file's tests use float64)
    try:
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(cwd)
        torch.set_default_dtype(dtype)
    if check:
        assert code == 0, err.getvalue()
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


def rows(path):
    return list(csv.reader(path.read_text().splitlines()))


def test_scores_do_not_depend_on_the_order_of_the_candidates(tmp_path):
    import random

    from darts.spaces import nb201

    archs = [nb201.sample(random.Random(i)).to_string() for i in range(4)]
    (tmp_path / "a.txt").write_text("\n".join(archs) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(reversed(archs)) + "\n")
    score(tmp_path, "--archs", "a.txt", "--proxies", "synflow,nwot,snip", out="a.csv")
    score(tmp_path, "--archs", "b.txt", "--proxies", "synflow,nwot,snip", out="b.csv")
    a, b = rows(tmp_path / "a.csv"), rows(tmp_path / "b.csv")
    assert a[0] == ["arch", "synflow", "nwot", "snip", "seconds"]
    assert [r[0] for r in a[1:]] == archs
    assert {r[0]: r[1:4] for r in a[1:]} == {r[0]: r[1:4] for r in b[1:]}
    summary = json.loads((tmp_path / "a.csv.json").read_text())
    assert summary["candidates"] == 4 and summary["peak_rss_mib"] > 0


def test_a_killed_scoring_resumes_where_it_stopped(tmp_path):
    whole = score(tmp_path, "--all", "--limit", "12", "--proxies", "params,l2_norm",
                  out="whole.csv")
    assert whole.returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "darts.proxies", "score", "--dataset", "synthetic",
            "--synthetic_size", "64", "--image_size", "8", "--batch_size", "8", "--channels",
            "4", "--layers", "1", "--threads", "1", "--no-progress", "--all", "--limit", "12",
            "--proxies", "params,l2_norm", "--out", str(tmp_path / "part.csv")]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    part = tmp_path / "part.csv"
    deadline = time.monotonic() + 120
    while not (part.exists() and len(part.read_text().splitlines()) >= 4):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(part, "a") as f:
        f.write("|half-written")  # a row cut by the kill
    done = score(tmp_path, "--all", "--limit", "12", "--proxies", "params,l2_norm",
                 out="part.csv")
    assert "already scored; going on" in done.stderr
    assert rows(part) == [r[:3] + [rows(part)[i][3]] if i else r
                          for i, r in enumerate(rows(tmp_path / "whole.csv"))]


@pytest.mark.parametrize("args, content, message", [
    (["--proxies", "synflo"], None, "--proxies synflo: unknown proxy; choose one of"),
    (["--archs", "c.txt"], "|nor_conv_3x3~0|+|bad|\n", "--archs c.txt, line 1:"),
    (["--archs", "c.txt"], "\n\n", "--archs c.txt: no candidate in it"),
    (["--sample", "2", "--all"], None, "give exactly one of --archs FILE, --sample N, --all"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, content, message):
    if content is not None:
        (tmp_path / "c.txt").write_text(content)
    if "--archs" not in args and "--sample" not in args:
        args = [*args, "--sample", "2"]
    done = score(tmp_path, *args, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_correlate_reports_rank_correlations_against_the_table(tmp_path):
    import numpy as np

    from darts.benchmarks.nb201 import synthetic_table
    from darts.proxies.correlate import correlate, top_fraction_precision

    table = synthetic_table(tmp_path / "t.csv", seed=0)
    score(tmp_path, "--sample", "30", "--proxies", "params,flops,l2_norm")
    result = correlate(tmp_path / "s.csv", str(table), "cifar10_test", plots=False)
    assert result["candidates"] == 30
    archs, cols = __import__("darts.proxies.score", fromlist=["x"]).read_scores(tmp_path / "s.csv")
    from scipy import stats

    from darts.benchmarks.nb201 import BenchmarkTable

    t = BenchmarkTable.load(table)
    truth = [t.lookup(a)["cifar10_test"] for a in archs]
    rho = stats.spearmanr(cols["params"], truth).statistic
    assert result["proxies"]["params"]["spearman"] == pytest.approx(rho)
    # hand case: the top 1 of 10 by score is the top 1 by truth
    s = np.arange(10.0)
    assert top_fraction_precision(s, s) == 1.0 and top_fraction_precision(s, -s) == 0.0
    assert (tmp_path / "correlation.csv").exists()


# -- searching with proxies ---------------------------------------------------------------------
def tiny_cfg(tmp_path, **kw):
    from darts.search_config import SearchConfig

    base = dict(space="nb201", dataset="synthetic", synthetic_size=64, image_size=8,
                batch_size=8, init_channels=4, layers=1, threads=1, progress=False,
                tensorboard=False, save=str(tmp_path), budget=6)
    return SearchConfig(**{**base, **kw})


def test_the_proxy_evaluator_scores_by_one_proxy_or_a_vote_against_its_reference(tmp_path):
    import random

    from darts.evaluators.proxy import ProxyEvaluator, parse_weights, settings_of
    from darts.spaces import nb201

    cfg = tiny_cfg(tmp_path)
    names = ("params", "l2_norm")
    one = ProxyEvaluator(nb201, {"params": 1.0}, settings_of(cfg, nb201, ("params",)))
    c = nb201.sample(random.Random(5))
    assert one(c).score == measures.params(
        nb201.network(c, 10, 4, 1), None, None, LOSS)  # the raw proxy: the parameter count
    vote = ProxyEvaluator(nb201, parse_weights("params:3,l2_norm"), settings_of(cfg, nb201, names),
                          reference=7)
    assert len(vote.reference["params"]) == 7 and vote.proxy_evaluations == 7
    # the vote by hand: the weighted share of the reference each proxy's score beats
    s = vote.scorer(c)[1]
    beat = {p: sum((r < s[p]) + 0.5 * (r == s[p]) for r in vote.reference[p]) / 7 for p in names}
    assert vote(c).score == pytest.approx((3 * beat["params"] + beat["l2_norm"]) / 4)
    with pytest.raises(Exception, match="a weight must be positive"):
        parse_weights("params:0")


def test_naswots_recipe_keeps_the_best_proxy_score_and_reports_the_table(tmp_path):
    from darts.benchmarks.nb201 import BenchmarkTable, synthetic_table
    from darts.multitrial import run
    from darts.spaces import nb201

    table = synthetic_table(tmp_path / "t.csv", seed=0)
    result = run(tiny_cfg(tmp_path, strategy="random", evaluator="proxy", proxy="params",
                          benchmark=str(table), name="naswot"))
    history = [json.loads(line) for line in (tmp_path / "naswot" / "history.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r["score"])
    assert result["best_arch"] == best["candidate"]
    assert result["proxy_evaluations"] == 6 and result["table_queries"] == 0
    t = BenchmarkTable.load(table)
    for r in history:  # reported: the table's test accuracy, never the strategy's score
        assert r["reported"] == t.lookup(nb201.parse(r["candidate"]))["cifar10_test"]


def test_a_warm_start_seeds_evolution_with_the_best_of_a_proxy_scored_sample(tmp_path):
    from darts.benchmarks.nb201 import synthetic_table
    from darts.multitrial import run

    table = synthetic_table(tmp_path / "t.csv", seed=0)
    result = run(tiny_cfg(tmp_path, strategy="evolution", population=3, evaluator="benchmark",
                          benchmark=str(table), warm_start=8, proxy="params", name="warm"))
    archs, cols = __import__("darts.proxies.score", fromlist=["x"]).read_scores(
        tmp_path / "warm" / "warm_start.csv")
    p = cols["params"]
    top3 = [archs[i] for i in sorted(range(len(p)), key=lambda i: (-p[i], i))[:3]]  # ties: first
    history = [json.loads(line) for line in (tmp_path / "warm" / "history.jsonl").read_text().splitlines()]
    assert [r["candidate"] for r in history[:3]] == top3  # the initial population
    assert result["table_queries"] == 6 and result["proxy_evaluations"] == 8
    again = run(None, resume=str(tmp_path / "warm"))  # resumed: the same warm start, replayed
    assert again["best_arch"] == result["best_arch"]
    with pytest.raises(Exception, match="--strategy random starts at random"):
        run(tiny_cfg(tmp_path, strategy="random", warm_start=8, benchmark=str(table),
                     name="nope"))


def test_bo_warm_start_enqueues_the_candidates_as_its_first_trials():
    import random

    from darts.spaces import nb201
    from darts.strategies import BayesianOptimisation

    rng = random.Random(0)
    seeds = [nb201.sample(rng) for _ in range(3)]
    bo = BayesianOptimisation(nb201, seed=0, startup=2)
    bo.warm_start(seeds)
    asked = [bo.ask() for _ in range(3)]
    assert asked[:2] == seeds[:2] and asked[2] != seeds[2]  # the best `startup` only


def test_the_path_encoding_marks_each_live_path_with_its_ops():
    from darts.spaces import nb201

    arch = nb201.NB201Arch.from_string(
        "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|")
    v = nb201.path_encode(arch)
    # live ops in order skip, conv1x1, conv3x3, avgpool; paths 0-1-2-3 (64), 0-1-3 (16),
    # 0-2-3 (16), 0-3 (4). 0-1-2-3 holds `none`; 0-1-3 is conv3x3, conv1x1: 64 + 2 * 4 + 1;
    # 0-2-3 is skip, skip: 80; 0-3 avg_pool: 96 + 3
    assert len(v) == 100 and [i for i, x in enumerate(v) if x] == [73, 80, 99]


@pytest.mark.parametrize("predictor", ["mlp", "gbt"])
def test_bananas_beats_random_on_a_smooth_objective_and_repeats_by_seed(predictor):
    from darts.spaces import nb201
    from darts.strategies import Bananas, RandomSearch

    def score(arch):  # the number of 3x3 convolutions, a smooth function of the encoding
        return float(sum(op == "nor_conv_3x3" for op in arch.ops))

    def best_of(strategy, budget=25):
        for _ in range(budget):
            c = strategy.ask()
            strategy.tell(c, score(c))
        return strategy.best[0]

    kw = dict(predictor=predictor, init=5, candidates=30, k=2, epochs=50)  # 50: a fast test
    found = [best_of(Bananas(nb201, seed=s, **kw)) for s in range(2)]
    chance = [best_of(RandomSearch(nb201, seed=s)) for s in range(2)]
    assert sum(found) > sum(chance) and max(found) == 6.0
    a, b2 = Bananas(nb201, seed=3, **kw), Bananas(nb201, seed=3, **kw)
    for _ in range(7):
        ca, cb = a.ask(), b2.ask()
        assert ca == cb
        a.tell(ca, score(ca))
        b2.tell(cb, score(cb))


def test_compare_runs_the_proxy_guided_rows_on_the_same_table_budget(tmp_path):
    from darts import compare
    from darts.benchmarks.nb201 import synthetic_table

    table = synthetic_table(tmp_path / "t.csv", seed=0)
    out = tmp_path / "cmp"
    code = compare.main(["--benchmark", str(table), "--strategies", "random,evolution+warm,naswot",
                         "--seeds", "1", "--budget", "5", "--dataset", "synthetic",
                         "--image_size", "8", "--init_channels", "4", "--layers", "1",
                         "--batch_size", "8", "--proxy", "params", "--warm_start", "6",
                         "--naswot_sample", "6", "--out", str(out)])
    assert code == 0
    rows_ = {r[0]: r for r in rows(out / "summary.csv")[1:]}
    assert rows_["random"][6:] == ["5", "0"]
    assert rows_["evolution+warm"][6:] == ["5", "6"] and rows_["naswot"][6:] == ["1", "6"]
    assert compare.main(["--benchmark", str(table), "--strategies", "random+warm",
                         "--out", str(out)]) == 2


def test_a_candidate_file_of_the_darts_space_takes_text_or_genotype_json(tmp_path):
    from darts.errors import UserError
    from darts.genotype import resolve_genotype
    from darts.proxies.__main__ import read_candidates
    from darts.spaces import SPACES

    space = SPACES["darts"]
    g = space.parse(space.to_text(resolve_genotype("darts_v2")))
    (tmp_path / "c.txt").write_text(space.to_text(g) + "\n\n" + json.dumps(g.to_dict()) + "\n")
    assert read_candidates(space, str(tmp_path / "c.txt")) == [g, g]
    (tmp_path / "bad.txt").write_text('{"normal": [["sep_conv_3x3", 0]]}\n')
    with pytest.raises(UserError, match="bad.txt, line 1:"):
        read_candidates(space, str(tmp_path / "bad.txt"))


def test_workers_write_the_rows_one_process_writes(tmp_path):
    score(tmp_path, "--sample", "5", "--proxies", "synflow,params", out="one.csv")
    score(tmp_path, "--sample", "5", "--proxies", "synflow,params", "--workers", "2",
          out="two.csv")
    one, two = rows(tmp_path / "one.csv"), rows(tmp_path / "two.csv")
    assert [r[:3] for r in one] == [r[:3] for r in two]
