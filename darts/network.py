"""The final network built from a genotype (Liu et al. 2019, Section 3.2 and Appendix A.2).

`NetworkCIFAR` and `NetworkImageNet` follow the reference code (quark0/darts, model.py):
a stem, `layers` cells with reduction cells at layers//3 and 2*layers//3 (channels doubled
there), an auxiliary head after the second reduction, global pooling and a linear classifier.
While training, drop-path is applied to the output of every op that is not an identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from darts.genotype import Genotype
from darts.ops import FactorizedReduce, Identity, ReLUConvBN, drop_path
from darts.primitives import build_op


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        # If the previous cell reduced, c_{k-2} is twice the resolution of c_{k-1}.
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)

        edges, concat = genotype.cell(reduction)
        self.steps = len(edges) // 2
        self.concat = list(concat)
        self.multiplier = len(concat)
        self.indices = [index for _, index in edges]
        # In a reduction cell only the edges leaving the cell inputs have stride 2.
        self.ops = nn.ModuleList(
            build_op(name, C, 2 if reduction and index < 2 else 1, True) for name, index in edges)
        self.drop_mask = [not isinstance(op, Identity) for op in self.ops]

        # A faster way to run this cell, installed by darts.accel.accelerate (None: none).
        self.executor = None

    def node(self, i: int, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        """Node i: the sum of its two ops on their input states (drop path while training)."""
        node = None
        for k in (2 * i, 2 * i + 1):
            h = self.ops[k](states[self.indices[k]])
            if self.training and drop_prob > 0.0 and self.drop_mask[k]:
                h = drop_path(h, drop_prob)
            node = h if node is None else node + h
        return node

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        if self.executor is not None:
            out = self.executor(s0, s1, drop_prob)
            if out is not None:
                return out
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            states.append(self.node(i, states, drop_prob))
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the feature map after the second reduction (8x8 at 32 px)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)  # 8x8 -> 2x2
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        # The reference pools the 8x8 map of 32 px inputs; other resolutions (folder data)
        # are pooled to the same 2x2 grid adaptively.
        x = self.pool(x) if x.shape[-2:] == (8, 8) else F.adaptive_avg_pool2d(x, 2)
        return self.classifier(torch.flatten(self.features(x), 1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 7x7 feature map (at 224 px) after the second reduction.

    The reference code has no BatchNorm after the 768-channel conv here ("omitted due to a
    typo", kept for consistency with the paper's experiments); so does this one.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        # At 224 px the map is 7x7 here: pooled to 2x2, then 1x1 after the 2x2 conv, as in the
        # reference code. Maps too small for the 5x5 window are pooled to 2x2 adaptively, and
        # the final mean makes the head work at any resolution.
        x = self.pool(x) if min(x.shape[-2:]) >= 5 else F.adaptive_avg_pool2d(x, 2)
        return self.classifier(torch.flatten(self.features(x).mean((2, 3)), 1))


class _Network(nn.Module):
    """The cell stack shared by the CIFAR and ImageNet networks."""

    aux_head: type[nn.Module]

    def _build_cells(self, genotype: Genotype, C: int, C_prev_prev: int, C_prev: int,
                     layers: int, reduction_prev: bool, num_classes: int, auxiliary: bool) -> None:
        self.layers = layers
        self.auxiliary = auxiliary
        self.drop_path_prob = 0.0
        self.aux_index = 2 * layers // 3
        C_curr = C
        C_aux = C_prev
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_prev
        self.auxiliary_head = self.aux_head(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits, auxiliary logits); the latter only while training with the head."""
        logits_aux = None
        s0, s1 = self._stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(torch.flatten(out, 1)), logits_aux


class NetworkCIFAR(_Network):
    aux_head = AuxiliaryHeadCIFAR

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool,
                 genotype: Genotype, stem_multiplier: int = 3, in_channels: int = 3):
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        self._build_cells(genotype, C, C_stem, C_stem, layers, False, num_classes, auxiliary)

    def _stem(self, x):
        s = self.stem(x)
        return s, s


class NetworkImageNet(_Network):
    aux_head = AuxiliaryHeadImageNet

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool,
                 genotype: Genotype, in_channels: int = 3):
        super().__init__()
        # Three stride-2 convs: 224 -> 28 before the first cell (the "mobile" setting).
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # stem0 and stem1 differ in resolution, as after a reduction cell.
        self._build_cells(genotype, C, C, C, layers, True, num_classes, auxiliary)

    def _stem(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters; without the auxiliary head, as the paper's tables count them."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and name.startswith("auxiliary_head")))


@torch.no_grad()
def count_multiply_adds(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-adds of one image through the network in eval mode (no auxiliary head).

    Counts convolutions and matrix products (torch's FLOP counter, whose FLOPs are
    2 x multiply-adds), the convention of the paper's "multi-add" column.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, in_channels, image_size, image_size, device=param.device,
                        dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)
