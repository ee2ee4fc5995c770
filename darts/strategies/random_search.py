"""Random search: every candidate drawn uniformly from the space, the baseline every NAS
paper reports (Li & Talwalkar 2019; NAS-Bench-201's Table 5)."""

from __future__ import annotations

from typing import Any

from darts.strategies.base import Strategy


class RandomSearch(Strategy):
    def ask(self) -> Any:
        return self.space.sample(self.rng)
