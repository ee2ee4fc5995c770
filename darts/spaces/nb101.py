"""NAS-Bench-101's cell space (Ying et al., ICML 2019; google-research/nasbench).

A cell is a DAG of at most 7 vertices, given as an upper-triangular 0/1 adjacency matrix and
one op per vertex: `input` first, `output` last, each vertex between them one of
`conv3x3-bn-relu`, `conv1x1-bn-relu`, `maxpool3x3`. As the benchmark defines it:

- pruning: a vertex that is not on a path from the input to the output does nothing and is
  removed (with its edges); a spec whose input no longer reaches its output is invalid;
- validity: after pruning, at most 7 vertices and at most 9 edges;
- identity: the benchmark's graph hash (`spec_hash`), which two isomorphic cells share, and
  which is the key of the official dataset's rows. Each vertex starts from the MD5 of its
  (out-degree, in-degree, label) tuple (label -1 input, -2 output, else the op's index in
  CONV3X3, CONV1X1, MAXPOOL); then, as many rounds as there are vertices, each vertex's hash
  becomes the MD5 of its in-neighbours' hashes sorted and joined, "|", its out-neighbours'
  likewise, "|", its own hash; the cell's hash is the MD5 of the sorted final hashes as
  Python prints a list of strings. (nasbench `lib/graph_util.py` `hash_module`, with the
  labels of `lib/model_spec.py` `hash_spec`; written from that description.)

A candidate (`NB101Cell`) keeps the spec it was made from (`original`, the decisions a
controller chose) and its pruned form; it equals another with the same hash. Its text is the
pruned matrix's rows as bit strings joined by '/', a colon, and the ops between input and
output joined by ',':

    0100110/0010000/0001001/0000010/0000010/0000001/0000000:conv3x3-bn-relu,maxpool3x3,...

Two texts can name one cell (isomorphic graphs): the hash is the cell's identity, as in the
benchmark's tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from darts.errors import InvalidCandidate, UserError
from darts.spaces import nb101_net  # its checks of a spec; importing it registers the ops

NAME = "nb101"
INPUT, OUTPUT = "input", "output"
CONV3X3, CONV1X1, MAXPOOL = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"
OPS: tuple[str, ...] = (CONV3X3, CONV1X1, MAXPOOL)  # the benchmark's order (hash labels)
MAX_VERTICES, MAX_EDGES = 7, 9
SLOTS = MAX_VERTICES - 2  # op vertices of a full spec
TRIANGLE: tuple[tuple[int, int], ...] = tuple(
    (i, j) for i in range(MAX_VERTICES) for j in range(i + 1, MAX_VERTICES))  # 21 edges
# The dataset's first row (nasbench_only108.tfrecord; its hash, parameter count and metrics
# are quoted in public conversions of the file, e.g. the `hash_`/`n_params` of CTNAS's JSON).
EXAMPLE_MATRIX = ((0, 1, 0, 0, 1, 1, 0), (0, 0, 1, 0, 0, 0, 0), (0, 0, 0, 1, 0, 0, 1),
                  (0, 0, 0, 0, 0, 1, 0), (0, 0, 0, 0, 0, 1, 0), (0, 0, 0, 0, 0, 0, 1),
                  (0, 0, 0, 0, 0, 0, 0))
EXAMPLE_OPS = (INPUT, CONV3X3, MAXPOOL, CONV3X3, CONV3X3, CONV1X1, OUTPUT)
EXAMPLE_HASH = "00005c142e6f48ac74fdcf73e3439874"

Matrix = tuple[tuple[int, ...], ...]


# A NAS-Bench-101 spec or text that cannot be read (malformed, not a cell at all): a UserError.
SpecError = nb101_net.NB101SpecError


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def spec_hash(matrix: Matrix, ops: Sequence[str]) -> str:
    """The benchmark's graph hash of a pruned spec (see the module's text)."""
    n = len(matrix)
    labels = [-1] + [OPS.index(op) for op in ops[1:-1]] + [-2]
    ins = [sum(matrix[i][j] for i in range(n)) for j in range(n)]
    outs = [sum(row) for row in matrix]
    hashes = [_md5(str((outs[v], ins[v], labels[v]))) for v in range(n)]
    for _ in range(n):
        hashes = [_md5("".join(sorted(hashes[w] for w in range(n) if matrix[w][v])) + "|"
                       + "".join(sorted(hashes[w] for w in range(n) if matrix[v][w])) + "|"
                       + hashes[v]) for v in range(n)]
    return _md5(str(sorted(hashes)))


def _check_shape(matrix: Any, ops: Any, where: str) -> tuple[Matrix, tuple[str, ...]]:
    """The spec as tuples; a SpecError naming `where` when it is not a spec at all (the network
    builder's own checks, darts.spaces.nb101_net)."""
    rows = nb101_net.read_matrix(matrix, where, MAX_VERTICES)
    return tuple(map(tuple, rows)), tuple(nb101_net.read_ops(ops, len(rows), where))


def prune(matrix: Matrix, ops: Sequence[str]) -> tuple[Matrix, tuple[str, ...]] | None:
    """The spec without the vertices off every input -> output path (nasbench's
    `ModelSpec._prune`); None where the input does not reach the output."""
    n = len(matrix)
    forward, stack = {0}, [0]
    while stack:
        v = stack.pop()
        for w in range(v + 1, n):
            if matrix[v][w] and w not in forward:
                forward.add(w)
                stack.append(w)
    backward, stack = {n - 1}, [n - 1]
    while stack:
        v = stack.pop()
        for w in range(v):
            if matrix[w][v] and w not in backward:
                backward.add(w)
                stack.append(w)
    keep = sorted(forward & backward)
    if len(keep) < 2:  # neither end on a path: the input is cut off from the output
        return None
    return tuple(tuple(matrix[i][j] for j in keep) for i in keep), tuple(ops[i] for i in keep)


def why_invalid(pruned: tuple[Matrix, tuple[str, ...]] | None) -> str | None:
    """Why a pruned spec is not in the space (None where it is)."""
    if pruned is None:
        return "the input does not reach the output"
    edges = sum(map(sum, pruned[0]))
    if edges > MAX_EDGES:
        return f"{edges} edges after pruning; the space allows at most {MAX_EDGES}"
    return None


@dataclass(frozen=True, eq=False)
class NB101Cell:
    """A valid cell: `matrix`, `ops` pruned; `original` the spec it was made from."""

    matrix: Matrix
    ops: tuple[str, ...]
    original: tuple[Matrix, tuple[str, ...]] = field(repr=False)

    @classmethod
    def of(cls, matrix: Any, ops: Any, where: str = "NAS-Bench-101 spec") -> NB101Cell:
        """The cell of a spec; SpecError for a malformed one, InvalidCandidate (with the
        reason) for a well-formed spec outside the space."""
        rows, ops = _check_shape(matrix, ops, where)
        pruned = prune(rows, ops)
        reason = why_invalid(pruned)
        if reason is not None:
            raise InvalidCandidate(f"{where}: not a NAS-Bench-101 cell: {reason}")
        return cls(pruned[0], pruned[1], (rows, ops))

    @cached_property
    def hash(self) -> str:
        return spec_hash(self.matrix, self.ops)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NB101Cell) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    @property
    def edges(self) -> int:
        return sum(map(sum, self.matrix))

    def to_string(self) -> str:
        rows = "/".join("".join(map(str, r)) for r in self.matrix)
        return f"{rows}:{','.join(self.ops[1:-1])}"

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.to_string(), "hash": self.hash,
                "matrix": [list(r) for r in self.matrix], "ops": list(self.ops)}

    @classmethod
    def from_string(cls, text: Any, where: str = "NAS-Bench-101 cell") -> NB101Cell:
        """The cell a text names (the form of `to_string`); one SpecError naming what is
        wrong, InvalidCandidate for a spec outside the space."""
        if not isinstance(text, str):
            raise SpecError(f"{where}: expected a text like {EXAMPLE_TEXT!r}")
        shown = text if len(text) <= 100 else text[:97] + "..."
        rows, sep, ops = text.strip().partition(":")
        if not sep:
            raise SpecError(f"{where} {shown!r}: expected matrix rows, ':', the ops, e.g. "
                            f"{EXAMPLE_TEXT!r}")
        bits = rows.split("/")
        if any(not r or set(r) - {"0", "1"} for r in bits):
            raise SpecError(f"{where} {shown!r}: each matrix row is a string of 0 and 1, "
                            f"rows joined by '/'")
        inner = ops.split(",") if ops else []
        return cls.of([[int(c) for c in r] for r in bits], [INPUT, *inner, OUTPUT],
                      where=f"{where} {shown!r}")


