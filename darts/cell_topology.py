"""A cell search space: its op vocabulary, its cell topology and its decoding rule, together.

The DARTS space (Liu et al. 2019, Section 2.1): a cell has two inputs (the outputs of the two
previous cells), `steps` intermediate nodes, and an edge from every earlier state to every
node, so node i has i + 2 incoming edges (14 edges for 4 nodes). Every edge mixes all ops of
`primitives`. The cell's output concatenates its last `multiplier` nodes. The supernet, the
decoder and the pictures all take a `SearchSpace`, so another space is another object, not a
branch in their code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from darts.genotype import Genotype, decode_genotype
from darts.primitives import OPS, PRIMITIVES


@dataclass(frozen=True)
class SearchSpace:
    primitives: tuple[str, ...] = PRIMITIVES
    steps: int = 4
    multiplier: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        unknown = [p for p in self.primitives if p not in OPS]
        if unknown:
            raise ValueError(f"unknown op(s) {unknown}; known ops: {', '.join(sorted(OPS))}")
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"an op is listed twice: {self.primitives}")
        if self.steps < 1 or not 1 <= self.multiplier <= self.steps:
            raise ValueError(f"need steps >= 1 and 1 <= multiplier <= steps, got "
                             f"{self.steps}, {self.multiplier}")

    # What the collapse pieces ask of a supernet's cell (its `topology`; NAS-Bench-201's is
    # darts.spaces.nb201.NB201Topology): two op matrices, normal then reduce; each node
    # chooses two of its inputs, and a decoded cell never holds `none`.
    kinds: ClassVar[tuple[str, ...]] = ("normal", "reduce")
    none_selectable: ClassVar[bool] = False

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.primitives)

    @property
    def nodes(self) -> int:
        """The nodes that choose their inputs (DARTS-PT projects their edges)."""
        return self.steps

    def stride_two(self, matrix: int, edge: int) -> bool:
        """Whether edge `edge` of op matrix `matrix` (0 normal, 1 reduce) has stride 2: a
        reduction cell's edges from its two inputs."""
        return matrix == 1 and self.edges()[edge][1] < 2

    def decode_weights(self, weights: tuple, **meta: str) -> Genotype:
        """The genotype of the (normal, reduce, ...) mixing weights."""
        return self.decode(*weights[:2], **meta)

    def pt_tune_epochs(self, interval: int) -> int:
        """DARTS-PT's tuning epochs on this cell (its code's count)."""
        return interval * (self.num_edges + self.steps - 1) + 1

    @property
    def num_ops(self) -> int:
        return len(self.primitives)

    @property
    def num_edges(self) -> int:
        return sum(i + 2 for i in range(self.steps))

    def edges(self) -> list[tuple[int, int]]:
        """(node, input state) of every edge, in the order of the alpha rows."""
        return [(i, j) for i in range(self.steps) for j in range(i + 2)]

    def edge_names(self) -> list[str]:
        state = {0: "c_{k-2}", 1: "c_{k-1}"}
        return [f"{state.get(j, str(j - 2))}->{i}" for i, j in self.edges()]

    def decode(self, weights_normal: Any, weights_reduce: Any, *, edge_normal: Any = None,
               edge_reduce: Any = None, **meta: str) -> Genotype:
        """The genotype of (edges x ops) softmax weights; `edge_*` are PC-DARTS's normalised
        edge weights (one per edge), which scale each edge's strength (see decode_genotype)."""
        return decode_genotype(weights_normal, weights_reduce, self.primitives, self.steps,
                               self.multiplier, edge_normal=edge_normal,
                               edge_reduce=edge_reduce, **meta)


DARTS_SPACE = SearchSpace()
