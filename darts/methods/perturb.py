"""What perturbs the weight step: SDARTS (Chen & Hsieh, ICML 2020, Section 3).

SDARTS smooths the validation loss landscape by training the weights w at perturbed mixing
weights, min_w E[L_train(w, A + delta)] (SDARTS-RS, delta uniform in [-eps, eps]) or
min_w max_{|delta| <= eps} L_train(w, A + delta) (SDARTS-ADV). As in the authors' code
(xiangning-chen/SmoothDARTS, sota/cnn/train_search.py and attacker/perturb.py):

- A are the softmax mixing weights (their `softmax_arch_parameters()`), not the raw alphas;
  after each change every row is put back on the simplex by their `clip()`: clamped to
  [0, 1] and divided by its sum (a row clamped to all zeros becomes one-hot on its former
  argmax). The perturbation before this renormalisation is within eps of A; the
  renormalised row may move further (the row sum changes by at most ops * eps).
- eps ramps linearly over the search, eps_t = 0.03 + (eps_max - 0.03) * t / T for epoch t
  (0-based) of T, eps_max = 0.3 (their `--epsilon_alpha`).
- ADV: 7 steps of L-inf PGD with step 2 eps / 7 (their Linf_SGD: the gradient's sign),
  a random uniform start, every iterate projected back into the eps ball around A, with the
  network in eval mode (BatchNorm on running statistics) during the attack; the attack is
  kept only if it did not lower the training loss (their `loss_before > loss_after` check).
- The alphas are never changed: only the weights the weight step's forward sees.

Only the op weights are perturbed; PC-DARTS's edge weights (a 4-tuple of mixing weights)
pass through unchanged, as SDARTS has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Weights = tuple[torch.Tensor, ...]

PERTURBATIONS = ("none", "random", "adversarial")
EPSILON_START = 0.03  # SDARTS's eps at epoch 0 (sota/cnn/train_search.py)
PGD_STEPS = 7  # attacker/perturb.py, Linf_PGD_alpha(steps=7)


def epsilon_at(epoch: int, epochs: int, epsilon: float) -> float:
    """SDARTS's ramp: 0.03 at epoch 0 (0-based), rising linearly towards `epsilon` at `epochs`."""
    return EPSILON_START + (epsilon - EPSILON_START) * epoch / epochs


def simplex_clip(w: torch.Tensor) -> torch.Tensor:
    """SDARTS's `clip()`: each row clamped to [0, 1], then divided by its sum; a row that
    clamps to all zeros becomes one-hot on its argmax before clamping."""
    argmax = F.one_hot(w.argmax(-1), w.size(-1)).to(w.dtype)
    c = w.clamp(0, 1)
    c = torch.where(c.sum(-1, keepdim=True) == 0, argmax, c)
    return c / c.sum(-1, keepdim=True)


def _ops_part(weights: Sequence[torch.Tensor]) -> int:
    """How many of the mixing weights are op weights (the rest: PC-DARTS edge weights)."""
    return 2 if len(weights) == 4 else len(weights)


def random_perturbation(weights: Sequence[torch.Tensor], epsilon: float,
                        generator: torch.Generator | None = None) -> tuple[Weights, Weights]:
    """SDARTS-RS: (perturbed weights, the deltas before renormalisation); each delta is
    uniform in [-eps, eps]."""
    k = _ops_part(weights)
    deltas = tuple(_uniform(w, epsilon, generator) for w in weights[:k])
    perturbed = tuple(simplex_clip(w.detach() + d) for w, d in zip(weights[:k], deltas, strict=True))
    return perturbed + tuple(w.detach() for w in weights[k:]), deltas


def _uniform(w: torch.Tensor, epsilon: float, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(w.shape, generator=generator, device=w.device if generator is None
                   else generator.device, dtype=w.dtype).to(w.device)
    return (2 * u - 1) * epsilon


def adversarial_perturbation(loss_of: Callable[[Weights], torch.Tensor],
                             weights: Sequence[torch.Tensor], epsilon: float,
                             steps: int = PGD_STEPS, random_start: bool = True,
                             generator: torch.Generator | None = None) -> tuple[Weights, Weights]:
    """SDARTS-ADV: L-inf PGD on the op weights maximising `loss_of(weights)` (the training
    loss), within eps of `weights`; step 2 eps / steps on the gradient's sign, each iterate
    renormalised (`simplex_clip`). Returns (the attack, the last step's deltas before its
    renormalisation, each within eps), or (`weights`, zeros) where the attack did not raise
    the loss."""
    k = _ops_part(weights)
    saved = tuple(w.detach() for w in weights)
    rest = saved[k:]
    with torch.no_grad():
        before = loss_of(saved)
    deltas = tuple(torch.zeros_like(a) for a in saved[:k])
    if random_start:
        deltas = tuple(_uniform(a, epsilon, generator) for a in saved[:k])
    current = tuple(simplex_clip(a + d) for a, d in zip(saved[:k], deltas, strict=True))
    step = 2 * epsilon / steps
    for _ in range(steps):
        leaves = tuple(w.clone().requires_grad_() for w in current)
        grads = torch.autograd.grad(loss_of(leaves + rest), leaves)
        deltas = tuple((w.detach() + step * g.sign() - a).clamp(-epsilon, epsilon)
                       for w, g, a in zip(leaves, grads, saved[:k], strict=True))
        current = tuple(simplex_clip(a + d) for a, d in zip(saved[:k], deltas, strict=True))
    with torch.no_grad():
        after = loss_of(current + rest)
    # SDARTS restores A if the attack lowered the loss: a select, not a host-side branch.
    keep = after >= before
    attack = tuple(torch.where(keep, w, a) for w, a in zip(current, saved[:k], strict=True))
    return attack + rest, tuple(torch.where(keep, d, torch.zeros_like(d)) for d in deltas)
