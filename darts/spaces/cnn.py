"""A plain CNN space: a chain of conv layers, each with its kernel, width and pooling searched.

The classic example of NAS lecture notes (e.g. the chain-structured space of Elsken, Metzen &
Hutter 2019, "Neural Architecture Search: A Survey", Section 2): a network is 2 to 6 layers,
and each layer is

    conv kxk (k in 3, 5, 7), w output channels (w in 16, 32, 64, 128), BatchNorm,
    optionally plus a residual shortcut from the layer's input (a 1x1 convolution, no bias,
    added before the ReLU: ResNet's projection shortcut), ReLU,
    then no pooling, a 2x2 max pooling or a 2x2 average pooling (stride 2)

followed by global average pooling and a linear classifier. A candidate's text lists its
layers from the input on, `|`-separated, `-res` where the layer has the shortcut, the
pooling only where there is one:

    conv3x3-32-max|conv5x5-64-res|conv7x7-128-avg

5 depths x (3 x 4 x 3 x 2 = 72 choices per layer) give 72^2 + ... + 72^6, about 1.4e11
networks. The shortcut is what network morphism's skip-connection edit adds (`morph`,
below). The pooling rounds up (`ceil_mode`): a map of odd side n becomes (n + 1) / 2, and a
1x1 map stays 1x1, so every candidate runs on any input size. On 32x32 images the maps halve
exactly down to 1x1 after five poolings; a sixth leaves 1x1 as it is. No spec is refused for
pooling too often.

There is no paper recipe for this space: `train_final.py --space cnn` trains with the
NATS-Bench size space's 90-epoch schedule (this project's choice; see darts.final).
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.errors import UserError

NAME = "cnn"
DEPTHS: tuple[int, ...] = (2, 3, 4, 5, 6)
KERNELS: tuple[int, ...] = (3, 5, 7)
WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
POOLS: tuple[str, ...] = ("none", "max", "avg")
MAX_DEPTH = DEPTHS[-1]
# What an unused layer slot holds in the decision list (from_decisions ignores it).
DEFAULT_CHOICE = 0
EXAMPLE = "conv3x3-32-max|conv5x5-64|conv7x7-128-avg"
SHORTCUTS: tuple[str, ...] = ("plain", "res")  # a layer without / with the residual shortcut

# Numbers without leading zeros, at most 4 digits: the text of a layer is canonical.
_LAYER = re.compile(r"conv([1-9]\d{0,3})x([1-9]\d{0,3})-([1-9]\d{0,3})(-res)?(?:-([a-z]+))?")


class CNNSpecError(UserError):
    """A plain CNN's text that cannot be read, or a layer outside the space."""


@dataclass(frozen=True)
class Layer:
    """One conv-BN(-shortcut)-ReLU layer and the pooling after it."""

    kernel: int
    width: int
    pool: str = "none"
    res: bool = False

    def __post_init__(self) -> None:
        if type(self.kernel) is not int or self.kernel not in KERNELS:
            raise CNNSpecError(f"kernel {self.kernel!r} is not in the space; the kernels are "
                               f"{', '.join(map(str, KERNELS))}")
        if type(self.width) is not int or self.width not in WIDTHS:
            raise CNNSpecError(f"width {self.width!r} is not in the space; the widths are "
                               f"{', '.join(map(str, WIDTHS))}")
        if type(self.res) is not bool:
            raise CNNSpecError(f"a layer's shortcut is True or False, got {self.res!r}")
        if self.pool not in POOLS:
            raise CNNSpecError(f"pooling {self.pool!r} is not in the space; the poolings are "
                               f"{', '.join(POOLS)}")

    def __str__(self) -> str:
        pool = "" if self.pool == "none" else f"-{self.pool}"
        return f"conv{self.kernel}x{self.kernel}-{self.width}{'-res' if self.res else ''}{pool}"


