"""A controller trained by policy gradient (REINFORCE, Williams 1992), as NAS-Bench-201's
REINFORCE baseline runs it (AutoDL-Projects, exps/algos/reinforce.py; scripts-search/algos/
REINFORCE.sh: Adam, learning rate 0.001, moving-average momentum 0.9).

The policy is factorised: one categorical distribution per decision (decisions may have
different numbers of choices), logits initialised at 1e-3 * N(0, 1). It is the default, and
the only policy here, because it is what the benchmark's baseline uses and a space of 6
independent decisions gives an LSTM nothing to condition on. Each candidate a = (a_1, ..., a_D) is sampled from the policy. Its reward R
(the score) moves the baseline b <- m b + (1 - m) R. The logits then take one Adam step on

    loss = -(R - b) * sum_d log pi(a_d) - entropy_weight * sum_d H(pi_d)

whose gradient in the logits of decision d is -(R - b) (onehot(a_d) - softmax(logits_d)) -
entropy_weight * dH/dlogits_d: the REINFORCE estimate of grad J = E[sum_t grad log pi(a_t) R].
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from darts.errors import InvalidCandidate
from darts.strategies.base import Strategy


class Reinforce(Strategy):
    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {"lr": cfg.controller_lr, "baseline_momentum": cfg.baseline_momentum,
                "entropy_weight": cfg.entropy_weight}

    def __init__(self, space: ModuleType, seed: int = 0, lr: float = 0.001,
                 baseline_momentum: float = 0.9, entropy_weight: float = 0.0):
        super().__init__(space, seed)
        if lr <= 0 or not 0 <= baseline_momentum < 1 or entropy_weight < 0:
            raise ValueError("need lr > 0, 0 <= baseline_momentum < 1, entropy_weight >= 0")
        self.generator = torch.Generator().manual_seed(seed)
        sizes = [len(choices) for choices in space.decisions()]
        # Decisions with fewer choices than the widest are padded; a padded choice's logit is
        # pushed to -1e9, so its probability is exactly 0 and its gradient too.
        width = max(sizes)
        self.mask = torch.tensor([[0.0] * k + [-1e9] * (width - k) for k in sizes],
                                 dtype=torch.float64)
        self.logits = torch.nn.Parameter(
            1e-3 * torch.randn(len(sizes), width, generator=self.generator, dtype=torch.float64))
        self.optimizer = torch.optim.Adam([self.logits], lr=lr)
        self.momentum, self.entropy_weight = baseline_momentum, entropy_weight
        self.baseline: float | None = None

    def ask(self, draws: int = 10_000) -> Any:
        """A candidate drawn from the policy; decisions that name none (a NAS-Bench-101 spec
        whose input does not reach its output) are drawn again, as the benchmark's own random
        search does."""
        with torch.no_grad():
            probs = torch.softmax(self.logits + self.mask, dim=-1)
        for _ in range(draws):
            with torch.no_grad():
                choices = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            try:
                return self.space.from_decisions(choices.tolist())
            except InvalidCandidate:
                continue
        raise RuntimeError(f"no valid candidate in {draws} draws of the policy")

    def loss(self, choices: list[int], advantage: float) -> torch.Tensor:
        log_probs = torch.log_softmax(self.logits + self.mask, dim=-1)
        chosen = log_probs[torch.arange(len(choices)), torch.tensor(choices)]
        entropy = -(log_probs.exp() * log_probs).sum()
        return -advantage * chosen.sum() - self.entropy_weight * entropy

    def tell(self, candidate: Any, score: float) -> None:
        super().tell(candidate, score)
        self.baseline = score if self.baseline is None else (
            self.momentum * self.baseline + (1 - self.momentum) * score)
        self.optimizer.zero_grad()
        self.loss(self.space.to_decisions(candidate), score - self.baseline).backward()
        self.optimizer.step()
