"""Fuzzing the readers of a user's files: genotype JSON, the visualize CLI, image folders,
train_final.py. Whatever the bytes, only the user-error types escape (one line naming the
file, exit 2 from a CLI), and whatever validates works: a genotype that loads builds a
network that runs. Bounded and derandomized, so CI is deterministic and quick."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import darts.visualize as vis
from darts.errors import GenotypeError, UserError
from darts.genotype import GENOTYPE_DIR, Genotype, load_genotype, resolve_genotype
from darts.network import NetworkCIFAR
from darts.primitives import OPS
from darts.train.data import build_datasets, make_loader


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")
REAL_OPS = sorted(op for op in OPS if op != "none")
DARTS_V2 = json.loads((GENOTYPE_DIR / "darts_v2.json").read_text())


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def write(directory: Path, content: bytes | str | object, name: str = "g.json") -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))  # NaN and Infinity written as such
    return path


def builds_and_runs(genotype: Genotype) -> None:
    """A loaded genotype must make a network that runs (forward, training mode with the
    auxiliary head, and evaluation mode): train_final must never fail on it later. One
    thread: for these tiny tensors a second one only waits for a shared core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = NetworkCIFAR(2, 2, 3, True, genotype)
        net.drop_path_prob = 0.1
        x = torch.randn(2, 3, 8, 8)
        logits, aux = net(x)
        assert logits.shape == (2, 2) and aux is not None and aux.shape == (2, 2)
        net.eval()
        with torch.no_grad():
            logits, _ = net(x)
        assert torch.isfinite(logits).all()
    finally:
        torch.set_num_threads(threads)


def load_or_genotype_error(path: Path) -> Genotype | None:
    """The contract of the loader: a Genotype that builds and runs, or a one-line
    GenotypeError naming the file; any other exception escapes and fails the test."""
    try:
        genotype = resolve_genotype(str(path))
    except GenotypeError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
        return None
    builds_and_runs(genotype)
    return genotype


# ------------------------------------------------------------------------------------------
# Strategies

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                | st.text(max_size=12) | st.sampled_from(REAL_OPS + ["none"]))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.sampled_from(KEYS + ("name", "source")) | st.text(max_size=8),
                                        children, max_size=6)),
    max_leaves=25)


@st.composite
def valid_genotype_dicts(draw) -> dict:
    """A well-formed genotype: 1-4 nodes, each two edges from earlier states, real ops, and
    a concat of some distinct intermediate nodes."""
    steps = draw(st.integers(1, 4))
    out: dict = {}
    for kind in ("normal", "reduce"):
        edges = [[draw(st.sampled_from(REAL_OPS)), draw(st.integers(0, node + 1))]
                 for node in range(steps) for _ in range(2)]
        nodes = list(range(2, steps + 2))
        concat = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=steps, unique=True))
        out[kind], out[f"{kind}_concat"] = edges, concat
    return out


bad_index = (st.integers(-3, 12) | st.booleans() | st.floats(allow_nan=True)
             | st.text(max_size=3) | st.none() | st.integers(10**18, 10**19))


@st.composite
def mutated_genotype_dicts(draw) -> dict:
    """A valid genotype with one to three mistakes: a wrong type, an index out of range, an
    unknown op, a bad concat, a missing key, an edge too many or too few."""
    d = draw(valid_genotype_dicts())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("normal", "reduce")))
        edges, concat = d.get(kind), d.get(f"{kind}_concat")
        what = draw(st.sampled_from(
            ["key", "delete", "edge", "op", "index", "concat", "concat_entry", "add_edge",
             "drop_edge", "meta"]))
        if what == "key":
            d[draw(st.sampled_from(KEYS))] = draw(json_values)
        elif what == "delete":
            d.pop(draw(st.sampled_from(KEYS)), None)
        elif what == "meta":
            d[draw(st.sampled_from(("name", "source")))] = draw(json_values)
        elif what == "concat":
            d[f"{kind}_concat"] = draw(st.lists(st.integers(-2, 12), max_size=6))
        elif isinstance(edges, list) and edges and what in ("edge", "op", "index"):
            k = draw(st.integers(0, len(edges) - 1))
            if what == "edge":
                edges[k] = draw(json_values)
            elif isinstance(edges[k], list) and len(edges[k]) == 2:
                if what == "op":
                    edges[k][0] = draw(st.sampled_from(REAL_OPS + ["none", "conv_9x9", ""])
                                       | st.text(max_size=12) | json_scalars)
                else:
                    edges[k][1] = draw(bad_index)
        elif isinstance(concat, list) and concat and what == "concat_entry":
            concat[draw(st.integers(0, len(concat) - 1))] = draw(bad_index)
        elif isinstance(edges, list) and what == "add_edge":
            edges.append([draw(st.sampled_from(REAL_OPS)), draw(st.integers(-1, 12))])
        elif isinstance(edges, list) and edges and what == "drop_edge":
            edges.pop()
    return d


