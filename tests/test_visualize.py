"""Cell pictures: the drawn graph is the genotype's cell, and it renders to real files."""

from __future__ import annotations

import json
import re
import shutil
from xml.etree import ElementTree

import graphviz
import numpy as np
import pytest

import darts.visualize as vis
from darts.errors import UserError
from darts.genotype import available_genotypes, genotype_from_edges, resolve_genotype

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A small hand-written cell (2 nodes). The normal cell concatenates both nodes; the reduction
# cell concatenates node 1 only, skipping node 0 (as AmoebaNet's cells do).
SMALL = genotype_from_edges(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 0)],
    reduce=[("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 2), ("sep_conv_5x5", 1)],
    reduce_concat=[3],
)

# DARTS_V2 (Liu et al. 2019, Figure 5), in the reference code's layout.
DARTS_V2 = genotype_from_edges(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)

# NASNet-A (Zoph et al. 2018): 5 nodes, and a reduction cell that concatenates nodes 2..4 only.
NASNET = genotype_from_edges(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1)],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
    reduce_concat=[4, 5, 6],
)

_EDGE = re.compile(r'^\s*("[^"]*"|\S+) -> ("[^"]*"|\S+)(?: \[(.*)\])?\s*$')
_NODE = re.compile(r'^\s*("[^"]*"|\w+) \[(.*)\]\s*$')
_LABEL = re.compile(r'label=("[^"]*"|\S+)')


def _unquote(s: str) -> str:
    return s[1:-1] if s.startswith('"') else s


def edges_of(graph: graphviz.Digraph) -> list[tuple[str, str, str | None]]:
    """(tail, head, label) for every edge in the DOT source, in order."""
    out = []
    for line in graph.source.splitlines():
        m = _EDGE.match(line)
        if m and "style=invis" not in line:  # the invisible edges only order the nodes
            label = _LABEL.search(m.group(3) or "")
            out.append((_unquote(m.group(1)), _unquote(m.group(2)),
                        _unquote(label.group(1)) if label else None))
    return out


def nodes_of(graph: graphviz.Digraph) -> dict[str, str]:
    """node name -> its attribute string, for every declared node."""
    out = {}
    for line in graph.source.splitlines():
        if "->" not in line and (m := _NODE.match(line)) and m.group(1) not in ("graph", "node", "edge"):
            out[_unquote(m.group(1))] = m.group(2)
    return out


def test_normal_cell_edges_are_the_genotype_edges_plus_concat():
    g = vis.cell_graph(SMALL, reduction=False)
    assert sorted(edges_of(g)) == sorted([
        ("c_{k-2}", "0", "sep_conv_3x3"),
        ("c_{k-1}", "0", "skip_connect"),
        ("0", "1", "dil_conv_5x5"),
        ("c_{k-2}", "1", "max_pool_3x3"),
        ("0", "c_{k}", None),
        ("1", "c_{k}", None),
    ])
    assert "rankdir=LR" in g.source


def test_reduction_cell_concat_may_skip_a_node():
    g = vis.cell_graph(SMALL, reduction=True)
    assert sorted(edges_of(g)) == sorted([
        ("c_{k-2}", "0", "max_pool_3x3"),
        ("c_{k-1}", "0", "avg_pool_3x3"),
        ("0", "1", "skip_connect"),
        ("c_{k-1}", "1", "sep_conv_5x5"),
        ("1", "c_{k}", None),
    ])


def test_nodes_are_coloured_like_the_paper():
    nodes = nodes_of(vis.cell_graph(SMALL, reduction=False))
    assert set(nodes) == {"c_{k-2}", "c_{k-1}", "0", "1", "c_{k}"}
    for name in ("c_{k-2}", "c_{k-1}"):
        assert "darkseagreen2" in nodes[name]
    for name in ("0", "1"):
        assert "lightblue" in nodes[name]
    assert "palegoldenrod" in nodes["c_{k}"]


