"""DARTS on NAS-Bench-101 as NAS-Bench-1Shot1 runs it (darts.spaces.nb101_oneshot): the
sub-spaces' decoding by hand, the one-shot model, a search scored by a table every epoch."""

import json
import random

import pytest
import torch
from conftest import ROOT  # noqa: F401 (the repository on the path)

from darts.benchmarks import nb101 as tables
from darts.errors import UserError
from darts.search import SearchConfig, run
from darts.spaces import nb101
from darts.spaces import nb101_oneshot as oneshot

C3, C1, MP = nb101.CONV3X3, nb101.CONV1X1, nb101.MAXPOOL


def one_hot_rows(choices, width):
    return torch.nn.functional.one_hot(torch.tensor(choices), width).float()


def test_search_space_3_decodes_by_hand():
    # blocks 1-5 take 1, 1, 1, 2, 2 parents, the output 2 (nasbench-1shot1 search_space_3.py)
    ops = one_hot_rows([0, 2, 1, 0, 0], 3)  # c3, mp, c1, c3, c3
    out = torch.tensor([0.1, 0.0, 0.0, 0.0, 0.5, 0.4])  # output <- 4, 5
    inputs = [torch.tensor([0.2, 0.8]),             # node 2 <- 1
              torch.tensor([0.6, 0.3, 0.1]),        # node 3 <- 0
              torch.tensor([0.1, 0.2, 0.3, 0.4]),   # node 4 <- 2, 3
              torch.tensor([0.3, 0.3, 0.1, 0.1, 0.2])]  # node 5 <- 0, 1 (a tie: the lower)
    matrix, labels = oneshot.decode(3, (ops, out, *inputs))
    edges = {(i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if v}
    assert edges == {(4, 6), (5, 6), (2, 4), (3, 4), (1, 2), (0, 1), (0, 3), (0, 5), (1, 5)}
    assert labels == ["input", C3, MP, C1, C3, C3, "output"]
    assert nb101.NB101Cell.of(matrix, labels).edges == 9


def test_search_space_1_fixes_node_2s_parents_and_prunes_what_the_output_does_not_reach():
    ops = one_hot_rows([1, 1, 1, 1], 3)
    out = torch.tensor([0.0, 0.0, 0.9, 0.0, 0.8])  # output <- 2, 4
    inputs = [torch.tensor([0.5, 0.4, 0.1]),       # node 3 <- 0, 1 (reaches nothing)
              torch.tensor([0.0, 0.1, 0.9, 0.0])]  # node 4 <- 2, 1
    matrix, labels = oneshot.decode(1, (ops, out, *inputs))
    edges = {(i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if v}
    assert edges == {(2, 5), (4, 5), (0, 2), (1, 2), (1, 4), (2, 4), (0, 1)}
    cell = nb101.NB101Cell.of(matrix, labels)
    assert len(cell.matrix) == 5  # node 3 is gone: no edge into or out of it was drawn


@pytest.mark.parametrize("subspace", [1, 2, 3])
def test_every_decoded_cell_keeps_to_its_sub_space(subspace):
    torch.manual_seed(subspace)
    needs = oneshot.SUBSPACES[subspace]
    for _ in range(200):
        net_weights = [torch.rand(oneshot.steps_of(subspace), 3),
                       torch.rand(oneshot.steps_of(subspace) + 1)]
        net_weights += [torch.rand(j) for j in oneshot.choice_nodes(subspace)]
        matrix, labels = oneshot.decode(subspace, net_weights)
        for j in range(1, len(matrix)):  # no vertex has more parents than the space gives it
            assert sum(matrix[i][j] for i in range(j)) in (0, needs[j - 1])
        cell = nb101.NB101Cell.of(matrix, labels)  # valid: at most 9 edges, output reached
        assert cell.edges <= 9


def test_the_one_shot_model_runs_and_every_architecture_weight_learns():
    torch.manual_seed(0)
    for subspace in (1, 2, 3):
        model = oneshot.NB101SearchNetwork(10, C=4, layers=3, subspace=subspace,
                                           make_cell=nb101.NB101Cell.of)
        x = torch.randn(2, 3, 8, 8)
        logits = model(x)
        assert logits.shape == (2, 10)
        grads = torch.autograd.grad(logits.square().sum(), model.arch_parameters())
        assert all(g.abs().sum() > 0 for g in grads)
        assert len(model.arch_parameters()) == 2 + len(oneshot.choice_nodes(subspace))
        assert isinstance(model.arch(), nb101.NB101Cell)
        # the forward follows the weights it is given
        weights = list(model.mixing_weights(detach=True))
        weights[0] = one_hot_rows([2] * oneshot.steps_of(subspace), 3)
        assert not torch.allclose(model(x, weights), model(x))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb101os") / "synthetic101.csv"
    tables.synthetic_table(path, cells=200, seed=0)
    return path


def tiny(tmp_path, table, **overrides):
    values = dict(space="nb101", dataset="synthetic", synthetic_size=32, image_size=8, epochs=2,
                  layers=3, init_channels=4, batch_size=16, order=1, benchmark=str(table),
                  save=str(tmp_path), name="run", progress=False, tensorboard=False, seed=0)
    values.update(overrides)
    return SearchConfig(**values)


def test_a_search_decodes_a_cell_every_epoch_scores_it_and_resumes(tmp_path, table):
    metrics = run(tiny(tmp_path, table, subspace=2))
    run_dir = tmp_path / "run"
    cell = nb101.load(str(run_dir / "cell.json"), "cell.json")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert len(history) == 2 and "maxpool3x3" in history[-1]
    assert nb101.parse(history[-1]["genotype"]["arch"]) == cell
    for h in history:  # the table's score of the epoch's cell, or a plain "not in the table"
        assert h["benchmark"]["arch"] == h["genotype"]["arch"]
    assert metrics["complete"]

    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    with pytest.raises(Stop):
        run(tiny(tmp_path, table, subspace=2, name="part"), on_epoch_end=stop)
    resumed = run(tiny(tmp_path, table, name="ignored"), resume=str(tmp_path / "part"))
    assert resumed["history"][-1]["genotype"] == metrics["history"][-1]["genotype"]
    assert resumed["history"][-1]["valid_loss"] == metrics["history"][-1]["valid_loss"]


@pytest.mark.parametrize("overrides, message", [
    (dict(subspace=4), "--subspace 4: NAS-Bench-1Shot1's search spaces are 1, 2 and 3"),
    (dict(aux_skip=1.0), "--aux_skip: DARTS-'s auxiliary skip"),
    (dict(perturb="random"), "--perturb: not with --space nb101"),
    (dict(space="nb201", subspace=1, benchmark=""), "--subspace 1: the nb201 space has no sub-spaces"),
])
def test_what_the_one_shot_model_cannot_do_is_one_error(tmp_path, table, overrides, message):
    with pytest.raises(UserError, match=message):
        run(tiny(tmp_path, table, **overrides))
    assert not (tmp_path / "run").exists()


def test_random_alphas_decode_like_their_argmax_rule():
    rng = random.Random(0)
    weights = [torch.tensor([[rng.random() for _ in range(3)] for _ in range(5)]),
               torch.tensor([rng.random() for _ in range(6)])]
    weights += [torch.tensor([rng.random() for _ in range(j)]) for j in (2, 3, 4, 5)]
    _, labels = oneshot.decode(3, weights)
    assert labels[1:-1] == [oneshot.OPS[int(r.argmax())] for r in weights[0]]
