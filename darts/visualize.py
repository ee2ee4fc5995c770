"""Cell pictures: a Genotype drawn as a graphviz graph, like the figures of the DARTS paper.

A cell is drawn left to right (Liu et al. 2019, Figures 4 and 5): the two input states c_{k-2}
and c_{k-1}, the intermediate nodes 0, 1, ..., each with one arrow per `(op, input)` edge of
the genotype labelled with the op, and the output c_{k} fed by every node in the cell's
`*_concat` list (all of the nodes, or a subset of them).

    python -m darts.visualize darts_v2                     # ./normal.png, ./reduce.png
    python -m darts.visualize runs/x/genotype.json --format pdf -o figures

Rendering needs the graphviz `dot` program; building the graph (`cell_graph`) does not.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import graphviz
import numpy as np
from PIL import Image

from darts import plugins
from darts.errors import UserError
from darts.genotype import Genotype, resolve_genotype
from darts.spaces.nb201 import EDGES as NB201_EDGES
from darts.spaces.nb201 import NODES as NB201_NODES
from darts.spaces.nb201 import NB201Arch, load_arch, read_arch_json
from darts.train.cli import Parser, command, report
from darts.train.files import atomic_open

INPUT_NAMES = ("c_{k-2}", "c_{k-1}")
OUTPUT_NAME = "c_{k}"
# What the pictures show for them: graphviz HTML labels with subscripts, as in the paper.
LABELS = {"c_{k-2}": "<c<sub>k-2</sub>>", "c_{k-1}": "<c<sub>k-1</sub>>", "c_{k}": "<c<sub>k</sub>>"}

# The look of the paper's figures: filled boxes, one colour per kind of state.
INPUT_COLOR = "darkseagreen2"
NODE_COLOR = "lightblue"
OUTPUT_COLOR = "palegoldenrod"

CLI_FORMATS = ("png", "pdf", "svg")

DOT_MISSING = ("the graphviz `dot` program is missing: install it with `apt-get install graphviz` "
               "(Debian/Ubuntu), `brew install graphviz` (macOS) or `conda install graphviz`")


class DotNotFoundError(UserError):
    """The graphviz `dot` executable is not installed (or not on PATH)."""

    def __init__(self, message: str = DOT_MISSING) -> None:
        super().__init__(message)


def dot_available() -> bool:
    """Whether the graphviz `dot` program can be found on PATH (rendering needs it)."""
    return shutil.which("dot") is not None


def state_name(index: int) -> str:
    """The name of a cell state in the genotype's numbering: 0, 1 are the inputs, j >= 2 node j-2."""
    return INPUT_NAMES[index] if index < 2 else str(index - 2)


