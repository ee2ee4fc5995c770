"""A plugin file as a user writes one: a search space, a strategy and an evaluator of their own,
registered by name, with no edit to the library (used by tests/test_extending.py)."""

import json

import torch.nn as nn

from darts.errors import UserError
from darts.evaluators import EvaluatorKind, register_evaluator
from darts.evaluators.base import Evaluation
from darts.spaces import register_space
from darts.strategies import register_strategy
from darts.strategies.base import Strategy

KERNELS = (3, 5)
MAX_DEPTH = 3


class Chain:
    """A chain of 1-3 conv layers of 16 channels, each 3x3 or 5x5; a candidate is the tuple of
    its kernel sizes, written "3-5-3"."""

    RESULT_FILE = "chain.json"
    SCORED_BY_TABLE = False
    NETWORK_SIZES = None  # a candidate fixes its own depth

    def to_text(self, c):
        return "-".join(map(str, c))

    def parse(self, text):
        try:
            c = tuple(int(k) for k in text.split("-"))
        except ValueError:
            raise UserError(f"{text!r}: not a chain (kernels joined by '-', e.g. 3-5)") from None
        if not 1 <= len(c) <= MAX_DEPTH or any(k not in KERNELS for k in c):
            raise UserError(f"{text!r}: 1 to {MAX_DEPTH} kernels of {KERNELS}")
        return c

    def save(self, c, path):
        with open(path, "w") as f:
            json.dump({"chain": self.to_text(c)}, f)

    def load(self, spec, where):
        """A chain's text, or the JSON file `save` wrote (what train_final.py --arch takes)."""
        if str(spec).endswith(".json"):
            with open(spec) as f:
                spec = json.load(f)["chain"]
        return self.parse(spec)

    def sample(self, rng):
        return tuple(rng.choice(KERNELS) for _ in range(rng.randint(1, MAX_DEPTH)))

    def mutate(self, c, rng, rate=None):
        ks = list(c)
        i = rng.randrange(len(ks))
        ks[i] = 8 - ks[i]  # 3 <-> 5
        return tuple(ks)

    def crossover(self, a, b, rng):
        return a if rng.random() < 0.5 else b

    def decisions(self):
        return [tuple(range(1, MAX_DEPTH + 1))] + [KERNELS] * MAX_DEPTH

    def to_decisions(self, c):
        return [len(c) - 1] + [KERNELS.index(k) for k in c] + [0] * (MAX_DEPTH - len(c))

    def from_decisions(self, choices):
        return tuple(KERNELS[k] for k in choices[1:1 + choices[0] + 1])

    def encode(self, c):
        return [float(len(c))] + [float(k) for k in c] + [0.0] * (MAX_DEPTH - len(c))

    def retrain_flags(self, path):
        return ["--space", "chain", "--arch", path]

    def graphs(self, c):
        """Its picture: input -> conv kxk -> ... -> classifier."""
        import graphviz

        g = graphviz.Digraph(graph_attr={"rankdir": "LR"})
        names = ["input", *(f"{i}: conv {k}x{k}" for i, k in enumerate(c)), "classifier"]
        for a, b in zip(names, names[1:], strict=False):
            g.edge(a, b)
        return {"chain": g}

    def network(self, c, num_classes, *_, **__):
        layers, channels = [], 3
        for k in c:
            layers += [nn.Conv2d(channels, 16, k, padding=k // 2, bias=False),
                       nn.BatchNorm2d(16), nn.ReLU()]
            channels = 16
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, num_classes))


register_space("chain", Chain())


class HillClimbing(Strategy):
    """A random candidate first, then a mutation of the best so far."""

    def ask(self):
        if self.best is None:
            return self.space.sample(self.rng)
        return self.space.mutate(self.best[1], self.rng)


register_strategy("hill", HillClimbing)


def _shallow(cfg, space, table, run_dir, logger):
    """Scores a chain by how shallow it is (a stand-in for a zero-cost proxy)."""
    return lambda c: Evaluation(score=-float(len(c)), reported=-float(len(c)), cost=0.0)


def _check_shallow(cfg, space):
    if cfg.space != "chain":
        raise UserError(f"--evaluator shallow scores --space chain, not --space {cfg.space}")


register_evaluator("shallow", EvaluatorKind(_shallow, _check_shallow))
