"""The device-resident pipeline: the DataLoader path's augmentation, order, sharding and
resumption, computed batch-wise on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from test_data import tiny_cifar10
from torch.utils.data import DistributedSampler
from torchvision import datasets, transforms

from darts.accel.device_data import (
    DeviceEvalLoader,
    DeviceImages,
    DeviceSplitLoader,
    augment,
    batch_seed,
    has_device_images,
    normalize,
)
from darts.train.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Cutout,
    SplitLoader,
    SyntheticImages,
    build_datasets,
    make_loader,
    search_split,
)

CPU = torch.device("cpu")
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def batch_of(image: np.ndarray, n: int) -> torch.Tensor:
    """`n` copies of an H x W x 3 uint8 image as a batch n x 3 x H x W."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].expand(n, -1, -1, -1).contiguous()


def pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values back from an output normalized with mean 0, std 1."""
    return (x * 255).round().to(torch.uint8)


def coordinate_image(size: int) -> np.ndarray:
    """R = 1 + row, G = 1 + column, B = 100: every pixel says where it came from, none is 0."""
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([1 + y, 1 + x, np.full_like(y, 100)], axis=-1).astype(np.uint8)


def indexed_images(n: int, size: int = 8, seed: int = 0) -> DeviceImages:
    """Random images whose label is their index, so a batch's labels say which images it holds."""
    data = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return DeviceImages(data, list(range(n)), mean=MEAN, std=STD, device=CPU)


# ---------------------------------------------------------------------------------------------
# The images on the device


def test_only_in_memory_uint8_rgb_sets_qualify():
    synthetic = SyntheticImages(20, image_size=8)
    assert has_device_images(synthetic)

    class FolderLike:  # an ImageFolder: targets and file paths, no pixels in memory
        targets = [0, 1]
        samples = [("a.png", 0), ("b.png", 1)]

    class Grey:
        data = np.zeros((2, 8, 8), np.uint8)
        targets = [0, 1]

    class Floats:
        data = np.zeros((2, 8, 8, 3), np.float32)
        targets = [0, 1]

    class TooFewLabels:
        data = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
        targets = [0, 1]

    for dataset in (FolderLike(), Grey(), Floats(), TooFewLabels()):
        assert not has_device_images(dataset)
    with pytest.raises(TypeError, match="FolderLike does not hold its images in memory"):
        DeviceImages.from_dataset(FolderLike(), mean=MEAN, std=STD, device=CPU)


def test_synthetic_images_go_to_the_device_channels_first():
    synthetic = SyntheticImages(30, num_classes=3, image_size=12)
    images = DeviceImages.from_dataset(synthetic, mean=MEAN, std=STD, device="cpu")
    assert len(images) == 30 and images.size == 12 and images.device == CPU
    assert images.images.dtype == torch.uint8 and images.images.shape == (30, 3, 12, 12)
    assert torch.equal(images.images, torch.from_numpy(synthetic.data).permute(0, 3, 1, 2))
    assert images.labels.dtype == torch.int64 and images.labels.tolist() == synthetic.targets
    assert images.mean.shape == images.std.shape == (1, 3, 1, 1)
    assert images.mean.dtype == torch.float32
    torch.testing.assert_close(images.std.flatten(), torch.tensor(STD))
    images.images.zero_()  # a copy: the data set's array is untouched
    assert synthetic.data.any()


def test_cifar10_on_disk_matches_the_dataloader_test_transform(tmp_path, monkeypatch):
    tiny_cifar10(tmp_path, monkeypatch)  # torchvision's reader on the archive's pickles
    train, test, info = build_datasets("cifar10", str(tmp_path), download=False)
    assert isinstance(train, datasets.CIFAR10) and has_device_images(train)
    images = DeviceImages.from_dataset(train, mean=info.mean, std=info.std, device=CPU)
    assert torch.equal(images.images, torch.from_numpy(train.data).permute(0, 3, 1, 2))
    assert images.labels.tolist() == train.targets

    test_images = DeviceImages.from_dataset(test, mean=info.mean, std=info.std, device=CPU)
    device_batches = list(DeviceEvalLoader(test_images, 3))
    reference = list(make_loader(test, 3, shuffle=False))
    assert len(device_batches) == len(reference) == 2  # 4 test images
    for (x, y), (x_ref, y_ref) in zip(device_batches, reference, strict=True):
        assert torch.equal(y, y_ref)
        assert torch.equal(x, x_ref)  # the same float operations: the same bits


