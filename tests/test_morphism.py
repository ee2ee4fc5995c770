"""Network morphism: NASH's hill climbing, and children that start from their parent's weights."""

from __future__ import annotations

import random

import pytest
import torch

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.evaluators.training import TrainEvaluator, _ensure_parent, _model
from darts.lineage import Child
from darts.search import SearchConfig
from darts.search import run as search_run
from darts.spaces import cnn
from darts.spaces.cnn import edit_arch
from darts.strategies import NetworkMorphism, run


def _deeper_is_better(candidate: Child) -> Evaluation:
    spec = candidate.spec
    score = spec.depth * 10 + sum(layer.width for layer in spec.layers) / 1000
    return Evaluation(score, score)


def test_hill_climbing_takes_the_best_child_of_each_step_and_replays():
    strategy = NetworkMorphism(cnn, seed=0, children=4, edits=3)
    start = strategy.parent
    records = run(strategy, _deeper_is_better, 12)
    assert len(records) == 12
    # three steps of four: each step's parent is the previous step's best child
    assert len(strategy.history) == 3
    scores = [r["score"] for r in records]
    for step in range(3):
        assert strategy.history[step][1] == max(scores[4 * step:4 * step + 4])
    assert [s for _, s in strategy.history] == sorted(s for _, s in strategy.history)
    # a child is its parent's spec after 1 to 3 edits, and names its parent
    probe = NetworkMorphism(cnn, seed=1, children=4, edits=3)
    for _ in range(4):
        child = probe.ask()
        assert child.parent == probe.parent.key and 1 <= len(child.edits) <= 3
        spec = probe.parent.spec
        for edit in child.edits:
            spec = edit_arch(spec, edit)
        assert spec == child.spec and str(child) == str(child.spec)
    assert start.parent is None and start.spec == cnn.parse("conv3x3-16-max|conv3x3-32-max")
    # resuming replays the history: the same children, the same climb
    again = run(NetworkMorphism(cnn, seed=0, children=4, edits=3), _deeper_is_better, 12,
                history=records[:5])
    assert [r["candidate"] for r in again] == [r["candidate"] for r in records]
    with pytest.raises(RuntimeError, match="multiple of the evaluator's batch"):
        extra = NetworkMorphism(cnn, seed=0, children=2)
        extra.ask(), extra.ask(), extra.ask()


def test_a_child_starts_from_its_parents_trained_weights(tmp_path):
    evaluator = TrainEvaluator(cnn, dataset="synthetic", synthetic_size=96, image_size=8,
                               epochs=1, batch_size=32, seed=0, threads=1, device="cpu",
                               weights_dir=str(tmp_path))
    strategy = NetworkMorphism(cnn, seed=2, children=2, edits=4)
    child = strategy.ask()
    s, data = evaluator.settings, evaluator._data()
    trained = _ensure_parent(child, cnn, s, data, torch.device("cpu"))  # trained now
    parent = torch.load(trained, weights_only=True)
    assert (tmp_path / f"{child.parent}.pt").exists() and parent["spec"] == str(child.parent_spec)
    net = cnn.network(child.parent_spec, 10)
    net.load_state_dict(parent["model"])
    assert any(not torch.equal(v, w) for v, w in zip(  # trained: not the initial weights
        net.state_dict().values(), cnn.network(child.parent_spec, 10).state_dict().values(),
        strict=True) if v.is_floating_point())
    from darts.train.data import SplitLoader

    loader = SplitLoader(data["train"], data["train_idx"], 32, seed=5, stream=0, workers=0)
    morphed = _model(child, cnn, s, data, torch.device("cpu"), loader, seed=5)
    assert str(morphed.arch) == str(child.spec)
    x = torch.randn(4, 3, 8, 8)
    net.eval(), morphed.eval()
    with torch.no_grad():
        torch.testing.assert_close(morphed(x), net(x), rtol=1e-4, atol=1e-5)
    result = evaluator(child)  # trains it and keeps its weights for its own children
    assert 0 <= result.score <= 100 and (tmp_path / f"{child.key}.pt").exists()
    assert evaluator(child).score == result.score  # the same lineage, the same training


def test_a_morphism_search_runs_and_refuses_children_that_do_not_fill_the_workers(tmp_path):
    base = dict(strategy="morphism", space="cnn", dataset="synthetic", synthetic_size=64,
                image_size=8, batch_size=32, eval_epochs=1, budget=4, morph_children=2,
                progress=False, tensorboard=False, save=str(tmp_path), threads=1)
    result = search_run(SearchConfig(**base, name="ok", workers=1))
    assert result["evaluations"] == 4 and len(list((tmp_path / "ok" / "weights").glob("*.pt"))) == 5
    with pytest.raises(UserError, match="--morph_children 3 must be a multiple of --workers 2"):
        search_run(SearchConfig(**{**base, "morph_children": 3}, name="bad", workers=2))
    with pytest.raises(UserError, match="no morphisms"):
        search_run(SearchConfig(**{**base, "space": "nb201", "evaluator": "train"}, name="n"))
    rng = random.Random(0)
    assert cnn.random_edit(cnn.sample(rng), rng) is not None


def test_compare_leaves_out_the_strategies_that_train_what_they_propose():
    from darts.compare import check_strategies, on_a_table

    assert "morphism" not in on_a_table() and "enas" not in on_a_table()
    assert {"random", "evolution", "reinforce", "bo"} <= set(on_a_table())
    for name in ("morphism", "enas"):
        with pytest.raises(UserError, match=f"{name} trains the networks it proposes"):
            check_strategies(["random", name])


def test_an_asynchronous_climb_waits_for_each_step():
    from darts.executors import LocalExecutor
    from darts.strategies import run_async

    records = run_async(NetworkMorphism(cnn, seed=0, children=4, edits=2),
                        LocalExecutor(_deeper_is_better), 12, max_pending=3)
    sequential = run(NetworkMorphism(cnn, seed=0, children=4, edits=2), _deeper_is_better, 12)
    assert [r["candidate"] for r in records] == [r["candidate"] for r in sequential]
    # no child of step 2 was asked before step 1's four were told
    assert all(r["after"] >= 4 * (r["asked"] // 4) for r in records)
