"""NAS-Bench-101's space (darts.spaces.nb101), its tables (darts.benchmarks.nb101) and a search
on them: the benchmark's hash and pruning against published figures and hand cases, the
official file's conversion on fixtures written in its format, the command line."""

import base64
import json
import random
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from darts.benchmarks import nb101 as tables
from darts.benchmarks.nb201 import BenchmarkTable
from darts.benchmarks.tfrecord import encode_model_metrics, write_records
from darts.errors import InvalidCandidate, UserError
from darts.search import SearchConfig, run
from darts.spaces import nb101
from darts.spaces.nb101 import NB101Cell, SpecError, spec_hash
from darts.spaces.nb101_net import NB101Network, count_parameters

C3, C1, MP = nb101.CONV3X3, nb101.CONV1X1, nb101.MAXPOOL


def published() -> NB101Cell:
    return NB101Cell.of(nb101.EXAMPLE_MATRIX, nb101.EXAMPLE_OPS)


# -- the cell: hash, pruning, validity -----------------------------------------------------
def test_the_published_cell_has_the_datasets_hash_and_parameter_count():
    # nasbench_only108.tfrecord's first row: hash 00005c142e6f48ac74fdcf73e3439874,
    # trainable_parameters 8,555,530 (as public conversions of the file list it)
    cell = published()
    assert cell.hash == "00005c142e6f48ac74fdcf73e3439874"
    assert nb101.parameter_count(cell) == 8_555_530
    assert count_parameters(NB101Network(cell.matrix, cell.ops)) == 8_555_530


def test_the_counted_parameters_equal_the_built_networks_on_random_cells():
    rng = random.Random(4)
    for _ in range(6):
        cell = nb101.sample(rng)
        net = NB101Network(cell.matrix, cell.ops, stem_channels=16)
        assert nb101.parameter_count(cell, stem_channels=16) == count_parameters(net)


def _permuted(matrix, ops, order):
    """The same graph with vertex order[k] renumbered k (not upper-triangular in general)."""
    n = len(matrix)
    return ([[matrix[order[i]][order[j]] for j in range(n)] for i in range(n)],
            [ops[order[i]] for i in range(n)])


def test_the_hash_is_invariant_under_vertex_permutation_and_sees_ops_and_edges():
    rng = random.Random(0)
    for _ in range(20):
        cell = nb101.sample(rng)
        n = len(cell.matrix)
        for _ in range(3):  # input first and output last: the labels go by position
            inner = list(range(1, n - 1))
            rng.shuffle(inner)
            order = [0, *inner, n - 1]
            assert spec_hash(*_permuted(cell.matrix, cell.ops, order)) == cell.hash
    base = published()
    ops = list(base.ops)
    ops[2] = C3  # maxpool -> conv3x3 on one vertex
    assert NB101Cell.of(base.matrix, ops).hash != base.hash
    matrix = [list(r) for r in base.matrix]
    matrix[0][5] = 0  # one edge fewer (input -> vertex 5; 5 still hears 4)
    assert NB101Cell.of(matrix, base.ops).hash != base.hash


