"""Genotypes: the discrete cells that a search decodes and a final network is built from.

A genotype is the reference code's flat layout (Liu et al. 2019, Section 2.4): for a cell
with N intermediate nodes, `normal` and `reduce` each hold 2N `(op, input)` pairs, two per
node in node order. Input 0 is the output of the cell before the previous one (c_{k-2}),
input 1 the previous cell (c_{k-1}), input j >= 2 the intermediate node j - 2. `*_concat`
lists the intermediate nodes (states 2 .. N + 1, each at most once) whose channel-wise
concatenation is the cell's output.

Genotypes are data: they are read from and written to JSON, and validated; never eval'd.
Validation is complete: every genotype that `genotype_from_dict` (and so `load_genotype`,
`resolve_genotype`) accepts builds a network that runs, and every way a file can be wrong
(unreadable, not UTF-8, too large, not JSON, nested too deeply, a wrong type or index) is a
`GenotypeError` whose one-line message names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darts.errors import GenotypeError
from darts.primitives import OPS
from darts.train.files import save_json

Edge = tuple[str, int]

# Published genotypes shipped with the package (darts/genotypes/), one JSON file each.
GENOTYPE_DIR = Path(__file__).resolve().parent / "genotypes"

_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")

# A genotype file is a few hundred bytes; a larger file is the wrong file (read no further).
MAX_GENOTYPE_BYTES = 1 << 20
# Indices are small: a longer integer literal is a mistake (and Python refuses to parse
# integers of more than 4300 digits anyway).
_MAX_INT_DIGITS = 20
_SHAPE = f"a genotype file is a JSON object with keys {', '.join(_KEYS)}"


def _show(value: Any, limit: int = 60, *, quote: bool = False) -> str:
    """A short one-line rendering of a (possibly huge or deeply nested) value for a message:
    as JSON, or a string as Python quotes it (`quote`)."""
    try:
        text = repr(value) if quote and isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    # Metadata: where the cell comes from. Not part of a genotype's identity.
    name: str | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Accept lists (from JSON or user code) and store hashable tuples.
        object.__setattr__(self, "normal", tuple((str(o), int(i)) for o, i in self.normal))
        object.__setattr__(self, "reduce", tuple((str(o), int(i)) for o, i in self.reduce))
        object.__setattr__(self, "normal_concat", tuple(int(i) for i in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(i) for i in self.reduce_concat))

    @property
    def steps(self) -> int:
        """The number of intermediate nodes of a cell."""
        return len(self.normal) // 2

    def cell(self, reduction: bool) -> tuple[tuple[Edge, ...], tuple[int, ...]]:
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.source:
            d["source"] = self.source
        d["normal"] = [[op, i] for op, i in self.normal]
        d["normal_concat"] = list(self.normal_concat)
        d["reduce"] = [[op, i] for op, i in self.reduce]
        d["reduce_concat"] = list(self.reduce_concat)
        return d

    def __str__(self) -> str:
        return (f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


def _check_cell(where: str, kind: str, edges: Any, concat: Any) -> None:
    if not isinstance(edges, list) or not edges:
        raise GenotypeError(f"{where}: '{kind}' must be a non-empty list of [op, input] pairs")
    if len(edges) % 2:
        raise GenotypeError(
            f"{where}: '{kind}' has {len(edges)} edges; a cell needs exactly two edges per "
            f"intermediate node, so an even number (DARTS cells have 8: 4 nodes x 2)")
    for k, edge in enumerate(edges):
        node = k // 2
        if (not isinstance(edge, (list, tuple)) or len(edge) != 2
                or not isinstance(edge[0], str) or not _is_int(edge[1])):
            raise GenotypeError(
                f"{where}: {kind}[{k}] is {_show(edge)}; each edge must be [op_name, input_index], "
                f'e.g. ["sep_conv_3x3", 0]')
        op, index = edge
        if op not in OPS:
            raise GenotypeError(
                f"{where}: {kind}[{k}] uses unknown op {_show(op, quote=True)}; known ops: "
                f"{', '.join(sorted(OPS))} (an op of your own: give the file that registers "
                f"it to --plugins)")
        if op == "none":
            raise GenotypeError(
                f"{where}: {kind}[{k}] uses op 'none'; a genotype keeps only real edges "
                f"(drop the edge or pick another op)")
        if not 0 <= index < node + 2:
            raise GenotypeError(
                f"{where}: {kind}[{k}] (node {node + 2}) takes input {_show(index)}, which "
                + ("points forward or to itself" if index >= node + 2 else "is negative")
                + f"; node {node + 2} may only take inputs 0..{node + 1} "
                  "(0 = c_{k-2}, 1 = c_{k-1}, j >= 2 = earlier intermediate nodes)")
    # The output concatenates intermediate nodes only: in a reduction cell the inputs have
    # twice the output's resolution, and the paper's cells (NASNet's and AmoebaNet's too)
    # never list them.
    n_states = len(edges) // 2 + 2
    if not isinstance(concat, list) or not concat or not all(_is_int(i) for i in concat):
        raise GenotypeError(
            f"{where}: '{kind}_concat' is {_show(concat)}; it must be a non-empty list of node "
            f"indices, e.g. {list(range(2, n_states))}")
    for i in concat:
        if not 2 <= i < n_states:
            raise GenotypeError(
                f"{where}: '{kind}_concat' contains {_show(i)}, out of range: it lists the {kind} "
                f"cell's intermediate nodes 2..{n_states - 1} (0 and 1 are the cell's inputs), "
                f"each at most once")
    if len(set(concat)) != len(concat):
        raise GenotypeError(
            f"{where}: '{kind}_concat' lists a node twice: {_show(concat)}; list each at most once")


def genotype_from_dict(d: Any, where: str = "genotype") -> Genotype:
    """Validates a JSON-like dict and returns the Genotype; raises GenotypeError otherwise."""
    if not isinstance(d, dict):
        raise GenotypeError(f"{where}: expected a JSON object with keys {', '.join(_KEYS)}")
    missing = [k for k in _KEYS if k not in d]
    if missing:
        raise GenotypeError(
            f"{where}: missing key(s) {', '.join(missing)}; a genotype needs {', '.join(_KEYS)}")
    _check_cell(where, "normal", d["normal"], d["normal_concat"])
    _check_cell(where, "reduce", d["reduce"], d["reduce_concat"])
    if len(d["normal"]) != len(d["reduce"]):
        raise GenotypeError(
            f"{where}: the normal cell has {len(d['normal'])} edges but the reduction cell "
            f"{len(d['reduce'])}; both cells need the same number of intermediate nodes")
    for key in ("name", "source"):
        if key in d and not isinstance(d[key], str):
            raise GenotypeError(f"{where}: '{key}' must be a string")
    return Genotype(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"],
                    name=d.get("name"), source=d.get("source"))


class _BadLiteral(ValueError):
    """A JSON literal that no genotype holds (NaN, Infinity, a huge integer)."""


def _parse_constant(name: str) -> Any:
    raise _BadLiteral(f"{name} is not valid JSON (and no genotype holds it)")


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise _BadLiteral(f"an integer of {len(digits.lstrip('-'))} digits is not an index")
    return int(digits)


def load_genotype(path: str | os.PathLike) -> Genotype:
    """Reads and validates a genotype JSON file; any problem is a GenotypeError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_GENOTYPE_BYTES + 1)
    except FileNotFoundError:
        raise GenotypeError(f"{path}: no such genotype file") from None
    except IsADirectoryError:
        raise GenotypeError(f"{path}: is a directory, not a genotype file; {_SHAPE}") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name, ...
        reason = getattr(e, "strerror", None) or e
        raise GenotypeError(f"{path}: cannot read genotype file ({reason})") from None
    if len(data) > MAX_GENOTYPE_BYTES:
        raise GenotypeError(
            f"{path}: larger than {MAX_GENOTYPE_BYTES >> 20} MiB, too large for a genotype file "
            f"(is it the right file?); {_SHAPE}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GenotypeError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"{_SHAPE}") from None
    try:
        obj = json.loads(text, parse_constant=_parse_constant, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise GenotypeError(
            f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); {_SHAPE}") from None
    except _BadLiteral as e:
        raise GenotypeError(f"{path}: {e}; {_SHAPE}") from None
    except RecursionError:
        raise GenotypeError(f"{path}: JSON nested too deeply; {_SHAPE}") from None
    return genotype_from_dict(obj, where=str(path))


def save_genotype(genotype: Genotype, path: str | os.PathLike) -> None:
    """Writes the genotype as JSON, atomically (a reader never sees half a file)."""
    save_json(genotype.to_dict(), path)


def available_genotypes(directory: Path = GENOTYPE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json"))


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_")


def resolve_genotype(spec: str | os.PathLike, directory: Path = GENOTYPE_DIR) -> Genotype:
    """A genotype from a JSON path or a published name (`darts_v2`, case-insensitive)."""
    spec = str(spec)
    path = Path(spec)
    try:
        is_path = path.suffix == ".json" or os.sep in spec or path.exists()
    except (OSError, ValueError):  # a name too long, a NUL, ...: load_genotype says which
        is_path = True
    if is_path:
        # `genotypes/NAME.json`, where no such file is, names the published file
        if (path.parent == Path("genotypes") and path.suffix == ".json"
                and path.stem in available_genotypes(directory) and not path.exists()):
            return load_genotype(directory / path.name)
        return load_genotype(path)
    wanted = _normalise(spec)
    for name in available_genotypes(directory):
        if _normalise(name) == wanted:
            return load_genotype(directory / f"{name}.json")
    raise GenotypeError(
        f"genotype {_show(spec, quote=True)} is neither a file nor a published name; published: "
        f"{', '.join(available_genotypes(directory)) or '(none found in ' + str(directory) + ')'}")


def genotype_from_edges(normal: Iterable[Edge], reduce: Iterable[Edge],
                        normal_concat: Sequence[int] | None = None,
                        reduce_concat: Sequence[int] | None = None, **meta: str) -> Genotype:
    """Builds and validates a genotype from Python sequences (concat defaults to all nodes)."""
    normal, reduce = [list(e) for e in normal], [list(e) for e in reduce]
    d: dict[str, Any] = {
        "normal": normal,
        "normal_concat": list(normal_concat) if normal_concat is not None
        else list(range(2, len(normal) // 2 + 2)),
        "reduce": reduce,
        "reduce_concat": list(reduce_concat) if reduce_concat is not None
        else list(range(2, len(reduce) // 2 + 2)),
        **meta,
    }
    return genotype_from_dict(d)


def _values(weights: Any) -> Any:
    """Nested Python lists from a tensor (possibly on a GPU), an array or lists."""
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu()
    if hasattr(weights, "tolist"):
        weights = weights.tolist()
    return weights


def _rows(weights: Any) -> list[list[float]]:
    return [[float(v) for v in row] for row in _values(weights)]


def _decode_cell(weights: Any, primitives: Sequence[str], steps: int,
                 edge_weights: Any = None) -> list[Edge]:
    """The reference code's `_parse` (quark0/darts, model_search.py).

    Node i has i + 2 incoming edges (from c_{k-2}, c_{k-1} and the earlier nodes). Its two
    strongest edges are kept, the strength of an edge being its largest non-'none' softmax
    weight; each keeps its strongest non-'none' op. Ties go to the lower index (the
    reference's stable sort and strict `>`), and the two edges are listed strongest first.

    With `edge_weights` (one per edge: PC-DARTS's normalised betas) the strength is
    multiplied by the edge's weight, as PC-DARTS's `_parse` (yuhuixu1993/PC-DARTS) scales
    each row of softmax(alpha) before ranking; the op kept on an edge is still its
    strongest non-'none' op.
    """
    rows = _rows(weights)
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    expected = sum(i + 2 for i in range(steps))
    if len(rows) != expected or any(len(r) != len(primitives) for r in rows):
        raise ValueError(f"expected {expected} x {len(primitives)} mixing weights for {steps} "
                         f"nodes, got {len(rows)} x {len(rows[0]) if rows else 0}")
    if edge_weights is None:
        scale = [1.0] * expected
    else:
        scale = [float(v) for v in _values(edge_weights)]
        if len(scale) != expected:
            raise ValueError(f"expected {expected} edge weights for {steps} nodes, "
                             f"got {len(scale)}")
    gene: list[Edge] = []
    start = 0
    for i in range(steps):
        node_rows = rows[start:start + i + 2]
        best_op = [max(candidates, key=lambda k, r=r: (r[k], -k)) for r in node_rows]
        strength = [r[k] * s for r, k, s in
                    zip(node_rows, best_op, scale[start:start + i + 2], strict=True)]
        edges = sorted(range(i + 2), key=lambda j: -strength[j])[:2]
        gene.extend((primitives[best_op[j]], j) for j in edges)
        start += i + 2
    return gene


def decode_genotype(weights_normal: Any, weights_reduce: Any,
                    primitives: Sequence[str] | None = None, steps: int = 4,
                    multiplier: int = 4, *, edge_normal: Any = None, edge_reduce: Any = None,
                    **meta: str) -> Genotype:
    """The discrete cell of the DARTS paper's Section 2.4 from the softmax mixing weights.

    `weights_*` are (edges x ops) softmax(alpha) matrices, rows in the supernet's edge order
    (node 0's two edges, node 1's three, ...), columns in `primitives` order (default
    PRIMITIVES). `edge_*` (optional, length edges) are PC-DARTS's edge-normalisation weights,
    the softmax of the betas over each node's incoming edges: an edge's strength is then its
    best op weight times its edge weight. The cell's output concatenates its last
    `multiplier` nodes. The decoded genotype never contains 'none'.
    """
    from darts.primitives import PRIMITIVES

    primitives = tuple(primitives or PRIMITIVES)
    if not any(name != "none" for name in primitives):
        raise ValueError("cannot decode a search space whose only op is 'none'")
    concat = list(range(2 + steps - multiplier, steps + 2))
    return genotype_from_edges(_decode_cell(weights_normal, primitives, steps, edge_normal),
                               _decode_cell(weights_reduce, primitives, steps, edge_reduce),
                               concat, concat, **meta)
