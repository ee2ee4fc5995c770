"""The DARTS cell space for multi-trial strategies: a candidate is a genotype.

A candidate is a pair of cells (normal, reduce) of the DARTS space (Liu et al. 2019): each of
the 4 intermediate nodes takes two *different* inputs among the earlier states (the two cell
inputs and the earlier nodes), each through one op of the 7 that a decoded DARTS cell may
hold (`none` excluded, as in the paper's decoding), and the cell outputs all 4 nodes. That is
what DARTS's own search returns, so a strategy's best and a DARTS search's result are the same
kind of object, retrained by the same `train_final.py --genotype FILE`.

Decisions (a controller's steps), per cell and node i = 0..3: the pair of inputs, one of
C(i + 2, 2) pairs (1, 3, 6, 10), then the op of the lower input, then the op of the higher.
The edges of a node are kept in input order, so each cell has one canonical genotype.

Mutation is AmoebaNet's (Real et al. 2019): one cell, one node, one of its two edges, then
either its op (a different one) or its input (a different earlier state, not the other
edge's), with probability 1/2 each; a node whose inputs cannot change (node 0 has only the two
cell inputs) mutates its op.

The text of a candidate (`to_text`, what a run's history records) is compact and read back by
`parse` without evaluating anything:

    normal: sep_conv_3x3~0 sep_conv_3x3~1 | skip_connect~0 sep_conv_3x3~1 | ... / reduce: ...
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from darts.errors import UserError
from darts.genotype import Genotype, genotype_from_dict, save_genotype
from darts.primitives import PRIMITIVES

NAME = "darts"
STEPS = 4
OPS = tuple(op for op in PRIMITIVES if op != "none")  # the 7 ops a decoded cell may hold
CELLS = ("normal", "reduce")
CONCAT = tuple(range(2, STEPS + 2))


def _pairs(node: int) -> list[tuple[int, int]]:
    """The input pairs node `node` (0-based) may take, in a fixed order."""
    return list(itertools.combinations(range(node + 2), 2))


def _make(cells: dict[str, list[tuple[tuple[str, int], tuple[str, int]]]]) -> Genotype:
    """A genotype of per-node edge pairs, each node's edges in input order."""
    flat = {kind: tuple(e for node in cells[kind] for e in sorted(node, key=lambda e: e[1]))
            for kind in CELLS}
    return Genotype(flat["normal"], CONCAT, flat["reduce"], CONCAT)


