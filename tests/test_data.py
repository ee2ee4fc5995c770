"""Data: the paper's augmentation, torchvision's real CIFAR reader, offline synthetic data that
can be learned, clear messages for missing data, reproducible loaders."""

from __future__ import annotations

import hashlib
import pickle
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision import datasets, transforms

from darts.errors import UserError
from darts.train.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cutout,
    DatasetInfo,
    SplitLoader,
    SyntheticImages,
    build_datasets,
    make_loader,
)

# ---------------------------------------------------------------------------------------------
# CIFAR in its real on-disk format, a few images per file


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_batch(path, images: np.ndarray, labels: list[int], label_key: str, extra=None) -> None:
    # The archive's pickles: uint8 rows of 3072 = 3 planes of 32x32 (R, G, B), row-major.
    entry = {
        "batch_label": path.name,
        label_key: labels,
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
        **(extra or {}),
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


def tiny_cifar10(root, monkeypatch, per_batch=4):
    """cifar-10-batches-py with 5 train batches of `per_batch` images and a test batch."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expect = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        write_batch(folder / name, images, labels, "labels")
        expect[name] = (images, labels)
    names = [f"class{i}" for i in range(10)]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    # torchvision verifies every file's md5: give it the sums of these files, not the reader.
    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "batches.meta")})
    return expect, names


def tiny_cifar100(root, monkeypatch, n_train=6, n_test=3):
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    expect = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [f // 5 for f in fine]
        write_batch(folder / name, images, fine, "fine_labels", {"coarse_labels": coarse})
        expect[name] = (images, fine)
    names = [f"fine{i}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    cls = datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "meta")})
    return expect, names


def normalized(image: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_cifar10_loads_through_torchvisions_reader(tmp_path, monkeypatch):
    expect, names = tiny_cifar10(tmp_path, monkeypatch)
    train, test, info = build_datasets("cifar10", str(tmp_path), cutout_length=16, download=False)

    assert info == DatasetInfo("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD, "cifar")
    assert len(train) == 20 and len(test) == 4
    assert train.data.shape == (20, 32, 32, 3) and train.classes == names
    train_images = np.concatenate([expect[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((expect[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert np.array_equal(train.data, train_images) and train.targets == train_labels

    image, label = test[2]
    assert label == expect["test_batch"][1][2]
    want = normalized(expect["test_batch"][0][2], CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(image, want)
    image, label = train[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == train_labels[7]


def test_cifar10_train_augmentation_is_the_papers(tmp_path, monkeypatch):
    tiny_cifar10(tmp_path, monkeypatch)
    train, _, _ = build_datasets("cifar10", str(tmp_path), cutout_length=16, download=False)
    crop, flip, to_tensor, norm, cutout = train.transform.transforms
    assert isinstance(crop, transforms.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    assert isinstance(flip, transforms.RandomHorizontalFlip)
    assert isinstance(to_tensor, transforms.ToTensor)
    assert isinstance(norm, transforms.Normalize) and tuple(norm.mean) == CIFAR10_MEAN
    assert isinstance(cutout, Cutout) and cutout.length == 16

    plain, _, _ = build_datasets("cifar10", str(tmp_path), download=False)
    assert not any(isinstance(t, Cutout) for t in plain.transform.transforms)


def test_train_augment_false_gives_the_training_set_the_test_transform(tmp_path, monkeypatch):
    expect, _ = tiny_cifar10(tmp_path, monkeypatch)
    train, _, _ = build_datasets(
        "cifar10", str(tmp_path), cutout_length=16, download=False, train_augment=False
    )
    image, _ = train[0]
    want = normalized(expect["data_batch_1"][0][0], CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(image, want)


def test_cifar100_loads_fine_labels(tmp_path, monkeypatch):
    expect, names = tiny_cifar100(tmp_path, monkeypatch)
    train, test, info = build_datasets("cifar100", str(tmp_path), download=False)

    assert (info.num_classes, info.mean, info.std) == (100, CIFAR100_MEAN, CIFAR100_STD)
    assert len(train) == 6 and len(test) == 3 and train.classes == names
    assert np.array_equal(train.data, expect["train"][0]) and train.targets == expect["train"][1]
    image, label = test[1]
    assert label == expect["test"][1][1]
    torch.testing.assert_close(image, normalized(expect["test"][0][1], CIFAR100_MEAN, CIFAR100_STD))


# ---------------------------------------------------------------------------------------------
# A missing data set is one clear message


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_cifar_without_download_names_directory_and_fix(tmp_path, name, folder):
    with pytest.raises(UserError) as err:
        build_datasets(name, str(tmp_path / "data"), download=False)
    message = str(err.value)
    assert str(tmp_path / "data") in message and folder in message
    assert "--dataset synthetic" in message


def test_missing_cifar_offline_download_fails_cleanly(tmp_path, monkeypatch):
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError) as err:
        build_datasets("cifar10", str(tmp_path), download=True)
    message = str(err.value)
    assert attempts and all(t is not None for t in attempts)  # tried, with a bounded timeout
    assert socket.getdefaulttimeout() == before  # and put the global back
    assert str(tmp_path) in message and "cifar-10-batches-py" in message
    assert "--dataset synthetic" in message and "download" in message


def test_a_failed_download_leaves_no_data_folder_it_made(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError):
        build_datasets("cifar10", str(tmp_path / "data"), download=True)
    assert not (tmp_path / "data").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    with pytest.raises(UserError):
        build_datasets("cifar10", str(tmp_path / "mine"), download=True)
    assert (tmp_path / "mine").is_dir()


def test_a_missing_image_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="the folder does not exist"):
        build_datasets("folder", str(tmp_path / "nonexistent"))


def test_corrupted_cifar_is_a_user_error(tmp_path, monkeypatch):
    tiny_cifar10(tmp_path, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"truncated")
    with pytest.raises(UserError, match="corrupted"):
        build_datasets("cifar10", str(tmp_path), download=False)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(UserError) as err:
        build_datasets("mnist", "data")
    assert all(name in str(err.value) for name in DATASETS)


def test_bad_flags_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cutout"):
        build_datasets("synthetic", str(tmp_path), cutout_length=-1)
    with pytest.raises(UserError, match="image_size"):
        build_datasets("cifar10", str(tmp_path), image_size=64, download=False)
    with pytest.raises(UserError, match="num_classes"):
        build_datasets("cifar10", str(tmp_path), num_classes=100, download=False)


# ---------------------------------------------------------------------------------------------
# Synthetic data: deterministic, offline, learnable


def nearest_class_mean_accuracy(train: SyntheticImages, test: SyntheticImages) -> float:
    x = train.data.reshape(len(train), -1).astype(np.float32) / 255
    xt = test.data.reshape(len(test), -1).astype(np.float32) / 255
    y, yt = np.array(train.targets), np.array(test.targets)
    means = np.stack([x[y == c].mean(0) for c in range(len(train.classes))])
    dist = (xt**2).sum(1)[:, None] - 2 * xt @ means.T + (means**2).sum(1)[None]
    return float((dist.argmin(1) == yt).mean())


def test_synthetic_same_seed_same_data_other_seed_other_data():
    a, b = SyntheticImages(200, seed=3), SyntheticImages(200, seed=3)
    assert np.array_equal(a.data, b.data) and a.targets == b.targets
    c = SyntheticImages(200, seed=4)
    assert not np.array_equal(a.data, c.data)


def test_synthetic_looks_like_torchvision_cifar():
    ds = SyntheticImages(30, num_classes=3, image_size=20, transform=transforms.ToTensor())
    assert ds.data.shape == (30, 20, 20, 3) and ds.data.dtype == np.uint8
    assert ds.classes == ["class_0", "class_1", "class_2"]
    assert sorted(set(ds.targets)) == [0, 1, 2] and all(type(t) is int for t in ds.targets)
    assert [ds.targets.count(c) for c in range(3)] == [10, 10, 10]  # balanced
    image, label = ds[4]
    assert image.shape == (3, 20, 20) and label == ds.targets[4]
    raw, _ = SyntheticImages(30, num_classes=3, image_size=20)[4]
    assert isinstance(raw, Image.Image) and raw.size == (20, 20)
    # Real intensity spread, not a constant or a saturated image.
    assert 0.35 < ds.data.mean() / 255 < 0.65 and ds.data.std() / 255 > 0.15


def test_synthetic_train_and_test_differ_but_share_classes():
    train = SyntheticImages(2000, seed=0)
    test = SyntheticImages(500, train=False, seed=0)
    assert train.classes == test.classes
    assert not np.array_equal(train.data[:500], test.data)
    # Learnable: class means fitted on train classify held-out test images far above chance,
    # which only holds if both splits are drawn from the same class templates.
    assert nearest_class_mean_accuracy(train, test) > 0.35  # chance is 0.10
    # ... and the templates belong to the seed: another seed's test set is a different task.
    other = SyntheticImages(500, train=False, seed=1)
    assert nearest_class_mean_accuracy(train, other) < 0.25


def test_synthetic_is_not_separable_by_one_pixel():
    train = SyntheticImages(2000, seed=0)
    test = SyntheticImages(500, train=False, seed=0)
    y, yt = np.array(train.targets), np.array(test.targets)
    best = 0.0
    for row, col in [(r, c) for r in range(0, 32, 5) for c in range(0, 32, 5)]:
        x = train.data[:, row, col].astype(np.float32)
        xt = test.data[:, row, col].astype(np.float32)
        means = np.stack([x[y == c].mean(0) for c in range(10)])
        pred = ((xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        best = max(best, float((pred == yt).mean()))
    assert best < 0.25


def test_build_synthetic(tmp_path):
    train, test, info = build_datasets(
        "synthetic",
        str(tmp_path),
        synthetic_size=100,
        num_classes=4,
        image_size=16,
        cutout_length=4,
    )
    assert (info.num_classes, info.image_size, info.network) == (4, 16, "cifar")
    assert len(train) == 100 and len(test) == 20
    assert train[0][0].shape == (3, 16, 16) and test[0][0].shape == (3, 16, 16)
    assert isinstance(train.transform.transforms[-1], Cutout)
    assert not any(isinstance(t, Cutout) for t in test.transform.transforms)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing touched on disk

    _, small_test, _ = build_datasets("synthetic", str(tmp_path), synthetic_size=12, num_classes=10)
    assert len(small_test) == 10  # at least one test image per class
    _, _, big = build_datasets("synthetic", str(tmp_path), synthetic_size=10, image_size=96)
    assert big.network == "imagenet"


# ---------------------------------------------------------------------------------------------
# Cutout


def expected_box(seed: int, length: int, h: int, w: int) -> torch.Tensor:
    """The mask Cutout must zero, from the same two draws (row, then column)."""
    torch.manual_seed(seed)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    mask = torch.zeros(h, w, dtype=torch.bool)
    for y in range(cy - length // 2, cy - length // 2 + length):
        for x in range(cx - length // 2, cx - length // 2 + length):
            if 0 <= y < h and 0 <= x < w:
                mask[y, x] = True
    return mask


@pytest.mark.parametrize("length", [16, 5])
def test_cutout_zeroes_exactly_a_clipped_square(length):
    cutout = Cutout(length)
    image = torch.rand(3, 32, 24) + 0.5  # no zeros of its own
    full, clipped = 0, 0
    for seed in range(200):
        mask = expected_box(seed, length, 32, 24)
        torch.manual_seed(seed)
        out = cutout(image)
        assert torch.equal(out == 0, mask.expand(3, -1, -1))  # zero inside, nowhere else
        assert torch.equal(out[:, ~mask], image[:, ~mask])  # untouched outside
        full += int(mask.sum()) == length * length
        clipped += 0 < int(mask.sum()) < length * length
    assert full > 0 and clipped > 0  # both cases were exercised
    assert (image > 0).all()  # the input itself is not modified


def test_cutout_is_reproducible_under_torch_seed_and_zero_length_is_identity():
    image = torch.rand(3, 8, 8)
    torch.manual_seed(7)
    a = Cutout(4)(image)
    torch.manual_seed(7)
    assert torch.equal(a, Cutout(4)(image))
    assert Cutout(0)(image) is image
    with pytest.raises(ValueError):
        Cutout(-1)


# ---------------------------------------------------------------------------------------------
# ImageFolder data: the user's own, and ImageNet


def write_folder(root, split: str, classes=("bird", "cat", "dog"), per_class=2) -> None:
    rng = np.random.default_rng(len(split))
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (30 + 7 * i, 40, 3), dtype=np.uint8)  # not square
            Image.fromarray(pixels).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("size, network", [(16, "cifar"), (80, "imagenet")])
def test_folder_loads_at_the_requested_size(tmp_path, size, network):
    write_folder(tmp_path, "train")
    write_folder(tmp_path, "test", per_class=1)
    train, test, info = build_datasets("folder", str(tmp_path), image_size=size, cutout_length=4)
    assert (info.num_classes, info.image_size, info.network) == (3, size, network)
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert len(train) == 6 and len(test) == 3 and train.classes == ["bird", "cat", "dog"]
    for ds in (train, test):
        image, label = ds[len(ds) - 1]
        assert image.shape == (3, size, size) and label == 2


def test_folder_falls_back_to_val_and_needs_one_of_them(tmp_path):
    write_folder(tmp_path, "train")
    with pytest.raises(UserError) as err:
        build_datasets("folder", str(tmp_path))
    assert str(tmp_path) in str(err.value) and "test" in str(err.value)

    write_folder(tmp_path, "val", per_class=1)
    _, test, info = build_datasets("folder", str(tmp_path))
    assert test.root.endswith("val") and len(test) == 3 and info.image_size == 32


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="train"):  # nothing at all
        write_folder(tmp_path, "test")
        build_datasets("folder", str(tmp_path))
    write_folder(tmp_path, "train", classes=("bird", "cat"))
    with pytest.raises(UserError, match="dog"):  # different class lists
        build_datasets("folder", str(tmp_path))


def test_imagenet_folders(tmp_path):
    with pytest.raises(UserError, match="train"):
        build_datasets("imagenet", str(tmp_path))
    write_folder(tmp_path, "train", classes=("a", "b"))
    with pytest.raises(UserError, match="val"):
        build_datasets("imagenet", str(tmp_path))
    write_folder(tmp_path, "val", classes=("a", "b"), per_class=1)
    train, val, info = build_datasets("imagenet", str(tmp_path), image_size=48)
    assert (info.num_classes, info.image_size, info.network) == (2, 48, "imagenet")
    assert train[0][0].shape == (3, 48, 48) and val[0][0].shape == (3, 48, 48)
    resize = val.transform.transforms[0]
    assert isinstance(resize, transforms.Resize) and resize.size == round(48 * 256 / 224)
    _, _, default = build_datasets("imagenet", str(tmp_path))
    assert default.image_size == 224


# ---------------------------------------------------------------------------------------------
# Loaders


def test_loader_order_is_reproducible_by_reseeding_its_generator():
    data = TensorDataset(torch.arange(50))
    g = torch.Generator()
    loader = make_loader(data, 8, shuffle=True, generator=g)

    def epoch(seed):
        g.manual_seed(seed)
        return torch.cat([b for (b,) in loader]).tolist()

    first = epoch(1)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert epoch(1) == first and epoch(2) != first

    ordered = make_loader(data, 8, shuffle=False, drop_last=True)
    assert torch.cat([b for (b,) in ordered]).tolist() == list(range(48))


def test_loader_keeps_a_given_sampler():
    data = TensorDataset(torch.arange(10))
    loader = make_loader(data, 4, shuffle=True, sampler=[9, 8, 7])
    assert torch.cat([b for (b,) in loader]).tolist() == [9, 8, 7]


# ---------------------------------------------------------------------------------------------
# SplitLoader: every sample augmented under its own seed


def _augmented_set():
    # Pad-and-crop, flip and Cutout: every item of the training set is random.
    train, _, _ = build_datasets("synthetic", "unused", synthetic_size=30, image_size=8,
                                 cutout_length=4)
    return train


def _split_batches(train, workers, rank, world_size):
    """A weight epoch, 10 batches of the endless stream and 6 of the stream loaded in the
    middle of pass 0."""
    indices = torch.arange(3, 30)  # 27 images, batches of 4 (the last one partial)
    shards = dict(workers=workers, rank=rank, world_size=world_size)
    epoch = list(SplitLoader(train, indices, 4, seed=5, stream=0, **shards).epoch(1))
    stream = SplitLoader(train, indices, 4, seed=5, stream=1, **shards)
    endless = [next(stream) for _ in range(10)]
    loaded = SplitLoader(train, indices, 4, seed=5, stream=1, **shards)
    loaded.load_state_dict({"pass": 0, "taken": 2})
    resumed = [next(loaded) for _ in range(6)]
    return epoch, endless, resumed, stream.state_dict()


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_split_loader_batches_do_not_depend_on_the_workers(rank, world_size):
    train = _augmented_set()
    in_main = _split_batches(train, 0, rank, world_size)
    in_workers = _split_batches(train, 2, rank, world_size)
    for got, want in zip(in_workers[:3], in_main[:3], strict=True):
        _assert_same_batches(got, want)
    # 7 batches per pass on one process, 4 per rank on two: 10 batches cross a pass boundary.
    assert in_main[3] == in_workers[3] == ({"pass": 1, "taken": 3} if world_size == 1
                                           else {"pass": 2, "taken": 2})
    # A stream loaded mid-pass continues as the uninterrupted one, across the pass boundary.
    _assert_same_batches(in_main[2], in_main[1][2:8])
    _assert_same_batches(in_workers[2], in_main[1][2:8])
    # The augmentation is really random: one image, drawn in two passes, differs.
    one = SplitLoader(train, torch.tensor([7]), 1, seed=5, stream=0, workers=0)
    assert not torch.equal(next(one)[0], next(one)[0])


def test_drawing_batches_in_the_main_process_leaves_its_random_state_alone():
    train = _augmented_set()
    loader = SplitLoader(train, torch.arange(30), 4, seed=0, stream=0, workers=0)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    batches = list(loader.epoch(0)) + [next(loader) for _ in range(9)]
    assert len(batches) == 17
    assert torch.equal(torch.get_rng_state(), before)
