"""A device-resident data pipeline for small images (CIFAR-10/100, synthetic): the whole uint8
training set lives on the GPU and the paper's augmentation runs there, one batch at a time.

Why: a DARTS search or final training at 32x32 does little arithmetic per image, so on a fast
GPU the DataLoader path (`darts.train.data`: PIL images, per-image transforms in CPU worker
processes) cannot keep up and the GPU waits. CIFAR's 50,000 training images are 150 MB as
uint8; copied to the device once, a batch is an index into them, and the augmentation is a
handful of batched tensor operations, with no Python loop over samples and no worker.

Semantics are the DataLoader path's, exactly in distribution (`darts.train.data._cifar_transforms`):

- training: RandomCrop(size, padding=size // 8) of the zero-padded image (black, before
  normalization), RandomHorizontalFlip(0.5), ToTensor (/255), Normalize(mean, std), then
  Cutout(length) (`darts.train.data.Cutout`: centre uniform over all pixels, the `length` x `length`
  square clipped at the borders, set to 0 after normalization);
- test: ToTensor and Normalize only (bit-identical to torchvision's on the same device).

Order. `DeviceSplitLoader` replaces `darts.train.data.SplitLoader`: pass p visits `indices` in
`ShuffledSubset`'s order, a CPU `randperm` seeded by `pass_seed(seed, stream, p)`, in batches
of `batch_size`, the last one partial. With one process it yields the same images in the same
batches as `SplitLoader`; only the augmentation's random numbers differ.

Sharding (DistributedDataParallel). As torch's `DistributedSampler(drop_last=False)`: the
pass's order is padded by wrapping around to a multiple of `world_size` and rank r takes
`order[r::world_size]`, so every rank has the same number of batches (no rank waits in a
collective for one that has finished) and the shards together cover every index, disjoint
apart from the few wrapped-around ones. `batch_size` is per rank. `DeviceEvalLoader` instead
takes `r::world_size` of the test set without padding, so metric sums over ranks count every
image exactly once.

Seeds. Batch b of pass p on rank r is augmented by a generator on the images' device seeded
afresh with `batch_seed(seed, stream, rank, p, b)`, a hash (numpy's `SeedSequence`) of the
five words `[seed, stream + AUGMENT_STREAM_OFFSET, rank, p, b]`. It depends on nothing else,
so a loader resumed mid-pass (`load_state_dict`) reproduces the following batches bit for bit
on the same kind of device (CPU and CUDA generators give different numbers for one seed).
The key has five words where `pass_seed`'s has three and its stream word is offset by 2000
(`SplitLoader`'s per-sample seeds use `stream + 1000`), so it collides with no other seed of a
run. Each `augment` call draws a fixed sequence (crop rows, crop columns, flips, cutout rows,
cutout columns; B numbers each, whether or not flips and cutout are on).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from darts.errors import UserError
from darts.train.data import pass_order, shard

# Offset of the augmentation seeds' stream word (SplitLoader's per-sample seeds use stream + 1000).
AUGMENT_STREAM_OFFSET = 2000

Stats = Sequence[float] | torch.Tensor
Batch = tuple[torch.Tensor, torch.Tensor]


def batch_seed(seed: int, stream: int, rank: int, pass_index: int, batch: int) -> int:
    """A 63-bit seed for the augmentation of batch `batch` of pass `pass_index` on `rank`."""
    key = [seed, stream + AUGMENT_STREAM_OFFSET, rank, pass_index, batch]
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


# ---------------------------------------------------------------------------------------------
# The images on the device


def _uint8_images(data: Any) -> torch.Tensor | None:
    """`data` as a uint8 tensor N x H x W x 3 of square images (no copy), or None."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            return None
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
        return None
    if data.dim() != 4 or data.shape[3] != 3 or data.shape[1] != data.shape[2]:
        return None
    return data


