"""Controllers trained by policy gradient (REINFORCE, Williams 1992): `--strategy reinforce`
as NAS-Bench-201's REINFORCE baseline runs it, and ENAS's controller (`ENAS`).

`reinforce` follows AutoDL-Projects (exps/algos/reinforce.py; scripts-search/algos/
REINFORCE.sh): the factorised policy (darts.strategies.controller), Adam at learning rate
0.001, a moving-average baseline with momentum 0.9, one Adam step per candidate.
`--controller lstm` gives it ENAS's LSTM instead. Each candidate a = (a_1, ..., a_D) is
sampled from the policy; its reward R (the score) moves the baseline b <- m b + (1 - m) R;
then the policy takes an Adam step on

    loss = -(R - b) * log pi(a) - entropy_weight * H(pi)

(log pi(a) = sum_d log pi(a_d | a_<d), H the sum of the decisions' entropies along a), the
REINFORCE estimate of grad J = E[grad log pi(a) R]. With `aggregate` k > 1 the step takes the
mean of k samples' gradients. `ENAS` adds the entropy bonus to the reward instead (as a
constant), as ENAS's code does.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from darts.errors import InvalidCandidate
from darts.strategies.base import Strategy
from darts.strategies.controller import CONTROLLERS, FactorisedPolicy


class Reinforce(Strategy):
    # The flags' defaults of this strategy (a flag left at None takes them).
    DEFAULTS = {"controller": "factorised", "controller_lr": 0.001, "baseline_momentum": 0.9,
                "entropy_weight": 0.0, "controller_aggregate": 1}
    # Whether the entropy bonus joins the reward (ENAS) or the loss (NAS-Bench-201's REINFORCE).
    entropy_in_reward = False
    # Adam's (beta1, beta2) and epsilon: torch's defaults, as NAS-Bench-201's REINFORCE.
    adam = {"betas": (0.9, 0.999), "eps": 1e-8}

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        def pick(name: str) -> Any:
            value = getattr(cfg, name, None)
            return cls.DEFAULTS[name] if value is None else value

        return {"controller": pick("controller"), "lr": pick("controller_lr"),
                "baseline_momentum": pick("baseline_momentum"),
                "entropy_weight": pick("entropy_weight"), "aggregate": pick("controller_aggregate"),
                "hidden": cfg.controller_hidden, "layers": cfg.controller_layers,
                "temperature": cfg.controller_temperature, "tanh_constant": cfg.controller_tanh}

    def __init__(self, space: ModuleType, seed: int = 0, lr: float | None = None,
                 baseline_momentum: float | None = None, entropy_weight: float | None = None,
                 controller: str | None = None, aggregate: int | None = None, **policy: Any):
        super().__init__(space, seed)
        d = self.DEFAULTS
        lr = d["controller_lr"] if lr is None else lr
        baseline_momentum = d["baseline_momentum"] if baseline_momentum is None else baseline_momentum
        entropy_weight = d["entropy_weight"] if entropy_weight is None else entropy_weight
        aggregate = d["controller_aggregate"] if aggregate is None else aggregate
        if lr <= 0 or not 0 <= baseline_momentum < 1 or entropy_weight < 0 or aggregate < 1:
            raise ValueError("need controller_lr > 0, 0 <= baseline_momentum < 1, "
                             "entropy_weight >= 0, controller_aggregate >= 1")
        self.generator = torch.Generator().manual_seed(seed)
        name = controller or d["controller"]
        cls = CONTROLLERS.lookup(name)
        options = {k: v for k, v in policy.items() if v is not None}
        self.policy = cls(space.decisions(), self.generator,
                          **(options if cls is not FactorisedPolicy else {}))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr, **self.adam)
        self.momentum, self.entropy_weight, self.aggregate = baseline_momentum, entropy_weight, aggregate
        self.baseline: float | None = None
        self.pending = 0  # samples whose gradients wait for the next step (`aggregate`)
        self.last: dict[str, float] = {}  # the last tell's reward, baseline, entropy, advantage

    def ask(self, draws: int = 10_000) -> Any:
        """A candidate drawn from the policy; decisions that name none (a NAS-Bench-101 spec
        whose input does not reach its output) are drawn again, as the benchmark's own random
        search does."""
        for _ in range(draws):
            try:
                return self.space.from_decisions(self.policy.sample(self.generator))
            except InvalidCandidate:
                continue
        raise RuntimeError(f"no valid candidate in {draws} draws of the policy")

    def greedy(self) -> Any | None:
        """The policy's most likely candidate, step by step (None where it names none)."""
        try:
            return self.space.from_decisions(self.policy.greedy())
        except InvalidCandidate:
            return None

    def loss(self, choices: list[int], advantage: float) -> torch.Tensor:
        """-(R - b) log pi(a), minus the entropy bonus where it is not in the reward."""
        return self._loss(*self.policy.log_prob(choices), advantage)

    def _loss(self, log_prob: torch.Tensor, entropy: torch.Tensor, advantage: float) -> torch.Tensor:
        bonus = 0.0 if self.entropy_in_reward else self.entropy_weight * entropy
        return -advantage * log_prob - bonus

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        log_prob, entropy = self.policy.log_prob(self.space.to_decisions(candidate))
        # ENAS adds the entropy to the reward as a constant (its code stops the gradient there)
        reward = score + (self.entropy_weight * float(entropy.detach()) if self.entropy_in_reward else 0.0)
        self.baseline = reward if self.baseline is None else (
            self.momentum * self.baseline + (1 - self.momentum) * reward)
        advantage = reward - self.baseline
        if self.pending == 0:
            self.optimizer.zero_grad()
        (self._loss(log_prob, entropy, advantage) / self.aggregate).backward()  # their mean
        self.pending += 1
        if self.pending == self.aggregate:
            self.optimizer.step()
            self.pending = 0
        self.last = {"reward": reward, "baseline": self.baseline, "advantage": advantage,
                     "entropy": float(entropy.detach())}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to go on drawing and learning exactly as this one."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "baseline": self.baseline,
                "pending": self.pending, "told": self.told,
                "grads": [p.grad for p in self.policy.parameters()] if self.pending else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline, self.pending, self.told = state["baseline"], state["pending"], state["told"]
        for p, g in zip(self.policy.parameters(), state["grads"], strict=False):
            p.grad = g


class ENAS(Reinforce):
    """ENAS's controller (Pham et al., ICML 2018): the LSTM policy, the entropy bonus in the
    reward, Adam with beta1 0 and epsilon 1e-3, gradients averaged over `aggregate` samples
    per step. `--strategy enas` runs it against a weight-sharing supernet (darts.enas)."""

    DEFAULTS = {"controller": "lstm", "controller_lr": 3.5e-4, "baseline_momentum": 0.99,
                "entropy_weight": 1e-4, "controller_aggregate": 10}
    entropy_in_reward = True
    adam = {"betas": (0.0, 0.999), "eps": 1e-3}
    weight_sharing = True  # a run of its own: darts.enas
    scored_by_table = False  # it trains what it proposes (darts.compare leaves it out)
