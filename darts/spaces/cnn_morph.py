"""Network morphisms of the plain CNN: edits of a trained network that keep its function.

A child made by an edit starts from its parent's trained weights and computes what the parent
computed, so a short training continues from the parent's accuracy instead of from chance
(Chen, Goodfellow & Shlens, *Net2Net*, ICLR 2016; Wei et al., *Network Morphism*, ICML
2016; Elsken, Metzen & Hutter, *NASH*, 2018). Every edit stays in the space (darts.spaces.cnn):

- `deeper@i`: a new layer after layer i: a 3x3 convolution initialised to the identity (the
  centre tap 1 on its own channel), width = layer i's, no pooling, no shortcut. Its BatchNorm
  is set to pass through (Net2DeeperNet, NASH): gamma = sqrt(var + eps), beta = mean, and the
  running statistics mean and var, where mean and var are the per-channel batch statistics
  of the layer's input on a calibration batch (without one: mean 0, var 1 - eps). Layer i's
  output is a ReLU's (and pooled): non-negative, so the new ReLU passes it unchanged.
- `wider@i`: layer i's width to the next of the space's widths (Net2WiderNet): each new
  channel replicates an existing one drawn at random (its convolution filter, shortcut
  filter, BatchNorm parameters and statistics), and the next layer's convolution and
  shortcut (or the classifier) divide each replicated channel's incoming weights by its
  number of copies.
- `kernel@i`: layer i's kernel to the next size (3 -> 5 -> 7): the filter zero-padded by one
  on each side, the padding grown by one.
- `skip@i`: layer i gains the residual shortcut (a 1x1 convolution added before the ReLU),
  initialised to zero.

Which modes keep the function: `wider`, `kernel` and `skip` keep it exactly in training and
in eval mode, for any input (a replicated channel has the same batch statistics as its
source). `deeper` keeps it exactly in eval mode for any input, and in training mode on its
calibration batch: a BatchNorm in training mode normalises by each batch's own statistics,
which no fixed gamma and beta undo for every batch.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from darts.errors import UserError
from darts.spaces.cnn import KERNELS, MAX_DEPTH, WIDTHS, CNNArch, CNNLayer, CNNNetwork, Layer

KINDS = ("deeper", "wider", "kernel", "skip")


@dataclass(frozen=True)
class Edit:
    """One morphism: its kind and the layer (0-based) it edits (`deeper`: inserts after)."""

    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Edit:
        kind, _, layer = text.partition("@")
        if kind not in KINDS or not layer.isdigit():
            raise UserError(f"morphism {text!r}: must read KIND@LAYER, KIND one of "
                            f"{', '.join(KINDS)}")
        return cls(kind, int(layer))


def edits(arch: CNNArch) -> list[Edit]:
    """Every edit that applies to `arch` and stays in the space."""
    out = []
    for i, layer in enumerate(arch.layers):
        if arch.depth < MAX_DEPTH:
            out.append(Edit("deeper", i))
        if layer.width < WIDTHS[-1]:
            out.append(Edit("wider", i))
        if layer.kernel < KERNELS[-1]:
            out.append(Edit("kernel", i))
        if not layer.res:
            out.append(Edit("skip", i))
    return out


def random_edit(arch: CNNArch, rng: random.Random) -> Edit | None:
    """An edit drawn uniformly among the kinds that apply, then among their layers (None when
    none applies: the largest network)."""
    options = edits(arch)
    if not options:
        return None
    kind = rng.choice(sorted({e.kind for e in options}, key=KINDS.index))
    return rng.choice([e for e in options if e.kind == kind])


def edit_arch(arch: CNNArch, edit: Edit) -> CNNArch:
    """The spec after `edit`."""
    layers = list(arch.layers)
    if not 0 <= edit.layer < len(layers) or edit not in edits(arch):
        raise ValueError(f"{edit} does not apply to {arch}")
    layer = layers[edit.layer]
    if edit.kind == "deeper":
        layers.insert(edit.layer + 1, Layer(3, layer.width))
    elif edit.kind == "wider":
        layers[edit.layer] = replace(layer, width=WIDTHS[WIDTHS.index(layer.width) + 1])
    elif edit.kind == "kernel":
        layers[edit.layer] = replace(layer, kernel=KERNELS[KERNELS.index(layer.kernel) + 1])
    else:
        layers[edit.layer] = replace(layer, res=True)
    return CNNArch(tuple(layers))


@torch.no_grad()
def morph(net: CNNNetwork, edit: Edit, generator: torch.Generator | None = None,
          calibration: torch.Tensor | None = None) -> CNNNetwork:
    """A new network of `edit_arch(net.arch, edit)` computing what `net` computes (see the
    module docstring); `net` is left as it was. `generator` draws Net2WiderNet's replicated
    channels; `calibration` (a batch of network inputs) sets a deeper layer's BatchNorm."""
    arch = edit_arch(net.arch, edit)
    first = net.features[0].conv
    child = CNNNetwork(arch, num_classes=net.classifier.out_features,
                       in_channels=first.in_channels).to(first.weight.device, first.weight.dtype)
    old, new, i = list(net.features), list(child.features), edit.layer
    sources = old[:i + 1] + [None] + old[i + 1:] if edit.kind == "deeper" else list(old)
    edited = {"wider": (i, i + 1), "kernel": (i,), "skip": (i,)}.get(edit.kind, ())
    for k, (target, source) in enumerate(zip(new, sources, strict=True)):
        if source is not None and k not in edited:
            target.load_state_dict(source.state_dict())
    if not (edit.kind == "wider" and i + 1 == len(new)):
        child.classifier.load_state_dict(net.classifier.state_dict())
    if edit.kind == "deeper":
        _identity_layer(new[i + 1], _layer_input(net, i + 1, calibration))
    elif edit.kind == "wider":
        last = i + 1 == len(new)
        _widen(new[i], old[i], child.classifier if last else new[i + 1],
               net.classifier if last else old[i + 1], generator)
    elif edit.kind == "kernel":
        new[i].bn.load_state_dict(old[i].bn.state_dict())
        if old[i].shortcut is not None:
            new[i].shortcut.load_state_dict(old[i].shortcut.state_dict())
        new[i].conv.weight.zero_()
        new[i].conv.weight[:, :, 1:-1, 1:-1] = old[i].conv.weight
    else:
        new[i].load_state_dict(old[i].state_dict(), strict=False)
        new[i].shortcut.weight.zero_()
    child.train(net.training)
    return child


