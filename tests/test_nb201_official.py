"""`python -m darts.benchmarks.nb201 convert` on a tiny benchmark file in NATS-Bench's own format: the
topology API's pickled dict (meta_archs, arch2infos of ArchResults state dicts,
evaluated_indexes), written here with nats_bench's own result classes, then read by the real
nats_bench reader. Accuracies are made up; the layout is the official one."""

import bz2
import csv
import pickle

import pytest

from darts.benchmarks import nb201
from darts.benchmarks.nb201 import BenchmarkTable
from darts.spaces.nb201 import EXAMPLE

nats_bench = pytest.importorskip("nats_bench")
from nats_bench.api_utils import ArchResults, ResultsCount  # noqa: E402

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    EXAMPLE,
]
EPOCHS = 200
# dataset -> the evaluation sets the benchmark records for it
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"),
             "ImageNet16-120": ("x-valid", "x-test", "ori-test")}


def accuracy(index, dataset, setname, seed):
    base = {"cifar10-valid": 90.0, "cifar10": 93.0, "cifar100": 70.0, "ImageNet16-120": 40.0}
    return base[dataset] - 10 * index + {"x-valid": -0.5, "x-test": 0.25, "ori-test": 0.0}[setname] + seed / 1000


def official_file(path):
    arch2infos = {}
    for index, arch in enumerate(ARCHS):
        results = ArchResults(index, arch)
        for dataset, sets in EVAL_SETS.items():
            for seed in (777, 888):
                count = ResultsCount(dataset, None, {e: 50.0 for e in range(EPOCHS)},
                                     {e: 1.0 for e in range(EPOCHS)}, 1.5 - index,
                                     220.0 - index, {"name": "infer.tiny", "arch_str": arch},
                                     seed, EPOCHS, [0.01])
                count.update_train_info({e: 50.0 for e in range(EPOCHS)}, {e: 80.0 for e in range(EPOCHS)},
                                        {e: 1.0 for e in range(EPOCHS)}, {e: 10.0 for e in range(EPOCHS)})
                # every epoch's evaluation, the last one the result
                accs = {f"{s}@{e}": accuracy(index, dataset, s, seed) * (e + 1) / EPOCHS
                        for s in sets for e in range(EPOCHS)}
                count.update_eval(accs, {k: 0.5 for k in accs}, {k: 1.0 for k in accs})
                results.update(dataset, seed, count)
        arch2infos[index] = {"200": results.state_dict()}
    data = {"meta_archs": ARCHS, "arch2infos": arch2infos, "evaluated_indexes": [0, 1, 2]}
    with bz2.open(path, "wb") as f:  # the official files are bz2-compressed pickles
        pickle.dump(data, f)
    return path


def test_convert_reads_the_official_format_through_nats_bench(tmp_path):
    source = official_file(tmp_path / "NATS-tss-tiny.pickle.pbz2")
    out = tmp_path / "nb201.csv"
    assert nb201.main(["convert", "--from", str(source), "--out", str(out)]) == 0
    rows = {r["arch"]: r for r in csv.DictReader(out.open())}
    assert list(rows) == ARCHS
    mean = (accuracy(1, "cifar10", "ori-test", 777) + accuracy(1, "cifar10", "ori-test", 888)) / 2
    assert float(rows[ARCHS[1]]["cifar10_test"]) == pytest.approx(mean)  # the mean over seeds
    assert float(rows[ARCHS[0]]["cifar10_valid"]) == pytest.approx(89.5 + 0.8325)
    assert float(rows[ARCHS[2]]["cifar100_test"]) == pytest.approx(50.25 + 0.8325)
    assert float(rows[ARCHS[2]]["cifar10_params_m"]) == pytest.approx(-0.5)
    assert float(rows[ARCHS[0]]["cifar10_train_s"]) == pytest.approx(EPOCHS * 10.0)
    table = BenchmarkTable.load(out)
    assert table.indices[EXAMPLE] == 2 and table.rank(ARCHS[0], "cifar10_test") == 1
