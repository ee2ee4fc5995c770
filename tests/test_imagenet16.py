"""ImageNet16-120 in its published format (pickled batch files), written here at a tiny size:
read, filtered to the first 120 classes, refused when a file holds anything but arrays."""

import os
import pickle

import numpy as np
import pytest

from darts.errors import UserError
from darts.train.data import ImageNet16, build_datasets


def write_batches(root, per_file=6, seed=0):
    """The real layout: train_data_batch_1..10 and val_data, each a pickled dict of uint8
    data (N x 768, channel-major) and 1-based labels over 1000 classes."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written = {}
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        data = rng.integers(0, 256, (per_file, 768), dtype=np.uint8)
        labels = [1, 2, 120, 121, 500, 1000][:per_file]
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels, "mean": data.mean(0)}, f)
        written[name] = (data, labels)
    return written


def test_reads_the_published_format_and_keeps_120_classes(tmp_path):
    written = write_batches(tmp_path)
    train = ImageNet16(str(tmp_path), train=True)
    val = ImageNet16(str(tmp_path), train=False)
    # labels 1, 2, 120 kept (as 0, 1, 119); 121, 500, 1000 dropped
    assert len(train) == 10 * 3 and len(val) == 3
    assert train.targets[:3] == [0, 1, 119]
    data, _ = written["train_data_batch_1"]
    # pixel (row 2, col 5) of the first image, channel by channel (channel-major rows of 256)
    assert train.data.shape == (30, 16, 16, 3)
    assert list(train.data[0, 2, 5]) == [data[0, c * 256 + 2 * 16 + 5] for c in range(3)]
    img, label = val[2]
    assert img.size == (16, 16) and label == 119


def test_build_datasets_gives_the_benchmarks_pipeline(tmp_path):
    write_batches(tmp_path)
    train, test, info = build_datasets("ImageNet16-120", str(tmp_path))
    assert (info.num_classes, info.image_size) == (120, 16)
    x, _ = train[0]
    assert tuple(x.shape) == (3, 16, 16)
    with pytest.raises(UserError, match="16x16"):
        build_datasets("ImageNet16-120", str(tmp_path), image_size=32)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


@pytest.mark.parametrize("content, message", [
    (lambda: pickle.dumps({"data": Evil(), "labels": [1]}), "is not allowed in a data file"),
    (lambda: b"not a pickle", "not a downsampled-ImageNet batch file"),
    (lambda: pickle.dumps({"labels": [1]}), "KeyError"),
    (lambda: pickle.dumps({"data": np.zeros((2, 768), np.uint8), "labels": [1]}), "differ in length"),
])
def test_a_bad_file_is_one_error_naming_it_and_runs_nothing(tmp_path, capfd, content, message):
    write_batches(tmp_path)
    (tmp_path / "val_data").write_bytes(content())
    with pytest.raises(UserError, match=message) as info:
        ImageNet16(str(tmp_path), train=False)
    assert "val_data" in str(info.value)
    assert "unpickled" not in capfd.readouterr().out


def test_missing_files_say_what_is_expected(tmp_path):
    with pytest.raises(UserError, match="train_data_batch_1 is missing"):
        ImageNet16(str(tmp_path), train=True)
