"""The zero-cost proxies: a score of an untrained network from one minibatch, each written from
its paper's definition (docs/proxies.md has each formula, source and cost).

Every proxy is `proxy(net, x, y, loss_fn) -> float`: `net` an untrained network in training
mode (as the papers score it: BatchNorm on the batch's statistics), `x` an image batch, `y` its
labels, `loss_fn` the classification loss (cross-entropy). A proxy may change `net` (weights,
modules, gradients): the scorer builds a fresh network for each (darts.proxies.score). The
"prunable" layers of the gradient-based proxies are every `nn.Conv2d` and `nn.Linear`, as in
Abdelfattah et al.'s code: a score summed over layers is summed over their weights.

    synflow    Tanaka et al., NeurIPS 2020 (SynFlow); Abdelfattah et al., ICLR 2021 as a proxy
    snip       Lee et al., ICLR 2019 (SNIP)
    grasp      Wang et al., ICLR 2020 (GraSP)
    grad_norm  Abdelfattah et al., ICLR 2021
    fisher     Theis et al. 2018; Turner et al., ICLR 2020 (BlockSwap)
    plain      Abdelfattah et al., ICLR 2021 (Mozer & Smolensky's saliency without the |.|)
    l2_norm    Abdelfattah et al., ICLR 2021
    jacov      Mellor et al., arXiv 2006.04647v1 (NAS without training, its first score)
    nwot       Mellor et al., ICML 2021 (NASWOT)
    epe_nas    Lopes et al., ICANN 2021 (EPE-NAS)
    zen        Lin et al., ICCV 2021 (Zen-NAS)
    params     the trainable parameters
    flops      multiply-adds of one image (torch's FLOP counter / 2, as the papers' tables)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PRUNABLE = (nn.Conv2d, nn.Linear)


def logits(out) -> torch.Tensor:
    """A network's logits (a network with an auxiliary head returns a pair in training)."""
    return out[0] if isinstance(out, tuple) else out


def prunable(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, PRUNABLE)]


def _loss_backward(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss) -> None:
    net.zero_grad(set_to_none=True)
    loss_fn(logits(net(x)), y).backward()


def _weight_sum(net: nn.Module, per_layer: Callable[[nn.Module], torch.Tensor]) -> float:
    """The sum over prunable layers (those the backward reached) of `per_layer`."""
    return sum(float(per_layer(m)) for m in prunable(net) if m.weight.grad is not None)


# -- saliencies of the weights: sum over prunable weights of a function of theta and dL/dtheta --
def snip(net, x, y, loss_fn) -> float:
    """SNIP's connection sensitivity: sum |theta * dL/dtheta|."""
    _loss_backward(net, x, y, loss_fn)
    return _weight_sum(net, lambda m: (m.weight.detach() * m.weight.grad).abs().sum())


def plain(net, x, y, loss_fn) -> float:
    """sum theta * dL/dtheta (first-order Taylor change of the loss when removing each weight)."""
    _loss_backward(net, x, y, loss_fn)
    return _weight_sum(net, lambda m: (m.weight.detach() * m.weight.grad).sum())


def grad_norm(net, x, y, loss_fn) -> float:
    """The sum over prunable layers of ||dL/dW||_2."""
    _loss_backward(net, x, y, loss_fn)
    return _weight_sum(net, lambda m: m.weight.grad.norm())


def l2_norm(net, x, y, loss_fn) -> float:
    """The sum over prunable layers of ||W||_2 (no data)."""
    return sum(float(m.weight.detach().norm()) for m in prunable(net))


def grasp(net, x, y, loss_fn) -> float:
    """GraSP: -sum theta * (H g), g = dL/dtheta over the prunable weights, H the Hessian of the
    loss (one Hessian-gradient product by double backpropagation)."""
    weights = [m.weight for m in prunable(net)]
    net.zero_grad(set_to_none=True)
    g = torch.autograd.grad(loss_fn(logits(net(x)), y), weights)
    g = [t.detach() for t in g]
    grads = torch.autograd.grad(loss_fn(logits(net(x)), y), weights, create_graph=True)
    z = sum((a * b).sum() for a, b in zip(grads, g, strict=True))
    hg = torch.autograd.grad(z, weights)
    return float(-sum((w.detach() * h).sum() for w, h in zip(weights, hg, strict=True)))


def fisher(net, x, y, loss_fn) -> float:
    """Fisher information of the activations of every prunable layer's output channels:
    per channel 0.5 * mean over the batch of (sum over positions of a * dL/da)^2, summed."""
    acts: list[torch.Tensor] = []

    def keep(module, inputs, out):
        out.retain_grad()
        acts.append(out)

    handles = [m.register_forward_hook(keep) for m in prunable(net)]
    try:
        _loss_backward(net, x, y, loss_fn)
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for a in acts:
        if a.grad is None:
            continue
        g = a.detach() * a.grad
        g = g.sum(dim=(2, 3)) if g.dim() == 4 else g
        total += float(0.5 * g.pow(2).mean(0).sum())
    return total