EXAMPLE_TEXT = "0100110/0010000/0001001/0000010/0000010/0000001/0000000:" + ",".join(
    EXAMPLE_OPS[1:-1])


def padded(cell: NB101Cell) -> tuple[Matrix, tuple[str, ...]]:
    """The cell's pruned spec on 7 vertices: zero rows inserted before the output, their
    ops `maxpool3x3`'s placeholder (unconnected vertices are pruned away again)."""
    n, extra = len(cell.matrix), MAX_VERTICES - len(cell.matrix)
    rows = [list(r[:-1]) + [0] * extra + [r[-1]] for r in cell.matrix[:-1]]
    rows += [[0] * MAX_VERTICES for _ in range(extra)]
    rows.append([0] * MAX_VERTICES)
    ops = cell.ops[:-1] + (MAXPOOL,) * extra + (OUTPUT,)
    assert len(rows) == MAX_VERTICES and n + extra == MAX_VERTICES
    return tuple(tuple(r) for r in rows), ops


def _full(cell: NB101Cell) -> tuple[Matrix, tuple[str, ...]]:
    """The 7-vertex spec behind a cell: the one it was made from where that had 7 vertices."""
    original = cell.original
    return original if len(original[0]) == MAX_VERTICES else padded(cell)


# -- what multi-trial strategies need of the space (see darts.spaces) ---------------------------
def to_text(cell: NB101Cell) -> str:
    return cell.to_string()


