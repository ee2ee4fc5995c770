"""Datasets, augmentation and loaders shared by the search and the final training.

The augmentation is the DARTS paper's (Liu et al. 2019, Section 3.3 and Appendix A.2), as in
the reference code: CIFAR images get a random 32x32 crop of the 4-pixel zero-padded image, a
random horizontal flip, per-channel normalization and, in final training, Cutout (DeVries &
Taylor 2017, 16x16). ImageNet images get the reference `train_imagenet.py` pipeline: random
resized crop to 224, flip, colour jitter; evaluation resizes to 256 and centre-crops 224.

Five sources, one entry point (`build_datasets`):

- `cifar10`, `cifar100`: torchvision's own reader and on-disk format, under `root`.
- `imagenet`: an ImageFolder tree, `root/train` and `root/val`.
- `folder`: the user's own ImageFolder tree, `root/train` and `root/test` (or `root/val`),
  resized to `image_size`.
- `synthetic`: `SyntheticImages`, generated in memory; no download, deterministic, learnable.
  It is what tests, smoke runs and machines without the data sets use.

A missing or malformed data set is the user's mistake, so it raises `UserError` with one
message that names the directory and the fix; never a bare traceback.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, get_worker_info
from torchvision import datasets, transforms

from darts.errors import UserError

DATASETS = ("cifar10", "cifar100", "ImageNet16-120", "imagenet", "folder", "synthetic")

# Per-channel mean and standard deviation over all training pixels. The CIFAR-10 numbers are
# the reference code's (utils.py); the CIFAR-100 ones are computed the same way (population
# std over every pixel, not the mean of per-image stds).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)
# ImageNet16-120's statistics as NAS-Bench-201 normalises them (AutoDL-Projects,
# xautodl/datasets/get_dataset_with_transform.py).
IMAGENET16_MEAN = (122.68 / 255, 116.66 / 255, 104.01 / 255)
IMAGENET16_STD = (63.22 / 255, 61.26 / 255, 65.09 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SyntheticImages is built around mid-grey with about this spread (see its constants).
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)

# Images at most this size are treated as CIFAR-like (NetworkCIFAR, pad-and-crop augmentation);
# larger ones as ImageNet-like (NetworkImageNet, random resized crops).
SMALL_IMAGE_MAX = 64

# Seconds any single socket operation of a download attempt may block, so that an offline
# machine fails in bounded time instead of hanging.
DOWNLOAD_TIMEOUT = 30.0

Transform = Callable[[Any], Any]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int  # side of the square network input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    network: str  # "cifar" (NetworkCIFAR, small images) or "imagenet" (NetworkImageNet)


# ---------------------------------------------------------------------------------------------
# Augmentation


class Cutout:
    """Cutout (DeVries & Taylor 2017): zero a `length` x `length` square of a CHW tensor.

    As in the reference code, the centre is drawn uniformly over the whole image, so the square
    is clipped where it crosses a border, and the transform runs after normalization (the
    square becomes the data set mean). One difference: the reference cuts
    `2 * (length // 2)` pixels, one short of `length` when it is odd; this cuts `length`.
    The draw uses torch's global RNG, so `torch.manual_seed` (or `SeededSamples`, per sample)
    makes it reproducible.
    """

    def __init__(self, length: int):
        if length < 0:
            raise ValueError(f"Cutout length must be >= 0, got {length}")
        self.length = int(length)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.length == 0:
            return img
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, (1,)))
        cx = int(torch.randint(w, (1,)))
        y0, x0 = cy - self.length // 2, cx - self.length // 2
        img = img.clone()  # never write into the caller's tensor
        img[..., max(y0, 0) : max(y0 + self.length, 0), max(x0, 0) : max(x0 + self.length, 0)] = 0
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


def _cifar_transforms(
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    cutout_length: int,
    resize: bool = False,
) -> tuple[Transform, Transform]:
    """(train, test) transforms for small images: pad-and-crop, flip, normalize, cutout.

    `resize` first brings images of any size to `size` x `size` (for user folders).
    """
    head = [transforms.Resize((size, size))] if resize else []
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train = [
        *head,
        # The paper's 4 pixels of padding at 32x32; scaled with the image for other sizes.
        transforms.RandomCrop(size, padding=size // 8),
        transforms.RandomHorizontalFlip(),
        *normalize,
    ]
    if cutout_length > 0:
        train.append(Cutout(cutout_length))
    return transforms.Compose(train), transforms.Compose(head + normalize)


def _imagenet_transforms(
    size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[Transform, Transform]:
    """(train, val) transforms of the reference train_imagenet.py, at any crop size.

    Cutout is not part of the DARTS ImageNet recipe and is not applied here.
    """
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            *normalize,
        ]
    )
    # The usual 256 -> 224 ratio, kept for other crop sizes.
    val = transforms.Compose(
        [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), *normalize]
    )
    return train, val


# ---------------------------------------------------------------------------------------------
# Synthetic data


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation from `n_in` grid points to `n_out` (corners aligned), as a matrix."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


class _ArrayImages(Dataset):
    """Images held as a uint8 N x H x W x 3 array `data` with int `targets`, as torchvision's
    CIFAR10 holds them: an item is `(PIL image, label)` passed through `transform`."""

    data: np.ndarray
    targets: list[int]
    transform: Transform | None

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img: Any = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __len__(self) -> int:
        return len(self.data)


class SyntheticImages(_ArrayImages):
    """Offline, deterministic and learnable image classification (not noise).

    Each class has a fixed RGB template, drawn from `seed` alone so that the train and test
    splits share it: a smooth random colour field (a 6x6 grid of Gaussian noise, bilinearly
    upsampled) plus a coloured sinusoidal grating of class-specific orientation and frequency.
    A sample is its class template seen through a window shifted by up to a quarter of the
    image in each direction (which also randomizes the grating's phase), with random contrast
    and brightness and independent per-pixel noise. The split (`train`) only selects the
    sample stream, so train and test images differ but come from the same classes.

    The constants below were tuned at 32x32 with 10 classes (chance 10%): on the test split a
    nearest-class-mean classifier on raw pixels scores 50-70% depending on the seed, the best
    single pixel under 20%, and a three-layer CNN about 70% after one epoch of 5,000 images.
    Generating 10,000 images of 32x32 takes about 0.4 s on two CPU cores.

    Like torchvision's CIFAR10: `.data` is uint8 N x H x W x 3, `.targets` a list of ints,
    `.classes` the class names, and an item is `(PIL image, label)` passed through `transform`.
    """

    GRID = 6  # low-resolution grid of the colour field, over the padded template
    FIELD_AMPLITUDE = 0.08  # intensity std of the colour field, in [0, 1] units
    GRATING_AMPLITUDE = 0.06
    GRATING_CYCLES = (2.0, 5.0)  # periods per image side
    CONTRAST = (0.6, 1.4)
    BRIGHTNESS = 0.15  # +- uniform offset
    NOISE = 0.7  # width of the uniform per-pixel noise (std 0.7 / sqrt(12) ~ 0.2)

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 10,
        image_size: int = 32,
        train: bool = True,
        seed: int = 0,
        transform: Transform | None = None,
    ):
        if num_samples < 1 or num_classes < 2 or image_size < 4:
            raise ValueError(
                "SyntheticImages needs num_samples >= 1, num_classes >= 2, image_size >= 4; "
                f"got {num_samples}, {num_classes}, {image_size}"
            )
        self.train = train
        self.seed = seed
        self.transform = transform
        self.classes = [f"class_{i}" for i in range(num_classes)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        templates = self._templates(num_classes, image_size, seed)
        self.data, labels = self._samples(templates, num_samples, image_size, seed, train)
        self.targets: list[int] = labels.tolist()

    @classmethod
    def _templates(cls, num_classes: int, size: int, seed: int) -> np.ndarray:
        """Class templates in 0..255 intensity units, C x P x P x 3, P = size + 2 * shift."""
        rng = np.random.default_rng([seed, 0])
        pad = 2 * (size // 4)
        p = size + pad
        up = _interpolation_matrix(p, cls.GRID)
        low = rng.standard_normal((num_classes, cls.GRID, cls.GRID, 3), dtype=np.float32)
        field = np.einsum("ph,chwk,qw->cpqk", up, low, up)
        field /= field.std(axis=(1, 2, 3), keepdims=True)

        theta = rng.uniform(0.0, np.pi, num_classes)
        cycles = rng.uniform(*cls.GRATING_CYCLES, num_classes)
        colour = rng.standard_normal((num_classes, 3))
        colour /= np.linalg.norm(colour, axis=1, keepdims=True)
        coord = np.arange(p) / size  # in image sides, so the pattern scales with the image
        proj = (
            np.cos(theta)[:, None, None] * coord[None, :, None]
            + np.sin(theta)[:, None, None] * coord[None, None, :]
        )
        grating = (
            np.sin(2 * np.pi * cycles[:, None, None] * proj)[..., None] * colour[:, None, None]
        )

        tpl = cls.FIELD_AMPLITUDE * field + cls.GRATING_AMPLITUDE * grating
        return (255.0 * tpl).astype(np.float32)

    @classmethod
    def _samples(
        cls, templates: np.ndarray, n: int, size: int, seed: int, train: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, 1 if train else 2])
        num_classes, p = templates.shape[0], templates.shape[1]
        labels = rng.permutation(np.arange(n) % num_classes)  # balanced classes
        dy = rng.integers(0, p - size + 1, n)
        dx = rng.integers(0, p - size + 1, n)
        # One gather of every pixel's RGB triple from its class template, shifted window.
        idx = np.arange(size)
        rows = labels[:, None, None] * p + dy[:, None, None] + idx[None, :, None]
        flat = rows * p + dx[:, None, None] + idx[None, None, :]
        img = np.take(templates.reshape(-1, 3), flat, axis=0)  # N x S x S x 3, float32

        # In-place arithmetic in 0..255 units: this runs over every pixel, keep passes few.
        img *= rng.uniform(*cls.CONTRAST, (n, 1, 1, 1)).astype(np.float32)
        offset = 0.5 - cls.NOISE / 2 + rng.uniform(-cls.BRIGHTNESS, cls.BRIGHTNESS, (n, 1, 1, 1))
        img += (255.0 * offset + 0.5).astype(np.float32)  # + 0.5: round on the cast below
        noise = rng.integers(0, 256, img.shape, dtype=np.uint8)
        img += noise * np.float32(cls.NOISE)
        np.clip(img, 0.0, 255.0, out=img)
        return img.astype(np.uint8), labels


# ---------------------------------------------------------------------------------------------
# Data sets on disk


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _load_cifar(
    cls: type[datasets.CIFAR10],
    label: str,
    root: str,
    download: bool,
    train_tf: Transform,
    test_tf: Transform,
) -> tuple[Dataset, Dataset]:
    """CIFAR through torchvision's reader; a missing or corrupt copy becomes a UserError.

    The reader unpickles the batch files, but only after checking each one against the md5 of
    the official archive, so no file that is not the published data is ever unpickled.
    """

    def load() -> tuple[Dataset, Dataset]:
        return cls(root, train=True, transform=train_tf), cls(root, train=False, transform=test_tf)

    try:
        return load()
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        pass
    folder = os.path.join(root, cls.base_folder)
    problem = (
        f"{folder} exists but its files are incomplete or corrupted (md5 check failed)"
        if os.path.isdir(folder)
        else f"{folder} does not exist"
    )
    if download:
        made_root = not os.path.exists(root)
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT):
                cls(root, train=True, download=True)
            return load()
        except Exception as e:  # offline, DNS, timeout, truncated archive: all the same fix
            problem += f"; the download from {cls.url} failed ({type(e).__name__}: {e})"
            if made_root:  # leave no empty or half-downloaded folder behind
                shutil.rmtree(root, ignore_errors=True)
    else:
        problem += "; download is disabled"
    raise UserError(
        f"{label} not found in {root}: expected the extracted archive in the sub-folder "
        f"{folder} ({problem}). Put the extracted {cls.filename} there "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html), "
        "or run with `--dataset synthetic`, which needs no download."
    )


_FOLDER_LAYOUT = (
    "Expected one sub-folder per class holding the images, e.g. train/cat/001.png; "
    "or run with `--dataset synthetic`, which needs no data."
)


def read_image(path: str) -> Image.Image:
    """An image file as RGB (torchvision's PIL loader); a file that is not a readable image is
    the user's mistake: a UserError naming it, raised where the image is read (a DataLoader
    worker too, whose error the main process re-raises as a UserError). Images are only
    read when used: a large folder starts at once, and a bad file is reported when reached."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoder's failure on the bytes of a user's file
        if isinstance(e, UnidentifiedImageError):
            empty = os.path.isfile(path) and os.path.getsize(path) == 0
            reason = "the file is empty" if empty else "not an image format Pillow can read"
        elif isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        else:
            reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(
            f"{path}: cannot read this image ({reason}); remove or replace the file"
        ) from None


def _image_folder(path: str, what: str, transform: Transform) -> datasets.ImageFolder:
    if not os.path.isdir(path):
        raise UserError(f"{what}: directory {path} not found. {_FOLDER_LAYOUT}")
    try:
        return datasets.ImageFolder(path, transform=transform, loader=read_image)
    except (FileNotFoundError, ValueError) as e:  # no class folders, or no images in them
        raise UserError(
            f"{what}: {path} is not a usable image folder ({e}). {_FOLDER_LAYOUT}"
        ) from e


def _check_num_classes(name: str, found: int, requested: int | None) -> None:
    if requested is not None and requested != found:
        raise UserError(
            f"--num_classes {requested} does not match {name}, which has {found} classes"
        )


# ---------------------------------------------------------------------------------------------
# Entry points


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a data set's pickled batch
    files are data, and any other global (a function, a class) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")


class ImageNet16(_ArrayImages):
    """Downsampled ImageNet at 16x16 (Chrabaszcz et al. 2017) in its published format, as
    NAS-Bench-201 uses it: `train_data_batch_1` .. `train_data_batch_10` and `val_data`, each a
    pickled dict of `data` (uint8, N x 768, channel-major) and `labels` (1..1000). The first
    `classes` labels are kept (ImageNet16-120: 120) and renumbered from 0. Read with an
    unpickler that admits only plain containers and numpy arrays."""

    TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
    VAL = ("val_data",)

    def __init__(self, root: str, train: bool, classes: int = 120,
                 transform: Transform | None = None):
        datas, labels = [], []
        for name in self.TRAIN if train else self.VAL:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    entry = _ArrayUnpickler(f, encoding="latin1").load()
                data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 16, 16)
                label = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
                if len(label) != len(data):
                    raise ValueError("data and labels differ in length")
            except FileNotFoundError:
                raise UserError(
                    f"ImageNet16-120 not found: {path} is missing (expected the files "
                    f"{', '.join(self.TRAIN[:2])}, ..., val_data of the downsampled ImageNet "
                    f"16x16 in --data)") from None
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError,
                    AttributeError, IndexError) as e:
                raise UserError(f"{path} is not a downsampled-ImageNet batch file "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
            keep = (label >= 1) & (label <= classes)
            datas.append(data[keep])
            labels.append(label[keep] - 1)
        self.data = np.ascontiguousarray(np.concatenate(datas).transpose(0, 2, 3, 1))
        self.targets = np.concatenate(labels).tolist()
        self.classes = [str(c) for c in range(classes)]
        self.transform = transform


def network_family(name: str, image_size: int | None = None) -> str:
    """"cifar" (NetworkCIFAR and its recipe) for small images, "imagenet" for large ones."""
    if name == "imagenet":
        return "imagenet"
    if name in ("folder", "synthetic") and image_size is not None and image_size > SMALL_IMAGE_MAX:
        return "imagenet"
    return "cifar"


@dataclass(frozen=True)
class _Request:
    """What `build_datasets` was asked for, beside the data set's name and folder."""

    root: str
    cutout_length: int
    image_size: int | None
    num_classes: int | None
    synthetic_size: int
    seed: int
    download: bool
    train_augment: bool

    def transforms(self, pair: tuple[Any, Any]) -> tuple[Any, Any]:
        """(train, test) transforms; the training set takes the test one without augmentation."""
        train_tf, test_tf = pair
        return (train_tf if self.train_augment else test_tf), test_tf


def build_datasets(
    name: str,
    root: str,
    *,
    cutout_length: int = 0,
    image_size: int | None = None,
    num_classes: int | None = None,
    synthetic_size: int = 5000,
    seed: int = 0,
    download: bool = True,
    train_augment: bool = True,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """(train set with training augmentation, test/val set with test transform, info).

    `image_size` is the network input side: fixed at 32 for CIFAR (another value is an
    error), 224 by default for ImageNet, 32 by default for `folder` and `synthetic`.
    `num_classes` picks the number of synthetic classes; for the other sets it must match the
    data when given. `train_augment=False` gives the training set the test transform.
    `root` is unused by `synthetic`, `download` only used by CIFAR. `cutout_length` applies
    to the CIFAR-style pipelines (CIFAR, synthetic, small `folder` images) only.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if cutout_length < 0:
        raise UserError(f"--cutout_length must be >= 0, got {cutout_length}")
    if image_size is not None and image_size < 4:
        raise UserError(f"--image_size must be >= 4, got {image_size}")
    request = _Request(os.path.abspath(os.path.expanduser(os.fspath(root))), cutout_length,
                       image_size, num_classes, synthetic_size, seed, download, train_augment)
    build = {"cifar10": _cifar, "cifar100": _cifar, "ImageNet16-120": _imagenet16,
             "synthetic": _synthetic, "imagenet": _imagenet, "folder": _folder}[name]
    return build(name, request)


def _cifar(name: str, r: _Request) -> tuple[Dataset, Dataset, DatasetInfo]:
    if r.image_size not in (None, 32):
        raise UserError(f"{name} images are 32x32; --image_size {r.image_size} is not supported")
    cls, label, mean, std, classes = {
        "cifar10": (datasets.CIFAR10, "CIFAR-10", CIFAR10_MEAN, CIFAR10_STD, 10),
        "cifar100": (datasets.CIFAR100, "CIFAR-100", CIFAR100_MEAN, CIFAR100_STD, 100),
    }[name]
    _check_num_classes(name, classes, r.num_classes)
    train_tf, test_tf = r.transforms(_cifar_transforms(32, mean, std, r.cutout_length))
    train, test = _load_cifar(cls, label, r.root, r.download, train_tf, test_tf)
    return train, test, DatasetInfo(name, classes, 32, mean, std, "cifar")


def _imagenet16(name: str, r: _Request) -> tuple[Dataset, Dataset, DatasetInfo]:
    if r.image_size not in (None, 16):
        raise UserError(f"{name} images are 16x16; --image_size {r.image_size} is not supported")
    _check_num_classes(name, 120, r.num_classes)
    # NAS-Bench-201's augmentation: random crop with 2 pixels of padding, flip.
    train_tf, test_tf = r.transforms(
        _cifar_transforms(16, IMAGENET16_MEAN, IMAGENET16_STD, r.cutout_length))
    train = ImageNet16(r.root, True, transform=train_tf)
    test = ImageNet16(r.root, False, transform=test_tf)
    return train, test, DatasetInfo(name, 120, 16, IMAGENET16_MEAN, IMAGENET16_STD, "cifar")


def _synthetic(name: str, r: _Request) -> tuple[Dataset, Dataset, DatasetInfo]:
    size = r.image_size or 32
    classes = r.num_classes if r.num_classes is not None else 10
    if classes < 2:
        raise UserError(f"--num_classes must be >= 2 for synthetic data, got {classes}")
    if r.synthetic_size < 1:
        raise UserError(f"--synthetic_size must be >= 1, got {r.synthetic_size}")
    mean, std = SYNTHETIC_MEAN, SYNTHETIC_STD
    train_tf, test_tf = r.transforms(_cifar_transforms(size, mean, std, r.cutout_length))
    train = SyntheticImages(r.synthetic_size, classes, size, seed=r.seed, transform=train_tf)
    test_size = max(r.synthetic_size // 5, classes)
    test = SyntheticImages(test_size, classes, size, train=False, seed=r.seed, transform=test_tf)
    return train, test, DatasetInfo(name, classes, size, mean, std, network_family(name, size))


def _imagenet(name: str, r: _Request) -> tuple[Dataset, Dataset, DatasetInfo]:
    size = r.image_size or 224
    train_tf, test_tf = r.transforms(_imagenet_transforms(size, IMAGENET_MEAN, IMAGENET_STD))
    train = _image_folder(os.path.join(r.root, "train"), "ImageNet", train_tf)
    test = _image_folder(os.path.join(r.root, "val"), "ImageNet", test_tf)
    _check_same_classes(train, test, r.root)
    _check_num_classes(name, len(train.classes), r.num_classes)
    return train, test, DatasetInfo(name, len(train.classes), size, IMAGENET_MEAN, IMAGENET_STD,
                                    "imagenet")


def _folder(name: str, r: _Request) -> tuple[Dataset, Dataset, DatasetInfo]:
    """The user's own images, resized to image_size."""
    root = r.root
    if not os.path.isdir(root):
        raise UserError(f"--data {root}: the folder does not exist; give the folder that holds "
                        f"train/ and test/ (or val/). {_FOLDER_LAYOUT}")
    size = r.image_size or 32
    network = network_family(name, size)
    if network == "cifar":
        pair = _cifar_transforms(size, IMAGENET_MEAN, IMAGENET_STD, r.cutout_length, resize=True)
    else:
        pair = _imagenet_transforms(size, IMAGENET_MEAN, IMAGENET_STD)
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir) and os.path.isdir(os.path.join(root, "val")):
        test_dir = os.path.join(root, "val")
    if not os.path.isdir(test_dir):
        raise UserError(
            f"dataset folder {root}: found neither {test_dir} nor {os.path.join(root, 'val')}; "
            f"it needs train/ and test/ (or val/). {_FOLDER_LAYOUT}"
        )
    train_tf, test_tf = r.transforms(pair)
    train = _image_folder(os.path.join(root, "train"), "dataset folder", train_tf)
    test = _image_folder(test_dir, "dataset folder", test_tf)
    _check_same_classes(train, test, root)
    _check_num_classes(root, len(train.classes), r.num_classes)
    info = DatasetInfo(name, len(train.classes), size, IMAGENET_MEAN, IMAGENET_STD, network)
    return train, test, info


def _check_same_classes(train: datasets.ImageFolder, test: datasets.ImageFolder, root: str) -> None:
    # Labels are indices into the sorted class list: different lists mean silently wrong labels.
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise UserError(
            f"{root}: {train.root} and {test.root} must have the same class folders; "
            f"only in train: {only_train or 'none'}, only in test: {only_test or 'none'}"
        )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A plain DataLoader.

    With `shuffle` and no `sampler`, the order comes from a RandomSampler on `generator`, so
    re-seeding the generator before an epoch reproduces that epoch's order (and, with
    workers, the workers' seeds, which the loader also draws from it). A given `sampler`
    (e.g. a DistributedSampler or a SubsetRandomSampler for the search split) decides the
    order itself and `shuffle` is ignored.
    """
    if sampler is None and shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------
# The search split (Liu et al. 2019, Section 3.1.1): half of the training set trains the
# network weights, the other half the architecture.


def search_split(num_samples: int, train_portion: float,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight indices, alpha indices): a random `train_portion` of the training set and the
    rest, drawn from `seed`.

    The reference code takes the first and the second half in file order, which for CIFAR
    is already a random order; an ImageFolder is sorted by class, where that split would
    give the two halves disjoint classes. A seeded random split is right for both.
    """
    split = int(np.floor(train_portion * num_samples))
    if not 0 < split < num_samples:
        raise UserError(
            f"--train_portion {train_portion} splits {num_samples} training images into "
            f"{split} for the weights and {num_samples - split} for the architecture; "
            f"both halves need at least one image (use a value strictly between 0 and 1)")
    g = torch.Generator().manual_seed(pass_seed(seed, 999, 0))
    indices = torch.randperm(num_samples, generator=g)
    return indices[:split].sort().values, indices[split:].sort().values


def pass_seed(seed: int, stream: int, pass_index: int) -> int:
    """A 63-bit seed for pass `pass_index` of stream `stream` of a run seeded `seed`."""
    state = np.random.SeedSequence([seed, stream, pass_index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s part of a pass's `order` over `world_size` processes.

    As torch's DistributedSampler: the order is padded by wrapping around to a multiple of
    the world size, so every rank takes the same number of samples (and batches), then rank
    r takes positions r, r + world_size, ...
    """
    if world_size == 1:
        return order
    total = -(-len(order) // world_size) * world_size
    if total > len(order):
        order = order.repeat(-(-total // len(order)))[:total]
    return order[rank::world_size]


def pass_order(indices: torch.Tensor, seed: int, stream: int, pass_index: int) -> torch.Tensor:
    """`indices` in pass `pass_index`'s order: a function of (seed, stream, pass) alone."""
    g = torch.Generator().manual_seed(pass_seed(seed, stream, pass_index))
    return indices[torch.randperm(len(indices), generator=g)]


# Offset of the stream word of the per-sample augmentation seeds (`sample_seeds`), so that
# they never share a seed with a pass order (`pass_order`: stream + 0) or with the
# device-resident loader's batch seeds (`darts.device_data`: stream + 2000).
SAMPLE_SEED_STREAM_OFFSET = 1000


def sample_seeds(seed: int, stream: int, pass_index: int, length: int) -> torch.Tensor:
    """The augmentation seeds of positions 0..`length`-1 of pass `pass_index` (int64, >= 0).

    A function of (seed, stream, pass, position) alone: drawn from a generator seeded with
    `pass_seed(seed, stream + SAMPLE_SEED_STREAM_OFFSET, pass_index)`.
    """
    g = torch.Generator().manual_seed(
        pass_seed(seed, stream + SAMPLE_SEED_STREAM_OFFSET, pass_index))
    return torch.randint(0, 2**63 - 1, (length,), generator=g, dtype=torch.long)


class ShuffledSubset(Sampler[tuple[int, int]]):
    """The given indices in a fresh random order each pass, each with its augmentation seed.

    It yields `(index, sample seed)` pairs for a `SeededSamples` data set. Pass p's order
    depends on (seed, stream, p) alone, and the sample seed of the sample at position k of
    the pass on (seed, stream, p, k) alone (`sample_seeds`), so a resumed run draws the same
    orders and the same augmentations without any saved generator state; `start` skips the
    first samples of a pass (resuming in the middle of one). With `world_size` > 1 it yields
    rank `rank`'s shard of each pass (`shard`); the seeds are sharded with the positions, so
    a sample that two ranks take (the wrap-around padding) is augmented differently by each.
    """

    def __init__(self, indices: torch.Tensor, seed: int, stream: int = 0, *,
                 rank: int = 0, world_size: int = 1):
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.seed, self.stream = seed, stream
        self.rank, self.world_size = rank, world_size
        self.pass_index, self.start = 0, 0

    def set_pass(self, pass_index: int, start: int = 0) -> None:
        self.pass_index, self.start = pass_index, start

    def order(self, pass_index: int) -> torch.Tensor:
        """This rank's indices of pass `pass_index`, in order."""
        order = pass_order(self.indices, self.seed, self.stream, pass_index)
        return shard(order, self.rank, self.world_size)

    def seeds(self, pass_index: int) -> torch.Tensor:
        """The sample seeds of this rank's positions of pass `pass_index` (as `order`)."""
        total = -(-len(self.indices) // self.world_size) * self.world_size
        seeds = sample_seeds(self.seed, self.stream, pass_index, total)
        return seeds[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.pass_index)[self.start:].tolist()
        seeds = self.seeds(self.pass_index)[self.start:].tolist()
        return zip(order, seeds, strict=True)

    def __len__(self) -> int:
        per_rank = -(-len(self.indices) // self.world_size)
        return max(per_rank - self.start, 0)


class SeededSamples(Dataset):
    """`dataset` indexed by `(index, sample seed)`: the item `dataset[index]`, its transform's
    random draws made from torch's global generator seeded with the sample seed.

    So an item is a function of (index, seed) alone: the same in any DataLoader worker and in
    the main process, whenever and by whichever iterator it is produced. torchvision's
    transforms and `Cutout` draw from torch's global (CPU) generator; draws from python's
    `random` or numpy's global generator are not seeded here (no transform of `darts.train.data`
    makes any). In the main process (`workers=0`) the generator's state is restored after
    the item, so the caller's own random stream (drop path, initialisation) is untouched;
    a worker process has no other use for it. The cost is a few microseconds per sample.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        generator = torch.default_generator
        if get_worker_info() is not None:
            generator.manual_seed(seed)
            return self.dataset[index]
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class SplitLoader:
    """Batches of one split of a data set, reshuffled each pass, reproducible per pass.

    `epoch(p)` is a loader over pass p (the weight half: one pass per epoch). Iterating the
    object itself gives an endless stream of batches that starts a new pass when one ends:
    the architect's validation batches, one per search step (Algorithm 1), from a persistent
    iterator. `state_dict()` is (pass, batches taken in the pass); a loaded stream resumes
    at the next batch.

    Every sample is augmented under its own seed, a function of (seed, stream, pass, position
    in the pass) alone (`ShuffledSubset`, `SeededSamples`), so the batches are identical with
    any number of workers, and a stream loaded in the middle of a pass continues bit for bit
    as the uninterrupted one. Drawing batches leaves the main process's random state as it
    was.
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, batch_size: int, *, seed: int,
                 stream: int, workers: int = 0, pin_memory: bool = False, rank: int = 0,
                 world_size: int = 1):
        self.batch_size = batch_size
        self.sampler = ShuffledSubset(indices, seed, stream, rank=rank, world_size=world_size)
        # Starting an iterator draws its workers' base seed from this generator rather than
        # from torch's global one; the items do not depend on it.
        self.generator = torch.Generator().manual_seed(0)
        self.loader = make_loader(SeededSamples(dataset), batch_size, shuffle=False,
                                  workers=workers, generator=self.generator,
                                  sampler=self.sampler, pin_memory=pin_memory)
        self.pass_index, self.taken = 0, 0
        self._iterator: Iterator | None = None

    def __len__(self) -> int:
        """Batches per pass (of this rank)."""
        per_rank = -(-len(self.sampler.indices) // self.sampler.world_size)
        return -(-per_rank // self.batch_size)

    def epoch(self, pass_index: int) -> DataLoader:
        self._prepare(pass_index, 0)
        return self.loader

    def _prepare(self, pass_index: int, taken: int) -> None:
        self.sampler.set_pass(pass_index, taken * self.batch_size)

    def __iter__(self) -> SplitLoader:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._prepare(self.pass_index, self.taken)
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.pass_index, self.taken = self.pass_index + 1, 0
            self._prepare(self.pass_index, 0)
            self._iterator = iter(self.loader)
            batch = next(self._iterator)
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_index, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index, self.taken = int(state["pass"]), int(state["taken"])
        self._iterator = None