# ---------------------------------------------------------------------------------------------
# Batch-wise augmentation


@pytest.mark.parametrize("channels_last", [False, True])
def test_augment_is_normalized_float_in_range(channels_last):
    data = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    images = DeviceImages(data, [0] * 64, mean=CIFAR10_MEAN, std=CIFAR10_STD, device=CPU)
    g = torch.Generator().manual_seed(0)
    x = augment(images.images, mean=images.mean, std=images.std, generator=g, pad=2, cutout=6,
                channels_last=channels_last)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert x.is_contiguous() == (not channels_last)
    raw = x * images.std + images.mean  # back in ToTensor's [0, 1]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    # Every value is a pixel / 255 (padding: 0 / 255), or 0 after normalization (cutout).
    pixel = raw[x != 0] * 255
    assert torch.allclose(pixel, pixel.round(), atol=1e-3) and (x == 0).any()

    t = normalize(images.images, CIFAR10_MEAN, CIFAR10_STD, channels_last=channels_last)
    assert t.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(t, torch.stack([transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)(
        transforms.ToTensor()(Image.fromarray(a))) for a in data]))


def test_augment_draws_a_fixed_sequence_from_its_generator():
    batch = batch_of(coordinate_image(8), 16)
    outs = [augment(batch, mean=0, std=1, generator=torch.Generator().manual_seed(5), pad=1,
                    cutout=cutout) for cutout in (0, 3, 3)]
    assert torch.equal(outs[1], outs[2])  # same seed, same output
    crop_and_flip = outs[1] != 0
    assert torch.equal(outs[0][crop_and_flip], outs[1][crop_and_flip])  # cutout draws last
    other = augment(batch, mean=0, std=1, generator=torch.Generator().manual_seed(6), pad=1)
    assert not torch.equal(other, outs[0])


@pytest.mark.parametrize("size, pad, draws", [(8, 1, 500), (32, 4, 3000)])
def test_every_crop_offset_and_flip_occurs_and_each_is_torchvisions(size, pad, draws):
    image = coordinate_image(size)
    out = pixels(augment(batch_of(image, draws), mean=0, std=1,
                         generator=torch.Generator().manual_seed(0), pad=pad))
    # Decode each sample's crop and flip from the centre pixel, whose source is never padding.
    c = size // 2
    red, green, green_right = out[:, 0, c, c].long(), out[:, 1, c, c].long(), out[:, 1, c, c + 1]
    flipped = green_right.long() < green
    oy = red - 1 - c + pad
    ox = torch.where(flipped, green - size + c + pad, green - 1 - c + pad)

    # torchvision's crop and flip for every (oy, ox, flip), looked up for each sample.
    span = 2 * pad + 1
    assert ((oy >= 0) & (oy < span) & (ox >= 0) & (ox < span)).all()
    padded = TF.pad(torch.from_numpy(image).permute(2, 0, 1), pad)  # zero fill
    crops = [TF.crop(padded, y, x, size, size) for y in range(span) for x in range(span)]
    reference = torch.stack([torch.stack(crops), TF.hflip(torch.stack(crops))])
    assert torch.equal(out, reference[flipped.long(), oy * span + ox])
    combinations = torch.unique(flipped.long() * span * span + oy * span + ox)
    assert len(combinations) == 2 * span * span

    never = pixels(augment(batch_of(image, 200), mean=0, std=1, flip=False,
                           generator=torch.Generator().manual_seed(0), pad=pad))
    assert (never[:, 1, c, c + 1] > never[:, 1, c, c]).all()