# ------------------------------------------------------------------------------------------
# Genotype files

DEEP = b"[" * 50_000 + b"]" * 50_000
LONG_INT = b'{"normal": ' + b"7" * 5000 + b"}"


@fuzz(60)
@given(content=st.binary(max_size=300))
@example(content=DEEP)
@example(content=LONG_INT)
@example(content=b'{"normal": [["sep_conv_3x3", NaN]]}')
@example(content=b"\xef\xbb\xbf" + json.dumps(DARTS_V2).encode())  # a UTF-8 BOM
@example(content=json.dumps(DARTS_V2).encode()[:-7])
def test_arbitrary_bytes_load_or_raise_a_genotype_error(content):
    with scratch() as d:
        load_or_genotype_error(write(d, content))


@fuzz(80)
@given(value=json_values)
@example(value={**DARTS_V2, "normal": [["sep_conv_3x3", 0]] * 8})
@example(value={**DARTS_V2, "normal_concat": [2.0, 3, 4, 5]})
@example(value={**DARTS_V2, "reduce": [[["sep_conv_3x3"], 0]] * 8})
@example(value={**DARTS_V2, "reduce_concat": [1, 2, 3, 4, 5]})
def test_arbitrary_json_values_load_or_raise_a_genotype_error(value):
    with scratch() as d:
        load_or_genotype_error(write(d, value))


@fuzz(30)
@given(value=valid_genotype_dicts())
def test_every_well_formed_genotype_loads_builds_and_runs(value):
    with scratch() as d:
        assert load_or_genotype_error(write(d, value)) is not None


@fuzz(80)
@given(value=mutated_genotype_dicts())
@example(value={**DARTS_V2, "reduce_concat": [0, 2, 3, 4, 5]})  # the reported crash
@example(value={**DARTS_V2, "normal_concat": [1, 2, 3, 4, 5]})
@example(value={**DARTS_V2, "normal_concat": [2, 3, 4, 5, 6]})
@example(value={**DARTS_V2, "reduce": [["skip_connect", -1]] + DARTS_V2["reduce"][1:]})
@example(value={**DARTS_V2, "normal": [["sep_conv_3x3", True]] + DARTS_V2["normal"][1:]})
def test_mutated_genotypes_load_and_run_or_raise_a_genotype_error(value):
    with scratch() as d:
        load_or_genotype_error(write(d, value))


def test_every_published_genotype_still_loads_builds_and_runs():
    for path in sorted(GENOTYPE_DIR.glob("*.json")):
        builds_and_runs(load_genotype(path))


# ------------------------------------------------------------------------------------------
# python -m darts.visualize

