"""Network morphism by hill climbing (NASH: Elsken, Metzen & Hutter, *Simple and efficient
architecture search for convolutional neural networks*, ICLR 2018 workshop, Algorithm 1).

The search starts from a small network (`start`) and climbs: each step makes `children`
children of the current parent, each by 1 to `edits` function-preserving edits drawn at random
(the space's `random_edit`, e.g. darts.spaces.cnn), and the best child by score becomes
the next parent. A child is a `Child`: its spec, and its lineage (its parent's key and the
edits), so that the evaluator starts its training from the parent's trained weights morphed by
the edits (the `train` evaluator does; darts.evaluators.training) and trains it a few epochs
with a fresh cosine schedule (NASH's SGDR restarts: one cosine period per child). NASH's
settings: 8 children per step, up to 5 edits each (n_neigh = 8, n_NM = 5).

The start network is not an evaluation of the search: the evaluator trains it from scratch
(`--eval_epochs`) once, before the first child that needs its weights; that time is in no
evaluation's cost, its epochs are one evaluation's more than the budget's. A step's
children are asked before any of them is told, so `--workers` processes train them together
(`children` a multiple of `--workers`); an asynchronous run (`--max_pending`, `--executor ray`)
waits for a step to be told before asking the next step's children.

Strategies know nothing of evaluators: a `Child` is a candidate like any other to the rest of
the run (its text is its spec's text); an evaluator that cannot inherit weights trains it from
scratch.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from darts.lineage import Child, lineage_key
from darts.strategies.base import Strategy


class NetworkMorphism(Strategy):
    """NASH's hill climbing over a space's function-preserving edits."""

    DEFAULT_START = "conv3x3-16-max|conv3x3-32-max"
    scored_by_table = False  # it trains what it proposes (darts.compare leaves it out)

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        workers = max(1, getattr(cfg, "workers", 1))
        asynchronous = (getattr(cfg, "max_pending", None) is not None
                        or getattr(cfg, "executor", "local") != "local")
        if (getattr(cfg, "evaluator", "") in ("", "train") and workers > 1 and not asynchronous
                and cfg.morph_children % workers):
            raise ValueError(f"--morph_children {cfg.morph_children} must be a multiple of "
                             f"--workers {workers} (a step's children train together)")
        return {"children": cfg.morph_children, "edits": cfg.morph_edits,
                "start": cfg.morph_start or None}

    def __init__(self, space: ModuleType, seed: int = 0, children: int = 8, edits: int = 5,
                 start: str | None = None):
        super().__init__(space, seed)
        if not hasattr(space, "random_edit"):
            raise ValueError(f"the {getattr(space, 'NAME', space)} space has no morphisms "
                             f"(its `random_edit`, `edit_arch` and `morph`)")
        if children < 1 or edits < 1:
            raise ValueError(f"need morph_children >= 1 and morph_edits >= 1, got {children}, "
                             f"{edits}")
        self.children, self.max_edits = children, edits
        spec = space.parse(start or self.DEFAULT_START)
        self.parent = Child(spec, key=lineage_key(f"start:{seed}:{spec}", ()))
        self.step: list[tuple[Child, float]] = []  # the current step's children told so far
        self.asked = 0  # children of the current parent asked
        self.history: list[tuple[str, float]] = []  # (spec, score) of every parent taken

    def can_ask(self) -> bool:
        """A step's children are all asked: the next wait for the step to be told."""
        return self.asked < self.children

    def ask(self) -> Child:
        if self.asked >= self.children:
            raise RuntimeError("a step's children are asked before any is told: --morph_children "
                               "must be a multiple of the evaluator's batch (--workers)")
        self.asked += 1
        spec, done = self.parent.spec, []
        for _ in range(self.rng.randint(1, self.max_edits)):
            edit = self.space.random_edit(spec, self.rng)
            if edit is None:  # the largest network: nothing more to add
                break
            spec = self.space.edit_arch(spec, edit)
            done.append(edit)
        done = tuple(done)
        return Child(spec, lineage_key(self.parent.key, done), self.parent.key, self.parent.spec,
                     done)

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        self.step.append((candidate, score))
        if len(self.step) == self.children:  # the step is over: climb to its best child
            best = max(self.step, key=lambda told: told[1])
            self.parent = best[0]
            self.history.append((str(best[0].spec), best[1]))
            self.step, self.asked = [], 0
