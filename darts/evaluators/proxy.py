"""The `proxy` evaluator: a candidate's score is a zero-cost proxy of its untrained network
(darts.proxies), seconds per candidate on a CPU instead of a training.

`--proxy NAME` scores by that proxy alone (NASWOT's recipe is `--strategy random --evaluator
proxy --proxy nwot --budget N`: score N random cells, keep the best). `--proxy A,B,C` (or with
weights, `A:2,B:1`) is a weighted vote: each proxy votes with the share of a fixed reference
sample (`--proxy_reference` candidates drawn by the seed, scored once at the start) that the
candidate beats on it (ties count half), and the score is the weighted mean of the votes, in
[0, 1]. A vote is comparable across candidates where raw scores of different proxies are not.

The batch is `--batch_size` images of the training set drawn by the seed, without
augmentation; the network is the space's at `--init_channels`/`--layers` (a plain CNN's:
its spec's), its initial weights drawn from the seed and the candidate's text. `reported`:
the candidate's `--report` value in `--benchmark`'s table where one is given (a lookup that
the strategy never sees; the run counts proxy evaluations and table lookups apart), else the
score again. A score that is not finite (NASWOT's log-determinant of a singular kernel) is
the lowest finite one (-1e300).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from typing import Any

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.proxies import PROXIES
from darts.proxies.score import Scorer, ScoreSettings, default_threads
from darts.spaces import to_text

LOWEST = -1e300


def parse_weights(text: str, flag: str = "--proxy") -> dict[str, float]:
    """`A,B:2` -> {A: 1.0, B: 2.0}; one UserError naming `flag` for a bad entry."""
    weights: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, w = item.partition(":")
        PROXIES.lookup(name.strip())
        try:
            value = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"{flag} {text}: {item!r}: a weight is a number (NAME:WEIGHT)") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {text}: {item!r}: a weight must be positive")
        weights[name.strip()] = value
    if not weights:
        raise UserError(f"{flag} {text!r}: name a proxy: {', '.join(PROXIES)}")
    return weights


def settings_of(cfg: Any, space: Any, names: tuple[str, ...]) -> ScoreSettings:
    sized = getattr(space, "NETWORK_SIZES", None) is not None
    return ScoreSettings(
        cfg.space, getattr(cfg, "plugins", ""), names, cfg.dataset, cfg.data, cfg.batch_size,
        cfg.image_size, cfg.num_classes, cfg.synthetic_size,
        cfg.init_channels if sized else None, cfg.layers if sized else None, cfg.seed,
        cfg.threads or default_threads(1))


class ProxyEvaluator:
    def __init__(self, space: Any, weights: dict[str, float], settings: ScoreSettings, *,
                 table: Any = None, report: str = "cifar10_test", reference: int = 100,
                 log=None):
        self.space, self.weights, self.table, self.report = space, weights, table, report
        self.scorer = Scorer(settings)
        self.proxy_evaluations = 0
        self.reference: dict[str, list[float]] = {}
        if len(weights) > 1:
            if reference < 1:
                raise UserError(f"--proxy_reference {reference}: a vote needs at least 1")
            rng = random.Random(settings.seed)
            sample = [space.sample(rng) for _ in range(reference)]
            scored = [self._scores(c)[0] for c in sample]
            self.reference = {p: sorted(s[p] for s in scored) for p in weights}
            if log is not None:
                log(f"proxy evaluator: a vote of {', '.join(f'{p} x{w:g}' for p, w in weights.items())}"
                    f" against {reference} reference candidates")

    def _scores(self, candidate: Any) -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        _, scores, _ = self.scorer(candidate)
        self.proxy_evaluations += 1
        return ({p: v if math.isfinite(v) else LOWEST for p, v in scores.items()},
                time.perf_counter() - start)

    def vote(self, scores: dict[str, float]) -> float:
        """The weighted mean over proxies of the share of the reference beaten (ties half)."""
        total = 0.0
        for p, w in self.weights.items():
            ref = self.reference[p]
            below = bisect.bisect_left(ref, scores[p])
            ties = bisect.bisect_right(ref, scores[p]) - below
            total += w * (below + 0.5 * ties) / len(ref)
        return total / sum(self.weights.values())

    def __call__(self, candidate: Any) -> Evaluation:
        scores, cost = self._scores(candidate)
        score = scores[next(iter(self.weights))] if len(self.weights) == 1 else self.vote(scores)
        reported = score
        if self.table is not None:
            row = self.table.lookup(candidate)
            if row is not None and math.isfinite(row.get(self.report, math.nan)):
                reported = row[self.report]
        return Evaluation(score, reported, cost)

    def counts(self) -> dict[str, int]:
        return {"proxy_evaluations": self.proxy_evaluations}


def check(cfg: Any, space: Any) -> None:
    if not hasattr(space, "network"):
        raise UserError(f"--evaluator proxy: the {cfg.space} space builds no network")
    parse_weights(cfg.proxy)


def build(cfg: Any, space: Any, table: Any, run_dir, logger) -> ProxyEvaluator:
    weights = parse_weights(cfg.proxy)
    log = logger.info if logger is not None else None
    evaluator = ProxyEvaluator(space, weights, settings_of(cfg, space, tuple(weights)),
                               table=table, report=cfg.report, reference=cfg.proxy_reference,
                               log=log)
    if log is not None:
        log(f"proxy evaluator: {cfg.proxy} of the untrained network on {cfg.batch_size} "
            f"{cfg.dataset} images" + (f", reporting {cfg.report} from {table.path}"
                                       if table is not None else ""))
    return evaluator


def best_first(candidates: list[Any], columns: dict[str, list[float]],
               weights: dict[str, float]) -> list[Any]:
    """`candidates` best first by their proxy scores (`columns`: proxy -> scores in the
    candidates' order): one proxy by its score, several by the weighted sum of each proxy's
    rank in the list (a non-finite score lowest); ties keep the candidates' order."""
    n = len(candidates)
    value = [0.0] * n
    for p, w in weights.items():
        col = [v if math.isfinite(v) else LOWEST for v in columns[p]]
        order = sorted(range(n), key=lambda i: col[i])
        start = 0
        while start < n:  # tied scores share their mean rank
            end = start
            while end + 1 < n and col[order[end + 1]] == col[order[start]]:
                end += 1
            for i in order[start:end + 1]:
                value[i] += w * (start + end) / 2
            start = end + 1
    return [candidates[i] for i in sorted(range(n), key=lambda i: (-value[i], i))]


class ProxyRanker:
    """Ranks samples of a space by proxies (the warm starts and NASWOT's recipe of
    `darts.compare`), each candidate scored once (scores cached by its text)."""

    def __init__(self, space: Any, weights: dict[str, float], settings: ScoreSettings):
        self.space, self.weights = space, weights
        self.scorer = Scorer(settings)
        self.cache: dict[str, dict[str, float]] = {}
        self.scored = 0

    def rank(self, candidates: list[Any]) -> list[Any]:
        columns: dict[str, list[float]] = {p: [] for p in self.weights}
        for c in candidates:
            text = to_text(self.space, c)
            if text not in self.cache:
                self.cache[text] = self.scorer(c)[1]
            self.scored += 1
            for p in self.weights:
                columns[p].append(self.cache[text][p])
        return best_first(candidates, columns, self.weights)