def parse(text: str) -> NB101Cell:
    try:
        return NB101Cell.from_string(text)
    except InvalidCandidate as e:
        raise SpecError(str(e)) from None


def table_key(cell: NB101Cell) -> str:
    """A table row's key: the benchmark's hash."""
    return cell.hash


def save(cell: NB101Cell, path: str | Path) -> None:
    """The cell as a JSON file (text, hash, matrix and ops)."""
    from darts.train.files import save_json
    save_json(cell.to_dict(), path)


def load(spec: Any, where: str) -> NB101Cell:
    """A cell from its text, {"arch": text} or {"matrix", "ops"}, or a JSON file of either."""
    data = spec
    if isinstance(spec, (str, Path)) and Path(spec).suffix == ".json":
        try:
            data = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{where} {spec}: not a readable cell JSON file "
                            f"({type(e).__name__})") from None
    if isinstance(data, dict) and "matrix" in data and "ops" in data:
        return _valid(lambda: NB101Cell.of(data["matrix"], data["ops"], where=where))
    if isinstance(data, dict):
        data = data.get("arch")
    return _valid(lambda: NB101Cell.from_string(data, where=where))


def _valid(make) -> NB101Cell:
    try:
        return make()
    except InvalidCandidate as e:
        raise SpecError(str(e)) from None


def _random_full(rng) -> tuple[list[list[int]], list[str]]:
    matrix = [[int(i < j and rng.random() < 0.5) for j in range(MAX_VERTICES)]
              for i in range(MAX_VERTICES)]
    return matrix, [INPUT] + [rng.choice(OPS) for _ in range(SLOTS)] + [OUTPUT]


def sample(rng, tries: int = 10_000) -> NB101Cell:
    """The benchmark's random spec (nasbench `example.py` `random_spec`): every edge of the
    7-vertex triangle with probability 1/2, every op uniform, drawn again until valid."""
    for _ in range(tries):
        try:
            return NB101Cell.of(*_random_full(rng))
        except InvalidCandidate:
            continue
    raise RuntimeError(f"no valid NAS-Bench-101 spec in {tries} draws")