@dataclass(frozen=True)
class CNNArch:
    """A chain of 2 to 6 layers, from the input on."""

    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if len(self.layers) not in DEPTHS:
            raise CNNSpecError(f"a plain CNN has {DEPTHS[0]} to {MAX_DEPTH} layers, got "
                               f"{len(self.layers)}")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise CNNSpecError(f"a plain CNN's layers are Layer values, got "
                                   f"{type(layer).__name__}")

    @property
    def depth(self) -> int:
        return len(self.layers)

    @classmethod
    def from_string(cls, text: Any, where: str = "cnn spec") -> CNNArch:
        """Reads the text `str()` writes; one CNNSpecError naming what is wrong."""
        if not isinstance(text, str):
            raise CNNSpecError(f"{where}: expected a string like {EXAMPLE!r}, got "
                               f"{type(text).__name__}")
        shown = text if len(text) <= 120 else text[:117] + "..."
        if not text.strip():
            raise CNNSpecError(f"{where}: empty; a plain CNN reads like {EXAMPLE!r}")
        tokens = text.strip().split("|")
        if not DEPTHS[0] <= len(tokens) <= MAX_DEPTH:
            raise CNNSpecError(f"{where} {shown!r}: a plain CNN has {DEPTHS[0]} to {MAX_DEPTH} "
                               f"'|'-separated layers, got {len(tokens)}; e.g. {EXAMPLE!r}")
        layers = []
        for i, token in enumerate(tokens, start=1):
            if len(token) > 40:
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token[:37] + '...'!r} is too "
                                   f"long for 'conv<k>x<k>-<width>[-max|-avg]'")
            match = _LAYER.fullmatch(token)
            if match is None:
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token!r} must read "
                                   f"'conv<k>x<k>-<width>' with an optional '-res', then an "
                                   f"optional '-max' or '-avg', e.g. 'conv3x3-32-res-max'")
            k1, k2, width, res, pool = match.groups()
            if k1 != k2:
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token!r}: kernels are "
                                   f"square (conv{k1}x{k1})")
            if pool == "none":
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token!r}: write a layer "
                                   f"without pooling with no suffix ('conv{k1}x{k1}-{width}')")
            if pool is not None and pool not in POOLS:
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token!r}: pooling "
                                   f"{pool!r} is not 'max' or 'avg'")
            try:
                layers.append(Layer(int(k1), int(width), pool or "none", res is not None))
            except CNNSpecError as e:
                raise CNNSpecError(f"{where} {shown!r}: layer {i} {token!r}: {e}") from None
        return cls(tuple(layers))

    def to_string(self) -> str:
        return "|".join(str(layer) for layer in self.layers)

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict[str, str]:
        return {"arch": self.to_string()}


def load_arch(spec: Any, where: str) -> CNNArch:
    """A plain CNN: its text, {"arch": text}, or a JSON file holding that (what `save` writes)."""
    from darts.spaces.nb201 import read_arch_json  # the one arch-file reader

    if isinstance(spec, str) and spec.endswith(".json"):
        where, spec = f"{where} {Path(spec)}", read_arch_json(spec, where)
    if isinstance(spec, dict):
        spec = spec.get("arch")
    return CNNArch.from_string(spec, where=where)


# -- what multi-trial strategies need of the space (see darts.spaces) ---------------------------
def parse(text: str) -> CNNArch:
    return CNNArch.from_string(text)


def save(arch: CNNArch, path: str | Path) -> None:
    """The network as the JSON file `train_final.py --space cnn --arch` takes: {"arch": text}."""
    from darts.train.files import save_json
    save_json(arch.to_dict(), path)


def _random_layer(rng) -> Layer:
    return Layer(rng.choice(KERNELS), rng.choice(WIDTHS), rng.choice(POOLS),
                 rng.choice(SHORTCUTS) == "res")


def sample(rng) -> CNNArch:
    """A network drawn uniformly decision by decision: the depth uniform over 2..6, then each
    layer's kernel, width, pooling and shortcut uniform. Every depth is equally likely (so a
    given 2-layer network is 72^4 times likelier than a given 6-layer one); this is also what
    uniform choices of every entry of `decisions()` give."""
    return CNNArch(tuple(_random_layer(rng) for _ in range(rng.choice(DEPTHS))))


def _other(rng, choices: tuple, current: Any) -> Any:
    return rng.choice([c for c in choices if c != current])


def _with_depth(layers: list[Layer], depth: int, rng) -> list[Layer]:
    """The first `depth` layers, new ones drawn uniformly at the end where it is deeper."""
    return layers[:depth] + [_random_layer(rng) for _ in range(depth - len(layers))]


def mutate(arch: CNNArch, rng, rate: float | None = None) -> CNNArch:
    """One decision that matters changed to a different choice: one of the 1 + 4 x depth
    (the depth, and each layer's kernel, width, pooling and shortcut), uniformly. A new depth keeps the
    first layers and drops the last ones, or appends layers drawn uniformly. With `rate`, each
    of those decisions independently with that probability (the layers' first, then the
    depth)."""
    layers = list(arch.layers)
    count = 1 + 4 * len(layers)
    picks = ([rng.randrange(count)] if rate is None
             else [d for d in range(count) if rng.random() < rate])
    for d in sorted(picks, reverse=True):  # the depth (decision 0) last
        if d == 0:
            layers = _with_depth(layers, _other(rng, DEPTHS, len(layers)), rng)
            continue
        i, field = divmod(d - 1, 4)
        layer = layers[i]
        if field == 0:
            layers[i] = replace(layer, kernel=_other(rng, KERNELS, layer.kernel))
        elif field == 1:
            layers[i] = replace(layer, width=_other(rng, WIDTHS, layer.width))
        elif field == 2:
            layers[i] = replace(layer, pool=_other(rng, POOLS, layer.pool))
        else:
            layers[i] = replace(layer, res=not layer.res)
    return CNNArch(tuple(layers))


