"""A plugin mixing rule with per-epoch state: softmax(alpha / T), the temperature T annealed
from 5 to 1 over the search (used by tests/test_extending.py)."""

import torch

from darts.methods.mixing import register_mixing


class AnnealedSoftmax:
    def __init__(self, t0: float = 5.0, t1: float = 1.0):
        self.t0, self.t1, self.temperature = t0, t1, t0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The search calls this before each epoch (also the first after a resume)."""
        self.epochs_seen.append(epoch)
        progress = epoch / max(1, epochs - 1)
        self.temperature = self.t0 + (self.t1 - self.t0) * progress

    def scalars(self) -> dict[str, float]:
        return {"temperature": self.temperature}

    def __call__(self, alphas: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alphas / self.temperature, dim=-1)


RULE = AnnealedSoftmax()
register_mixing("annealed_softmax", RULE, overwrite=True)
