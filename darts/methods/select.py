"""How a cell is chosen from the alphas: P-DARTS's cap on skip-connections, DARTS+'s early
stop, DARTS-PT's perturbation-based projection.

P-DARTS (Chen et al., ICCV 2019, Section 3.3; chenxin061/pdarts, train_search.py
`delete_min_sk_prob`, `keep_1_on`, `keep_2_branches`): while the decoded normal cell has
more than K skip-connections (K = 2), the skip-connection of smallest weight among the
cell's skip edges is removed (its weight set to 0) and the cell decoded again: that edge
takes its next-best op, and each node keeps its two strongest edges again. The reduction
cell is not capped. On NAS-Bench-201 the same rule on its decoding (per edge the argmax,
`none` included): the weakest skip edges take their next-best op, which may be `none`.

DARTS+ (Liang et al. 2019, Section 3.3): stop the search once the decoded normal cell has
K or more skip-connections (K = 2 on CIFAR); the cell of that epoch is the result.

DARTS-PT (Wang et al., ICLR 2021, Section 4; ruocwang/darts-pt, sota/cnn/projection.py and
nasbench201/projection.py): after the search, edge by edge in random order, the op whose
removal (its weight set to 0, the row not renormalised) lowers the supernet's validation
accuracy most is chosen and the edge fixed one-hot on it; then (the DARTS cell) node by node
in random order, the edge whose removal lowers the accuracy least is removed until two are
left. Between projections the supernet is tuned (weights and alphas, as during the search)
for `interval` epochs (their scripts' --proj_intv 5) with SGD at lr / 10, cosine-annealed
over all tuning epochs: interval x (edges + nodes - 1) + 1 for the DARTS cell (86),
interval x (edges - 1) for NAS-Bench-201 (25). Accuracy is measured as theirs, on the whole
alpha half with BatchNorm on batch statistics (train mode, no gradient); here ties are
broken by the loss and the running statistics are restored afterwards. On the DARTS cell
`none` is never chosen (a genotype cannot hold it); on NAS-Bench-201 it can be.

The projection is checkpointed like an epoch, step by step (`projection_plan`: one decision,
then the tuning epochs before the next): a run killed mid-projection resumes at the next
undone step and ends as an uninterrupted run (darts.methods.pieces.pt_select).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from darts.train.engine import to_device

Weights = tuple[torch.Tensor, ...]


# -- P-DARTS: at most K skip-connections in the normal cell ----------------------------------
def capped_darts_genotype(space, weights: Weights, max_skip: int, **meta: str):
    """The DARTS cell's genotype of `weights` (ops normal, ops reduce[, edges normal, edges
    reduce]) with at most `max_skip` skip-connections in the normal cell (P-DARTS)."""
    normal = weights[0].detach().clone().cpu()
    edges = {"edge_normal": weights[2], "edge_reduce": weights[3]} if len(weights) == 4 else {}
    col = space.primitives.index("skip_connect")
    row_of = {edge: e for e, edge in enumerate(space.edges())}
    while True:
        genotype = space.decode(normal, weights[1], **edges, **meta)
        skips = [row_of[k // 2, j] for k, (op, j) in enumerate(genotype.normal)
                 if op == "skip_connect"]
        if len(skips) <= max_skip:
            return genotype
        weakest = min(skips, key=lambda e: (normal[e, col].item(), e))
        normal[weakest, col] = 0.0


def capped_nb201_arch(weights: torch.Tensor, max_skip: int):
    """NAS-Bench-201's arch of (6, 5) weights (argmax per edge, `none` included) with at most
    `max_skip` skip-connections: the weakest skip edges take their next-best op."""
    from darts.spaces.nb201 import NB201_OPS, decode
    w = weights.detach().clone().cpu()
    col = NB201_OPS.index("skip_connect")
    while True:
        arch = decode(w)
        skips = [e for e, op in enumerate(arch.ops) if op == "skip_connect"]
        if len(skips) <= max_skip:
            return arch
        weakest = min(skips, key=lambda e: (w[e, col].item(), e))
        w[weakest, col] = -1.0  # below every weight: the edge's next-best op wins


# -- DARTS+: stop at K skip-connections ------------------------------------------------------
def should_stop(skips: int, early_stop_skips: int | None) -> bool:
    """DARTS+'s criterion: the normal cell has `early_stop_skips` or more skip-connections."""
    return early_stop_skips is not None and skips >= early_stop_skips


# -- DARTS+, criterion 2: the learnable ops' ranking stable for N epochs -----------------------
def learnable_columns(ops: tuple[str, ...] | list[str]) -> list[int]:
    """The columns of the ops that have weights of their own (DARTS+'s "learnable
    operations": the convolutions), found by building each op once."""
    from darts.primitives import build_op
    return [k for k, op in enumerate(ops)
            if any(True for _ in build_op(op, 4, 1, False).parameters())]