def mutate(cell: NB101Cell, rng, rate: float | None = None, tries: int = 10_000) -> NB101Cell:
    """The benchmark's mutation (nasbench `example.py` `mutate_spec`, mutation rate 1): each
    edge of the 7-vertex spec flips with probability 1/7 and each op is redrawn (another op)
    with probability 1/5, until the spec is valid; with `rate`, probabilities rate/7 and
    rate/5. Without `rate` the child must also differ from the parent (another hash)."""
    scale = 1.0 if rate is None else rate
    base_matrix, base_ops = _full(cell)
    for _ in range(tries):
        matrix = [list(r) for r in base_matrix]
        for i, j in TRIANGLE:
            if rng.random() < scale / MAX_VERTICES:
                matrix[i][j] = 1 - matrix[i][j]
        ops = list(base_ops)
        for v in range(1, MAX_VERTICES - 1):
            if rng.random() < scale / SLOTS:
                ops[v] = rng.choice([op for op in OPS if op != ops[v]])
        try:
            child = NB101Cell.of(matrix, ops)
        except InvalidCandidate:
            continue
        if rate is not None or child != cell:
            return child
    return cell


def crossover(a: NB101Cell, b: NB101Cell, rng, tries: int = 1_000) -> NB101Cell:
    """Uniform crossover of the two 7-vertex specs (each edge and op from either parent with
    probability 1/2), drawn again until valid; the first parent where none is."""
    da, db = to_decisions(a), to_decisions(b)
    for _ in range(tries):
        try:
            return from_decisions([x if rng.random() < 0.5 else y
                                   for x, y in zip(da, db, strict=True)])
        except InvalidCandidate:
            continue
    return a


def decisions() -> list[tuple[str, ...]]:
    """The 21 edges of the 7-vertex triangle (absent, present), then the 5 ops."""
    return [("0", "1") for _ in TRIANGLE] + [OPS for _ in range(SLOTS)]


def to_decisions(cell: NB101Cell) -> list[int]:
    matrix, ops = _full(cell)
    return [matrix[i][j] for i, j in TRIANGLE] + [OPS.index(op) for op in ops[1:-1]]


def from_decisions(choices: Sequence[int]) -> NB101Cell:
    """The cell of a 7-vertex spec's decisions; InvalidCandidate where they make none."""
    matrix = [[0] * MAX_VERTICES for _ in range(MAX_VERTICES)]
    for (i, j), bit in zip(TRIANGLE, choices[:len(TRIANGLE)], strict=True):
        matrix[i][j] = int(bit)
    ops = [INPUT] + [OPS[k] for k in choices[len(TRIANGLE):]] + [OUTPUT]
    return NB101Cell.of(matrix, ops)


def encode(cell: NB101Cell) -> list[float]:
    """The pruned spec on 7 vertices (`padded`): its 21 triangle bits, then a one-hot of the
    op of each of the 5 op slots (all zero for a slot the cell does not use): 36 numbers."""
    matrix, ops = padded(cell)
    used = len(cell.matrix) - 1  # vertices before the padding, input included
    out = [float(matrix[i][j]) for i, j in TRIANGLE]
    for v in range(1, MAX_VERTICES - 1):
        out += [float(v < used and ops[v] == op) for op in OPS]
    return out


def _path_index() -> dict[tuple[str, ...], int]:
    index: dict[tuple[str, ...], int] = {}
    for length in range(SLOTS + 1):
        for path in itertools.product(OPS, repeat=length):
            index[path] = len(index)
    return index


PATH_INDEX = _path_index()  # 1 + 3 + 9 + 27 + 81 + 243 = 364 op sequences


def paths(cell: NB101Cell) -> list[tuple[str, ...]]:
    """The op sequence of every input -> output path of the cell."""
    n, out = len(cell.matrix), []

    def walk(v: int, ops: tuple[str, ...]) -> None:
        if v == n - 1:
            out.append(ops)
            return
        for w in range(v + 1, n):
            if cell.matrix[v][w]:
                walk(w, ops if w == n - 1 else ops + (cell.ops[w],))

    walk(0, ())
    return out


def path_encode(cell: NB101Cell) -> list[float]:
    """BANANAS's path encoding (White et al., AAAI 2021): 1 for every op sequence (of 0 to 5
    ops, 364 in all) that some input -> output path of the cell runs."""
    vector = [0.0] * len(PATH_INDEX)
    for path in paths(cell):
        vector[PATH_INDEX[path]] = 1.0
    return vector