def cell_graph(genotype: Genotype, reduction: bool, *, title: str | None = None,
               format: str = "png") -> graphviz.Digraph:
    """The normal (or reduction) cell of `genotype` as a left-to-right graphviz Digraph."""
    edges, concat = genotype.cell(reduction)
    g = graphviz.Digraph(
        name="reduce" if reduction else "normal",
        format=format,
        graph_attr={"rankdir": "LR"},
        node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "20",
                   "height": "0.5", "width": "0.5", "penwidth": "2", "fontname": "times"},
        edge_attr={"fontsize": "20", "fontname": "times"},
    )
    if title:
        g.attr(label=title, labelloc="t", fontsize="24", fontname="times")

    # The two inputs in one column, c_{k-2} above c_{k-1}; the names stay the node ids and
    # are shown with subscripts.
    with g.subgraph(name="inputs") as inputs:
        inputs.attr(rank="same")
        for name in INPUT_NAMES:
            inputs.node(name, label=LABELS[name], fillcolor=INPUT_COLOR)
        inputs.edge(*INPUT_NAMES, style="invis")
    steps = len(edges) // 2
    for node in range(steps):
        g.node(str(node), fillcolor=NODE_COLOR)
    g.node(OUTPUT_NAME, label=LABELS[OUTPUT_NAME], fillcolor=OUTPUT_COLOR)
    # The intermediate nodes left to right in their order (invisible edges rank them).
    for node in range(steps - 1):
        g.edge(str(node), str(node + 1), style="invis")

    # Genotype layout: edges 2i and 2i+1 feed intermediate node i (state i + 2).
    for k, (op, index) in enumerate(edges):
        g.edge(state_name(index), str(k // 2), label=op, fillcolor="gray")
    for index in concat:
        g.edge(state_name(index), OUTPUT_NAME, fillcolor="gray")
    return g


def nb201_graph(arch: NB201Arch, *, title: str | None = None,
                format: str = "png") -> graphviz.Digraph:
    """A NAS-Bench-201 cell, left to right: node 0 (the input) to node 3 (the output), one
    labelled arrow per edge; `none` edges are not drawn."""
    g = graphviz.Digraph(
        name="cell", format=format, graph_attr={"rankdir": "LR"},
        node_attr={"style": "filled", "shape": "rect", "fontsize": "20", "height": "0.5",
                   "width": "0.5", "penwidth": "2", "fontname": "times"},
        edge_attr={"fontsize": "20", "fontname": "times"},
    )
    if title:
        g.attr(label=title, labelloc="t", fontsize="24", fontname="times")
    colors = {0: INPUT_COLOR, NB201_NODES - 1: OUTPUT_COLOR}
    for node in range(NB201_NODES):
        g.node(str(node), fillcolor=colors.get(node, NODE_COLOR))
    for node in range(NB201_NODES - 1):  # nodes ranked in their order
        g.edge(str(node), str(node + 1), style="invis")
    for op, (i, j) in zip(arch.ops, NB201_EDGES, strict=True):
        if op != "none":
            g.edge(str(j), str(i), label=op, fillcolor="gray")
    return g


def cnn_graph(arch: Any, *, title: str | None = None, format: str = "png") -> graphviz.Digraph:
    """A plain CNN (darts.spaces.cnn), left to right: the image, one box per conv layer (its
    kernel and width, its shortcut, then its pooling), global average pooling and the
    classifier."""
    g = graphviz.Digraph(
        name="network", format=format, graph_attr={"rankdir": "LR"},
        node_attr={"style": "filled", "shape": "rect", "fontsize": "20", "height": "0.5",
                   "penwidth": "2", "fontname": "times"},
        edge_attr={"fontsize": "20", "fontname": "times"},
    )
    if title:
        g.attr(label=title, labelloc="t", fontsize="24", fontname="times")
    names = ["image"]
    g.node("image", fillcolor=INPUT_COLOR)
    for k, layer in enumerate(arch.layers):
        name = f"conv{k}"
        label = f"conv {layer.kernel}x{layer.kernel}, {layer.width}"
        if getattr(layer, "res", False):
            label += "\\n+ 1x1 shortcut"
        if layer.pool != "none":
            label += f"\\n{layer.pool} pool 2x2"
        g.node(name, label=label, fillcolor=NODE_COLOR)
        names.append(name)
    g.node("head", label="avg pool, linear", fillcolor=OUTPUT_COLOR)
    names.append("head")
    for a, b in zip(names, names[1:], strict=False):
        g.edge(a, b, fillcolor="gray")
    return g


def _is_cnn(cell: Any) -> bool:
    return type(cell).__name__ == "CNNArch"


def kinds_of(cell: Any) -> tuple[str, ...]:
    """The pictures of a cell: a DARTS genotype has two, a NAS-Bench-201 arch one, a plain
    CNN one (the network)."""
    if _is_cnn(cell):
        return ("network",)
    return ("cell",) if isinstance(cell, NB201Arch) else ("normal", "reduce")


def _graph(cell: Any, kind: str, format: str) -> graphviz.Digraph:
    if _is_cnn(cell):
        return cnn_graph(cell, format=format)
    if isinstance(cell, NB201Arch):
        return nb201_graph(cell, format=format)
    return cell_graph(cell, kind == "reduce", format=format)


def graphs_of(cell: Any, format: str = "png") -> dict[str, graphviz.Digraph]:
    """The pictures of a candidate of the library's spaces, by kind (`kinds_of`)."""
    return {kind: _graph(cell, kind, format) for kind in kinds_of(cell)}


def render_graphs(graphs: dict[str, graphviz.Digraph], out_dir: str | os.PathLike,
                  format: str = "png", prefix: str = "") -> dict[str, Path]:
    """Writes each graph as `out_dir/<prefix><kind>.<format>`; all are rendered before any
    is written, so a `dot` that fails on one leaves every file as it was."""
    out_dir = Path(out_dir)
    data = {kind: _pipe(graph, format) for kind, graph in graphs.items()}
    paths = {}
    for kind, picture in data.items():
        path = out_dir / f"{prefix}{kind}.{format}"
        try:
            with atomic_open(path) as f:
                f.write(picture)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        paths[kind] = path
    return paths


def image_array(graph: graphviz.Digraph) -> np.ndarray:
    """A graph rendered as an HxWx3 uint8 RGB array (for TensorBoard, dataformats="HWC")."""
    with Image.open(io.BytesIO(_pipe(graph, "png"))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _pipe(graph: graphviz.Digraph, format: str) -> bytes:
    """Runs `dot` on the graph and returns the rendered bytes; user-facing errors if it can't."""
    if not dot_available():
        raise DotNotFoundError()
    try:
        return graph.pipe(format=format)
    except graphviz.ExecutableNotFound:
        raise DotNotFoundError() from None
    except graphviz.CalledProcessError as e:
        # Typically a `dot` built without the plugin for this format (e.g. no cairo for pdf).
        detail = (e.stderr or b"").decode("utf-8", "replace").strip()
        raise UserError(f"graphviz `dot` could not render {format!r}: {detail or e}") from None


def render_cell(genotype: Genotype, reduction: bool, path_stem: str | os.PathLike,
                format: str = "png") -> Path:
    """Writes the cell picture to `path_stem.<format>` (e.g. DIR/normal.png) and returns its path.

    Only the picture is written (no dot source file); it is written to a temporary file and
    renamed into place, so a reader never sees half an image.
    """
    stem = Path(path_stem)
    path = stem if stem.suffix == f".{format}" else stem.with_name(f"{stem.name}.{format}")
    data = _pipe(cell_graph(genotype, reduction, format=format), format)
    try:
        with atomic_open(path) as f:
            f.write(data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def render_genotype(genotype: Genotype, out_dir: str | os.PathLike, format: str = "png",
                    prefix: str = "") -> dict[str, Path]:
    """Writes both cells as `out_dir/<prefix>normal.<format>` and `<prefix>reduce.<format>`.

    Both pictures are rendered before either is written: if `dot` fails on one, neither
    file is touched.
    """
    return render_graphs(graphs_of(genotype, format), out_dir, format, prefix)


def cell_image_array(genotype: Any, reduction: bool = False, kind: str | None = None) -> np.ndarray:
    """The rendered cell as an HxWx3 uint8 RGB array (for TensorBoard, dataformats="HWC");
    `kind` one of kinds_of(genotype), else the normal or reduction cell."""
    kind = kind or ("reduce" if reduction else "normal")
    return image_array(_graph(genotype, kind, "png"))


def _arch_file(spec: str) -> dict | None:
    """The data of a NAS-Bench-201 arch file ({"arch": ...}); None for anything else, also
    an unreadable file (the genotype reader then says what is wrong)."""
    if not spec.endswith(".json"):
        return None
    try:
        data = read_arch_json(spec, "GENOTYPE")
    except UserError:
        return None
    return data if isinstance(data, dict) and "arch" in data else None


def _own_drawing(spec: str) -> tuple[Any, Any] | None:
    """(the space, the candidate) of a candidate whose space draws its own (its `graphs`: a
    NAS-Bench-101 cell, a plugin's); None for anything else."""
    from darts.spaces import SPACES

    data: Any = spec
    if spec.endswith(".json"):
        try:
            data = read_arch_json(spec, "GENOTYPE")
        except UserError:
            return None
    for space in SPACES.values():
        final = getattr(space, "final", None)
        if hasattr(space, "graphs") and final is not None and final.reads(data):
            return space, final.load(spec, f"GENOTYPE {spec}")
    return None


def _default_out_dir(spec: str) -> Path:
    """The genotype file's directory, or the current directory for a published name."""
    path = Path(spec)
    try:
        return path.parent if path.is_file() else Path.cwd()
    except OSError as e:  # the current directory was removed, ...
        raise UserError(f"cannot pick an output directory ({e.strerror or e}); pass -o DIR") from None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=" ".join(command("python -m darts.visualize", "darts-visualize")),
                    description="Draw a genotype's normal and reduction cells with graphviz.")
    parser.add_argument("genotype", metavar="GENOTYPE",
                        help="a genotype JSON file, or a published name such as darts_v2; "
                             "or a NAS-Bench-201 arch string or arch.json, a NAS-Bench-101 cell.json")
    parser.add_argument("-o", "--out-dir", type=Path, default=None,
                        help="where to write normal.<format> and reduce.<format> (default: the "
                             "genotype file's directory, or the current directory for a name)")
    parser.add_argument("--format", choices=CLI_FORMATS, default="png",
                        help="picture format (default: png)")
    parser.add_argument("--plugins", default="",
                        help="comma-separated Python files (or module names) imported first: "
                             "the ops of your own that the genotype uses")
    args = parser.parse_args(argv)

    try:
        plugins.load(args.plugins)
        spec = args.genotype
        out_dir = args.out_dir if args.out_dir is not None else _default_out_dir(args.genotype)
        own = _own_drawing(spec)
        if own is not None:
            space, candidate = own
            for path in render_graphs(space.graphs(candidate, args.format), out_dir,
                                      args.format).values():
                print(path)
            return 0
        arch_file = _arch_file(spec)
        if arch_file is not None:  # a NAS-Bench-201 cell
            genotype = load_arch(arch_file, f"GENOTYPE {spec}")
        elif spec.startswith("|"):
            genotype = load_arch(spec, "GENOTYPE")
        else:
            genotype = resolve_genotype(spec)
        paths = render_genotype(genotype, out_dir, format=args.format)
    except UserError as e:
        return report(e)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
