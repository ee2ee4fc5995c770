"""Predictor-guided search in the style of BANANAS (White, Neiswanger and Savani, AAAI 2021).

After `init` random candidates, each iteration fits a predictor of the score on the
candidates told so far and proposes, among `candidates` new ones made by mutating the best
told so far, the `k` (10) with the highest acquisition values, asked one by one before the
next fit (their Algorithm 1):

- features: the space's path encoding where it has one (`path_encode`: NAS-Bench-201's cell,
  BANANAS's Section 4), else its `encode`; optionally followed by zero-cost proxy scores of
  the untrained network (`--predictor_proxies`, darts.proxies; each candidate scored once);
- `--predictor mlp` (BANANAS's): an ensemble of 5 feed-forward networks, 10 layers of width
  20, ReLU, trained for 200 epochs by Adam (lr 0.01) on the mean absolute error (their
  Section 5), each from its own initial weights; `--predictor gbt`: an ensemble of 5
  scikit-learn `GradientBoostingRegressor`s (100 trees of depth 3, subsample 0.8, each its own
  random state): trees fit small tabular data well, need no tuning, and the subsampling gives
  the spread an acquisition needs;
- acquisition `its` (BANANAS's independent Thompson sampling: a draw from N(mean, std) of the
  ensemble's predictions per candidate) or `ucb` (mean + 2 std);
- candidates: `candidates` (100) mutations of the best `parents` (10) told so far, already
  told ones skipped (their "mutation" acquisition optimiser).

Scores are standardised before fitting. Everything random draws from the strategy's seed, so
a run repeats, and resumes, exactly.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from darts.spaces import to_text
from darts.strategies.base import Strategy

ACQUISITIONS = ("its", "ucb")
PREDICTORS = ("mlp", "gbt")


class MLPEnsemble:
    def __init__(self, members: int = 5, layers: int = 10, width: int = 20, epochs: int = 200,
                 lr: float = 0.01, seed: int = 0):
        self.members, self.layers, self.width = members, layers, width
        self.epochs, self.lr, self.seed = epochs, lr, seed
        self.nets: list[nn.Module] = []

    def _net(self, d: int) -> nn.Module:
        dims = [d] + [self.width] * self.layers
        body = [m for a, b in zip(dims, dims[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(*body, nn.Linear(self.width, 1)).double()

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).unsqueeze(1)
        self.nets = []
        with torch.random.fork_rng(devices=[]):
            for k in range(self.members):
                torch.manual_seed(self.seed * 1000 + k)
                net = self._net(x.shape[1])
                opt = torch.optim.Adam(net.parameters(), lr=self.lr)
                for _ in range(self.epochs):
                    opt.zero_grad()
                    (net(xt) - yt).abs().mean().backward()
                    opt.step()
                self.nets.append(net)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(members, candidates) predictions."""
        with torch.no_grad():
            xt = torch.from_numpy(x)
            return np.stack([net(xt).squeeze(1).numpy() for net in self.nets])