def test_five_node_cell_has_five_nodes_and_its_concat():
    g = vis.cell_graph(NASNET, reduction=True, title="NASNet-A reduction")
    assert {"0", "1", "2", "3", "4"} <= set(nodes_of(g))
    edges = edges_of(g)
    assert len(edges) == 10 + 3
    assert sorted(t for t, h, _ in edges if h == "c_{k}") == ["2", "3", "4"]
    assert ("1", "3", "skip_connect") in edges  # edge 6 feeds node 3; its input 3 is node 1
    assert "NASNet-A reduction" in g.source


def test_building_the_graph_needs_no_dot(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not vis.dot_available()
    assert len(edges_of(vis.cell_graph(DARTS_V2, reduction=False))) == 8 + 4


@needs_dot
def test_render_genotype_writes_png_files(tmp_path):
    assert vis.dot_available()
    paths = vis.render_genotype(DARTS_V2, tmp_path)
    assert paths == {"normal": tmp_path / "normal.png", "reduce": tmp_path / "reduce.png"}
    for path in paths.values():
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    # Only the pictures: no dot source or temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normal.png", "reduce.png"]


@needs_dot
def test_render_genotype_prefix_and_new_directory(tmp_path):
    paths = vis.render_genotype(DARTS_V2, tmp_path / "run" / "cells", prefix="epoch_003_")
    assert paths["normal"] == tmp_path / "run" / "cells" / "epoch_003_normal.png"
    assert paths["reduce"].name == "epoch_003_reduce.png"
    assert all(p.is_file() for p in paths.values())


@needs_dot
def test_render_cell_returns_the_written_path(tmp_path):
    path = vis.render_cell(SMALL, True, tmp_path / "reduce", format="pdf")
    assert path == tmp_path / "reduce.pdf"
    assert path.read_bytes().startswith(b"%PDF")
    assert [p.name for p in tmp_path.iterdir()] == ["reduce.pdf"]


@needs_dot
def test_svg_shows_every_op_and_state_name(tmp_path):
    for reduction, path in ((False, tmp_path / "n"), (True, tmp_path / "r")):
        svg = ElementTree.parse(vis.render_cell(DARTS_V2, reduction, path, format="svg"))
        texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        edges, _ = DARTS_V2.cell(reduction)
        assert sorted(op for op, _ in edges) == sorted(t for t in texts if "_" in t and "{" not in t)
        for name in ("0", "1", "2", "3"):
            assert name in texts
        # c with subscripts k-2, k-1 and k, as the paper writes them (not "c_{k-2}")
        for sub in ("k-2", "k-1", "k"):
            assert any(a == "c" and b == sub for a, b in zip(texts, texts[1:], strict=False))
        assert not any("{" in t for t in texts)


def test_nodes_are_ranked_in_their_order_and_the_inputs_stacked():
    g = vis.cell_graph(NASNET, reduction=False)
    hidden = [line for line in g.source.splitlines() if "style=invis" in line]
    order = [tuple(_unquote(x) for x in _EDGE.match(line).groups()[:2]) for line in hidden]
    assert order == [("c_{k-2}", "c_{k-1}"), ("0", "1"), ("1", "2"), ("2", "3"), ("3", "4")]
    assert "rank=same" in g.source


@needs_dot
def test_five_node_cell_renders(tmp_path):
    paths = vis.render_genotype(NASNET, tmp_path)
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths.values())


@needs_dot
def test_cell_image_array_is_hwc_uint8():
    image = vis.cell_image_array(DARTS_V2, reduction=False)
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert image.min() < 128 < image.max()  # not a blank picture


def _write(path, genotype):
    path.write_text(json.dumps(genotype.to_dict()))
    return path


@needs_dot
def test_cli_writes_both_cells_into_out_dir(tmp_path, capsys):
    src = _write(tmp_path / "genotype.json", DARTS_V2)
    out = tmp_path / "pictures"
    assert vis.main([str(src), "-o", str(out)]) == 0
    assert (out / "normal.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "reduce.png").read_bytes().startswith(PNG_SIGNATURE)
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "normal.png"), str(out / "reduce.png")]