def has_device_images(dataset: Any) -> bool:
    """Whether `dataset` holds its images in memory the way torchvision's CIFAR does.

    That is `.data`, uint8 N x H x W x 3 with H == W (numpy or tensor), and `.targets`, N
    labels: CIFAR10, CIFAR100 and `SyntheticImages`. Not an ImageFolder (files on disk), not
    grey images; those keep the DataLoader path.
    """
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if targets is None:
        return False
    images = _uint8_images(data)
    return images is not None and len(targets) == images.shape[0]


def _stats(values: Stats, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)


class DeviceImages:
    """A data set's uint8 images (stored N x 3 x H x W, uint8) and int64 labels on `device`,
    with its normalization (`mean`, `std`: 1 x 3 x 1 x 1 float32)."""

    def __init__(self, data: np.ndarray | torch.Tensor, targets: Sequence[int] | torch.Tensor, *,
                 mean: Stats, std: Stats, device: torch.device | str):
        images = _uint8_images(data)
        if images is None:
            shape = tuple(getattr(data, "shape", ()))
            raise TypeError(f"DeviceImages needs uint8 images N x H x W x 3 with H == W, got "
                            f"{type(data).__name__} of shape {shape} and dtype "
                            f"{getattr(data, 'dtype', None)}")
        labels = torch.as_tensor(targets, dtype=torch.long)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but {tuple(labels.shape)} labels")
        self.device = torch.device(device)
        # Channels first on the host, then one copy to the device.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = labels.to(self.device)
        self.mean, self.std = _stats(mean, self.device), _stats(std, self.device)
        self.size = int(self.images.shape[2])

    @classmethod
    def from_dataset(cls, dataset: Any, *, mean: Stats, std: Stats,
                     device: torch.device | str) -> DeviceImages:
        """The images of a CIFAR-like data set (see `has_device_images`); its transform is
        ignored, the loaders apply the equivalent one."""
        if not has_device_images(dataset):
            raise TypeError(
                f"{type(dataset).__name__} does not hold its images in memory as `.data` (uint8 "
                "N x H x W x 3, square) with `.targets`, as torchvision's CIFAR10/CIFAR100 and "
                "darts.train.data.SyntheticImages do; use the DataLoader path (darts.train.data) for it")
        return cls(dataset.data, dataset.targets, mean=mean, std=std, device=device)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------------------
# Batch-wise transforms


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def normalize(images_uint8: torch.Tensor, mean: Stats, std: Stats,
              channels_last: bool = False) -> torch.Tensor:
    """ToTensor and Normalize of a uint8 batch B x 3 x H x W: the test transform."""
    mean, std = _stats(mean, images_uint8.device), _stats(std, images_uint8.device)
    # Same operations in the same order as torchvision (div, then sub, then div): same bits.
    x = images_uint8.float().div(255).sub(mean).div(std)
    return x.contiguous(memory_format=_memory_format(channels_last))


