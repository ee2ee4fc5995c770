"""The architecture step of the DARTS bilevel optimisation (Liu et al. 2019, Section 2.3).

    min_alpha L_val(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)   (eq. 3-4)

Algorithm 1 alternates an alpha step on a validation batch (this module) with a weight step
on a training batch (the engine's training loop). The alpha gradient is

- first order (`order=1`, xi = 0):  grad_alpha L_val(w, alpha);
- second order (`order=2`, eq. 6-7): with the virtual step w' = w - xi * grad_w L_train(w, alpha),
      grad_alpha L_val(w', alpha) - xi * hess_{alpha,w} L_train(w, alpha) . grad_w' L_val(w', alpha)
  where the Hessian-vector product is the central difference of eq. 8 (`hessian="fd"`) or
  exact, by double backpropagation (`hessian="exact"`).

As in the reference code (quark0/darts, architect.py), the virtual step is the step the
weight optimizer would take: SGD with its momentum buffer and weight decay, xi its current
learning rate. The architect never mutates the network weights: the virtual weights are
substituted with `torch.func.functional_call`. Alphas are updated with Adam (lr 3e-4,
betas (0.5, 0.999), weight decay 1e-3; Section A.1.1).

Passes per search step, counted in tests/test_architect.py (F = forward, B = backward,
the weight step included): first order 2F + 2B; second order with finite differences
5F + 5B; second order exact 3F + 3B, one of the backward passes building a graph that a
fourth (double) backward differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from darts.methods.mixing import one_sample
from darts.train.distributed import Dist, average_
from darts.train.engine import FLOAT32, Precision, split_output

Batch = tuple[torch.Tensor, torch.Tensor]
Tensors = list[torch.Tensor]

ARCH_BETAS = (0.5, 0.999)

# A term added to what the alphas minimise: a function of the supernet (its alphas, through
# `arch_parameters()` or `mixing_weights()`) returning a scalar.
ArchLoss = Callable[[nn.Module], torch.Tensor]

class Architect:
    """Owns the alpha optimizer and computes the alpha gradient of one search step.

    `model` exposes `named_network_parameters()` and `arch_parameters()` (a SearchNetwork);
    `weight_optimizer` is the SGD optimizer of the network weights, read for the virtual
    step's learning rate, momentum buffers and weight decay. `arch_loss(model)`, if given, is
    added to what the alphas minimise (darts.methods.regularizers).
    """

    def __init__(self, model: nn.Module, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weight_optimizer: torch.optim.Optimizer, *, order: int = 2, hessian: str = "fd",
                 lr: float = 3e-4, weight_decay: float = 1e-3,
                 betas: tuple[float, float] = ARCH_BETAS, fd_epsilon: float = 0.01,
                 precision: Precision = FLOAT32, dist: Dist | None = None,
                 capturable: bool = False, arch_loss: ArchLoss | None = None):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        if hessian not in ("fd", "exact"):
            raise ValueError(f"hessian must be 'fd' or 'exact', got {hessian!r}")
        self.model = model
        self.criterion = criterion
        self.arch_loss = arch_loss
        self.weight_optimizer = weight_optimizer
        self.order = order
        self.hessian = hessian
        self.fd_epsilon = fd_epsilon
        self.precision = precision
        self.dist = dist or Dist()
        named = list(model.named_network_parameters())
        self.names = [n for n, _ in named]
        self.weights = [p for _, p in named]
        self.alphas = list(model.arch_parameters())
        # capturable: Adam's step counts live on the device, so a CUDA graph can hold the step.
        self.capturable = capturable
        self.optimizer = torch.optim.Adam(self.alphas, lr=lr, betas=betas,
                                          weight_decay=weight_decay, capturable=capturable)
        # The weight optimizer's group of each weight: its momentum and weight decay.
        group_of = {id(p): g for g in weight_optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in named if id(p) not in group_of]
        if missing:
            raise ValueError(f"the weight optimizer does not hold {missing[:3]}...")
        self._groups = [group_of[id(p)] for p in self.weights]

    # -- losses ------------------------------------------------------------------------------
    def loss(self, batch: Batch, weights: Sequence[torch.Tensor] | None = None, *,
             alphas: bool = True, float32: bool = False) -> torch.Tensor:
        """L(w, alpha) on `batch`, at the model's own weights or at `weights` (aligned with
        `self.weights`), always at the model's current alphas.

        `alphas=False` detaches the alphas (no alpha gradient wanted: nothing is stored for
        one). The forward runs under the run's autocast unless `float32`.
        """
        x, y = batch
        mixing = self.model.mixing_weights(detach=not alphas)
        precision = FLOAT32 if float32 else self.precision
        with precision.autocast():
            if weights is None:
                out = self.model(x, mixing)
            else:
                params = dict(zip(self.names, weights, strict=True))
                # No parameter of the supernet is tied to another: skipping functional_call's
                # search for tied ones saves two thirds of its cost (a walk over all modules).
                out = functional_call(self.model, params, (x, mixing), tie_weights=False)
            return self.criterion(split_output(out)[0], y)

    def _grad(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor], **kw) -> Tensors:
        """d loss / d inputs (zeros where unused), with fp16 loss scaling: the loss is scaled by
        the weight step's GradScaler scale and the gradients unscaled in float32."""
        scaler = self.precision.scaler
        scale = scaler.get_scale() if scaler is not None else 1.0
        grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, inputs,
                                    allow_unused=True, **kw)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
        if scale != 1.0:
            grads = [g.float() / scale if g.dtype != torch.float64 else g / scale for g in grads]
        return grads

    # -- Algorithm 1, step 1 -----------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch, xi: float) -> torch.Tensor:
        """One Adam step on the alphas; returns the validation loss (at w' for second order).

        On many ranks the alpha gradient is averaged over them before the step, so every
        rank takes the same step. A step whose gradient is not finite (an fp16 overflow) is
        skipped, as the GradScaler skips such weight steps.
        """
        grads, val_loss = self.gradient(train_batch, val_batch, xi)
        average_(grads, self.dist)
        if self.precision.scaler is not None and not all(torch.isfinite(g).all() for g in grads):
            return val_loss
        for alpha, g in zip(self.alphas, grads, strict=True):
            alpha.grad = g.to(alpha.dtype)
        self.optimizer.step()
        for alpha in self.alphas:
            alpha.grad = None
        return val_loss

    def gradient(self, train_batch: Batch, val_batch: Batch, xi: float) -> tuple[Tensors, torch.Tensor]:
        """This rank's alpha gradient of the step (first or second order, plus the gradient of
        the architecture loss where there is one) and the validation loss. With a stochastic
        sampler (darts.methods.mixing) all forward passes of the step see one sample."""
        with one_sample(self.model):
            if self.order == 1:
                grads, val_loss = self.first_order_gradient(val_batch)
            else:
                grads, val_loss = self.unrolled_gradient(train_batch, val_batch, xi)
        if self.arch_loss is not None:
            extra = torch.autograd.grad(self.arch_loss(self.model), self.alphas,
                                        allow_unused=True)
            grads = [g if e is None else g + e.to(g.dtype)
                     for g, e in zip(grads, extra, strict=True)]
        return grads, val_loss

    def first_order_gradient(self, val_batch: Batch) -> tuple[Tensors, torch.Tensor]:
        """grad_alpha L_val(w, alpha): eq. 6 with xi = 0. Only alpha gradients are computed:
        autograd runs only the paths to the alphas, so no weight gradient is formed (and the
        model's own weights are used directly, without functional_call's per-call cost)."""
        val_loss = self.loss(val_batch)
        return self._grad(val_loss, self.alphas), val_loss.detach()

    def virtual_step(self, train_batch: Batch, xi: float,
                     create_graph: bool = False) -> tuple[Tensors, Tensors]:
        """w' = w - xi * (momentum * buffer + grad_w L_train(w, alpha) + weight_decay * w).

        The momentum and weight-decay terms do not depend on alpha, so eq. 7's derivative is
        unchanged by them. Returns (w' as fresh leaves, grad_w L_train); with `create_graph`
        the gradient keeps its graph for the exact Hessian-vector product.
        """
        # The fd product needs no alpha gradient here; the exact one differentiates it later,
        # and so builds it in float32 (the Hessian-vector product stays float32 under AMP).
        loss = self.loss(train_batch, alphas=create_graph, float32=create_graph)
        grads = self._grad(loss, self.weights, create_graph=create_graph)
        if self.dist.enabled:  # the virtual step of the global batch (a no-op on one rank)
            if create_graph:
                raise ValueError("the exact Hessian-vector product runs on one process; "
                                 "use --hessian fd with torchrun")
            average_(grads, self.dist)
        unrolled = []
        with torch.no_grad():
            for w, g, group in zip(self.weights, grads, self._groups, strict=True):
                direction = g + group["weight_decay"] * w
                buf = self.weight_optimizer.state.get(w, {}).get("momentum_buffer")
                if group["momentum"] and buf is not None:
                    direction = direction + group["momentum"] * buf
                unrolled.append((w - xi * direction).requires_grad_())
        return unrolled, grads

    def unrolled_gradient(self, train_batch: Batch, val_batch: Batch,
                          xi: float) -> tuple[Tensors, torch.Tensor]:
        """Eq. 7: the alpha gradient of L_val(w', alpha) through the virtual step."""
        exact = self.hessian == "exact"
        unrolled, train_grads = self.virtual_step(train_batch, xi, create_graph=exact)
        val_loss = self.loss(val_batch, unrolled)
        grads = self._grad(val_loss, self.alphas + unrolled)
        average_(grads[len(self.alphas):], self.dist)  # v: the global batch's grad_w' L_val
        d_alpha, vector = grads[:len(self.alphas)], grads[len(self.alphas):]
        if exact:
            hvp = self.exact_hessian_vector_product(vector, train_grads)
        else:
            hvp = self.hessian_vector_product(vector, train_batch)
        return [da - xi * h for da, h in zip(d_alpha, hvp, strict=True)], val_loss.detach()

    def hessian_vector_product(self, vector: Sequence[torch.Tensor], train_batch: Batch) -> Tensors:
        """Eq. 8: hess_{alpha,w} L_train(w, alpha) . v by a central difference,

            (grad_alpha L_train(w + eps v, alpha) - grad_alpha L_train(w - eps v, alpha)) / (2 eps)

        with eps = 0.01 / ||v||, the whole perturbation having norm 0.01.
        """
        norm = torch.cat([v.reshape(-1) for v in vector]).norm()
        # A zero v gives w+ = w- and a zero product; the clamp only avoids 0/0.
        eps = self.fd_epsilon / norm.clamp_min(1e-12)
        with torch.no_grad():
            plus = [w + eps * v for w, v in zip(self.weights, vector, strict=True)]
            minus = [w - eps * v for w, v in zip(self.weights, vector, strict=True)]
        # In float32 even under autocast: a difference of two nearby gradients divided by
        # 2 eps would be dominated by bf16/fp16 rounding.
        g_plus = self._grad(self.loss(train_batch, plus, float32=True), self.alphas)
        g_minus = self._grad(self.loss(train_batch, minus, float32=True), self.alphas)
        return [(p - m) / (2 * eps) for p, m in zip(g_plus, g_minus, strict=True)]

    def exact_hessian_vector_product(self, vector: Sequence[torch.Tensor],
                                     train_grads: Sequence[torch.Tensor]) -> Tensors:
        """hess_{alpha,w} L_train . v = grad_alpha (grad_w L_train . v), by double backprop."""
        pairs = [(g, v) for g, v in zip(train_grads, vector, strict=True) if g.requires_grad]
        hvp = torch.autograd.grad([g for g, _ in pairs], self.alphas,
                                  grad_outputs=[v for _, v in pairs], allow_unused=True)
        return [torch.zeros_like(a) if h is None else h for a, h in zip(self.alphas, hvp, strict=True)]

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Loads an Adam state, whether it was saved with CUDA graphs or without: the step
        counts go where this run's Adam keeps them (the device if capturable, else the CPU)."""
        self.optimizer.load_state_dict(state)
        for group in self.optimizer.param_groups:
            group["capturable"] = self.capturable
        for p, s in self.optimizer.state.items():
            if "step" in s:
                where = p.device if self.capturable else torch.device("cpu")
                s["step"] = s["step"].to(where, torch.float32)
