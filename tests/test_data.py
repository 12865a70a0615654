import gzip
import struct

import numpy as np
import pytest
import torch

from dfkd_core.data import DatasetMissingError, dataset_info, load_split
from dfkd_core.data.datasets import read_idx


def test_digits_splits_are_disjoint_stratified_uint8():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert torch.bincount(test.labels).min() >= 30
    assert train.info.num_classes == 10 and train.info.image_size == 8


def test_normalize_roundtrip_and_pixel_bounds():
    info = dataset_info("fashion-mnist")
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(info.denormalize(info.normalize(x)), x, atol=1e-6)
    low, high = info.pixel_bounds()
    assert low.item() == pytest.approx(-0.2860 / 0.3530) and high.item() == pytest.approx((1 - 0.2860) / 0.3530)


def _write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_fashion_mnist_idx_reader_on_generated_files(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, gz=True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array([3, 7]), gz=False)
    split = load_split("fashion-mnist", "test", root=str(tmp_path))
    assert split.images.shape == (2, 1, 28, 28) and split.labels.tolist() == [3, 7]
    assert np.array_equal(split.images[1, 0].numpy(), images[1])


def test_truncated_idx_is_reported(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(struct.pack(">HBBI", 0, 8, 1, 10) + b"\x00\x01")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_missing_fashion_mnist_gives_install_hint(tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_split("fashion-mnist", "train", root=str(tmp_path))


def test_cifar_without_root_and_unknown_dataset():
    with pytest.raises(DatasetMissingError, match="data-root"):
        load_split("cifar10", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("mnist-nope", "train")


def test_imagefolder_layout(tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (20, 24), color=(10, 200, 30)).save(tmp_path / split / cls / "a.png")
    s = load_split("imagefolder", "train", root=str(tmp_path), image_size=16)
    assert s.images.shape == (2, 3, 16, 16) and s.info.class_names == ["cat", "dog"] and s.info.num_classes == 2
