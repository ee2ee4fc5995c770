"""The one-shot evaluator (random search with weight sharing, Li & Talwalkar 2019; SPOS, Guo
et al. 2020): a single path is the supernet at one-hot weights and runs only the candidate's
ops; training moves only the sampled path; BatchNorm is recalibrated per candidate; a
trained supernet tells a dead cell from a working one; its weights survive a restart."""

import json
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT
from torch.utils.data import TensorDataset

from darts.accel import accelerate
from darts.errors import UserError
from darts.evaluators.oneshot import OneShotEvaluator, from_search_config
from darts.genotype import Genotype, genotype_from_edges
from darts.spaces import darts_cells, nb201
from darts.spaces.nb201 import (
    NB201_OPS,
    NB201Arch,
    NB201MixedOp,
    NB201SearchCell,
    NB201SearchNetwork,
)
from darts.supernet import MixedOp, SearchNetwork

ALL_NONE = NB201Arch(("none",) * 6)
ALL_CONV = NB201Arch(("nor_conv_3x3",) * 6)
# A DARTS cell pair of convolutions only: every node takes c_{k-2} and c_{k-1}.
DARTS_CONVS = genotype_from_edges([("sep_conv_3x3", 0), ("dil_conv_3x3", 1)] * 4,
                                  [("sep_conv_5x5", 0), ("dil_conv_5x5", 1)] * 4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run faster on one thread (and are then spared other processes' load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _nb201_net():
    return NB201SearchNetwork(num_classes=5, C=4, N=1)


def _darts_net():
    return SearchNetwork(4, 5, 3)


SPACES = {"nb201": (nb201, _nb201_net, (8, 8)), "darts": (darts_cells, _darts_net, (8, 8))}


def _data(n, size=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g),
                         torch.randint(0, classes, (n,), generator=g))


# ------------------------------------------------------------------------------------------
# (a) the single path is the one-hot mixture


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_single_path_equals_the_supernet_at_one_hot_weights(space_name, mode):
    space, make, (h, w) = SPACES[space_name]
    torch.manual_seed(0)
    model = make().double().train(mode == "train")
    x = torch.randn(3, 3, h, w, dtype=torch.float64)
    rng = random.Random(0)
    candidates = [space.sample(rng) for _ in range(6)]
    candidates += [ALL_NONE, ALL_CONV] if space is nb201 else [DARTS_CONVS]
    for c in candidates:
        torch.testing.assert_close(model.forward_path(x, c), model(x, model.path_weights(c)),
                                   rtol=0, atol=0)
    # Not vacuous: another candidate's path computes something else.
    assert not torch.allclose(model.forward_path(x, candidates[0]),
                              model(x, model.path_weights(candidates[1])))


def test_darts_one_hot_weights_select_each_chosen_edge_and_nothing_else():
    model = _darts_net()
    g = darts_cells.sample(random.Random(3))
    for reduction, w in zip((False, True), model.path_weights(g), strict=True):
        edges, _ = g.cell(reduction)
        space = model.space
        want = torch.zeros_like(w)
        for k, (op, i) in enumerate(edges):
            want[space.edges().index((k // 2, i)), space.primitives.index(op)] = 1.0
        assert torch.equal(w, want)
        # Two chosen edges per node, one op each: every other edge's row is all zeros.
        assert int((w.sum(1) > 0).sum()) == 2 * space.steps and torch.equal(w.sum(1).max(), w.new_tensor(1.0))


def test_nb201_one_hot_weights_put_one_on_each_edges_op():
    (w,) = _nb201_net().path_weights(ALL_CONV)
    assert torch.equal(w.sum(1), torch.ones(6)) and torch.equal(w[:, NB201_OPS.index("nor_conv_3x3")], torch.ones(6))


def test_a_path_the_supernet_cannot_run_is_refused():
    model = _darts_net()
    none = Genotype([("sep_conv_3x3", 0), ("none", 1)] + [("sep_conv_3x3", 0)] * 6, range(2, 6),
                    [("sep_conv_3x3", 0)] * 8, range(2, 6))  # no file would pass validation
    with pytest.raises(ValueError, match="'none'"):
        model.forward_path(torch.randn(1, 3, 8, 8), none)
    narrow = genotype_from_edges([("sep_conv_3x3", 0)] * 8, [("sep_conv_3x3", 0)] * 8,
                                 normal_concat=[4, 5])
    with pytest.raises(ValueError, match="output"):
        model.forward_path(torch.randn(1, 3, 8, 8), narrow)
    with pytest.raises(ValueError, match="partial_channels"):
        SearchNetwork(4, 5, 3, partial_channels=2).forward_path(torch.randn(1, 3, 8, 8), DARTS_CONVS)


# ------------------------------------------------------------------------------------------
# (b) only the candidate's ops run


def _count_op_calls(model):
    """Forward hooks on every op of every mixed op, and on the mixed ops themselves."""
    calls, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (MixedOp, NB201MixedOp)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)))
            for k, op in enumerate(module.ops):
                key = f"{name}.ops.{k}"
                handles.append(op.register_forward_hook(
                    lambda m, i, o, key=key: calls.__setitem__(key, calls.get(key, 0) + 1)))
    return calls, handles


def _expected_ops(model, candidate):
    """The op modules a single path of `candidate` must run, by name."""
    if isinstance(model, NB201SearchNetwork):
        return {f"body.{b}.edges.{e}.ops.{block.edges[e].columns.index(NB201_OPS.index(op))}"
                for b, block in enumerate(model.body) if isinstance(block, NB201SearchCell)
                for e, op in enumerate(candidate.ops) if op != "none"}
    space, names = model.space, set()
    for c, cell in enumerate(model.cells):
        edges, _ = candidate.cell(cell.reduction)
        for k, (op, i) in enumerate(edges):  # edge k enters node k // 2 from state i
            e = space.edges().index((k // 2, i))
            names.add(f"cells.{c}.edges.{e}.ops.{cell.edges[e].columns.index(space.primitives.index(op))}")
    return names


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("accelerated", [False, True])
def test_a_single_path_runs_exactly_the_candidates_ops(space_name, accelerated):
    space, make, (h, w) = SPACES[space_name]
    torch.manual_seed(0)
    model = make()
    if accelerated:  # the search's supernet: the executors compute mixtures, never a path
        model = accelerate(model)
        for cell in model.modules():
            if getattr(cell, "executor", None) is not None:
                cell.executor = lambda *args: pytest.fail("the cell executor ran")
    calls, handles = _count_op_calls(model)
    rng = random.Random(1)
    for c in [space.sample(rng) for _ in range(4)] + ([ALL_NONE] if space is nb201 else []):
        calls.clear()
        model.forward_path(torch.randn(2, 3, h, w), c)
        assert calls == dict.fromkeys(_expected_ops(model, c), 1)
    if not accelerated:  # the hooks do see a mixture run every op
        calls.clear()
        model(torch.randn(2, 3, h, w))
        n_ops = sum(len(m.ops) for m in model.modules() if isinstance(m, (MixedOp, NB201MixedOp)))
        assert sum(v for k, v in calls.items() if ".ops." in k) == n_ops
    for handle in handles:
        handle.remove()


# ------------------------------------------------------------------------------------------
# (c) BatchNorm recalibration


def test_recalibration_averages_the_batch_statistics_of_the_candidates_features():
    torch.manual_seed(0)
    batch, bn_batches, valid_batches = 4, 3, 2
    evaluator = OneShotEvaluator(nb201, _data(14), _data(10, seed=1), num_classes=5,
                                 init_channels=4, layers=1, epochs=0, batch_size=batch,
                                 bn_batches=bn_batches, valid_batches=valid_batches,
                                 device="cpu", progress=False)
    model = evaluator.supernet
    arch = NB201Arch(("nor_conv_3x3",) + ("skip_connect",) * 5)
    result = evaluator(arch)

    # By hand, over the evaluator's recalibration batches (the last, partial one dropped).
    xs = evaluator.recalibration_batches()
    assert len(xs) == bn_batches and all(len(x) == batch for x in xs)
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    op = model.body[0].edges[0].ops[model.body[0].edges[0].columns.index(3)]  # nor_conv_3x3
    stem_stats, op_stats = [], []
    for x in xs:
        f = F.conv2d(x, stem_conv.weight, padding=1)
        stem_stats.append((f.mean((0, 2, 3)), f.var((0, 2, 3), unbiased=True)))
        h = F.batch_norm(f, None, None, stem_bn.weight, stem_bn.bias, training=True,
                         eps=stem_bn.eps)
        g = F.conv2d(F.relu(h), op[1].weight, padding=1)
        op_stats.append((g.mean((0, 2, 3)), g.var((0, 2, 3), unbiased=True)))
    for bn, stats in ((stem_bn, stem_stats), (op[2], op_stats)):
        mean = torch.stack([m for m, _ in stats]).mean(0)
        var = torch.stack([v for _, v in stats]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == bn_batches
    # A BatchNorm off the path holds no statistics of other candidates: reset, untouched.
    other = model.body[0].edges[0].ops[model.body[0].edges[0].columns.index(2)]  # nor_conv_1x1
    assert torch.equal(other[2].running_mean, torch.zeros(4))
    assert torch.equal(other[2].running_var, torch.ones(4))
    assert int(other[2].num_batches_tracked) == 0
    # Training keeps its momentum.
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    # The score: top-1 % of the recalibrated candidate, in eval mode, on the fixed batches.
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for x, y in evaluator.validation_batches():
            correct += int((model.forward_path(x, arch).argmax(1) == y).sum())
            total += len(y)
    assert total == valid_batches * batch
    assert result.score == pytest.approx(100.0 * correct / total) and result.reported == result.score
    assert result.cost > 0
    # Scoring again gives the same number: the statistics are the candidate's, not history's.
    evaluator(ALL_CONV)
    assert evaluator(arch).score == result.score


def test_every_batchnorm_on_a_darts_path_and_only_those_is_recalibrated():
    # Every op kind of the space, on the accelerated supernet that the evaluator builds.
    every_op = genotype_from_edges(
        [("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
         ("sep_conv_5x5", 1), ("dil_conv_3x3", 3), ("dil_conv_5x5", 0), ("sep_conv_3x3", 4)],
        [("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 1),
         ("dil_conv_3x3", 2), ("dil_conv_5x5", 3), ("skip_connect", 1), ("sep_conv_3x3", 4)])
    evaluator = OneShotEvaluator(darts_cells, _data(12), _data(4), num_classes=5, init_channels=4,
                                 layers=3, epochs=0, batch_size=4, bn_batches=3, valid_batches=1,
                                 device="cpu", progress=False)
    evaluator(every_op)
    on_path = _path_prefixes(evaluator.supernet, every_op)
    for name, m in evaluator.supernet.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            in_ops = ".edges." in name
            on = any(name.startswith(p) for p in on_path)
            assert int(m.num_batches_tracked) == (3 if on or not in_ops else 0), name
            assert m.momentum == 0.1


# ------------------------------------------------------------------------------------------
# (d) a training step moves only the sampled path


def _path_prefixes(model, candidate):
    return {f"{name}." for name in _expected_ops(model, candidate)}


def _changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


class _Recording:
    """A space whose samples are recorded (uniform draws of `space`, or a fixed candidate)."""

    def __init__(self, space, fixed=None):
        self.NAME, self.space, self.fixed, self.drawn = space.NAME, space, fixed, []

    def sample(self, rng):
        self.drawn.append(self.fixed or self.space.sample(rng))
        return self.drawn[-1]

    def __getattr__(self, name):  # the rest of the space (its supernet, defaults) as it is
        return getattr(self.space, name)


@pytest.mark.parametrize("space_name", SPACES)
def test_a_training_step_moves_only_the_sampled_paths_weights(space_name):
    space, make, (h, w) = SPACES[space_name]
    fixed = ALL_CONV if space is nb201 else DARTS_CONVS
    for recording in (_Recording(space), _Recording(space, fixed)):
        torch.manual_seed(0)
        model = make()
        evaluator = OneShotEvaluator(recording, _data(8), _data(8), supernet=model, epochs=1,
                                     batch_size=8, device="cpu", progress=False,
                                     channels_last=False)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        evaluator.train()
        (candidate,) = recording.drawn  # one batch: one step, one candidate
        on_path = _path_prefixes(model, candidate)
        ops = {n for n in before if ".edges." in n}
        changed = _changed(before, model)
        off_path = {n for n in ops if not any(n.startswith(p) for p in on_path)}
        assert off_path and not changed & off_path
        assert changed & ops  # the path itself moved
        if recording.fixed:  # convolutions only: every weight of the path and the rest moved
            assert changed == {n for n, _ in model.named_network_parameters()} - off_path


def test_training_draws_one_uniform_candidate_per_step():
    recording = _Recording(nb201)
    evaluator = OneShotEvaluator(recording, _data(20), _data(4), num_classes=5, init_channels=4,
                                 layers=1, epochs=2, batch_size=8, device="cpu", progress=False)
    evaluator.train()
    assert len(recording.drawn) == 2 * 3  # 3 batches of 20 images per epoch
    assert len(set(recording.drawn)) == len(recording.drawn)


# ------------------------------------------------------------------------------------------
# (e) a trained supernet ranks a dead cell below a working one


def test_a_trained_supernet_ranks_an_all_none_cell_below_an_all_conv_cell():
    torch.manual_seed(0)
    evaluator = OneShotEvaluator.from_dataset(
        nb201, "synthetic", synthetic_size=2000, image_size=16, init_channels=8, layers=1,
        epochs=4, batch_size=32, learning_rate=0.05, bn_batches=4, valid_batches=8,
        device="cpu", progress=False)
    dead, conv = evaluator(ALL_NONE).score, evaluator(ALL_CONV).score
    # An all-`none` cell passes nothing: the classifier sees a constant, chance is 10%.
    assert dead < 15.0 and conv > dead + 8.0, (dead, conv)


# ------------------------------------------------------------------------------------------
# Saving, resuming, logging


def _small(space=nb201, **kw):
    options = dict(num_classes=5, init_channels=4, layers=1, epochs=2, batch_size=8,
                   bn_batches=2, valid_batches=2, device="cpu", progress=False)
    return OneShotEvaluator(space, _data(16), _data(16, seed=1), **{**options, **kw})


def test_a_killed_training_resumes_where_it_stopped_and_a_finished_one_is_not_retrained(tmp_path):
    path = tmp_path / "supernet.pt"
    torch.manual_seed(0)
    reference = _small()
    reference.train()

    lines = []

    def killed_after_epoch_1(line):
        lines.append(line)
        if "epoch 1/2" in line:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _small(path=path, log=killed_after_epoch_1).train()
    assert path.exists() and any("supernet epoch 1/2 train_loss" in line for line in lines)

    torch.manual_seed(1)  # another initialisation: the file's weights must win
    lines.clear()
    resumed = _small(path=path, log=lines.append)
    resumed.train()
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert any("resuming" in line and "epoch 2/2" in line for line in lines)
    assert sum("train_loss" in line for line in lines) == 1  # only epoch 2 trained
    for (name, a), b in zip(reference.supernet.state_dict().items(),
                            resumed.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    torch.manual_seed(2)
    lines.clear()
    loaded = _small(path=path, log=lines.append)
    assert loaded(ALL_CONV).score == resumed(ALL_CONV).score == reference(ALL_CONV).score
    assert not any("train_loss" in line for line in lines) and "loaded" in lines[0]


def test_a_supernet_file_of_other_settings_or_garbage_is_one_user_error(tmp_path):
    path = tmp_path / "supernet.pt"
    _small(path=path, epochs=1).train()
    with pytest.raises(UserError, match=r"supernet.pt.*learning_rate 0.025 \(now 0.05\)"):
        _small(path=path, epochs=1, learning_rate=0.05).train()
    path.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="supernet.pt: not a readable supernet file"):
        _small(path=path, epochs=1).train()


def test_bad_settings_and_spaces_without_a_supernet_are_user_errors():
    with pytest.raises(UserError, match="bn_batches"):
        _small(bn_batches=-1)
    with pytest.raises(UserError, match="valid_batches"):
        _small(valid_batches=0)
    with pytest.raises(UserError, match="has none"):
        _small(SimpleNamespace(NAME="cnn", sample=None))


def test_defaults_are_the_papers_per_space():
    darts_eval = OneShotEvaluator(darts_cells, _data(4), _data(4), supernet=_darts_net(),
                                  device="cpu")
    nb201_eval = OneShotEvaluator(nb201, _data(4), _data(4), supernet=_nb201_net(), device="cpu")
    assert (darts_eval.epochs, darts_eval.weight_decay, darts_eval.nesterov) == (100, 3e-4, False)
    assert (nb201_eval.epochs, nb201_eval.weight_decay, nb201_eval.nesterov) == (250, 5e-4, True)
    for e in (darts_eval, nb201_eval):
        assert (e.batch_size, e.learning_rate, e.grad_clip, e.bn_batches, e.valid_batches) == \
            (64, 0.025, 5.0, 100, 10)


def test_the_search_runner_builds_it_from_its_config(tmp_path):
    cfg = SimpleNamespace(dataset="synthetic", data="data", train_portion=0.5, image_size=8,
                          num_classes=4, synthetic_size=40, seed=0, batch_size=8,
                          learning_rate=0.025, learning_rate_min=0.001, momentum=0.9,
                          weight_decay=None, nesterov=None, grad_clip=5.0, init_channels=4,
                          layers=None, device="cpu", workers=0, channels_last=None,
                          progress=False, oneshot_epochs=1, bn_batches=1, valid_batches=1)
    lines = []
    evaluator = from_search_config(cfg, darts_cells, tmp_path, SimpleNamespace(info=lines.append))
    assert (evaluator.epochs, evaluator.nesterov, len(evaluator.train_data)) == (1, False, 20)
    assert len(evaluator.supernet.cells) == 8
    result = evaluator(darts_cells.sample(random.Random(0)))
    assert 0 <= result.score <= 100 and (tmp_path / "supernet.pt").exists()
    assert any("oneshot supernet epoch 1/1" in line for line in lines)


def test_the_benchmark_writes_its_json(tmp_path):
    out = tmp_path / "oneshot.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_oneshot.py"), "--sizes",
                    "small", "--spaces", "nb201", "--rounds", "1", "--bn_batches", "1",
                    "--valid_batches", "1", "--threads", "1", "--device", "cpu", "--json",
                    str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "oneshot_evaluation" and result["device"] == "cpu"
    (case,) = result["cases"]
    assert (case["space"], case["size"], case["batch_size"]) == ("nb201", "small", 32)
    for what in ("evaluation", "forward", "train_step"):
        r = case[what]
        assert r["speedup"] == pytest.approx(r["mixed_min_s"] / r["path_min_s"])
