"""The `train` evaluator: a short training from scratch scores a candidate, reproducibly."""

import dataclasses
import random
from types import SimpleNamespace

import pytest
import torch

from darts.errors import UserError
from darts.evaluators.training import TrainEvaluator, candidate_seed, from_search_config
from darts.spaces import cnn, nb201

# Seconds on two cores: 8x8 synthetic images, 100 of them, 2 epochs, one thread each.
TINY = dict(dataset="synthetic", image_size=8, synthetic_size=100, epochs=2, batch_size=16,
            device="cpu", threads=1)
SPECS = ["conv3x3-16-max|conv5x5-32", "conv7x7-16-avg|conv3x3-16|conv3x3-32-max",
         "conv3x3-32|conv3x3-16"]


def test_an_evaluation_is_a_percentage_and_its_wall_time():
    evaluator = TrainEvaluator(cnn, **TINY)
    result = evaluator(cnn.parse(SPECS[0]))
    assert 0 <= result.score <= 100 and 0 <= result.reported <= 100
    assert 0 < result.cost < 60
    # 50 held-out images: the accuracy is a whole number of them
    assert round(result.score * 50 / 100, 6) == int(round(result.score * 50 / 100))
    valid_only = TrainEvaluator(cnn, report="valid", **TINY)(cnn.parse(SPECS[0]))
    assert valid_only.score == valid_only.reported == result.score


def test_nb201_cells_train_in_a_small_benchmark_network():
    evaluator = TrainEvaluator(nb201, channels=4, layers=1, **TINY)
    result = evaluator(nb201.parse(nb201.EXAMPLE))
    assert 0 <= result.score <= 100 and 0 <= result.reported <= 100


def test_darts_genotypes_train_in_a_small_darts_network():
    darts_cells = pytest.importorskip("darts.spaces.darts_cells")
    genotype = darts_cells.sample(random.Random(0))
    result = TrainEvaluator(darts_cells, channels=4, layers=3, **TINY)(genotype)
    assert 0 <= result.score <= 100 and 0 <= result.reported <= 100


def test_a_candidate_scores_the_same_in_any_order_and_leaves_the_callers_random_state():
    first = TrainEvaluator(cnn, **TINY)
    a, b = cnn.parse(SPECS[0]), cnn.parse(SPECS[1])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ab = [first(a), first(b), first(a)]
    assert torch.equal(torch.get_rng_state(), state)
    ba = [TrainEvaluator(cnn, **TINY)(c) for c in (b, a)]
    assert ab[0].score == ab[2].score == ba[1].score and ab[1].score == ba[0].score
    assert ab[0].reported == ab[2].reported == ba[1].reported
    # the seed is the run's and the candidate's text, nothing else
    assert candidate_seed(0, SPECS[0]) == candidate_seed(0, SPECS[0])
    assert len({candidate_seed(s, t) for s in (0, 1) for t in SPECS[:2]}) == 4


def test_two_workers_give_the_scores_of_one():
    candidates = [cnn.parse(s) for s in SPECS]
    with TrainEvaluator(cnn, workers=2, **TINY) as parallel:
        results = parallel.evaluate_many(candidates)
    serial = TrainEvaluator(cnn, workers=1, **TINY).evaluate_many(candidates)
    assert [(r.score, r.reported) for r in results] == [(r.score, r.reported) for r in serial]


def test_an_easy_task_scores_well_above_chance():
    """Three conv layers, 300 training images of 16x16 and 3 epochs: 10 classes, chance 10%
    (its sd over 300 held-out images is 1.7 points)."""
    evaluator = TrainEvaluator(cnn, dataset="synthetic", image_size=16, synthetic_size=600,
                               epochs=3, batch_size=32, device="cpu", threads=1, report="valid")
    assert evaluator(cnn.parse("conv3x3-32-max|conv3x3-32-max|conv3x3-32")).score > 25


def test_a_diverging_training_scores_zero():
    evaluator = TrainEvaluator(cnn, learning_rate=1e30, **TINY)
    result = evaluator(cnn.parse(SPECS[0]))
    assert (result.score, result.reported) == (0.0, 0.0)