RESULT_FILE = "cell.json"
SCORED_BY_TABLE = True  # a NAS-Bench-101 table (darts.benchmarks.nb101) lists every cell
NETWORK_SIZES = (128, 3)  # the benchmark's stem channels and cells per stack (3 stacks)
MIN_LAYERS, LAYERS_NOUN = 1, "cells per stack"


def retrain_flags(path: str) -> list[str]:
    """The train_final.py flags that retrain the cell saved at `path`."""
    return ["--space", NAME, "--genotype", path]


def network(cell: NB101Cell, num_classes: int, channels: int | None = None,
            layers: int | None = None, **_: Any):
    """The benchmark's network of `cell` (darts.spaces.nb101_net): stem `channels` (128),
    3 stacks of `layers` (3) cells."""
    from darts.spaces.nb101_net import NB101Network

    return NB101Network(cell.matrix, cell.ops, num_classes=num_classes,
                        stem_channels=channels or NETWORK_SIZES[0],
                        cells_per_stack=layers or NETWORK_SIZES[1])


# -- the retraining of a cell (darts.final) -----------------------------------------------------
# The benchmark's training of every cell (Ying et al. 2019, Section 2.3; nasbench lib/config.py
# and model_builder.py): RMSProp (decay 0.9, epsilon 1.0, momentum 0.9), base learning rate
# 0.1 scaled by its 2 TPU shards to 0.2, cosine decay to 0, weight decay 1e-4, batch 256, 108
# epochs, random crop (4-pixel padding) and flip. Deviations, by the framework: the cosine is
# per epoch, not per step; torch's RMSProp adds epsilon outside the square root (TF inside);
# the images are normalised by the data set's channel statistics.
NB101_RECIPE: dict[str, Any] = dict(
    init_channels=128, layers=3, batch_size=256, learning_rate=0.2, lr_schedule="cosine",
    optimizer="rmsprop", momentum=0.9, weight_decay=1e-4, epochs=108, auxiliary=False,
    auxiliary_weight=0.0, cutout=False, cutout_length=16, drop_path_prob=0.0, grad_clip=0.0,
    label_smooth=0.0, lr_gamma=0.97, nesterov=False,
)


from darts.spaces.nb201 import FinalTraining as _NB201Training  # noqa: E402


class FinalTraining(_NB201Training):
    """train_final.py's NAS-Bench-101 cells: the benchmark's network and recipe."""

    noun, network_noun = "a NAS-Bench-101 cell", "NAS-Bench-101's network"
    result_files, saved_as, has_auxiliary = (RESULT_FILE,), RESULT_FILE, False

    def recipe(self, family: str) -> dict:
        return NB101_RECIPE

    def reads(self, data) -> bool:
        if isinstance(data, dict) and "matrix" in data and "ops" in data:
            return True
        text = data.get("arch") if isinstance(data, dict) else data
        try:
            parse(text)
            return True
        except (UserError, TypeError):
            return False

    def claims(self, data) -> bool:
        return isinstance(data, dict) and "hash" in data

    def load(self, spec, where: str) -> NB101Cell:
        if spec == "darts_v2":  # train_final.py's default --genotype: no cell of its own
            raise UserError(f"--space {NAME}: give the cell with --arch (its text, e.g. "
                            f"'{EXAMPLE_TEXT}') or the cell.json a search saved")
        return load(spec, where)

    def label(self, spec: str, cell: NB101Cell) -> str:
        return f"{NAME}-{cell.hash[:8]}"


final = FinalTraining()


TABLE_TEXT_COLUMNS = ("hash",)  # a table's columns that are not metrics


def row_key(record: dict[str, str], where: str) -> str:
    """A table row's key: its `hash` column (32 hex digits, the benchmark's)."""
    value = record.get("hash", "")
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise UserError(f"{where}: hash {value[:40]!r} is not a NAS-Bench-101 hash (32 hex "
                        f"digits); tables come from `python -m darts.nb101 convert`")
    return value


NUM_CELLS = 423_624  # the benchmark's unique valid cells (Ying et al. 2019, Section 2.2)