def crossover(a: CNNArch, b: CNNArch, rng) -> CNNArch:
    """Uniform crossover by layer position: the depth from either parent with probability
    1/2, then each position's layer (kernel, width, pooling and shortcut together) from either parent
    with probability 1/2, or from the one parent deep enough to have it."""
    depth = a.depth if rng.random() < 0.5 else b.depth
    layers = []
    for i in range(depth):
        options = [p.layers[i] for p in (a, b) if i < p.depth]
        layers.append(options[0] if len(options) == 1 or rng.random() < 0.5 else options[1])
    return CNNArch(tuple(layers))


def decisions() -> list[tuple[str, ...]]:
    """The depth, then the kernel, width, pooling and shortcut of each of the 6 layer slots
    (25 decisions); the slots past the depth are ignored."""
    per_slot = [tuple(f"{k}x{k}" for k in KERNELS), tuple(map(str, WIDTHS)), POOLS, SHORTCUTS]
    return [tuple(map(str, DEPTHS))] + per_slot * MAX_DEPTH


def to_decisions(arch: CNNArch) -> list[int]:
    """The index of each decision's choice; a slot past the depth holds DEFAULT_CHOICE (0)
    for all four, so the list of a network is unique (the inverse of from_decisions)."""
    choices = [DEPTHS.index(arch.depth)]
    for i in range(MAX_DEPTH):
        if i < arch.depth:
            layer = arch.layers[i]
            choices += [KERNELS.index(layer.kernel), WIDTHS.index(layer.width),
                        POOLS.index(layer.pool), int(layer.res)]
        else:
            choices += [DEFAULT_CHOICE] * 4
    return choices


def from_decisions(choices: list[int]) -> CNNArch:
    if len(choices) != 1 + 4 * MAX_DEPTH:
        raise ValueError(f"the cnn space has {1 + 4 * MAX_DEPTH} decisions, got {len(choices)}")
    depth = DEPTHS[choices[0]]
    return CNNArch(tuple(Layer(KERNELS[choices[1 + 4 * i]], WIDTHS[choices[2 + 4 * i]],
                               POOLS[choices[3 + 4 * i]], SHORTCUTS[choices[4 + 4 * i]] == "res")
                         for i in range(depth)))


def encode(arch: CNNArch) -> list[float]:
    """One-hots of the depth (5) and of each slot's kernel (3), width (4), pooling (3) and
    shortcut (2), zeros for a slot past the depth: 5 + 6 x 12 = 77 numbers, for surrogate
    models."""
    vector = [float(arch.depth == d) for d in DEPTHS]
    for i in range(MAX_DEPTH):
        layer = arch.layers[i] if i < arch.depth else None
        vector += [float(layer is not None and layer.kernel == k) for k in KERNELS]
        vector += [float(layer is not None and layer.width == w) for w in WIDTHS]
        vector += [float(layer is not None and layer.pool == p) for p in POOLS]
        vector += [float(layer is not None and layer.res == (r == "res")) for r in SHORTCUTS]
    return vector


# -- the network -------------------------------------------------------------------------------
def _pooling(pool: str) -> nn.Module | None:
    # ceil_mode: an odd side rounds up and a 1x1 map stays 1x1, so no input is pooled to nothing.
    if pool == "max":
        return nn.MaxPool2d(2, 2, ceil_mode=True)
    if pool == "avg":
        return nn.AvgPool2d(2, 2, ceil_mode=True)
    return None