def test_the_held_out_split_is_the_runs_and_train_images_subsets_it():
    evaluator = TrainEvaluator(cnn, **{**TINY, "synthetic_size": 200}, train_images=60,
                               valid_portion=0.25)
    data = evaluator._data()
    assert len(data["valid"]) == 15 and len(data["train_idx"]) == 45
    assert not set(data["valid"].indices) & set(data["train_idx"].tolist())
    again = TrainEvaluator(cnn, **{**TINY, "synthetic_size": 200}, train_images=60,
                           valid_portion=0.25)._data()
    assert data["valid"].indices == again["valid"].indices
    with pytest.raises(UserError, match="--valid_portion 0.01 splits 10 training images"):
        TrainEvaluator(cnn, **{**TINY, "train_images": 10, "valid_portion": 0.01})._data()


@pytest.mark.parametrize("space, overrides, message", [
    (cnn, dict(epochs=0), "--epochs 0: must be at least 1"),
    (cnn, dict(batch_size=0), "--batch_size 0"),
    (cnn, dict(learning_rate=-1.0), "--learning_rate -1.0: must be positive"),
    (cnn, dict(valid_portion=1.0), "--valid_portion 1.0: must be strictly between 0 and 1"),
    (cnn, dict(workers=0), "--workers 0: must be at least 1"),
    (cnn, dict(report="best"), "--report best: choose one of test, valid"),
    (cnn, dict(dataset="mnist"), "--dataset mnist: choose one of"),
    (cnn, dict(device="tpu"), "--device tpu"),
    (cnn, dict(channels=8), "--channels: a cnn candidate fixes its own widths and depth"),
    (cnn, dict(momentum=0.0), "--nesterov needs a momentum"),
    (cnn, dict(learning_rate_min=0.5), r"--learning_rate_min 0.5: must be in \[0, --learning_rate"),
    (cnn, dict(grad_clip=-1.0), "--grad_clip -1.0: must be 0"),
    (cnn, dict(learning_rate=float("nan")), "--learning_rate nan"),
    (nb201, dict(channels=3), "--channels 3: must be an even number"),
    (nb201, dict(layers=0), "--layers 0: must be at least 1 cells per stage"),
    (random, {}, "the train evaluator builds a space's networks with its `network"),
])
def test_bad_settings_are_one_user_error(space, overrides, message):
    settings = {**TINY, **overrides}
    with pytest.raises(UserError, match=message):
        TrainEvaluator(space, **settings)



def search_config(**overrides):
    """The fields of a multi-trial run's config that the train evaluator reads."""
    fields = dict(dataset="synthetic", data="data", eval_epochs=1, batch_size=16,
                  learning_rate=0.05, learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4,
                  nesterov=False, grad_clip=5.0, train_portion=0.8, image_size=8,
                  num_classes=None, synthetic_size=100, seed=3, workers=0, threads=1,
                  device="cpu", channels_last=None, init_channels=4, layers=None)
    return SimpleNamespace(**{**fields, **overrides})


def test_a_multi_trial_run_passes_its_recipe_and_sizes():
    logged = []
    logger = SimpleNamespace(info=logged.append)
    evaluator = from_search_config(search_config(), nb201, logger)
    s = evaluator.settings
    assert (s.epochs, s.batch_size, s.learning_rate, s.learning_rate_min, s.weight_decay,
            s.nesterov, s.grad_clip, s.seed, s.threads) == (1, 16, 0.05, 0.001, 3e-4, False,
                                                            5.0, 3, 1)
    assert abs(s.valid_portion - 0.2) < 1e-9 and evaluator.workers == 1
    assert (s.channels, s.layers) == (4, 5)  # layers None: the benchmark network's 5 per stage
    assert logged and "1 epochs from scratch" in logged[0] and "4 channels" in logged[0]
    assert 0 <= evaluator(nb201.parse(nb201.EXAMPLE)).score <= 100
    # a plain CNN's size is its spec's: the run's --init_channels/--layers are not passed
    plain = from_search_config(search_config(layers=8), cnn)
    assert (plain.settings.channels, plain.settings.layers) == (None, None)


def test_the_search_config_has_every_field_the_evaluator_reads():
    search = pytest.importorskip("darts.search")
    names = {f.name for f in dataclasses.fields(search.SearchConfig)}
    assert set(vars(search_config())) <= names
