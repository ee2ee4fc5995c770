"""The published cells shipped in darts/genotypes/: every file loads, says where it comes from, and a
few facts about the best-known cells are pinned by hand (from the papers' cell figures and the
reference repositories), so that a mis-transcribed edge shows up here."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from darts.genotype import (
    GENOTYPE_DIR,
    GenotypeError,
    available_genotypes,
    load_genotype,
    resolve_genotype,
)
from darts.primitives import OPS, PRIMITIVES

GENOTYPE_FILES = sorted(GENOTYPE_DIR.glob("*.json"))

# The names users type (`--genotype darts_v2`); every one must keep shipping.
EXPECTED = {
    "darts_v1", "darts_v2", "nasnet_a", "amoebanet_a", "pc_darts_cifar", "pc_darts_imagenet",
    "pdarts", "gdas", "drnas_cifar", "drnas_imagenet",
}

# Cells searched in the DARTS space itself (4 nodes, 8 edges, output = all 4 nodes).
DARTS_SPACE = EXPECTED - {"nasnet_a", "amoebanet_a"}


def ops(edges) -> Counter:
    return Counter(op for op, _ in edges)


def test_the_published_set_is_shipped():
    assert GENOTYPE_FILES, f"no genotype files in {GENOTYPE_DIR}"
    assert EXPECTED <= set(available_genotypes())


@pytest.mark.parametrize("path", GENOTYPE_FILES, ids=lambda p: p.stem)
def test_every_file_loads_and_names_its_source(path):
    g = load_genotype(path)
    assert isinstance(g.source, str) and g.source.strip(), f"{path.name} has no 'source'"
    assert isinstance(g.name, str) and g.name.strip(), f"{path.name} has no 'name'"
    # Exactly the documented keys, nothing silently ignored.
    keys = set(json.loads(path.read_text(encoding="utf-8")))
    assert keys == {"name", "source", "normal", "normal_concat", "reduce", "reduce_concat"}
    assert len(g.normal) == len(g.reduce) == 2 * g.steps
    for op, _ in g.normal + g.reduce:
        assert op in OPS and op != "none"
    # The file name is the name users type, and resolves to the same cell.
    assert resolve_genotype(path.stem) == g


@pytest.mark.parametrize("name", sorted(DARTS_SPACE))
def test_darts_space_cells_use_the_darts_space(name):
    g = resolve_genotype(name)
    assert g.steps == 4
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert set(ops(g.normal + g.reduce)) <= set(PRIMITIVES) - {"none"}


def test_darts_v2():
    g = resolve_genotype("darts_v2")
    normal = ops(g.normal)
    assert normal["skip_connect"] == 2
    assert normal["sep_conv_3x3"] == 5
    assert normal["dil_conv_3x3"] == 1
    # The last node: skip from c_{k-2} and a dilated conv from the first intermediate node.
    assert g.normal[6:] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert set(ops(g.reduce)) == {"max_pool_3x3", "skip_connect"}
    assert ops(g.reduce)["skip_connect"] == 3
    # In the reduction cell every skip comes from node 0 (input 2), every pool from the inputs.
    for op, i in g.reduce:
        assert (i == 2) if op == "skip_connect" else (i in (0, 1))
    assert "quark0/darts" in g.source


def test_darts_v1_differs_from_v2():
    v1, v2 = resolve_genotype("darts_v1"), resolve_genotype("darts_v2")
    assert v1 != v2
    assert ops(v1.normal)["skip_connect"] == 3
    assert ops(v1.reduce)["avg_pool_3x3"] == 1
    assert "avg_pool_3x3" not in ops(v2.reduce)


def test_nasnet_a():
    g = resolve_genotype("nasnet_a")
    assert g.steps == 5 and len(g.normal) == len(g.reduce) == 10
    assert g.normal_concat == (2, 3, 4, 5, 6)
    assert g.reduce_concat == (4, 5, 6)
    # The NASNet-A normal cell reads only the two cell inputs.
    assert {i for _, i in g.normal} == {0, 1}
    assert ops(g.reduce)["sep_conv_7x7"] == 2
    assert "conv_7x1_1x7" not in ops(g.normal + g.reduce)


def test_amoebanet_a():
    g = resolve_genotype("amoebanet_a")
    assert g.steps == 5
    assert g.normal_concat == (4, 5, 6)
    assert g.reduce_concat == (3, 4, 6)
    assert ("conv_7x1_1x7", 0) in g.reduce
    assert "conv_7x1_1x7" not in ops(g.normal)
    assert ops(g.reduce)["sep_conv_7x7"] == 2


def test_pc_darts():
    cifar, imagenet = resolve_genotype("pc_darts_cifar"), resolve_genotype("pc_darts_imagenet")
    assert cifar != imagenet
    # The CIFAR reduction cell has no skip connection and only one pooling edge.
    assert "skip_connect" not in ops(cifar.reduce)
    assert ops(cifar.reduce)["max_pool_3x3"] == 1
    assert cifar.normal[:2] == (("sep_conv_3x3", 1), ("skip_connect", 0))
    assert imagenet.normal[-1] == ("dil_conv_5x5", 4)


def test_pdarts():
    g = resolve_genotype("pdarts")
    assert ops(g.normal)["skip_connect"] == 2
    assert g.normal[-1] == ("dil_conv_5x5", 4)
    assert g.reduce[0] == ("avg_pool_3x3", 0)


def test_gdas_is_flattened_in_published_order():
    g = resolve_genotype("gdas")
    # D-X-Y's nested pairs, one per node, flattened without reordering.
    assert g.normal[:2] == (("skip_connect", 0), ("skip_connect", 1))
    assert g.normal[6:] == (("sep_conv_5x5", 4), ("sep_conv_3x3", 3))
    assert ops(g.normal)["skip_connect"] == 4
    # The GDAS reduction cell has no pooling and no skip connection.
    assert set(ops(g.reduce)) == {"sep_conv_5x5", "sep_conv_3x3", "dil_conv_5x5"}


def test_drnas():
    cifar, imagenet = resolve_genotype("drnas_cifar"), resolve_genotype("drnas_imagenet")
    assert cifar != imagenet
    assert ("skip_connect", 4) in cifar.reduce
    assert ops(imagenet.normal)["sep_conv_3x3"] == 6


@pytest.mark.parametrize("spelling", ["DARTS_V2", "darts_v2", "Darts_V2", "darts-v2", "DARTS-V2"])
def test_names_resolve_case_insensitively(spelling):
    assert resolve_genotype(spelling) == resolve_genotype("darts_v2")


def test_other_names_resolve_case_insensitively():
    assert resolve_genotype("PC-DARTS_cifar") == resolve_genotype("pc_darts_cifar")
    assert resolve_genotype("NASNet_A") == resolve_genotype("nasnet_a")
    assert resolve_genotype("GDAS") == resolve_genotype("gdas")


def test_genotypes_folder_path_names_the_published_file(tmp_path, monkeypatch):
    """`--genotype genotypes/darts_v2.json` resolves wherever no such file is; a file of the
    user's at that path is read instead, and an unknown name is still an error."""
    monkeypatch.chdir(tmp_path)
    assert resolve_genotype("genotypes/darts_v2.json") == resolve_genotype("darts_v2")
    with pytest.raises(GenotypeError, match="no such genotype file"):
        resolve_genotype("genotypes/darts_v3.json")
    (tmp_path / "genotypes").mkdir()
    shutil.copy(GENOTYPE_DIR / "pdarts.json", tmp_path / "genotypes" / "darts_v2.json")
    assert resolve_genotype("genotypes/darts_v2.json") == resolve_genotype("pdarts")
