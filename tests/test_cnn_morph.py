"""Network morphisms of the plain CNN keep the network's function, in float64."""

from __future__ import annotations

import random

import pytest
import torch

from darts.spaces import cnn
from darts.spaces.cnn import CNNNetwork, Edit, edit_arch, edits, morph, random_edit

PARENT = "conv3x3-16-max|conv5x5-32-res|conv3x3-16-avg"


def _trained_like(arch: str, seed: int = 0) -> CNNNetwork:
    """A float64 network whose BatchNorms hold non-trivial parameters and statistics."""
    torch.manual_seed(seed)
    net = CNNNetwork(cnn.parse(arch), num_classes=5).double()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _outputs(net: CNNNetwork, x: torch.Tensor, train: bool) -> torch.Tensor:
    net.train(train)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("edit", [Edit("wider", 0), Edit("wider", 1), Edit("wider", 2),
                                  Edit("kernel", 0), Edit("kernel", 1), Edit("skip", 0),
                                  Edit("skip", 2)], ids=str)
def test_wider_kernel_and_skip_keep_the_function_in_training_and_eval_mode(edit):
    net = _trained_like(PARENT)
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    child = morph(net, edit, torch.Generator().manual_seed(1))
    assert child.arch == edit_arch(net.arch, edit) != net.arch
    for train in (False, True):
        other = torch.randn(4, 3, 12, 12, dtype=torch.float64)  # any batch
        for batch in (x, other):
            torch.testing.assert_close(_outputs(child, batch, train), _outputs(net, batch, train),
                                       rtol=1e-10, atol=1e-10)
    if edit.kind == "wider":  # the layer really is wider, and its copies really are copies
        assert child.features[edit.layer].conv.out_channels > net.features[edit.layer].conv.out_channels


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_deeper_keeps_the_function_in_eval_mode_and_on_its_calibration_batch(layer):
    net = _trained_like(PARENT, seed=layer)
    calibration = torch.randn(8, 3, 12, 12, dtype=torch.float64)
    child = morph(net, Edit("deeper", layer), calibration=calibration)
    # the parent's statistics were not moved by the calibration pass
    fresh = _trained_like(PARENT, seed=layer)
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert child.arch.depth == net.arch.depth + 1
    inserted = child.features[layer + 1]
    assert str(child.arch.layers[layer + 1]) == f"conv3x3-{net.arch.layers[layer].width}"
    for batch in (calibration, torch.randn(3, 3, 12, 12, dtype=torch.float64)):
        torch.testing.assert_close(_outputs(child, batch, False), _outputs(net, batch, False),
                                   rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_outputs(child, calibration, True),
                               _outputs(net, calibration, True), rtol=1e-9, atol=1e-9)
    assert inserted.bn.weight.min() > 0
    # without a calibration batch: exact in eval mode
    plain = morph(net, Edit("deeper", layer))
    torch.testing.assert_close(_outputs(plain, calibration, False),
                               _outputs(net, calibration, False), rtol=1e-10, atol=1e-10)


def test_every_listed_edit_applies_and_stays_in_the_space():
    rng = random.Random(0)
    for _ in range(200):
        arch = cnn.sample(rng)
        for edit in edits(arch):
            child = edit_arch(arch, edit)
            assert cnn.parse(str(child)) == child
        edit = random_edit(arch, rng)
        assert edit is None or edit in edits(arch)
    biggest = cnn.parse("|".join(["conv7x7-128-res"] * 6))
    assert edits(biggest) == [] and random_edit(biggest, rng) is None
    with pytest.raises(ValueError, match="does not apply"):
        edit_arch(biggest, Edit("wider", 0))
    assert Edit.parse("deeper@2") == Edit("deeper", 2)