def augment(images_uint8: torch.Tensor, *, mean: Stats, std: Stats, generator: torch.Generator,
            pad: int, flip: bool = True, cutout: int = 0, channels_last: bool = False
            ) -> torch.Tensor:
    """The training transform of a uint8 batch B x 3 x H x W, as normalized float32.

    Per sample: a crop at offsets (oy, ox), each uniform in [0, 2 * pad], of the image
    zero-padded by `pad`; a horizontal flip with probability 1/2 (if `flip`); normalization;
    a `cutout` x `cutout` square (if > 0) centred uniformly on a pixel, clipped to the image,
    set to 0. The random numbers come from `generator` (on the batch's device), always the
    same five draws of B numbers in the same order.
    """
    if pad < 0 or cutout < 0:
        raise ValueError(f"pad and cutout must be >= 0, got {pad} and {cutout}")
    b, _, h, w = images_uint8.shape
    dev = images_uint8.device

    def draw(high: int) -> torch.Tensor:
        return torch.randint(high, (b,), generator=generator, device=dev)

    oy, ox, flipped, cy, cx = draw(2 * pad + 1), draw(2 * pad + 1), draw(2), draw(h), draw(w)

    # Crop and flip in one gather from the padded batch: output (i, j) of sample s is padded
    # pixel (oy + i, ox + j), or (oy + i, ox + w - 1 - j) when the crop is flipped.
    padded = F.pad(images_uint8, (pad, pad, pad, pad)) if pad else images_uint8
    rows = oy[:, None] + torch.arange(h, device=dev)  # B x H
    j = torch.arange(w, device=dev)
    if flip:
        j = torch.where(flipped[:, None].bool(), w - 1 - j, j)  # B x W
    cols = ox[:, None] + j
    s = torch.arange(b, device=dev)
    c = torch.arange(padded.shape[1], device=dev)
    if channels_last:
        # Index in B x H x W x C order: the result is already channels_last in memory.
        crop = padded[s[:, None, None, None], c, rows[:, :, None, None], cols[:, None, :, None]]
        crop = crop.permute(0, 3, 1, 2)
    else:
        crop = padded[s[:, None, None, None], c[:, None, None], rows[:, None, :, None],
                      cols[:, None, None, :]]
    x = normalize(crop, mean, std, channels_last)

    if cutout > 0:
        # Rows [cy - cutout // 2, cy - cutout // 2 + cutout) x the same for columns; the
        # comparisons clip the square to the image by themselves.
        y0, x0 = (cy - cutout // 2)[:, None], (cx - cutout // 2)[:, None]
        i, j = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (i >= y0) & (i < y0 + cutout)  # B x H
        in_cols = (j >= x0) & (j < x0 + cutout)  # B x W
        square = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # B x 1 x H x W
        x = x.masked_fill(square, 0.0)
    return x.contiguous(memory_format=_memory_format(channels_last))


# ---------------------------------------------------------------------------------------------
# Loaders


class _Pass:
    """One pass of a `DeviceSplitLoader`, from batch `start`: an iterable with a length."""

    def __init__(self, loader: DeviceSplitLoader, pass_index: int, start: int):
        self.loader, self.pass_index, self.start = loader, pass_index, start

    def __len__(self) -> int:
        return max(len(self.loader) - self.start, 0)

    def __iter__(self) -> Iterator[Batch]:
        shard = self.loader.shard(self.pass_index)
        for b in range(self.start, len(self.loader)):
            yield self.loader.batch(self.pass_index, b, shard)


class DeviceSplitLoader:
    """Drop-in replacement for darts.train.data.SplitLoader (same interface and same semantics), data
    already on the device.

    `epoch(p)` iterates pass p; iterating the loader itself is an endless stream of batches
    that starts the next pass when one ends; `state_dict()` is (pass, batches taken in the
    pass) and a loaded stream resumes at the next batch. Batches are (x, y) on the images'
    device: x float32 normalized (augmented if `augment`, with Cutout if `cutout_length` > 0;
    `augment=False` is the test transform, no Cutout), y int64. `batch_size` is per rank;
    with `world_size` > 1 the passes are sharded as described in the module docstring.
    """

    def __init__(self, images: DeviceImages, indices: torch.Tensor, batch_size: int, *,
                 seed: int, stream: int, augment: bool = True, cutout_length: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.images = images
        self.indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        if self.indices.dim() != 1 or len(self.indices) == 0:
            raise ValueError("DeviceSplitLoader needs a non-empty 1-d tensor of indices")
        if int(self.indices.min()) < 0 or int(self.indices.max()) >= len(images):
            raise ValueError(f"indices must lie in [0, {len(images)}), the data set's size")
        if batch_size < 1 or cutout_length < 0:
            raise ValueError(f"batch_size must be >= 1 and cutout_length >= 0, got "
                             f"{batch_size} and {cutout_length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self.augment, self.cutout_length = augment, cutout_length
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.pad = images.size // 8  # the paper's 4 pixels at 32x32, as darts.train.data
        self.per_rank = -(-len(self.indices) // world_size)
        self.generator = torch.Generator(device=images.device)
        self.pass_index, self.taken = 0, 0
        self._shard: tuple[int, torch.Tensor] | None = None  # (pass, its shard), cached

    def __len__(self) -> int:
        """Batches per pass (for this rank)."""
        return -(-self.per_rank // self.batch_size)

    def pass_order(self, pass_index: int) -> torch.Tensor:
        """All indices in pass `pass_index`'s order: ShuffledSubset's (CPU tensor)."""
        return pass_order(self.indices, self.seed, self.stream, pass_index)

    def shard(self, pass_index: int) -> torch.Tensor:
        """This rank's indices of pass `pass_index`, on the device (DistributedSampler's)."""
        if self._shard is not None and self._shard[0] == pass_index:
            return self._shard[1]
        order = shard(self.pass_order(pass_index), self.rank, self.world_size)
        mine = order.to(self.images.device)
        self._shard = (pass_index, mine)
        return mine

    def batch(self, pass_index: int, index: int, shard: torch.Tensor | None = None) -> Batch:
        """Batch `index` of pass `pass_index`: depends on nothing else (no hidden state)."""
        if shard is None:
            shard = self.shard(pass_index)
        idx = shard[index * self.batch_size:(index + 1) * self.batch_size]
        raw, y = self.images.images[idx], self.images.labels[idx]
        if not self.augment:
            return normalize(raw, self.images.mean, self.images.std, self.channels_last), y
        self.generator.manual_seed(
            batch_seed(self.seed, self.stream, self.rank, pass_index, index))
        x = augment(raw, mean=self.images.mean, std=self.images.std, generator=self.generator,
                    pad=self.pad, cutout=self.cutout_length, channels_last=self.channels_last)
        return x, y

    def epoch(self, pass_index: int, start: int = 0) -> _Pass:
        """Pass `pass_index` from batch `start`; independent of the endless stream's state."""
        return _Pass(self, pass_index, start)

    def __iter__(self) -> DeviceSplitLoader:
        return self

    def __next__(self) -> Batch:
        if self.taken >= len(self):
            self.pass_index, self.taken = self.pass_index + 1, 0
        batch = self.batch(self.pass_index, self.taken)
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_index, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index, self.taken = int(state["pass"]), int(state["taken"])


class DeviceEvalLoader:
    """Test-set batches in order, normalized, no augmentation; rank r of world_size takes
    indices r::world_size (no padding, so metric sums over ranks count every image once)."""

    def __init__(self, images: DeviceImages, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.images, self.batch_size, self.channels_last = images, batch_size, channels_last
        self.indices = torch.arange(rank, len(images), world_size, device=images.device)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.indices), self.batch_size):
            idx = self.indices[start:start + self.batch_size]
            x = normalize(self.images.images[idx], self.images.mean, self.images.std,
                          self.channels_last)
            yield x, self.images.labels[idx]


LOADERS = ("auto", "device", "torch")


def use_device_loader(flag: str, dataset: Any, device: torch.device) -> bool:
    """Whether `--loader flag` means the device-resident pipeline for `dataset` on `device`.

    auto: on a GPU, for data sets held in memory (CIFAR, synthetic); device: wherever
    possible, an error otherwise; torch: the DataLoader path (the reference).
    """
    if flag not in LOADERS:
        raise UserError(f"--loader {flag}: choose one of {', '.join(LOADERS)}")
    if flag == "torch":
        return False
    if not has_device_images(dataset):
        if flag == "device":
            raise UserError("--loader device needs a data set held in memory (cifar10, "
                            "cifar100, synthetic); use --loader torch for image folders")
        return False
    return flag == "device" or device.type == "cuda"
