"""The final network: the paper's parameter counts, every published cell, structure."""

import pytest
import torch

from darts.genotype import available_genotypes, genotype_from_edges, resolve_genotype
from darts.network import (
    NetworkCIFAR,
    NetworkImageNet,
    count_multiply_adds,
    count_parameters,
)
from darts.ops import FactorizedReduce, Identity


def test_darts_v2_on_cifar10_has_the_papers_3_3M_parameters():
    # The reference code prints "param size = 3.349342MB" for DARTS_V2, 36 channels, 20 cells.
    model = NetworkCIFAR(36, 10, 20, True, resolve_genotype("darts_v2"))
    assert count_parameters(model) == 3_349_342
    assert count_parameters(model, exclude_auxiliary=False) > 3_349_342


def test_darts_v2_imagenet_mobile_network_has_4_7M_parameters():
    model = NetworkImageNet(48, 1000, 14, True, resolve_genotype("darts_v2"))
    assert round(count_parameters(model) / 1e6, 1) == 4.7


def test_darts_v2_cifar_multiply_adds_match_the_published_528M():
    # 528M multiply-adds is the figure later papers (P-DARTS, PC-DARTS tables) list for DARTS.
    model = NetworkCIFAR(36, 10, 20, False, resolve_genotype("darts_v2"))
    assert round(count_multiply_adds(model, 32) / 1e6) == 528


@pytest.mark.parametrize("name", available_genotypes())
def test_every_published_genotype_builds_runs_forward_and_backward(name):
    g = resolve_genotype(name)
    model = NetworkCIFAR(8, 10, 5, True, g)
    model.train()
    model.drop_path_prob = 0.2
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)


def test_imagenet_network_forward_at_224():
    model = NetworkImageNet(8, 7, 5, True, resolve_genotype("darts_v1")).train()
    logits, aux = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_reduction_cells_sit_at_one_and_two_thirds_and_double_channels():
    model = NetworkCIFAR(16, 10, 8, False, resolve_genotype("darts_v2"))
    assert [c.reduction for c in model.cells] == [i in (2, 5) for i in range(8)]
    # a cell after a reduction takes c_{k-2} at twice the resolution
    assert isinstance(model.cells[3].preprocess0, FactorizedReduce)
    assert not isinstance(model.cells[4].preprocess0, FactorizedReduce)
    x = torch.randn(1, 3, 32, 32)
    s = model.stem(x)
    s0 = s1 = s
    sizes = []
    for cell in model.cells:
        s0, s1 = s1, cell(s0, s1)
        sizes.append((s1.shape[1], s1.shape[2]))
    assert sizes == [(64, 32)] * 2 + [(128, 16)] * 3 + [(256, 8)] * 3


def test_auxiliary_logits_only_while_training():
    model = NetworkCIFAR(8, 10, 6, True, resolve_genotype("darts_v2"))
    model.eval()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert aux is None


def test_drop_path_touches_every_op_but_identity():
    # Normal cell: identity skip on node 0, a sep conv on node 1.
    g = genotype_from_edges([("skip_connect", 0), ("skip_connect", 1),
                             ("sep_conv_3x3", 0), ("skip_connect", 2)],
                            [("max_pool_3x3", 0), ("skip_connect", 1),
                             ("avg_pool_3x3", 2), ("skip_connect", 1)])
    model = NetworkCIFAR(4, 10, 3, False, g)
    cell = model.cells[0]
    assert cell.drop_mask == [not isinstance(op, Identity) for op in cell.ops]
    assert cell.drop_mask == [False, False, True, False]
    # With a drop probability near 1, node 0 (two identities) keeps its input exactly.
    cell.train()
    s0 = torch.randn(64, 12, 8, 8)
    states = {}
    h = cell.preprocess0(s0), cell.preprocess1(s0)
    torch.manual_seed(1)
    out = cell(s0, s0, drop_prob=0.99)
    states = torch.split(out, 4, dim=1)
    assert torch.allclose(states[0], h[0] + h[1], atol=1e-5)
    # node 1 = drop_path(sepconv(s0)) + node 0: most samples dropped the sep conv
    dropped = torch.isclose(states[1], states[0], atol=1e-5).flatten(1).all(1).float().mean()
    assert dropped > 0.9


def test_odd_resolutions_work_for_folder_data():
    model = NetworkCIFAR(8, 3, 5, True, resolve_genotype("darts_v2")).train()
    logits, _ = model(torch.randn(2, 3, 28, 28))  # 28 -> 14 -> 7 (odd after two reductions)
    assert logits.shape == (2, 3)
    logits, _ = model(torch.randn(2, 3, 30, 30))  # 30 -> 15 -> 8
    assert logits.shape == (2, 3)