@pytest.mark.parametrize("size, length, draws", [(8, 3, 1500), (8, 4, 1500), (32, 16, 400)])
def test_cutout_zeroes_a_clipped_square_after_normalization(size, length, draws):
    # Black images normalize to -mean/std = -2; Cutout writes 0 after that, not -2.
    black = np.zeros((size, size, 3), np.uint8)
    x = augment(batch_of(black, draws), mean=0.5, std=0.25, pad=0, cutout=length,
                generator=torch.Generator().manual_seed(0))
    assert ((x == 0) | (x == -2)).all()
    cut = x == 0
    assert torch.equal(cut, cut[:, :1].expand_as(cut))  # the same square in every channel
    cut = cut[:, 0]
    rows, cols = cut.any(2), cut.any(1)  # draws x size
    assert torch.equal(cut, rows[:, :, None] & cols[:, None, :])  # a rectangle

    centres = set()
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        centre = []
        for line in (r, c):
            start = line.index(True)
            stop = start + sum(line)
            assert all(line[start:stop])  # one contiguous run
            if 0 < start and stop < size:
                assert stop - start == length  # unclipped: the full side
            else:
                assert stop - start <= length
            # y0 = centre - length // 2 is `start`, unless clipped at the top/left border.
            centre.append(start + length // 2 if start > 0 else stop - length + length // 2)
        centres.add(tuple(centre))
    inside = [0 < r.index(True) and r.index(True) + sum(r) < size for r in rows.tolist()]
    inside = torch.tensor(inside) & torch.tensor(
        [0 < c.index(True) and c.index(True) + sum(c) < size for c in cols.tolist()])
    assert inside.any() and (cut[inside].sum((1, 2)) == length * length).all()
    if size == 8:  # every pixel is a centre
        assert centres == {(y, x) for y in range(size) for x in range(size)}


@pytest.mark.parametrize("cutout", [0, 16])
def test_augmentation_statistics_match_torchvisions(cutout):
    """Per-pixel mean and std of 2,000 augmentations of one random image, both pipelines.

    Each pixel's mean over n = 2000 draws has standard error s / sqrt(n), so
    z = (mean_device - mean_torchvision) / sqrt((s_device^2 + s_torchvision^2) / n) is about
    N(0, 1) and the average of z^2 over the 3,072 outputs is about 1 when the distributions
    agree (0.84 to 1.11 over eight pairs of seeds). Pad 2 instead of 4 gives about 35,
    pad 5 about 7, no flips about 5, no cutout 3.4: 1.5 separates them. The per-pixel std's
    log-ratio has a standard error of about sqrt(2 / (2n)) = 0.022, so its mean absolute
    value over pixels is at most about 0.018 (0.013 to 0.015 measured); no flips give 0.028,
    pad 2 0.06: 0.02 separates them.
    """
    n = 2000
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    reference_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
         transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        + ([Cutout(cutout)] if cutout else []))
    pil = Image.fromarray(image)
    reference = torch.stack([reference_tf(pil) for _ in range(n)])
    device = augment(batch_of(image, n), mean=MEAN, std=STD, pad=4, cutout=cutout,
                     generator=torch.Generator().manual_seed(1))

    z2 = (device.mean(0) - reference.mean(0)) ** 2 / ((device.var(0) + reference.var(0)) / n)
    assert z2.mean() < 1.5, float(z2.mean())
    log_std_ratio = (device.std(0) / reference.std(0)).log().abs().mean()
    assert log_std_ratio < 0.02, float(log_std_ratio)


# ---------------------------------------------------------------------------------------------
# Order, sharding and resumption