class TableSubspace:
    """The space as a table that lists only some of its cells shapes it (a synthetic table, a
    subset): every candidate a strategy is given is a row of the table. `sample` draws a row
    uniformly; `mutate` and `crossover` are the space's, drawn again until the child is a
    row (after `tries`, a uniform row); decisions naming a cell outside the table are
    InvalidCandidate. Everything else is the space's."""

    def __init__(self, table: Any, tries: int = 1_000):
        self._space, self.tries = sys.modules[__name__], tries
        self.keys = set(table.rows)
        texts = table.texts
        self.cells = [NB101Cell.from_string(texts[k], where=f"--benchmark {table.path}")
                      for k in sorted(self.keys)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space, name)

    def sample(self, rng) -> NB101Cell:
        return rng.choice(self.cells)

    def _within(self, draw) -> NB101Cell | None:
        for _ in range(self.tries):
            child = draw()
            if child.hash in self.keys:
                return child
        return None

    def mutate(self, cell: NB101Cell, rng, rate: float | None = None) -> NB101Cell:
        child = self._within(lambda: mutate(cell, rng, rate))
        return child if child is not None else self.sample(rng)

    def crossover(self, a: NB101Cell, b: NB101Cell, rng) -> NB101Cell:
        child = self._within(lambda: crossover(a, b, rng))
        return child if child is not None else a

    def from_decisions(self, choices: Sequence[int]) -> NB101Cell:
        cell = from_decisions(choices)
        if cell.hash not in self.keys:
            raise InvalidCandidate(f"{cell} is not a row of the table")
        return cell


def for_table(table: Any) -> Any:
    """The space a run searches with `table`: the whole space where the table lists every
    cell (the official one), else the table's cells (`TableSubspace`)."""
    return sys.modules[__name__] if len(table) >= NUM_CELLS else TableSubspace(table)


def parameter_count(cell: NB101Cell, num_classes: int = 10, stem_channels: int = 128,
                    stacks: int = 3, cells_per_stack: int = 3) -> int:
    """The trainable parameters of the benchmark's network of `cell` (the dataset's
    `trainable_parameters`), counted from the model builder's shapes without building it:
    every conv is bias-free and followed by a BatchNorm (gamma, beta)."""
    from darts.spaces.nb101_net import vertex_channels

    def conv_bn(c_in: int, c_out: int, k: int = 1) -> int:
        return k * k * c_in * c_out + 2 * c_out

    n, m = len(cell.matrix), cell.matrix
    total, c_in = conv_bn(3, stem_channels, 3), stem_channels
    for stack in range(stacks):
        c_out = stem_channels * 2 ** stack
        for _ in range(cells_per_stack):
            ch = vertex_channels(c_in, c_out, m)
            for t in range(1, n - 1):
                total += conv_bn(c_in, ch[t]) if m[0][t] else 0
                kernel = {CONV3X3: 3, CONV1X1: 1}.get(cell.ops[t])
                total += conv_bn(ch[t], ch[t], kernel) if kernel else 0
            feeds_output = any(m[t][n - 1] for t in range(1, n - 1))
            if not feeds_output or m[0][n - 1]:
                total += conv_bn(c_in, c_out)
            c_in = c_out
    return total + c_in * num_classes + num_classes


def graphs(cell: NB101Cell, format: str = "png") -> dict[str, Any]:
    """The cell's picture (graphviz), left to right: the input, one box per op vertex, the
    output; an arrow per edge. Input edges into an op vertex are the builder's 1x1
    projections, output edges concatenate (the input's edge to the output adds)."""
    import graphviz

    # the library's cell colours (darts.visualize, which reads the spaces: not imported here)
    INPUT_COLOR, NODE_COLOR, OUTPUT_COLOR = "darkseagreen2", "lightblue", "palegoldenrod"
    g = graphviz.Digraph(
        name="cell", format=format, graph_attr={"rankdir": "LR"},
        node_attr={"style": "filled", "shape": "rect", "fontsize": "18", "height": "0.5",
                   "penwidth": "2", "fontname": "times"},
        edge_attr={"fontname": "times"})
    n = len(cell.matrix)
    for v, op in enumerate(cell.ops):
        color = INPUT_COLOR if v == 0 else OUTPUT_COLOR if v == n - 1 else NODE_COLOR
        g.node(str(v), label=op if v in (0, n - 1) else f"{v}: {op}", fillcolor=color)
    for i, j in itertools.combinations(range(n), 2):
        if cell.matrix[i][j]:
            g.edge(str(i), str(j))
    return {"cell": g}


