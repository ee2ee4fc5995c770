"""Genotypes are validated data: each kind of mistake gets one clear message."""

import json
import subprocess
import sys

import pytest

from darts.errors import GenotypeError
from darts.genotype import (
    Genotype,
    genotype_from_dict,
    load_genotype,
    resolve_genotype,
    save_genotype,
)
from tests.conftest import ROOT

GOOD = {
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3],
}


def write(tmp_path, obj, name="g.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
    return path


def test_round_trip_through_json(tmp_path):
    g = genotype_from_dict(GOOD)
    save_genotype(g, tmp_path / "out.json")
    assert load_genotype(tmp_path / "out.json") == g
    assert g.steps == 2
    assert g.normal[3] == ("dil_conv_3x3", 2)


def test_malformed_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "normal": [\n    ["sep_conv_3x3", 0],,\n  ]\n}')
    with pytest.raises(GenotypeError, match=rf"{path}:3:\d+: malformed JSON"):
        load_genotype(path)


def test_unknown_op_is_named_and_known_ops_listed(tmp_path):
    bad = {**GOOD, "normal": [["sep_conv_9x9", 0]] + GOOD["normal"][1:]}
    with pytest.raises(GenotypeError) as e:
        load_genotype(write(tmp_path, bad))
    msg = str(e.value)
    assert "'sep_conv_9x9'" in msg and "normal[0]" in msg
    assert "known ops:" in msg and "sep_conv_3x3" in msg and "dil_conv_5x5" in msg


def test_input_index_pointing_forward_is_rejected(tmp_path):
    bad = {**GOOD, "normal": GOOD["normal"][:2] + [["skip_connect", 3], ["dil_conv_3x3", 2]]}
    with pytest.raises(GenotypeError, match=r"normal\[2\] \(node 3\) takes input 3, which points forward"):
        load_genotype(write(tmp_path, bad))


def test_input_index_out_of_range_is_rejected(tmp_path):
    bad = {**GOOD, "reduce": [["max_pool_3x3", -1]] + GOOD["reduce"][1:]}
    with pytest.raises(GenotypeError, match=r"reduce\[0\].*takes input -1, which is negative"):
        load_genotype(write(tmp_path, bad))
    bad = {**GOOD, "reduce": [["max_pool_3x3", 7]] + GOOD["reduce"][1:]}
    with pytest.raises(GenotypeError, match=r"reduce\[0\].*may only take inputs 0..1"):
        load_genotype(write(tmp_path, bad))


def test_wrong_number_of_edges_is_rejected(tmp_path):
    bad = {**GOOD, "normal": GOOD["normal"][:3]}
    with pytest.raises(GenotypeError, match="3 edges; a cell needs exactly two edges per"):
        load_genotype(write(tmp_path, bad))
    bad = {**GOOD, "reduce": GOOD["reduce"][:2], "reduce_concat": [2]}
    with pytest.raises(GenotypeError, match="same number of intermediate nodes"):
        load_genotype(write(tmp_path, bad))


def test_missing_keys_are_listed(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k not in ("reduce", "reduce_concat")}
    with pytest.raises(GenotypeError, match="missing key.*reduce, reduce_concat"):
        load_genotype(write(tmp_path, bad))


def test_edge_shape_concat_range_and_none_op(tmp_path):
    with pytest.raises(GenotypeError, match=r"normal\[1\] is \"sep_conv_3x3\""):
        genotype_from_dict({**GOOD, "normal": [GOOD["normal"][0], "sep_conv_3x3"] + GOOD["normal"][2:]})
    with pytest.raises(GenotypeError, match="normal_concat' contains 4, out of range"):
        genotype_from_dict({**GOOD, "normal_concat": [2, 4]})
    with pytest.raises(GenotypeError, match="'none'"):
        genotype_from_dict({**GOOD, "normal": [["none", 0]] + GOOD["normal"][1:]})
    with pytest.raises(GenotypeError, match="expected a JSON object"):
        load_genotype(write(tmp_path, [1, 2]))


def test_unknown_name_lists_published_genotypes():
    with pytest.raises(GenotypeError, match="published: .*darts_v2"):
        resolve_genotype("darts_v9")
    with pytest.raises(GenotypeError, match="no such genotype file"):
        resolve_genotype("missing/thing.json")


def test_genotype_is_data_never_code(tmp_path):
    # A string that would run code if eval'd is just an unknown op name.
    bad = {**GOOD, "normal": [["__import__('os').system('touch pwned')", 0]] + GOOD["normal"][1:]}
    with pytest.raises(GenotypeError, match="unknown op"):
        load_genotype(write(tmp_path, bad))
    assert not (tmp_path / "pwned").exists()
    assert isinstance(genotype_from_dict(GOOD), Genotype)


@pytest.mark.parametrize("script", ["train_final.py"])
def test_cli_reports_a_bad_genotype_in_one_line_without_traceback(tmp_path, script):
    path = write(tmp_path, {**GOOD, "normal": [["conv_9x9", 0]] + GOOD["normal"][1:]})
    proc = subprocess.run([sys.executable, str(ROOT / script), "--genotype", str(path),
                           "--dataset", "synthetic", "--save", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "conv_9x9" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_concat_lists_intermediate_nodes_only_each_once(tmp_path):
    # An input state in a reduction cell's concat has twice the resolution of the nodes: the
    # network could not be built (it was accepted, then train_final crashed).
    with pytest.raises(GenotypeError, match=r"'reduce_concat' contains 0, out of range.*2\.\.3"):
        load_genotype(write(tmp_path, {**GOOD, "reduce_concat": [0, 2, 3]}))
    with pytest.raises(GenotypeError, match="'normal_concat' contains 1"):
        genotype_from_dict({**GOOD, "normal_concat": [1, 2]})
    with pytest.raises(GenotypeError, match="lists a node twice"):
        genotype_from_dict({**GOOD, "normal_concat": [2, 2]})
    with pytest.raises(GenotypeError, match="non-empty list"):
        genotype_from_dict({**GOOD, "normal_concat": [2, True]})
    assert genotype_from_dict({**GOOD, "reduce_concat": [3]}).reduce_concat == (3,)


@pytest.mark.parametrize("content, message", [
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"normal": ' + b"9" * 5000 + b"}", "5000 digits"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"normal": NaN}', "NaN is not valid JSON"),
    (b" " * (2 << 20), "too large"),
], ids=["deep", "long-int", "not-utf8", "nan", "huge"])
def test_any_malformed_file_is_a_genotype_error_naming_it(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_bytes(content)
    with pytest.raises(GenotypeError, match=message) as e:
        resolve_genotype(str(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_a_directory_or_unusable_name_is_a_genotype_error(tmp_path):
    with pytest.raises(GenotypeError, match="is a directory"):
        resolve_genotype(str(tmp_path))
    with pytest.raises(GenotypeError, match="cannot read"):
        resolve_genotype("x" * 5000)
    with pytest.raises(GenotypeError, match="cannot read"):
        resolve_genotype("bad\0name.json")