@needs_dot
def test_cli_defaults_to_the_genotype_files_directory(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    src = _write(tmp_path / "run" / "genotype.json", SMALL)
    monkeypatch.chdir(tmp_path)
    assert vis.main([str(src), "--format", "svg"]) == 0
    assert (tmp_path / "run" / "normal.svg").is_file()
    assert (tmp_path / "run" / "reduce.svg").is_file()


@needs_dot
def test_cli_published_name_writes_into_current_directory(tmp_path, monkeypatch):
    published = tmp_path / "published"
    published.mkdir()
    _write(published / "DARTS_V2.json", DARTS_V2)
    monkeypatch.setattr(vis, "resolve_genotype",
                        lambda spec: resolve_genotype(spec, directory=published))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert vis.main(["darts_v2"]) == 0
    assert sorted(p.name for p in cwd.iterdir()) == ["normal.png", "reduce.png"]


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps({"normal": [["sep_conv_3x3", 0]], "normal_concat": [2]}),
    json.dumps({**DARTS_V2.to_dict(), "normal": [["conv_9x9", 0]] * 8}),
])
def test_cli_malformed_genotype_is_one_error_line(tmp_path, capsys, text):
    src = tmp_path / "bad.json"
    src.write_text(text)
    assert vis.main([str(src), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert str(src) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_file_or_name(tmp_path, capsys):
    assert vis.main([str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert vis.main(["no_such_published_cell"]) == 2
    assert "neither a file nor a published name" in capsys.readouterr().err


@needs_dot
def test_cli_unwritable_out_dir_is_one_error_line(tmp_path, capsys):
    src = _write(tmp_path / "genotype.json", SMALL)
    assert vis.main([str(src), "-o", str(src)]) == 2  # -o names a file, not a directory
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {src}")
    assert "Traceback" not in err


def test_cli_without_dot_says_what_to_install(tmp_path, capsys, monkeypatch):
    src = _write(tmp_path / "genotype.json", SMALL)
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    assert vis.main([str(src)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {vis.DOT_MISSING}"
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert "Traceback" not in err
    assert not (tmp_path / "normal.png").exists()


def test_dot_not_on_path_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `dot` anywhere
    with pytest.raises(vis.DotNotFoundError, match="install it with `apt-get install graphviz`"):
        vis.render_genotype(SMALL, tmp_path)
    with pytest.raises(UserError):
        vis.cell_image_array(SMALL, reduction=False)


def test_executable_not_found_from_graphviz_is_a_user_error(tmp_path, monkeypatch):
    # `which` finds a dot, but graphviz cannot run it (e.g. it vanished or is not executable).
    monkeypatch.setattr(vis, "dot_available", lambda: True)

    def pipe(self, *args, **kwargs):
        raise graphviz.ExecutableNotFound(["dot", "-Tpng"])

    monkeypatch.setattr(graphviz.Digraph, "pipe", pipe)
    with pytest.raises(vis.DotNotFoundError) as excinfo:
        vis.render_cell(SMALL, False, tmp_path / "normal")
    assert str(excinfo.value) == vis.DOT_MISSING
    assert list(tmp_path.iterdir()) == []


@needs_dot
@pytest.mark.parametrize("name", available_genotypes())
def test_every_published_genotype_renders_to_png(tmp_path, name):
    paths = vis.render_genotype(resolve_genotype(name), tmp_path)
    for path in paths.values():
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_a_nas_bench_201_cell_is_drawn_without_its_none_edges(tmp_path):
    from darts.spaces.nb201 import NB201Arch
    arch = NB201Arch.from_string(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|")
    g = vis.nb201_graph(arch)
    assert sorted(edges_of(g)) == sorted([("0", "1", "nor_conv_3x3"), ("0", "2", "nor_conv_3x3"),
                                          ("1", "2", "avg_pool_3x3"), ("1", "3", "nor_conv_3x3"),
                                          ("2", "3", "skip_connect")])
    assert vis.kinds_of(arch) == ("cell",)
    if vis.dot_available():
        (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
        assert vis.main([str(tmp_path / "arch.json")]) == 0
        assert (tmp_path / "cell.png").read_bytes().startswith(PNG_SIGNATURE)
        assert vis.main([arch.to_string(), "-o", str(tmp_path / "s")]) == 0
        assert (tmp_path / "s" / "cell.png").is_file()