def test_pruning_removes_dangling_vertices_and_refuses_what_the_benchmark_refuses():
    # vertex 2 takes the input but reaches nothing; vertex 3 reaches the output from nothing
    matrix = [[0, 1, 1, 0, 0],
              [0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0],
              [0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0]]
    cell = NB101Cell.of(matrix, ["input", C3, MP, C1, "output"])
    assert cell.matrix == ((0, 1, 0), (0, 0, 1), (0, 0, 0)) and cell.ops == ("input", C3, "output")
    assert cell == NB101Cell.of([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", C3, "output"])
    with pytest.raises(InvalidCandidate, match="does not reach the output"):
        NB101Cell.of([[0, 1, 0], [0, 0, 0], [0, 0, 0]], ["input", C3, "output"])
    dense = [[int(i < j) for j in range(7)] for i in range(7)]  # 21 edges
    with pytest.raises(InvalidCandidate, match="21 edges after pruning; .* at most 9"):
        NB101Cell.of(dense, ["input", C3, C3, C3, C3, C3, "output"])


@pytest.mark.parametrize("text, message", [
    ("0100110/0010000", "matrix rows, ':', the ops"),
    ("01a/000/000:conv3x3-bn-relu", "string of 0 and 1"),
    ("011/00/000:conv3x3-bn-relu", "square"),
    ("011/001/000:conv5x5", "unknown op 'conv5x5'"),
    ("011/001/000:conv3x3-bn-relu,maxpool3x3", "2 ops for 3 vertices|4 ops for 3 vertices"),
    ("011/101/000:conv3x3-bn-relu", "upper-triangular"),
    ("010/000/000:conv3x3-bn-relu", "does not reach the output"),
])
def test_a_malformed_text_is_one_error_naming_what_is_wrong(text, message):
    with pytest.raises(SpecError, match=message) as e:
        nb101.parse(text)
    assert "\n" not in str(e.value)


def test_text_decisions_and_json_round_trip(tmp_path):
    rng = random.Random(1)
    for _ in range(30):
        cell = nb101.sample(rng)
        assert nb101.parse(nb101.to_text(cell)) == cell
        assert nb101.parse(nb101.to_text(cell)).to_string() == cell.to_string()
        assert nb101.from_decisions(nb101.to_decisions(cell)) == cell
    cell = published()
    nb101.save(cell, tmp_path / "cell.json")
    assert nb101.load(str(tmp_path / "cell.json"), "--genotype") == cell
    assert nb101.load({"matrix": nb101.EXAMPLE_MATRIX, "ops": nb101.EXAMPLE_OPS}, "x") == cell


def test_sample_mutate_crossover_give_valid_cells_and_mutation_changes_the_cell():
    rng = random.Random(2)
    cells = [nb101.sample(rng) for _ in range(40)]
    assert len({c.hash for c in cells}) > 30
    for a, b in zip(cells, cells[1:], strict=False):
        child = nb101.mutate(a, rng)
        assert child != a and nb101.why_invalid((child.matrix, child.ops)) is None
        mixed = nb101.crossover(a, b, rng)
        assert len(mixed.matrix) <= 7 and mixed.edges <= 9
    again = random.Random(2)
    assert [nb101.sample(again) for _ in range(40)] == cells  # seeded: the same draws
    with pytest.raises(InvalidCandidate):
        nb101.from_decisions([0] * 21 + [0] * 5)  # no edge: the input reaches nothing


def test_encodings_by_hand_for_the_published_cell():
    cell = published()
    vector = nb101.encode(cell)
    assert len(vector) == 21 + 15
    edges = [(0, 1), (0, 4), (0, 5), (1, 2), (2, 3), (2, 6), (3, 5), (4, 5), (5, 6)]
    assert [i for i, v in enumerate(vector[:21]) if v] == [nb101.TRIANGLE.index(e) for e in edges]
    assert vector[21:] == [1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0]  # c3, mp, c3, c3, c1
    # its four input -> output paths (by hand): 0-1-2-6, 0-1-2-3-5-6, 0-4-5-6, 0-5-6
    assert sorted(nb101.paths(cell)) == sorted([(C3, MP), (C3, MP, C3, C1), (C3, C1), (C1,)])
    path_vector = nb101.path_encode(cell)
    assert len(path_vector) == 364 and sum(path_vector) == 4
    small = NB101Cell.of([[0, 1], [0, 0]], ["input", "output"])  # input -> output only
    assert nb101.paths(small) == [()] and nb101.path_encode(small)[0] == 1.0
    assert nb101.encode(small)[nb101.TRIANGLE.index((0, 6))] == 1.0  # padded to 7 vertices


def test_the_network_runs_a_cell_and_its_output_has_the_classes():
    torch.manual_seed(0)
    cell = nb101.sample(random.Random(3))
    net = nb101.network(cell, num_classes=10, channels=8, layers=1).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# -- the official file, converted; tables; a search ------------------------------------------
def _record(cell_matrix, ops, epochs, runs, params):
    """One official record's payload: [hash, epochs, adjacency, ops, base64(metrics)]."""
    n = len(cell_matrix)
    evaluations = [{"current_epoch": 0.0}, {"current_epoch": epochs / 2}]
    metrics = {"evaluation_data": evaluations + [dict(current_epoch=float(epochs), **runs)],
               "trainable_parameters": params, "total_time": 10.0}
    row = [spec_hash(cell_matrix, ops), epochs,
           "".join(str(cell_matrix[i][j]) for i in range(n) for j in range(n)), ",".join(ops),
           base64.b64encode(encode_model_metrics(metrics)).decode()]
    return json.dumps(row).encode()


def _run(train, valid, test, time_s):
    return {"train_accuracy": train, "validation_accuracy": valid, "test_accuracy": test,
            "training_time": time_s}


@pytest.fixture
def official(tmp_path):
    cell = published()
    small = ((0, 1, 0), (0, 0, 1), (0, 0, 0)), ("input", C3, "output")
    payloads = [_record(cell.matrix, cell.ops, 108, _run(1.0, 0.92, 0.91, 1700.0), 8555530),
                _record(cell.matrix, cell.ops, 108, _run(1.0, 0.93, 0.92, 1800.0), 8555530),
                _record(cell.matrix, cell.ops, 108, _run(1.0, 0.94, 0.93, 1900.0), 8555530),
                _record(cell.matrix, cell.ops, 12, _run(0.8, 0.70, 0.69, 200.0), 8555530),
                _record(*small, 108, _run(0.9, 0.80, 0.79, 500.0), 1234)]
    path = tmp_path / "nasbench_full.tfrecord"
    write_records(path, payloads)
    return path, payloads


def test_convert_writes_the_mean_of_the_runs_per_budget(official, tmp_path):
    path, _ = official
    assert tables.convert(path, tmp_path / "t.csv") == 2
    table = BenchmarkTable.load(tmp_path / "t.csv", nb101)
    row = table.lookup(published())
    assert row["cifar10_valid"] == pytest.approx(93.0) and row["cifar10_test"] == pytest.approx(92.0)
    assert row["cifar10_train_s"] == pytest.approx(1800.0)
    assert row["cifar10_valid_e12"] == pytest.approx(70.0)  # one run at 12 epochs
    assert row["cifar10_params_m"] == pytest.approx(8.55553)
    assert table.lookup(nb101.EXAMPLE_TEXT) == row  # a text is read and hashed
    assert table.score(published())["key"] == nb101.EXAMPLE_HASH


def test_a_damaged_or_foreign_file_is_one_error_and_writes_nothing(official, tmp_path):
    path, payloads = official
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last record's data
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="record 5 .*bad data CRC"):
        tables.convert(bad, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    row = json.loads(payloads[0])
    row[0] = "0" * 32  # a hash that is not the cell's
    write_records(tmp_path / "foreign.tfrecord", [json.dumps(row).encode()])
    with pytest.raises(UserError, match="record 1: the record's hash 0{32} is not its cell's"):
        tables.convert(tmp_path / "foreign.tfrecord", tmp_path / "out.csv")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb101") / "synthetic101.csv"
    tables.synthetic_table(path, cells=300, seed=0)
    return path


def test_a_partial_table_restricts_the_space_to_its_rows(synthetic):
    table = BenchmarkTable.load(synthetic, nb101)
    space = nb101.for_table(table)
    assert isinstance(space, nb101.TableSubspace) and len(space.cells) == 300 == len(table)
    rng = random.Random(0)
    for _ in range(20):
        cell = space.sample(rng)
        assert table.lookup(space.mutate(cell, rng)) is not None
        assert table.lookup(space.crossover(cell, space.sample(rng), rng)) is not None
    outside = next(c for c in (nb101.sample(rng) for _ in range(1000)) if table.lookup(c) is None)
    with pytest.raises(InvalidCandidate, match="not a row of the table"):
        space.from_decisions(nb101.to_decisions(outside))


@pytest.mark.parametrize("strategy", ["evolution", "reinforce", "bo"])
def test_strategies_search_a_synthetic_table(tmp_path, synthetic, strategy):
    result = run(SearchConfig(strategy=strategy, space="nb101", evaluator="benchmark",
                              benchmark=str(synthetic), budget=12, seed=0, save=str(tmp_path),
                              name="run", progress=False, tensorboard=False))
    table = BenchmarkTable.load(synthetic, nb101)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert len(history) == 12
    for record in history:  # every score is its cell's row
        assert record["score"] == table.lookup(record["candidate"])["cifar10_valid"]
    assert result["benchmark"]["cifar10_test_rank"] >= 1
    assert nb101.load(str(tmp_path / "run" / "cell.json"), "x") == nb101.parse(result["best_arch"])


def test_info_prints_the_pruned_spec_and_refuses_malformed_input():
    command = [sys.executable, "-m", "darts.nb101", "info", "--matrix",
               json.dumps([list(r) for r in nb101.EXAMPLE_MATRIX]), "--ops",
               ",".join(nb101.EXAMPLE_OPS)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["valid"], data["hash"], data["parameters"]) == (True, nb101.EXAMPLE_HASH, 8555530)
    assert data["arch"] == nb101.EXAMPLE_TEXT
    assert tables.info("[[0,1,0],[0,0,0],[0,0,0]]", "input,conv3x3-bn-relu,output") == {
        "valid": False, "why_invalid": "the input does not reach the output"}
    bad = subprocess.run(command[:5] + ["[[0,1],[0]]", "--ops", "input,output"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--matrix" in bad.stderr


# -- train_final.py --space nb101 ---------------------------------------------------------------
def test_the_retraining_recipe_is_the_benchmarks_and_a_cell_trains(tmp_path):
    from darts.final import FinalConfig, _optimizer
    from darts.final import run as train

    cfg = FinalConfig(space="nb101").resolved("cifar")
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.lr_schedule, cfg.optimizer,
            cfg.momentum, cfg.weight_decay, cfg.init_channels, cfg.layers) == (
        108, 256, 0.2, "cosine", "rmsprop", 0.9, 1e-4, 128, 3)
    optimizer, _ = _optimizer(cfg, torch.nn.Linear(2, 2))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert (group["lr"], group["alpha"], group["eps"], group["momentum"]) == (0.2, 0.9, 1.0, 0.9)
    assert FinalConfig().resolved("cifar").optimizer is None  # the DARTS recipe: SGD
    (tmp_path / "cell.json").write_text(json.dumps(published().to_dict()))
    result = train(FinalConfig(space="nb101", genotype=str(tmp_path / "cell.json"),
                               dataset="synthetic", image_size=8, synthetic_size=16, layers=1,
                               init_channels=4, batch_size=8, epochs=1, workers=0,
                               progress=False, save=str(tmp_path), name="r", device="cpu",
                               tensorboard=False))
    assert result["complete"]
    assert nb101.load(str(tmp_path / "r" / "cell.json"), "x") == published()


def test_the_visualizer_draws_a_cell_json(tmp_path):
    from darts import visualize

    if not visualize.dot_available():
        pytest.skip("graphviz's dot is not installed")
    nb101.save(published(), tmp_path / "cell.json")
    assert visualize.main([str(tmp_path / "cell.json"), "-o", str(tmp_path / "pictures")]) == 0
    assert (tmp_path / "pictures" / "cell.png").stat().st_size > 0
    graph = nb101.graphs(published())["cell"]
    assert graph.source.count("->") == 9  # one arrow per edge of the cell