# -- SynFlow ----------------------------------------------------------------------------------
def _without_batch_norm(net: nn.Module) -> None:
    """Every BatchNorm replaced by the identity (SynFlow scores the network without it, as
    Abdelfattah et al.'s `bn=False` copy)."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        else:
            _without_batch_norm(child)


def synflow(net, x, y, loss_fn) -> float:
    """SynFlow: with every parameter replaced by its absolute value, BatchNorm removed and an
    all-ones input, R = sum of the output; the score is sum theta * dR/dtheta over the
    prunable weights. In float64: the product of many layers' weights overflows float32."""
    net = copy.deepcopy(net).double()
    _without_batch_norm(net)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    logits(net(ones)).sum().backward()
    return _weight_sum(net, lambda m: (m.weight.detach() * m.weight.grad).sum())


# -- Jacobian and activation-pattern scores -----------------------------------------------------
def input_jacobians(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d(sum of each image's logits)/d(image), one flattened row per image."""
    x = x.detach().clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    logits(net(x)).sum().backward()
    return x.grad.detach().reshape(len(x), -1)


def jacov(net, x, y, loss_fn) -> float:
    """The first NAS-without-training score: with C the correlation matrix of the images'
    input Jacobians and v its eigenvalues, -sum(log(v + k) + 1 / (v + k)), k = 1e-5."""
    corr = torch.corrcoef(input_jacobians(net, x).double())
    corr = torch.nan_to_num(corr, nan=0.0)  # a constant Jacobian row has no correlation
    v = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(v + k) + 1.0 / (v + k)).sum())


def epe_nas(net, x, y, loss_fn) -> float:
    """EPE-NAS: per class c, the correlation matrix of its images' input Jacobians and
    s_c = sum log(|corr| + k), k = 1e-5; the score is sum |s_c| (up to 100 classes; beyond,
    the sum of |s_c - s_d| over class pairs, normalised by each class's size)."""
    jac = input_jacobians(net, x).double()
    k = 1e-5
    classes = sorted(set(y.tolist()))
    per_class = {}
    for c in classes:
        rows = jac[y == c]
        corr = torch.corrcoef(rows) if len(rows) > 1 else torch.ones(1, 1, dtype=jac.dtype)
        corr = torch.nan_to_num(torch.atleast_2d(corr), nan=0.0)
        s = float(torch.log(corr.abs() + k).sum())
        per_class[c] = s / len(corr) if len(classes) > 100 else s
    if len(classes) <= 100:
        return sum(abs(s) for s in per_class.values())
    return sum(abs(per_class[c] - per_class[d]) for c in classes for d in classes)


def relu_codes(net: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each ReLU's binary activation code of every image (input > 0), flattened per image."""
    codes: list[torch.Tensor] = []

    def keep(module, inputs, out):
        codes.append((inputs[0].detach() > 0).reshape(len(x), -1).double())

    handles = [m.register_forward_hook(keep) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return iter(codes)


def nwot_kernel(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """NASWOT's kernel: K[i, j] = the number of ReLU units on which images i and j have the
    same code (N_A minus their Hamming distance), over every ReLU."""
    k = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)
    for c in relu_codes(net, x):
        k += c @ c.T + (1 - c) @ (1 - c).T
    return k


def nwot(net, x, y, loss_fn) -> float:
    """NASWOT: log |K| (the log-determinant of `nwot_kernel`)."""
    sign, logdet = torch.linalg.slogdet(nwot_kernel(net, x))
    return float(logdet) if sign > 0 else -math.inf


# -- Zen-NAS -----------------------------------------------------------------------------------
def _pre_pooling(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature map before the last global pooling (the classifier's input where a
    network has no `AdaptiveAvgPool2d`)."""
    pools = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    seen: list[torch.Tensor] = []
    module = pools[-1] if pools else heads[-1]
    handle = module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    try:
        net(x)
    finally:
        handle.remove()
    return seen[-1]


def zen(net, x, y, loss_fn, mixup_gamma: float = 1e-2) -> float:
    """Zen-score: with every conv/linear weight drawn from N(0, 1) and Gaussian inputs x, e,
    log E_x ||f(x) - f(x + gamma e)||_1 + sum over BatchNorms of log sqrt(mean running var),
    f the feature map before global pooling, gamma 0.01 (their code, one repeat)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, PRUNABLE):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        a = torch.randn_like(x)
        b = torch.randn_like(x)
        f1 = _pre_pooling(net, a)
        f2 = _pre_pooling(net, a + mixup_gamma * b)
        dims = tuple(range(1, f1.dim()))
        score = torch.log((f1 - f2).abs().sum(dim=dims).mean())
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                score = score + torch.log(torch.sqrt(m.running_var.mean()))
    return float(score)


# -- sizes -----------------------------------------------------------------------------------
def params(net, x, y, loss_fn) -> float:
    return float(sum(p.numel() for p in net.parameters() if p.requires_grad))


def flops(net, x, y, loss_fn) -> float:
    from darts.network import count_multiply_adds

    return float(count_multiply_adds(net, x.shape[-1], in_channels=x.shape[1]))