class CNNLayer(nn.Module):
    """conv kxk (padding k // 2, no bias) -> BatchNorm (+ the 1x1 shortcut of the input) ->
    ReLU -> the pooling."""

    def __init__(self, layer: Layer, C_in: int):
        super().__init__()
        self.conv = nn.Conv2d(C_in, layer.width, layer.kernel, padding=layer.kernel // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(layer.width)
        self.shortcut = nn.Conv2d(C_in, layer.width, 1, bias=False) if layer.res else None
        self.pool = _pooling(layer.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        y = F.relu(y)
        return y if self.pool is None else self.pool(y)


class CNNNetwork(nn.Module):
    """The network of one spec: its layers (`CNNLayer`), then global average pooling and a
    linear classifier."""

    def __init__(self, arch: CNNArch, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.arch = arch
        blocks = []
        C_prev = in_channels
        for layer in arch.layers:
            blocks.append(CNNLayer(layer, C_prev))
            C_prev = layer.width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# -- network morphism: edits of a trained network that keep its function -----------------------
# Network morphisms of the plain CNN: edits of a trained network that keep its function.
#
# A child made by an edit starts from its parent's trained weights and computes what the parent
# computed, so a short training continues from the parent's accuracy instead of from chance
# (Chen, Goodfellow & Shlens, *Net2Net*, ICLR 2016; Wei et al., *Network Morphism*, ICML
# 2016; Elsken, Metzen & Hutter, *NASH*, 2018). Every edit stays in the space (darts.spaces.cnn):
#
# - `deeper@i`: a new layer after layer i: a 3x3 convolution initialised to the identity (the
#   centre tap 1 on its own channel), width = layer i's, no pooling, no shortcut. Its BatchNorm
#   is set to pass through (Net2DeeperNet, NASH): gamma = sqrt(var + eps), beta = mean, and the
#   running statistics mean and var, where mean and var are the per-channel batch statistics
#   of the layer's input on a calibration batch (without one: mean 0, var 1 - eps). Layer i's
#   output is a ReLU's (and pooled): non-negative, so the new ReLU passes it unchanged.
# - `wider@i`: layer i's width to the next of the space's widths (Net2WiderNet): each new
#   channel replicates an existing one drawn at random (its convolution filter, shortcut
#   filter, BatchNorm parameters and statistics), and the next layer's convolution and
#   shortcut (or the classifier) divide each replicated channel's incoming weights by its
#   number of copies.
# - `kernel@i`: layer i's kernel to the next size (3 -> 5 -> 7): the filter zero-padded by one
#   on each side, the padding grown by one.
# - `skip@i`: layer i gains the residual shortcut (a 1x1 convolution added before the ReLU),
#   initialised to zero.
#
# Which modes keep the function: `wider`, `kernel` and `skip` keep it exactly in training and
# in eval mode, for any input (a replicated channel has the same batch statistics as its
# source). `deeper` keeps it exactly in eval mode for any input, and in training mode on its
# calibration batch: a BatchNorm in training mode normalises by each batch's own statistics,
# which no fixed gamma and beta undo for every batch.

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


# -- what the runs need of the space (see darts.spaces) -----------------------------------------
RESULT_FILE = "cnn.json"
SCORED_BY_TABLE = False
NETWORK_SIZES = None  # a spec fixes its widths and depth


def retrain_flags(path: str) -> list[str]:
    """The train_final.py flags that retrain the network saved at `path`."""
    return ["--space", NAME, "--arch", path]


def network(arch: CNNArch, num_classes: int, *_: Any, **__: Any) -> nn.Module:
    return CNNNetwork(arch, num_classes)


# -- the retraining of a network (darts.final) --------------------------------------------------
from darts.spaces.nb201 import NB201_RECIPE  # noqa: E402 (the recipe this one stretches)
from darts.spaces.nb201 import FinalTraining as _NB201Training  # noqa: E402

# No paper trains this space, so this is the project's choice, NATS-Bench's 90-epoch schedule
# (90E.config: NB201's recipe over 90 epochs). The spec fixes depth and widths.
CNN_RECIPE: dict[str, Any] = dict(NB201_RECIPE, epochs=90, init_channels=None, layers=None)


class FinalTraining(_NB201Training):
    """train_final.py's plain CNNs: the spec's network, NATS-Bench's 90-epoch recipe."""

    noun = network_noun = "a plain CNN"
    result_files, saved_as = ("cnn.json", "arch.json"), "arch.json"
    arch_type = CNNArch

    def recipe(self, family: str) -> dict:
        return CNN_RECIPE

    def claims(self, data) -> bool:
        return isinstance(data, dict) and "arch" in data and "~" not in str(data["arch"])

    def load(self, spec, where: str) -> CNNArch:
        if spec == "darts_v2":  # train_final.py's default --genotype: no CNN of its own
            raise UserError(f"--space {NAME}: give the network with --arch, its text (e.g. "
                            f"--arch '{EXAMPLE}') or the arch.json a search saved")
        return load_arch(spec, where)

    def check(self, cfg) -> None:
        for flag in ("layers", "init_channels"):
            if getattr(cfg, flag) is not None:
                raise UserError(f"--{flag}: a plain CNN's depth and widths are its spec's; "
                                f"leave --{flag} out with --space {NAME}")
        super().check(cfg)

    def label(self, spec: str, arch: CNNArch) -> str:
        return NAME


final = FinalTraining()