def run_visualize(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = vis.main(argv)
    return code, err.getvalue()


visualize_inputs = (st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
                    | mutated_genotype_dicts().map(lambda v: json.dumps(v).encode()))


@fuzz(25)
@given(content=visualize_inputs)
@example(content=DEEP)
@example(content=LONG_INT)
@example(content=b"\xff\xfe\x00")
@example(content=json.dumps(DARTS_V2).encode())
def test_visualize_cli_exits_0_or_2_with_one_line(content):
    with scratch() as d:
        path = write(d, content)
        out = d / "out"
        code, err = run_visualize([str(path), "-o", str(out)])
        pictures = sorted(p.name for p in out.glob("*")) if out.exists() else []
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, err
            assert "Traceback" not in err
            assert pictures == []  # nothing half-written
        else:
            assert pictures == ["normal.png", "reduce.png"]


def test_visualize_cli_on_a_directory_or_a_long_name_is_one_line(tmp_path):
    for spec in (str(tmp_path), "x" * 5000, "no-such-name"):
        code, err = run_visualize([spec, "-o", str(tmp_path / "out")])
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------
# Image folders (--dataset folder)

def png_bytes(size: tuple[int, int], mode: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=None).save(buf, fmt)
    return buf.getvalue()


VALID_PNG = png_bytes((6, 5), "RGB")


@st.composite
def image_files(draw) -> bytes:
    kind = draw(st.sampled_from(["png", "jpeg", "garbage", "truncated", "empty", "flipped"]))
    if kind in ("png", "truncated", "flipped"):
        size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
        data = png_bytes(size, draw(st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])))
        if kind == "truncated":
            return data[:draw(st.integers(0, len(data) - 1))]
        if kind == "flipped":  # one corrupted byte somewhere
            k = draw(st.integers(0, len(data) - 1))
            return data[:k] + bytes([data[k] ^ draw(st.integers(1, 255))]) + data[k + 1:]
        return data
    if kind == "jpeg":
        return png_bytes((draw(st.integers(1, 40)), draw(st.integers(1, 40))), "RGB", "JPEG")
    if kind == "empty":
        return b""
    return draw(st.binary(max_size=64))


