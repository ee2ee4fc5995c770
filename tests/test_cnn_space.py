"""The plain CNN space: its text, its decisions, its search moves and its network."""

import random
from collections import Counter

import pytest
import torch

from darts.errors import UserError
from darts.spaces import cnn
from darts.spaces.cnn import EXAMPLE, CNNArch, CNNNetwork, Layer

SIX_POOLS = "|".join(["conv3x3-16-max"] * 6)


def meaningful(arch: CNNArch) -> list[int]:
    """The decisions that matter: the depth and the used slots' kernel, width, pooling and
    shortcut."""
    return cnn.to_decisions(arch)[:1 + 4 * arch.depth]


def test_the_text_is_canonical_and_reads_back():
    arch = cnn.parse(EXAMPLE)
    assert arch.layers == (Layer(3, 32, "max"), Layer(5, 64), Layer(7, 128, "avg"))
    res = cnn.parse("conv3x3-32-res-max|conv5x5-64-res")
    assert res.layers == (Layer(3, 32, "max", True), Layer(5, 64, res=True))
    assert str(res) == "conv3x3-32-res-max|conv5x5-64-res"
    assert str(arch) == EXAMPLE and arch.depth == 3
    rng = random.Random(0)
    for _ in range(300):
        a = cnn.sample(rng)
        assert cnn.parse(str(a)) == a and hash(cnn.parse(str(a))) == hash(a)
    assert {cnn.parse(EXAMPLE): 1}[arch] == 1  # hashable, equal by value


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("conv3x3-32", "2 to 6 '|'-separated layers, got 1"),
    ("|".join(["conv3x3-32"] * 7), "got 7"),
    ("conv3x3-32|conv4x4-32", "layer 2 'conv4x4-32': kernel 4 is not in the space"),
    ("conv3x3-32|conv3x5-32", "kernels are square"),
    ("conv3x3-32|conv3x3-48", "width 48 is not in the space; the widths are 16, 32, 64, 128"),
    ("conv3x3-32|conv3x3-32-min", "pooling 'min' is not 'max' or 'avg'"),
    ("conv3x3-32|conv3x3-32-none", "with no suffix"),
    ("conv3x3-32|conv3x3-32-max-res", "an optional '-res', then an optional '-max'"),
    ("conv3x3-32|conv03x3-32", "must read 'conv<k>x<k>-<width>'"),
    ("conv3x3-32||conv3x3-32", "layer 2 '' must read"),
    ("conv3x3-32|" + "9" * 5000, "layer 2 .9999.*too long"),
    (None, "expected a string"),
], ids=lambda value: None if value is None or len(str(value)) < 40 else "long")
def test_a_bad_text_is_one_user_error_naming_what_is_wrong(text, message):
    with pytest.raises(UserError, match=message) as info:
        cnn.parse(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_sampling_draws_every_depth_about_equally_and_every_choice():
    rng = random.Random(1)
    draws = [cnn.sample(rng) for _ in range(5000)]
    depths = Counter(a.depth for a in draws)
    assert set(depths) == set(cnn.DEPTHS)
    for d in cnn.DEPTHS:  # 1/5 each; the binomial's sd is 0.0057
        assert abs(depths[d] / len(draws) - 0.2) < 0.025, depths
    layers = [layer for a in draws for layer in a.layers]
    for attr, choices in (("kernel", cnn.KERNELS), ("width", cnn.WIDTHS), ("pool", cnn.POOLS),
                          ("res", (False, True))):
        counts = Counter(getattr(layer, attr) for layer in layers)
        for c in choices:
            assert abs(counts[c] / len(layers) - 1 / len(choices)) < 0.02, (attr, counts)


def test_a_mutation_changes_exactly_one_decision_that_matters():
    rng = random.Random(2)
    kinds = Counter()
    for _ in range(2000):
        a = cnn.sample(rng)
        b = cnn.mutate(a, rng)
        if a.depth == b.depth:
            changed = sum(x != y for x, y in zip(meaningful(a), meaningful(b), strict=True))
            assert changed == 1, (a, b)
            kinds["layer"] += 1
        else:  # the depth changed: the layers both have are the same
            shared = min(a.depth, b.depth)
            assert a.layers[:shared] == b.layers[:shared], (a, b)
            kinds["depth"] += 1
    # the depth is one of 1 + 4 x depth decisions: over depths 2..6, about 1/13 of mutations
    assert 0.045 < kinds["depth"] / 2000 < 0.11, kinds


def test_a_mutation_rate_is_each_decisions_probability_of_changing():
    rng = random.Random(3)
    arch = cnn.parse("conv3x3-16|conv5x5-32-max|conv7x7-64-avg|conv3x3-128|conv5x5-16|conv7x7-32")
    base = cnn.to_decisions(arch)
    n, rate = 4000, 0.25
    changed = Counter()
    for _ in range(n):
        child = cnn.mutate(arch, rng, rate=rate)
        decisions = cnn.to_decisions(child)
        changed["depth"] += child.depth != arch.depth
        for d in range(1, 9):  # the first two layers are in every child (depth >= 2)
            changed[d] += decisions[d] != base[d]
    for key, count in changed.items():  # sd of a rate estimate: 0.0068
        assert abs(count / n - rate) < 0.03, (key, count / n)
    assert cnn.mutate(arch, rng, rate=0.0) == arch
    always = cnn.mutate(arch, rng, rate=1.0)
    assert always.depth != arch.depth
    for new, old in zip(always.layers, arch.layers, strict=False):
        assert new.kernel != old.kernel and new.width != old.width and new.pool != old.pool
        assert new.res != old.res


def test_crossover_children_are_valid_and_take_layers_from_both_parents():
    rng = random.Random(4)
    a = cnn.parse("conv3x3-16|conv3x3-16|conv3x3-16|conv3x3-16|conv3x3-16|conv3x3-16")
    b = cnn.parse("conv7x7-128-avg|conv7x7-128-avg")
    sources = Counter()
    for _ in range(1000):
        child = cnn.crossover(a, b, rng)
        assert cnn.parse(str(child)) == child and child.depth in (a.depth, b.depth)
        for i, layer in enumerate(child.layers):
            assert layer in [p.layers[i] for p in (a, b) if i < p.depth]
            sources["a" if layer == a.layers[i] else "b"] += i < 2
    assert abs(sources["a"] / (sources["a"] + sources["b"]) - 0.5) < 0.05, sources
    rng = random.Random(5)
    for _ in range(300):
        x, y = cnn.sample(rng), cnn.sample(rng)
        child = cnn.crossover(x, y, rng)
        assert child.depth in (x.depth, y.depth)
        assert all(layer in {x.layers[i] if i < x.depth else None,
                             y.layers[i] if i < y.depth else None}
                   for i, layer in enumerate(child.layers))


def test_decisions_round_trip_and_unused_slots_are_canonical():
    choices = cnn.decisions()
    assert len(choices) == 1 + 4 * 6 and choices[0] == ("2", "3", "4", "5", "6")
    assert choices[1:5] == [("3x3", "5x5", "7x7"), ("16", "32", "64", "128"),
                            ("none", "max", "avg"), ("plain", "res")]
    rng = random.Random(6)
    for _ in range(300):
        a = cnn.sample(rng)
        d = cnn.to_decisions(a)
        assert cnn.from_decisions(d) == a
        assert all(0 <= k < len(c) for k, c in zip(d, choices, strict=True))
        assert d[1 + 4 * a.depth:] == [0] * (4 * (6 - a.depth))
        raw = [rng.randrange(len(c)) for c in choices]
        arch = cnn.from_decisions(raw)
        assert cnn.to_decisions(arch)[:1 + 4 * arch.depth] == raw[:1 + 4 * arch.depth]
        assert cnn.from_decisions(cnn.to_decisions(arch)) == arch
    with pytest.raises(ValueError, match="25 decisions"):
        cnn.from_decisions([0] * 24)


def test_the_encoding_has_a_fixed_length_and_tells_candidates_apart():
    rng = random.Random(7)
    archs = {cnn.sample(rng) for _ in range(300)}
    codes = {tuple(cnn.encode(a)) for a in archs}
    assert len(codes) == len(archs)
    assert {len(c) for c in codes} == {5 + 6 * 12}
    code = cnn.encode(cnn.parse(EXAMPLE))
    assert sum(code) == 1 + 4 * 3 and code[:5] == [0.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("depth", cnn.DEPTHS)
def test_the_network_of_every_depth_classifies_small_and_cifar_sized_images(depth):
    torch.manual_seed(depth)
    for pool in ("max", "avg", "none"):
        arch = cnn.parse("|".join([f"conv3x3-16-{pool}" if pool != "none" else "conv3x3-16"]
                                  * depth))
        net = CNNNetwork(arch, num_classes=7).eval()
        for size in (1, 5, 8, 32):  # pooled more often than the side halves: stays 1x1
            with torch.no_grad():
                out = net(torch.randn(2, 3, size, size))
            assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_six_poolings_of_an_8px_image_end_at_1x1_and_the_parameters_add_up():
    net = CNNNetwork(cnn.parse(SIX_POOLS), num_classes=10)
    sizes = []
    x = torch.randn(2, 3, 8, 8)
    for block in net.features:
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes == [4, 2, 1, 1, 1, 1]
    # conv3x3 3->16, BN(16), conv5x5 16->32, BN(32), linear 32->10: no conv biases
    small = CNNNetwork(cnn.parse("conv3x3-16-avg|conv5x5-32"), num_classes=10, in_channels=3)
    expected = 3 * 16 * 9 + 2 * 16 + 16 * 32 * 25 + 2 * 32 + 32 * 10 + 10
    assert sum(p.numel() for p in small.parameters()) == expected
    # a residual layer adds its 1x1 shortcut 16->32
    res = CNNNetwork(cnn.parse("conv3x3-16-avg|conv5x5-32-res"), num_classes=10, in_channels=3)
    assert sum(p.numel() for p in res.parameters()) == expected + 16 * 32
    grey = CNNNetwork(cnn.parse(EXAMPLE), num_classes=2, in_channels=1)
    assert grey(torch.randn(3, 1, 16, 16)).shape == (3, 2)


def test_a_saved_candidate_is_what_train_finals_loader_reads(tmp_path):
    arch = cnn.parse(EXAMPLE)
    path = tmp_path / "arch.json"
    cnn.save(arch, path)
    assert path.read_text().strip().startswith("{") and not list(tmp_path.glob("*.tmp"))
    assert cnn.load_arch(str(path), "--arch") == arch
    assert cnn.load_arch(EXAMPLE, "--arch") == arch
    assert cnn.load_arch({"arch": EXAMPLE}, "checkpoint") == arch
    (tmp_path / "bad.json").write_text('{"arch": "conv3x3-32"}')
    with pytest.raises(UserError, match=r"--arch .*bad.json 'conv3x3-32': a plain CNN has 2"):
        cnn.load_arch(str(tmp_path / "bad.json"), "--arch")
    with pytest.raises(UserError, match="not a readable arch JSON file"):
        cnn.load_arch(str(tmp_path / "missing.json"), "--arch")


def test_the_accelerated_network_computes_the_plain_one(monkeypatch):
    """train_final.py runs `accelerate(CNNNetwork)`: fused BatchNorm-ReLU, and the max pooling
    that saves its input (on the CPU only when asked) must give the plain outputs and
    gradients, 1x1 ceil-mode poolings included."""
    from darts.accel import accelerate
    from darts.accel.fused import MaxPool2d

    monkeypatch.setattr(MaxPool2d, "save_input_on_cpu", True)
    arch = cnn.parse("conv3x3-16-max|conv5x5-32-avg|conv3x3-16-max|conv3x3-16-max|conv7x7-32-max")
    torch.manual_seed(0)
    plain = CNNNetwork(arch, 10)
    fast = accelerate(CNNNetwork(arch, 10))
    fast.load_state_dict(plain.state_dict())
    assert any(type(m) is MaxPool2d for m in fast.modules())
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for net in (plain, fast):
        net.zero_grad()
        net(x).square().sum().backward()
    torch.testing.assert_close(fast(x), plain(x))
    # Some gradients are 0 in exact arithmetic (a BatchNorm shift that the next BatchNorm
    # removes): rounding noise there, so the tolerance is on the scale of all gradients.
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5 * scale, msg=name)