def learnable_ranking(alphas: list[torch.Tensor], columns: list[int]) -> list[list[list[int]]]:
    """Per alpha matrix and edge, the learnable ops' columns from the strongest alpha to the
    weakest (a tie by column)."""
    return [[sorted(columns, key=lambda k, row=row: (-row[k], k)) for row in a.detach().cpu().tolist()]
            for a in alphas]


def ranking_stable(rankings: list[Any], epochs: int | None) -> bool:
    """DARTS+'s criterion 2: the last `epochs` epochs' rankings are all the same."""
    return epochs is not None and len(rankings) >= epochs and \
        all(r == rankings[-1] for r in rankings[-epochs:])


# -- DARTS-PT: perturbation-based projection -------------------------------------------------
@dataclass
class Projection:
    """The projected part of the supernet, applied to every forward's mixing weights (a
    `WeightTransforms` transform): per op-weight matrix, {edge: chosen op column} (the row
    one-hot there) and the removed edges (zero rows). `trial` masks one more entry while a
    candidate is measured: (matrix, edge, column) zeroes that weight, (matrix, edge, None)
    the whole row."""

    chosen: list[dict[int, int]]
    removed: list[set[int]]
    trial: tuple[int, int, int | None] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def empty(cls, matrices: int) -> Projection:
        return cls([{} for _ in range(matrices)], [set() for _ in range(matrices)])

    def state_dict(self) -> dict[str, Any]:
        """The decisions so far in a checkpoint's plain values: per matrix {edge: column} and
        the removed edges (a sorted list), and the log."""
        return {"chosen": [dict(c) for c in self.chosen],
                "removed": [sorted(r) for r in self.removed], "log": list(self.log)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["chosen"]) != len(self.chosen) or len(state["removed"]) != len(self.removed):
            raise ValueError(f"the projection covers {len(state['chosen'])} weight matrices, "
                             f"this supernet {len(self.chosen)}")
        self.chosen = [{int(e): int(c) for e, c in m.items()} for m in state["chosen"]]
        self.removed = [{int(e) for e in r} for r in state["removed"]]
        self.log = list(state["log"])
        self.trial = None

    def __call__(self, weights: Weights) -> Weights:
        out = list(weights)
        for m in range(len(self.chosen)):
            if not (self.chosen[m] or self.removed[m] or (self.trial and self.trial[0] == m)):
                continue
            w = weights[m]
            keep = torch.ones_like(w)
            fixed = torch.zeros_like(w)
            for e, col in self.chosen[m].items():
                keep[e] = 0
                fixed[e, col] = 1
            for e in self.removed[m]:
                keep[e] = 0
                fixed[e] = 0
            if self.trial and self.trial[0] == m:
                _, e, col = self.trial
                if col is None:
                    keep[e], fixed[e] = 0, 0
                else:
                    keep[e, col], fixed[e, col] = 0, 0
            out[m] = w * keep + fixed
        return tuple(out)


@dataclass
class Score:
    top1: float
    loss: float


def measure(model: nn.Module, batches: Iterable, device: torch.device,
            criterion: nn.Module, channels_last: bool = False) -> Score:
    """Accuracy and loss of `model(x)` over `batches`, as DARTS-PT's `infer(..., eval=False)`:
    train mode (BatchNorm on batch statistics), no gradient; running statistics restored."""
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = model.training
    model.train()
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in batches:
            x, y = to_device(x, y, device, channels_last)
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss += criterion(logits, y).item() * y.size(0)
            correct += (logits.argmax(-1) == y).sum().item()
            total += y.size(0)
    model.load_state_dict(buffers, strict=False)
    model.train(was_training)
    return Score(100.0 * correct / max(total, 1), loss / max(total, 1))


def projection_steps(model: nn.Module, rng: random.Random) -> list[list[tuple[str, int, int]]]:
    """DARTS-PT's order, one list per projection (each projects every op matrix once, their
    normal then reduce): ("op", matrix, edge) for every edge, each matrix's edges in random
    order, then for the DARTS cell ("edge", matrix, node) for every node, in random order."""
    topology = model.topology
    n_edges, nodes, matrices = topology.num_edges, topology.nodes, len(topology.kinds)
    orders = [rng.sample(range(n_edges), n_edges) for _ in range(matrices)]
    events = [[("op", m, orders[m][i]) for m in range(matrices)] for i in range(n_edges)]
    node_orders = [rng.sample(range(nodes), nodes) for _ in range(matrices)]
    events += [[("edge", m, node_orders[m][i]) for m in range(matrices)] for i in range(nodes)]
    return events