def test_order_and_batches_are_split_loaders():
    train, _, info = build_datasets("synthetic", "unused", synthetic_size=50, image_size=16,
                                    train_augment=False)
    images = DeviceImages.from_dataset(train, mean=info.mean, std=info.std, device=CPU)
    _, alpha_idx = search_split(len(train), 0.5)  # 25 images: batches of 8, 8, 8, 1
    reference = SplitLoader(train, alpha_idx, 8, seed=3, stream=1)
    device = DeviceSplitLoader(images, alpha_idx, 8, seed=3, stream=1, augment=False)
    assert len(device) == len(reference) == 4

    for p in (0, 2):
        got, want = list(device.epoch(p)), list(reference.epoch(p))
        assert len(device.epoch(p)) == len(got) == len(want)
        for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
            assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    # The endless stream crosses pass boundaries as SplitLoader's does, same state on the way.
    for _ in range(2 * len(reference) + 1):
        (x, y), (x_ref, y_ref) = next(device), next(reference)
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
        assert device.state_dict() == reference.state_dict()
    assert device.state_dict() == {"pass": 2, "taken": 1}


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_distributed_samplers_equal_and_cover_the_pass(world_size):
    images = indexed_images(40)
    indices = torch.arange(3, 40, 2)  # 19 images, not a multiple of the world size
    loaders = [DeviceSplitLoader(images, indices, 4, seed=0, stream=0, rank=r,
                                 world_size=world_size) for r in range(world_size)]
    per_rank = -(-19 // world_size)
    assert len({len(loader) for loader in loaders}) == 1
    assert len(loaders[0]) == -(-per_rank // 4)

    order = loaders[0].pass_order(1)
    assert sorted(order.tolist()) == indices.tolist()
    seen = []
    for r, loader in enumerate(loaders):
        labels = torch.cat([y for _, y in loader.epoch(1)])
        assert len(labels) == per_rank
        # torch's DistributedSampler over the positions of the pass's order.
        sampler = DistributedSampler(range(19), num_replicas=world_size, rank=r, shuffle=False)
        assert labels.tolist() == order[list(sampler)].tolist()
        seen += labels.tolist()
    assert set(seen) == set(indices.tolist())
    # Disjoint apart from the wrap-around: the first few of the order are seen twice.
    padding = per_rank * world_size - 19
    assert sorted(seen) == sorted(indices.tolist() + order[:padding].tolist())


def test_the_stream_resumes_bit_exactly_with_augmentation():
    images = indexed_images(40, size=16)
    make = dict(images=images, indices=torch.arange(40), batch_size=16, cutout_length=4)
    stream = DeviceSplitLoader(**make, seed=7, stream=1)  # 3 batches per pass
    for _ in range(4):
        next(stream)
    state = stream.state_dict()
    assert state == {"pass": 1, "taken": 1}
    rest = [next(stream) for _ in range(4)]  # crosses into pass 2

    again = DeviceSplitLoader(**make, seed=7, stream=1)
    again.load_state_dict(state)
    for (x, y), (x2, y2) in zip(rest, [next(again) for _ in range(4)], strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # A pass's batches are the same from the stream and from epoch(p), from any start.
    x_epoch = [x for x, _ in DeviceSplitLoader(**make, seed=7, stream=1).epoch(1, start=1)]
    assert torch.equal(x_epoch[0], rest[0][0]) and torch.equal(x_epoch[1], rest[1][0])

    same = [x for x, _ in DeviceSplitLoader(**make, seed=7, stream=1).epoch(0)]
    first = [x for x, _ in DeviceSplitLoader(**make, seed=7, stream=1).epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(same, first, strict=True))
    other_stream = DeviceSplitLoader(**make, seed=7, stream=2)
    assert not torch.equal(other_stream.pass_order(0), stream.pass_order(0))
    other_seed = DeviceSplitLoader(**make, seed=8, stream=1)
    assert not torch.equal(other_seed.pass_order(0), stream.pass_order(0))
    # Batch b of pass p: augment() of its images with pad size // 8, the loader's cutout and a
    # generator seeded with batch_seed(seed, stream, rank, p, b), nothing else.
    idx = stream.shard(2)[16:32]
    g = torch.Generator().manual_seed(batch_seed(7, 1, 0, 2, 1))
    want = augment(images.images[idx], mean=MEAN, std=STD, generator=g, pad=2, cutout=4)
    assert torch.equal(rest[-1][0], want) and torch.equal(rest[-1][1], idx)
    # Augmentation seeds are distinct per rank, pass and batch (and not the order's seeds).
    seeds = {batch_seed(7, 1, r, p, b) for r in range(3) for p in range(3) for b in range(3)}
    assert len(seeds) == 27


def test_eval_loader_covers_the_test_set_once_in_order():
    images = indexed_images(23)
    one = list(DeviceEvalLoader(images, 5))
    assert len(DeviceEvalLoader(images, 5)) == len(one) == 5
    assert torch.cat([y for _, y in one]).tolist() == list(range(23))
    torch.testing.assert_close(torch.cat([x for x, _ in one]),
                               normalize(images.images, MEAN, STD), rtol=0, atol=0)

    labels = []
    for r in range(3):
        loader = DeviceEvalLoader(images, 4, rank=r, world_size=3, channels_last=True)
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
        labels += torch.cat([y for _, y in batches]).tolist()
    assert sorted(labels) == list(range(23))


def test_bad_arguments_are_refused():
    images = indexed_images(10)
    with pytest.raises(ValueError, match="indices must lie"):
        DeviceSplitLoader(images, torch.tensor([3, 10]), 4, seed=0, stream=0)
    with pytest.raises(ValueError, match="non-empty"):
        DeviceSplitLoader(images, torch.tensor([], dtype=torch.long), 4, seed=0, stream=0)
    with pytest.raises(ValueError, match="rank 2"):
        DeviceSplitLoader(images, torch.arange(10), 4, seed=0, stream=0, rank=2, world_size=2)
    with pytest.raises(TypeError, match="uint8 images"):
        DeviceImages(np.zeros((2, 8, 8, 3), np.float32), [0, 1], mean=MEAN, std=STD, device=CPU)