def _layer_input(net: CNNNetwork, position: int, x: torch.Tensor | None) -> torch.Tensor | None:
    """The input of the layer at `position` on batch `x`, the parent in training mode (its
    BatchNorms normalising by the batch, their running statistics untouched)."""
    if x is None:
        return None
    scratch = copy.deepcopy(net).train()
    for layer in list(scratch.features)[:position]:
        x = layer(x)
    return x


def _identity_layer(layer: CNNLayer, h: torch.Tensor | None) -> None:
    conv, bn = layer.conv, layer.bn
    conv.weight.zero_()
    centre = conv.kernel_size[0] // 2
    for c in range(conv.out_channels):
        conv.weight[c, c, centre, centre] = 1.0
    if h is None:
        mean = torch.zeros_like(bn.running_mean)
        var = torch.full_like(bn.running_var, 1.0 - bn.eps)
    else:
        mean = h.mean(dim=(0, 2, 3))
        var = h.var(dim=(0, 2, 3), unbiased=False)
    bn.weight.copy_(torch.sqrt(var + bn.eps))
    bn.bias.copy_(mean)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)


def _widen(layer: CNNLayer, source: CNNLayer, consumer: nn.Module, old_consumer: nn.Module,
           generator: torch.Generator | None) -> None:
    """Net2WiderNet: `layer` and `consumer` (the next layer, or the classifier) take
    `source`'s and `old_consumer`'s weights, widened."""
    old, new = source.conv.out_channels, layer.conv.out_channels
    extra = torch.randint(0, old, (new - old,), generator=generator)
    mapping = torch.cat([torch.arange(old), extra])
    counts = torch.bincount(mapping, minlength=old).to(layer.conv.weight.dtype)
    layer.conv.weight.copy_(source.conv.weight[mapping])
    if layer.shortcut is not None:
        layer.shortcut.weight.copy_(source.shortcut.weight[mapping])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(layer.bn, name).copy_(getattr(source.bn, name)[mapping])
    layer.bn.num_batches_tracked.copy_(source.bn.num_batches_tracked)
    divided = counts[mapping]
    if isinstance(consumer, nn.Linear):
        consumer.weight.copy_(old_consumer.weight[:, mapping] / divided)
        consumer.bias.copy_(old_consumer.bias)
        return
    consumer.bn.load_state_dict(old_consumer.bn.state_dict())
    consumer.conv.weight.copy_(old_consumer.conv.weight[:, mapping] / divided.view(1, -1, 1, 1))
    if consumer.shortcut is not None:
        consumer.shortcut.weight.copy_(
            old_consumer.shortcut.weight[:, mapping] / divided.view(1, -1, 1, 1))