class GBTEnsemble:
    def __init__(self, members: int = 5, seed: int = 0):
        self.members, self.seed = members, seed
        self.models: list[Any] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        self.models = [GradientBoostingRegressor(n_estimators=100, max_depth=3, subsample=0.8,
                                                 random_state=(self.seed * 1000 + k) % 2 ** 32).fit(x, y)
                       for k in range(self.members)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.stack([m.predict(x) for m in self.models])


class Bananas(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        features = None
        if cfg.predictor_proxies:
            from darts.evaluators.proxy import parse_weights, settings_of
            from darts.proxies.score import Scorer
            from darts.spaces import get_space

            names = tuple(parse_weights(cfg.predictor_proxies, "--predictor_proxies"))
            scorer = Scorer(settings_of(cfg, get_space(cfg.space), names))
            features = ProxyFeatures(scorer, names)
        return {"predictor": cfg.predictor, "acquisition": cfg.acquisition,
                "init": cfg.bo_startup, "features": features}

    def __init__(self, space: ModuleType, seed: int = 0, predictor: str = "mlp",
                 acquisition: str = "its", init: int = 10, candidates: int = 100,
                 parents: int = 10, k: int = 10, epochs: int = 200, features: Any = None):
        super().__init__(space, seed)
        if predictor not in PREDICTORS or acquisition not in ACQUISITIONS:
            raise ValueError(f"predictor in {PREDICTORS}, acquisition in {ACQUISITIONS}")
        if min(init, candidates, parents, k) < 1:
            raise ValueError("need init, candidates, parents and k >= 1")
        self.k, self.epochs = k, epochs
        self.queue: list[Any] = []  # the last fit's proposals not yet asked
        self.predictor_name, self.acquisition = predictor, acquisition
        self.init, self.candidates, self.parents = init, candidates, parents
        self.features = features
        self.encode = getattr(space, "path_encode", space.encode)
        self.data: list[tuple[Any, float]] = []
        self.seen: set[str] = set()
        self.np_rng = np.random.default_rng(seed)

    def _x(self, cs: list[Any]) -> np.ndarray:
        x = np.array([self.encode(c) for c in cs], dtype=np.float64)
        if self.features is not None:
            x = np.hstack([x, self.features(cs)])
        return x

    def _key(self, c: Any) -> str:
        return to_text(self.space, c)

    def ask(self) -> Any:
        if len(self.data) < self.init:
            return self.space.sample(self.rng)
        while self.queue:
            c = self.queue.pop(0)
            if self._key(c) not in self.seen:
                return c
        self.queue = self._propose()
        return self.queue.pop(0)

    def _propose(self) -> list[Any]:
        """One BANANAS iteration: fit the predictor, rank the pool by the acquisition, the
        best `k` (their Algorithm 1 returns the top k = 10 per iteration)."""
        pool = self._pool()
        y = np.array([s for _, s in self.data])
        mean, std = y.mean(), y.std() or 1.0
        model = (MLPEnsemble(epochs=self.epochs, seed=self.rng.randrange(2 ** 31))
                 if self.predictor_name == "mlp"
                 else GBTEnsemble(seed=self.rng.randrange(2 ** 31)))
        model.fit(self._x([c for c, _ in self.data]), (y - mean) / std)
        preds = model.predict(self._x(pool))
        mu, sigma = preds.mean(0), preds.std(0)
        if self.acquisition == "its":
            value = self.np_rng.normal(mu, np.maximum(sigma, 1e-12))
        else:
            value = mu + 2 * sigma
        order = np.argsort(-value, kind="stable")[:self.k]
        return [pool[int(i)] for i in order]

    def _pool(self) -> list[Any]:
        """`candidates` mutations of the best `parents`, none told before (a fallback of
        random ones where mutation finds no new candidate)."""
        best = [c for c, _ in sorted(self.data, key=lambda cs: -cs[1])[:self.parents]]
        pool, keys = [], set()
        for k in range(self.candidates * 20):
            if len(pool) == self.candidates:
                break
            c = (self.space.mutate(best[k % len(best)], self.rng) if k < self.candidates * 10
                 else self.space.sample(self.rng))
            key = self._key(c)
            if key not in self.seen and key not in keys:
                pool.append(c)
                keys.add(key)
        return pool or [self.space.sample(self.rng)]

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        self.data.append((candidate, float(score) if math.isfinite(score) else -1e300))
        self.seen.add(self._key(candidate))


class ProxyFeatures:
    """Zero-cost proxy scores of candidates as extra predictor features, each candidate
    scored once (signed log scale: synflow's values span many orders of magnitude)."""

    def __init__(self, scorer: Any, names: tuple[str, ...]):
        self.scorer, self.names = scorer, names
        self.cache: dict[str, list[float]] = {}

    def __call__(self, candidates: list[Any]) -> np.ndarray:
        rows = []
        for c in candidates:
            key = to_text(self.scorer.space, c)
            if key not in self.cache:
                _, scores, _ = self.scorer(c)
                self.cache[key] = [_signed_log(scores[n]) for n in self.names]
            rows.append(self.cache[key])
        return np.array(rows, dtype=np.float64)


def _signed_log(v: float) -> float:
    if not math.isfinite(v):
        return -50.0 if v < 0 or math.isnan(v) else 50.0
    return math.copysign(math.log1p(abs(v)), v)