# -- the gradient search of this space (darts.search): NAS-Bench-1Shot1 -------------------------
from darts.spaces import darts_cells as _darts_cells  # noqa: E402 (the DARTS space's search, specialised)


class GradientSearch(_darts_cells.GradientSearch):
    """DARTS's gradient search of NAS-Bench-101 as NAS-Bench-1Shot1 runs it: its one-shot
    model of search space `--subspace` 1, 2 or 3 (darts.spaces.nb101_oneshot), decoded to a
    cell that `--benchmark` scores after every epoch."""

    noun, folder, result_file, kinds = "cell", "cells", RESULT_FILE, ("cell",)
    inline_in_history = True  # a cell's text is one line
    skips = "maxpool3x3"  # the parameter-free op's count, what the collapse counts here
    space_flags, paper_layers, cutout = ("--space", NAME), 9, False
    recipe, recipe_size = ("NAS-Bench-101's recipe",
                           "108 epochs, 3 stacks of 3 cells of 128 channels")
    recipe_cost = "as every cell of its table was trained"
    subspaces = (1, 2, 3)
    graphs = staticmethod(graphs)  # the cell's picture (the library's own drawings are DARTS's)
    # NAS-Bench-1Shot1's DARTS runs (optimizers/darts/train_search.py): 9 cells of 16
    # channels, DARTS's weight decay 3e-4, search space 3 in their main figures.
    defaults = {"layers": 9, "weight_decay": 3e-4, "nesterov": False, "subspace": 3}
    # What the supernet has not: skip_connect or none ops, per-edge projections.
    REFUSED = (("aux_skip", "DARTS-'s auxiliary skip"), ("skip_dropout", "P-DARTS's skip dropout"),
               ("max_skip", "P-DARTS's skip cap"), ("early_stop_skips", "DARTS+'s skip count"),
               ("checkpoint_cells", "checkpointed cells"))

    def check(self, cfg) -> None:
        from darts.primitives import PRIMITIVES

        if cfg.subspace not in self.subspaces:
            raise UserError(f"--subspace {cfg.subspace}: NAS-Bench-1Shot1's search spaces are "
                            f"1, 2 and 3")
        for flag, what in self.REFUSED:
            if getattr(cfg, flag, None):
                raise UserError(f"--{flag}: {what} needs ops this space has not (its ops: "
                                f"{', '.join(OPS)}); leave --{flag} out with --space {NAME}")
        for flag, ok, why in (
                ("ops", _darts_cells.op_list(cfg.ops) == PRIMITIVES, "the benchmark's 3 ops"),
                ("nodes", cfg.nodes == 4, "--subspace's choice blocks"),
                ("select", cfg.select == "argmax", "no per-edge projection (DARTS-PT)"),
                ("perturb", cfg.perturb == "none", "mixing weights of several kinds, which "
                 "SDARTS's perturbation does not tell apart")):
            if not ok:
                raise UserError(f"--{flag}: not with --space {NAME} ({why}); leave --{flag} out")

    def search_ops(self, cfg) -> tuple[str, ...]:
        return OPS

    def supernet(self, cfg, num_classes: int, sampler):
        from darts.spaces.nb101_oneshot import NB101SearchNetwork

        return NB101SearchNetwork(num_classes, C=cfg.init_channels, layers=cfg.layers,
                                  subspace=cfg.subspace, sampler=sampler,
                                  partial_channels=cfg.partial_channels, make_cell=NB101Cell.of)

    def decode(self, model, meta):
        return model.arch()

    def from_dict(self, data, where):
        return load(data, where)

    def save(self, cell, path):
        save(cell, path)

    def skip_connects(self, cell) -> int:
        return cell.ops.count(MAXPOOL)

    def edge_names(self, model):
        return [f"node {j}" for j in range(1, model.topology.num_edges + 1)]

    def ops_of(self, model):
        return OPS

    def nodes(self, cfg):
        from darts.spaces.nb101_oneshot import steps_of

        return steps_of(cfg.subspace)

    def describe(self, cfg):
        return f"{cfg.layers} cells of search space {cfg.subspace}"


gradient = GradientSearch()
