"""Bayesian optimisation through Optuna (Akiba et al., KDD 2019), not a hand-written model.

Each decision of the space is one categorical parameter of an Optuna study; `ask` asks the
study for a trial and reads the candidate from its parameters, `tell` reports the score.
Samplers (`sampler`):

    tpe   Tree-structured Parzen Estimator (Bergstra et al. 2011), multivariate (Falkner et
          al. 2018's BOHB models the decisions jointly the same way); the default: it models
          categorical decisions natively and costs milliseconds per trial.
    gp    Optuna's Gaussian-process sampler (a Matern kernel over one-hot categoricals, log
          expected improvement); slower per trial, growing with the number told.

The first `startup` candidates are drawn at random (Optuna's default 10), then the model
proposes. Optuna's own seed is the strategy's, so a run repeats exactly. An asynchronous run
(`--max_pending`, `--executor ray`) turns on TPE's constant liar for the trials still running.
"""

from __future__ import annotations

from collections import deque
from types import ModuleType
from typing import Any

from darts.errors import InvalidCandidate
from darts.strategies.base import Strategy

SAMPLERS = ("tpe", "gp")


class BayesianOptimisation(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        pending = getattr(cfg, "max_pending", None) or 1
        return {"sampler": cfg.bo_sampler, "startup": cfg.bo_startup,
                "constant_liar": getattr(cfg, "executor", "local") != "local" or pending > 1}

    def __init__(self, space: ModuleType, seed: int = 0, sampler: str = "tpe", startup: int = 10,
                 constant_liar: bool = False):
        super().__init__(space, seed)
        import optuna  # imported here: only this strategy needs it

        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if startup < 1:
            raise ValueError(f"need startup >= 1, got {startup}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler == "tpe":
            # constant liar (asynchronous runs): a running trial counts as a poor one, so
            # candidates asked while others run differ from them (Optuna's TPE option)
            chosen = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                                multivariate=True, constant_liar=constant_liar)
        else:
            # Optuna imports the GP sampler's dependencies only when the model first fits,
            # after the startup trials: checked here, before the first evaluation.
            try:
                import scipy  # noqa: F401
            except ImportError:
                raise ValueError("sampler gp needs scipy (pip install -r requirements.txt, "
                                 "or pip install scipy)") from None
            chosen = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        self.study = optuna.create_study(direction="maximize", sampler=chosen)
        self.sizes = [len(choices) for choices in space.decisions()]
        self.startup = startup
        self.pending: deque[tuple[Any, Any]] = deque()  # (candidate, trial), asked, not told

    warm_startable = True

    def warm_start(self, candidates: list[Any]) -> None:
        """The first `startup` trials: the best `startup` of `candidates`, enqueued in the
        study (Abdelfattah et al., ICLR 2021: proxy warm-up of the first trials)."""
        for c in candidates[:self.startup]:
            self.study.enqueue_trial({f"d{d}": k for d, k in
                                      enumerate(self.space.to_decisions(c))})

    def ask(self, draws: int = 10_000) -> Any:
        """The sampler's next trial; decisions that name no candidate (a NAS-Bench-101 spec
        whose input does not reach its output) are told to the study as failed trials."""
        import optuna

        for _ in range(draws):
            trial = self.study.ask()
            choices = [trial.suggest_categorical(f"d{d}", list(range(k)))
                       for d, k in enumerate(self.sizes)]
            try:
                candidate = self.space.from_decisions(choices)
            except InvalidCandidate:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            self.pending.append((candidate, trial))
            return candidate
        raise RuntimeError(f"no valid candidate in {draws} trials")

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        for k, (asked, trial) in enumerate(self.pending):
            if asked == candidate:
                del self.pending[k]
                self.study.tell(trial, score)
                return
        raise ValueError(f"told a candidate that was not asked: {candidate}")