def _nodes(g: Genotype, kind: str) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    edges = g.normal if kind == "normal" else g.reduce
    return [(edges[2 * i], edges[2 * i + 1]) for i in range(len(edges) // 2)]


class DartsCellSpace:
    """The DARTS cell pair over `ops` (the 7 ops a decoded DARTS cell may hold by default;
    `--ops` gives others): what strategies and the runs need of the space (darts.spaces)."""

    NAME = NAME
    RESULT_FILE = "genotype.json"
    SCORED_BY_TABLE = False
    NETWORK_SIZES = (16, 8)  # the search's network: 8 cells of 16 channels
    MIN_LAYERS, LAYERS_NOUN = 3, "cells (two of them are reduction cells)"
    # The one-shot evaluator's supernet training: Li & Talwalkar's released code (the DARTS
    # search recipe for 100 epochs; darts.evaluators.oneshot's docstring).
    ONESHOT_DEFAULTS = {"epochs": 100, "layers": 8, "weight_decay": 3e-4, "nesterov": False}

    def __init__(self, ops: tuple[str, ...] = OPS):
        ops = tuple(ops)
        if not ops or "none" in ops or len(set(ops)) != len(ops):
            raise UserError(f"--ops: the darts space's candidates need at least one op other "
                            f"than none, each once; got {', '.join(ops) or 'none'}")
        self.ops = ops

    def for_config(self, cfg) -> DartsCellSpace:
        """The space over the ops of `--ops` (`none` left out: a genotype never holds it)."""
        ops = tuple(op for op in op_list(cfg.ops) if op != "none")
        return self if ops == self.ops else DartsCellSpace(ops)

    def _check(self, g: Genotype) -> Genotype:
        """`g` in this space's canonical form, or a UserError saying why it is not in the space."""
        if not isinstance(g, Genotype):
            raise UserError(f"a candidate of the darts space is a Genotype, got {type(g).__name__}")
        cells = {}
        for kind in CELLS:
            nodes = _nodes(g, kind)
            if len(nodes) != STEPS:
                raise UserError(f"the darts space has {STEPS} nodes per cell; the {kind} cell has "
                                f"{len(nodes)}")
            for i, (a, b) in enumerate(nodes):
                if a[1] == b[1]:
                    raise UserError(f"{kind} node {i + 2} takes input {a[1]} twice; the darts space's "
                                    f"nodes take two different inputs")
                for op, _ in (a, b):
                    if op not in self.ops:
                        raise UserError(f"{kind} node {i + 2}: {op!r} is not an op of the darts "
                                        f"space ({', '.join(self.ops)})")
            cells[kind] = nodes
        if tuple(g.normal_concat) != CONCAT or tuple(g.reduce_concat) != CONCAT:
            raise UserError(f"the darts space's cells concatenate nodes {list(CONCAT)}")
        return _make(cells)

    def to_text(self, g: Genotype) -> str:
        return " / ".join(
            f"{kind}: " + " | ".join(" ".join(f"{op}~{j}" for op, j in node) for node in _nodes(g, kind))
            for kind in CELLS)

    def parse(self, text: str) -> Genotype:
        """The genotype `to_text` wrote; one UserError naming what is wrong."""
        if not isinstance(text, str):
            raise UserError(f"expected a darts cell text, got {type(text).__name__}")
        shown = text if len(text) <= 80 else text[:77] + "..."
        parts = [p.strip() for p in text.split("/")]
        if len(parts) != 2:
            raise UserError(f"darts cell text {shown!r}: expected 'normal: ... / reduce: ...'")
        cells = {}
        for kind, part in zip(CELLS, parts, strict=True):
            label, sep, body = part.partition(":")
            if not sep or label.strip() != kind:
                raise UserError(f"darts cell text {shown!r}: expected the {kind} cell as '{kind}: ...'")
            nodes = []
            for node in body.split("|"):
                edges = node.split()
                if len(edges) != 2:
                    raise UserError(f"darts cell text {shown!r}: each {kind} node has two "
                                    f"'op~input' edges, got {node.strip()!r}")
                pair = []
                for edge in edges:
                    op, sep, index = edge.partition("~")
                    if not sep or not index.isdigit() or len(index) > 2:
                        raise UserError(f"darts cell text {shown!r}: {edge!r} is not 'op~input'")
                    pair.append((op, int(index)))
                nodes.append(tuple(pair))
            cells[kind] = nodes
        g = genotype_from_dict({kind: [list(e) for node in cells[kind] for e in node]
                                for kind in CELLS} | {"normal_concat": list(CONCAT),
                                                      "reduce_concat": list(CONCAT)},
                               where=f"darts cell text {shown!r}")  # a GenotypeError is a UserError
        return self._check(g)

    def from_json(self, data: Any, where: str) -> Genotype:
        """The candidate of a genotype JSON object (genotype.json's form); a UserError naming
        `where` otherwise."""
        return self._check(genotype_from_dict(data, where=where))

    def save(self, g: Genotype, path: str | Path) -> None:
        """The genotype as the JSON file `train_final.py --genotype` takes."""
        save_genotype(g, path)

    def decisions(self) -> list[tuple[str, ...]]:
        """Per cell and node: the input pair (as 'j,k'), the op of input j, the op of input k."""
        out = []
        for _kind in CELLS:
            for i in range(STEPS):
                out += [tuple(f"{j},{k}" for j, k in _pairs(i)), self.ops, self.ops]
        return out

    def to_decisions(self, g: Genotype) -> list[int]:
        g = self._check(g)
        choices = []
        for kind in CELLS:
            for i, (a, b) in enumerate(_nodes(g, kind)):
                choices += [_pairs(i).index((a[1], b[1])), self.ops.index(a[0]), self.ops.index(b[0])]
        return choices

    def from_decisions(self, choices: list[int]) -> Genotype:
        if len(choices) != 3 * STEPS * len(CELLS):
            raise ValueError(f"the darts space has {3 * STEPS * len(CELLS)} decisions, got "
                             f"{len(choices)}")
        it = iter(choices)
        cells = {}
        for kind in CELLS:
            nodes = []
            for i in range(STEPS):
                (j, k), a, b = _pairs(i)[next(it)], self.ops[next(it)], self.ops[next(it)]
                nodes.append(((a, j), (b, k)))
            cells[kind] = nodes
        return _make(cells)

    def sample(self, rng) -> Genotype:
        """A pair of cells drawn uniformly: per node an input pair, then two ops, each uniform."""
        return self.from_decisions([rng.randrange(len(choices)) for choices in self.decisions()])

    def mutate(self, g: Genotype, rng, rate: float | None = None) -> Genotype:
        """AmoebaNet's mutation (one op or one input of one edge changes); with `rate`, each
        decision independently changes with that probability, to a different choice."""
        g = self._check(g)
        if rate is not None:
            choices = self.to_decisions(g)
            for d, options in enumerate(self.decisions()):
                if len(options) > 1 and rng.random() < rate:
                    choices[d] = rng.choice([c for c in range(len(options)) if c != choices[d]])
            return self.from_decisions(choices)
        cells = {kind: [list(node) for node in _nodes(g, kind)] for kind in CELLS}
        kind, i, e = rng.choice(CELLS), rng.randrange(STEPS), rng.randrange(2)
        op, j = cells[kind][i][e]
        other = cells[kind][i][1 - e][1]
        inputs = [s for s in range(i + 2) if s not in (j, other)]
        others = [o for o in self.ops if o != op]  # none where --ops gives one op
        if inputs and (not others or rng.random() < 0.5):
            cells[kind][i][e] = (op, rng.choice(inputs))
        elif others:
            cells[kind][i][e] = (rng.choice(others), j)
        return _make({kind: [tuple(node) for node in nodes] for kind, nodes in cells.items()})

    def crossover(self, a: Genotype, b: Genotype, rng) -> Genotype:
        """Uniform crossover by node: each node (its two edges) from either parent, per cell."""
        a, b = self._check(a), self._check(b)
        return _make({kind: [x if rng.random() < 0.5 else y
                             for x, y in zip(_nodes(a, kind), _nodes(b, kind), strict=True)]
                      for kind in CELLS})

    def encode(self, g: Genotype) -> list[float]:
        """Per cell, a one-hot of the op on every (node, input) edge of the DARTS supernet
        (14 edges x 7 ops), 0 on edges the cell does not use: 196 numbers."""
        g = self._check(g)
        vector = []
        for kind in CELLS:
            used = {(i, j): op for i, node in enumerate(_nodes(g, kind)) for op, j in node}
            for i in range(STEPS):
                for j in range(i + 2):
                    vector += [float(used.get((i, j)) == op) for op in self.ops]
        return vector

    # -- what the runs need of the space (see darts.spaces) ---------------------------------
    def retrain_flags(self, path: str) -> list[str]:
        """The train_final.py flags that retrain the genotype saved at `path`."""
        return ["--genotype", path]

    def network(self, g: Genotype, num_classes: int, channels: int, layers: int, *,
                family: str = "cifar", auxiliary: bool = False):
        """The discrete network of `g` (darts.network): the CIFAR or the ImageNet one."""
        from darts.network import NetworkCIFAR, NetworkImageNet

        cls = NetworkCIFAR if family == "cifar" else NetworkImageNet
        return cls(channels, num_classes, layers, auxiliary, g)

    def supernet(self, num_classes: int, channels: int, layers: int):
        """The one-shot supernet over `none` and the ops, whose `forward_path(x, g)` runs
        g's ops."""
        from darts.cell_topology import SearchSpace
        from darts.supernet import SearchNetwork

        return SearchNetwork(channels, num_classes, layers, SearchSpace(("none", *self.ops)))

    @property
    def gradient(self) -> GradientSearch:
        return _GRADIENT


# -- the gradient search of this space (darts.search) -------------------------------------------
def op_list(ops: str) -> tuple[str, ...]:
    """The op names of `--ops`, in order."""
    return tuple(op.strip() for op in ops.split(",") if op.strip())


class GradientSearch:
    """What DARTS's gradient search does with this space: its supernet (eq. 2 on every edge of
    the `--nodes` cell over `--ops`), decoding the alphas to a genotype, the files and
    pictures of each epoch's cell."""

    noun, folder, result_file, kinds = "genotype", "genotypes", "genotype.json", CELLS
    inline_in_history = False  # metrics.json's history: each epoch's genotype is its own file
    skips = "skip_connect_normal"  # the name of skip_connects' count: scalars, records, log
    # The retraining (darts.search.retrain_command): train_final.py's flags for the space,
    # the recipe a search of `paper_layers` cells earns, whether that recipe has cutout.
    space_flags: tuple[str, ...] = ()
    paper_layers, cutout = 8, True
    recipe, recipe_size = "the paper's recipe", "600 epochs, 20 cells of 36 channels"
    recipe_cost = "about 1.5 GPU-days on CIFAR-10"
    # The DARTS paper's search: 8 cells, weight decay 3e-4, no Nesterov.
    defaults = {"layers": 8, "weight_decay": 3e-4, "nesterov": False}

    def check(self, cfg) -> None:
        """Refuses the flags this space cannot search with (one UserError)."""

    def search_ops(self, cfg) -> tuple[str, ...]:
        """The ops on every edge of the supernet (`--ops`)."""
        return op_list(cfg.ops)

    def supernet(self, cfg, num_classes: int, sampler):
        from darts.cell_topology import SearchSpace
        from darts.supernet import SearchNetwork

        space = SearchSpace(op_list(cfg.ops), steps=cfg.nodes, multiplier=cfg.nodes)
        return SearchNetwork(cfg.init_channels, num_classes, cfg.layers, space,
                             partial_channels=cfg.partial_channels,
                             checkpoint_cells=cfg.checkpoint_cells, sampler=sampler)

    def decode(self, model, meta):
        return model.genotype(**meta)

    def from_dict(self, data, where):
        return genotype_from_dict(data, where=where)

    def save(self, genotype, path):
        save_genotype(genotype, path)

    def skip_connects(self, genotype) -> int:
        return sum(op == "skip_connect" for op, _ in genotype.normal)

    def edge_names(self, model):
        return model.space.edge_names()

    def ops_of(self, model):
        return model.space.primitives

    def nodes(self, cfg):
        return cfg.nodes

    def describe(self, cfg):
        return f"{cfg.layers} cells"


_GRADIENT = GradientSearch()

# The space over the default ops; the module's names are its own (darts.spaces registers it).
SPACE = DartsCellSpace()
(RESULT_FILE, SCORED_BY_TABLE, NETWORK_SIZES, MIN_LAYERS, LAYERS_NOUN, ONESHOT_DEFAULTS) = (
    SPACE.RESULT_FILE, SPACE.SCORED_BY_TABLE, SPACE.NETWORK_SIZES, SPACE.MIN_LAYERS,
    SPACE.LAYERS_NOUN, SPACE.ONESHOT_DEFAULTS)
(to_text, parse, save, decisions, to_decisions, from_decisions, sample, mutate, crossover, encode,
 retrain_flags, network, supernet, for_config) = (
    SPACE.to_text, SPACE.parse, SPACE.save, SPACE.decisions, SPACE.to_decisions,
    SPACE.from_decisions, SPACE.sample, SPACE.mutate, SPACE.crossover, SPACE.encode,
    SPACE.retrain_flags, SPACE.network, SPACE.supernet, SPACE.for_config)
gradient = _GRADIENT


# -- the retraining of a genotype (darts.final) -------------------------------------------------
# The paper's retraining: CIFAR-10 (Appendix A.2; quark0/darts cnn/train.py) and ImageNet
# (Section 3.4; cnn/train_imagenet.py).
CIFAR_RECIPE: dict = dict(
    init_channels=36, layers=20, batch_size=96, learning_rate=0.025, lr_schedule="cosine",
    momentum=0.9, weight_decay=3e-4, epochs=600, auxiliary=True, auxiliary_weight=0.4,
    cutout=True, cutout_length=16, drop_path_prob=0.2, grad_clip=5.0, label_smooth=0.0,
    lr_gamma=0.97, nesterov=False,
)
IMAGENET_RECIPE: dict = dict(
    init_channels=48, layers=14, batch_size=128, learning_rate=0.1, lr_schedule="step",
    momentum=0.9, weight_decay=3e-5, epochs=250, auxiliary=True, auxiliary_weight=0.4,
    cutout=False, cutout_length=16, drop_path_prob=0.0, grad_clip=5.0, label_smooth=0.1,
    lr_gamma=0.97, nesterov=False,
)


class FinalTraining:
    """What train_final.py does with this space's candidates: read them, the recipe, the
    file it keeps, the run's name."""

    noun = "a DARTS genotype"
    result_files: tuple[str, ...] = ("genotype.json",)  # what a search leaves in its folder
    saved_as = "genotype.json"  # the candidate's copy in the retraining's folder
    has_auxiliary = True  # the networks have an auxiliary head (--auxiliary) and drop path

    def recipe(self, family: str) -> dict:
        """The paper's recipe for the network `family` the data set takes (cifar, imagenet)."""
        return CIFAR_RECIPE if family == "cifar" else IMAGENET_RECIPE

    def reads(self, data) -> bool:
        """Whether `data` (a text, or a JSON file's content) is one of this space's."""
        return isinstance(data, dict) and ("normal" in data or "reduce" in data)

    def claims(self, data) -> bool:
        """Whether `data`, read by no space, is most likely meant for this one."""
        return False

    def load(self, spec, where: str) -> Genotype:
        """A genotype: a published name, a JSON file, or (a checkpoint's) dict."""
        from darts.genotype import resolve_genotype

        if isinstance(spec, dict):
            return genotype_from_dict(spec, where=where)
        return resolve_genotype(spec)

    def check(self, cfg) -> None:
        """Refuses the flags this space's retraining cannot take (one UserError)."""

    def label(self, spec: str, g: Genotype) -> str:
        """A short name for the run directory: a published cell's name, else the file's name
        without its folders; a search's `genotype.json` by the genotype's own name (its search
        run's) or its folder's."""
        import os

        if not spec.endswith(".json") and os.sep not in spec:
            return spec
        path = Path(spec)
        label = path.name.removesuffix(".json")
        if label == "genotype":
            label = g.name or path.resolve().parent.name or label
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]


SPACE.final = FinalTraining()