def project_op(model, projection: Projection, m: int, edge: int, columns: list[int],
               score: Callable[[], Score]) -> int:
    """Chooses edge `edge`'s op of matrix m: the column whose removal scores lowest (accuracy,
    then the highest loss); fixes the edge one-hot on it and returns it."""
    results = []
    for col in columns:
        projection.trial = (m, edge, col)
        s = score()
        results.append(((s.top1, -s.loss), col, s))
    projection.trial = None
    _, best, _ = min(results, key=lambda r: r[0])
    projection.chosen[m][edge] = best
    projection.log.append({"matrix": m, "edge": edge, "op_column": best,
                           "top1_without": {c: s.top1 for _, c, s in results}})
    return best


def project_edges(model, projection: Projection, m: int, node: int, score: Callable[[], Score]) -> list[int]:
    """DARTS-PT's topology step for node `node` of the DARTS cell: while more than two of its
    edges remain, the edge whose removal scores highest is removed. Returns the kept edges."""
    edges = [e for e, (i, _) in enumerate(model.space.edges()) if i == node]
    while len(edges) > 2:
        results = []
        for e in edges:
            projection.trial = (m, e, None)
            s = score()
            results.append(((s.top1, -s.loss), e))
        projection.trial = None
        best = max(r[0] for r in results)
        removed = [e for key, e in results if key == best][-1]  # theirs: the last of the best
        projection.removed[m].add(removed)
        edges.remove(removed)
    projection.log.append({"matrix": m, "node": node, "kept_edges": edges})
    return edges


Step = tuple[str, int, int]  # ("op", matrix, edge) or ("edge", matrix, node): one decision


def projection_plan(steps: list[list[Step]], interval: int, tuning: bool,
                    darts_cell: bool) -> list[tuple[Step, list[int]]]:
    """DARTS-PT's loop laid out as projection steps: per decision (an edge's op or a node's
    edges, in `steps`' order), the tuning epochs (0-based) that follow it before the next
    decision. Tuning epochs follow the last decision of a projection: one at every `interval`-th
    epoch and at the last (the module docstring's schedule)."""
    if interval <= 0 or not tuning:
        return [(step, []) for event in steps for step in event]
    total = interval * (len(steps) - 1) + (1 if darts_cell else 0)
    plan: list[tuple[Step, list[int]]] = []
    pending = list(steps)
    for epoch in range(total):
        if pending and (epoch % interval == 0 or epoch == total - 1):
            plan += [(step, []) for step in pending.pop(0)]
        plan[-1][1].append(epoch)  # epoch 0 projects first: plan is not empty here
    # an interval so short that the loop ends first: the rest one after another
    plan += [(step, []) for event in pending for step in event]
    return plan


def run_projection(model: nn.Module, projection: Projection, score: Callable[[], Score],
                   tune: Callable[[int], None] | None, interval: int, seed: int,
                   log: Callable[[str], None] = lambda s: None, *,
                   steps: list[list[Step]] | None = None, done: int = 0,
                   checkpoint: Callable[[int], None] | None = None) -> None:
    """DARTS-PT's loop: projections interleaved with `tune(epoch)` epochs (see the module
    docstring); `interval` 0: all projections one after another, no tuning.

    One projection step is one decision and the tuning epochs after it (`projection_plan`);
    `checkpoint(k)` runs after step k (1-based). A resumed run passes the order it drew
    (`steps`, else drawn from `seed`) and the `done` steps, whose decisions `projection` and
    whose tuning the model (and what `tune` steps) already hold: it goes on at step done + 1.
    """
    topology = model.topology
    steps = projection_steps(model, random.Random(seed)) if steps is None else steps
    ops, kinds = topology.ops, topology.kinds
    columns = [k for k, op in enumerate(ops) if topology.none_selectable or op != "none"]
    plan = projection_plan(steps, interval, tune is not None, topology.nodes > 0)
    n = len(plan)
    if done:
        log(f"DARTS-PT: resuming after projection step {done}/{n} "
            f"({sum(len(t) for _, t in plan[:done])} tuning epochs done)")
    for k in range(done, n):
        (kind, m, i), epochs = plan[k]
        if kind == "op":
            col = project_op(model, projection, m, i, columns, score)
            log(f"DARTS-PT: projection step {k + 1}/{n}: {kinds[m]} edge {i} takes {ops[col]}")
        else:
            kept = project_edges(model, projection, m, i, score)
            log(f"DARTS-PT: projection step {k + 1}/{n}: {kinds[m]} node {i} keeps edges {kept}")
        for epoch in epochs if tune is not None else ():
            tune(epoch)
        if checkpoint is not None:
            checkpoint(k + 1)


def tune_epochs(model: nn.Module, interval: int) -> int:
    """The number of DARTS-PT's tuning epochs (the cosine schedule's length)."""
    if interval <= 0:
        return 0
    return model.topology.pt_tune_epochs(interval)
