"""The policies a policy-gradient strategy samples candidates from (`--controller`).

Both are distributions over a space's decisions (`space.decisions()`: one tuple of choices
per decision, the sizes may differ), drawn in order d = 1..D.

- `FactorisedPolicy`: one independent categorical per decision, logits initialised at
  1e-3 * N(0, 1) (NAS-Bench-201's REINFORCE baseline).
- `LSTMPolicy`: ENAS's controller (Pham et al., ICML 2018, Section 2.1; the cell search of
  Section 2.3). An LSTM runs one step per decision; its first input is a learned vector, the
  input of step d + 1 is decision d's embedding of the choice made (one embedding table per
  decision), and decision d's logits are its own linear head on the LSTM's output h_d,
  shaped as ENAS shapes them: logits = c * tanh(z / T) with temperature T = 5 and tanh
  constant c = 2.5. So a choice is conditioned on every earlier one. Every parameter starts
  uniform in [-0.1, 0.1] (ENAS, Section 3.1).

`sample(generator)` draws (choices, log-probability, entropy); `log_prob(choices)` recomputes
both with gradients, as the policy-gradient step needs; `greedy()` follows the most likely
choice at every step; `probabilities(choices)` is each decision's distribution along a path
(the LSTM's are conditional on the choices before), a (D, max choices) array.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from darts.registry import Registry


def _sizes(decisions: list[tuple[str, ...]]) -> list[int]:
    sizes = [len(choices) for choices in decisions]
    if not sizes or min(sizes) < 1:
        raise ValueError("a policy needs at least one decision, each with at least one choice")
    return sizes


class FactorisedPolicy(nn.Module):
    """One categorical per decision; padded choices of narrower decisions have probability 0."""

    def __init__(self, decisions: list[tuple[str, ...]], generator: torch.Generator):
        super().__init__()
        self.sizes = _sizes(decisions)
        width = max(self.sizes)
        self.register_buffer("mask", torch.tensor(
            [[0.0] * k + [-1e9] * (width - k) for k in self.sizes], dtype=torch.float64))
        self.logits = nn.Parameter(1e-3 * torch.randn(len(self.sizes), width, generator=generator,
                                                      dtype=torch.float64))

    def _log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self.logits + self.mask, dim=-1)

    def log_prob(self, choices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self._log_probs()
        chosen = log_probs[torch.arange(len(choices)), torch.tensor(choices)].sum()
        return chosen, -(log_probs.exp() * log_probs).sum()

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> list[int]:
        probs = self._log_probs().exp()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()

    @torch.no_grad()
    def greedy(self) -> list[int]:
        return self._log_probs().argmax(dim=-1).tolist()

    @torch.no_grad()
    def probabilities(self, choices: list[int] | None = None) -> torch.Tensor:
        return self._log_probs().exp()


class LSTMPolicy(nn.Module):
    """ENAS's LSTM controller over `decisions` (see the module docstring)."""

    def __init__(self, decisions: list[tuple[str, ...]], generator: torch.Generator,
                 hidden: int = 100, layers: int = 1, temperature: float = 5.0,
                 tanh_constant: float = 2.5):
        super().__init__()
        if hidden < 1 or layers < 1 or temperature <= 0 or tanh_constant <= 0:
            raise ValueError(f"need controller hidden >= 1 ({hidden}), layers >= 1 ({layers}), "
                             f"temperature > 0 ({temperature}), tanh constant > 0 "
                             f"({tanh_constant})")
        self.sizes = _sizes(decisions)
        self.hidden, self.temperature, self.tanh_constant = hidden, temperature, tanh_constant
        self.start = nn.Parameter(torch.empty(1, hidden, dtype=torch.float64))
        self.cells = nn.ModuleList(nn.LSTMCell(hidden, hidden, dtype=torch.float64)
                                   for _ in range(layers))
        # the input of step d + 1 is decision d's embedding of its choice (the last feeds none)
        self.embeddings = nn.ModuleList(nn.Embedding(k, hidden, dtype=torch.float64)
                                        for k in self.sizes[:-1])
        self.heads = nn.ModuleList(nn.Linear(hidden, k, dtype=torch.float64) for k in self.sizes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 0.2 - 0.1)

    def _step(self, x: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
        """One LSTM step through the layers: (top layer's output, new state per layer)."""
        new = []
        for k, cell in enumerate(self.cells):
            h, c = cell(x, None if state is None else state[k])
            new.append((h, c))
            x = h
        return x, new

    def logits(self, d: int, h: torch.Tensor) -> torch.Tensor:
        """Decision d's logits from the LSTM output h: c * tanh(W h / T) (ENAS)."""
        return self.tanh_constant * torch.tanh(self.heads[d](h) / self.temperature)

    def _walk(self, choose) -> tuple[list[int], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Runs the LSTM over the decisions, `choose(d, log_probs)` picking each choice."""
        x, state = self.start, None
        choices, total, entropy, rows = [], self.start.new_zeros(()), self.start.new_zeros(()), []
        for d in range(len(self.sizes)):
            h, state = self._step(x, state)
            log_probs = torch.log_softmax(self.logits(d, h), dim=-1)[0]
            choice = choose(d, log_probs)
            choices.append(choice)
            total = total + log_probs[choice]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
            rows.append(log_probs.exp())
            if d + 1 < len(self.sizes):
                x = self.embeddings[d](torch.tensor([choice]))
        return choices, total, entropy, rows

    def log_prob(self, choices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        _, total, entropy, _ = self._walk(lambda d, _: int(choices[d]))
        return total, entropy

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> list[int]:
        return self._walk(lambda d, lp: int(torch.multinomial(lp.exp(), 1,
                                                              generator=generator)))[0]

    @torch.no_grad()
    def greedy(self) -> list[int]:
        return self._walk(lambda d, lp: int(lp.argmax()))[0]

    @torch.no_grad()
    def probabilities(self, choices: list[int] | None = None) -> torch.Tensor:
        """Each decision's distribution along `choices` (default: the greedy path)."""
        path = self.greedy() if choices is None else choices
        rows = self._walk(lambda d, _: int(path[d]))[3]
        out = torch.zeros(len(rows), max(self.sizes), dtype=torch.float64)
        for d, row in enumerate(rows):
            out[d, :len(row)] = row
        return out


# `--controller NAME`: a plugin adds a policy with `CONTROLLERS.register(name, cls)`, a class
# taking (decisions, generator, **options) with the methods above.
CONTROLLERS = Registry("controller", "--controller", {
    "factorised": FactorisedPolicy,
    "lstm": LSTMPolicy,
}.items())
