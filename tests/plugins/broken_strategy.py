"""A plugin whose strategy has a bug (used by tests/test_extending.py)."""

from darts.strategies import register_strategy
from darts.strategies.base import Strategy


class Broken(Strategy):
    def ask(self):
        return self.space.sample(self.rng) if self.told < 2 else 1 / 0


register_strategy("broken", Broken, overwrite=True)