def image_tree(root: Path, files: list[bytes], suffix: str = ".png") -> None:
    """root/{train,test}/{a,b}: one valid image in each, the fuzzed ones in train/a."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / f"ok{suffix}").write_bytes(VALID_PNG)
    for k, data in enumerate(files):
        (root / "train" / "a" / f"x{k}{suffix}").write_bytes(data)


@fuzz(40)
@given(files=st.lists(image_files(), min_size=1, max_size=4))
@example(files=[b"not a png at all"])
@example(files=[VALID_PNG[:60]])
@example(files=[b""])
def test_folder_images_read_or_raise_a_user_error_naming_the_file(files):
    with scratch() as root:
        image_tree(root, files)
        # Nothing is read up front: a folder of broken files still builds.
        train, test, info = build_datasets("folder", str(root), image_size=8)
        assert info.num_classes == 2
        for dataset in (train, test):
            for i in range(len(dataset)):
                path = dataset.samples[i][0]
                try:
                    image, label = dataset[i]
                except UserError as e:
                    message = str(e)
                    assert path in message and "remove or replace" in message, message
                    assert "\n" not in message
                    assert os.path.basename(path).startswith("x")  # only fuzzed files fail
                else:
                    assert image.shape == (3, 8, 8) and label == dataset.samples[i][1]


def test_a_corrupt_image_read_in_a_worker_is_a_user_error_naming_it(tmp_path):
    image_tree(tmp_path, [b"\x89PNG garbage"])
    train, _, _ = build_datasets("folder", str(tmp_path), image_size=8)
    with pytest.raises(UserError) as e:
        for _ in make_loader(train, 4, shuffle=False, workers=1):
            pass
    # torch re-raises the worker's error with its traceback; the class and file survive.
    assert str(tmp_path / "train" / "a" / "x0.png") in str(e.value)
    assert "remove or replace the file" in str(e.value)


# ------------------------------------------------------------------------------------------
# train_final.py

TINY_FLAGS = ["--dataset", "synthetic", "--synthetic_size", "16", "--epochs", "1", "--layers", "3",
              "--init_channels", "4", "--batch_size", "8", "--workers", "0", "--device", "cpu",
              "--no-tensorboard", "--no-progress"]

MALFORMED = [
    DEEP,
    LONG_INT,
    b"\xff\xfe not utf-8",
    b'{"normal": NaN}',
    json.dumps({**DARTS_V2, "reduce_concat": [0, 2, 3, 4, 5]}).encode(),
    json.dumps({**DARTS_V2, "normal": [["sep_conv_3x3", 5]] + DARTS_V2["normal"][1:]}).encode(),
    json.dumps({**DARTS_V2, "reduce": [["conv_9x9", 0]] + DARTS_V2["reduce"][1:]}).encode(),
]


@fuzz(4)
@given(content=st.sampled_from(MALFORMED) | st.binary(max_size=50).map(lambda b: b"\x00" + b))
@example(content=MALFORMED[4])  # the reported crash: an input state in a reduction concat
@example(content=DEEP)
def test_train_final_rejects_a_malformed_genotype_in_one_line_leaving_nothing(content):
    import train_final

    with scratch() as d:
        path = write(d, content)
        save = d / "runs"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = train_final.main(["--genotype", str(path), "--save", str(save), *TINY_FLAGS])
        message = err.getvalue()
        assert code == 2, message
        assert message.startswith(f"error: {path}") and message.count("\n") == 1, message
        assert not save.exists() or not any(save.iterdir())


def test_train_final_names_the_run_after_the_genotype_file_not_its_path(tmp_path):
    import train_final

    (tmp_path / "cells").mkdir()
    path = write(tmp_path / "cells", DARTS_V2, name="mine")  # a path without .json
    save = tmp_path / "runs"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = train_final.main(["--genotype", str(path), "--save", str(save), *TINY_FLAGS])
    assert code == 0
    (run,) = save.iterdir()
    assert run.name.startswith("final-synthetic-mine-") and (run / "metrics.json").exists()


# A NAS-Bench-201 table with gaps (empty, NaN, infinite cells), a BOM, zero times: loading it
# and making the benchmark evaluator either works (and then every score a run meets is a
# number, every time of a time budget above 0, every query valid JSON) or is one UserError.
TABLE_ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
]
TABLE_COLUMNS = ["cifar10_valid", "cifar10_test", "cifar100_test", "cifar10_train_s"]
CELLS = st.sampled_from(["", "nan", "NaN", "-nan", "inf", "-Infinity", "1e400", "0", "-2",
                         "93.5", "1.5", " 7 ", "x"])


@fuzz(80)
@given(bom=st.booleans(), cells=st.lists(st.lists(CELLS, min_size=4, max_size=4), min_size=3,
                                         max_size=3),
       metric=st.sampled_from(TABLE_COLUMNS[:3]), report=st.sampled_from(TABLE_COLUMNS[:3]),
       budget_seconds=st.sampled_from([None, 0.0, 3600.0]))
@example(bom=True, cells=[["nan", "93.5", "", "0"]] * 3, metric="cifar10_valid",
         report="cifar10_test", budget_seconds=3600.0)
@example(bom=False, cells=[["1.5", "93.5", "", ""]] * 3, metric="cifar10_valid",
         report="cifar10_test", budget_seconds=None)
def test_a_table_with_gaps_loads_and_evaluates_or_is_a_user_error(bom, cells, metric, report,
                                                                  budget_seconds):
    import math

    from darts.benchmarks.nb201 import BenchmarkTable
    from darts.evaluators.benchmark import BenchmarkEvaluator
    from darts.spaces.nb201 import NB201Arch

    rows = [",".join([str(i), arch, *row]) for i, (arch, row) in
            enumerate(zip(TABLE_ARCHS, cells, strict=True))]
    text = ("\ufeff" if bom else "") + ",".join(["index", "arch", *TABLE_COLUMNS]) + "\n"
    with scratch() as d:
        path = write(d, (text + "\n".join(rows) + "\n").encode("utf-8"), "t.csv")
        try:
            table = BenchmarkTable.load(path)
            assert table.metrics == TABLE_COLUMNS and len(table.indices) == 3
            evaluate = BenchmarkEvaluator(table, metric, report, budget_seconds=budget_seconds)
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
    for arch in TABLE_ARCHS:
        result = evaluate(NB201Arch.from_string(arch))
        assert math.isfinite(result.score) and math.isfinite(result.reported)
        assert math.isfinite(result.cost) and (result.cost > 0 or not budget_seconds)
        json.dumps(table.score(NB201Arch.from_string(arch)), allow_nan=False)
