import gzip
import struct

import numpy as np
import pytest
import torch

from dfkd_core.data import DatasetMissingError, dataset_info, load_split
from dfkd_core.data import datasets
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


def test_missing_fashion_mnist_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT_ROOT", str(tmp_path / "not installed"))
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_split("fashion-mnist", "train", root=str(tmp_path))


def test_a_wrong_fashion_mnist_folder_points_at_the_installed_copy_not_at_apt(tmp_path, monkeypatch):
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT_ROOT", str(installed))
    with pytest.raises(DatasetMissingError, match="the installed copy is in .*leave the folder setting empty") as e:
        load_split("fashion-mnist", "train", root=str(tmp_path / "typo"))
    assert "apt-get" not in str(e.value)


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
    with pytest.warns(UserWarning, match="resized to 16x16"):
        s = load_split("imagefolder", "train", root=str(tmp_path), image_size=16)
    assert s.images.shape == (2, 3, 16, 16) and s.info.class_names == ["cat", "dog"] and s.info.num_classes == 2


def _fake_fashion_mnist(root, labels):
    root.mkdir(parents=True)
    images = np.zeros((len(labels), 28, 28))
    for prefix in ("train", "t10k"):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=False)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", np.array(labels), gz=False)


def test_data_location_is_flag_then_environment_then_default(tmp_path, monkeypatch):
    from dfkd_core.data import resolve_data_root
    from dfkd_core.data.datasets import FASHION_MNIST_DEFAULT_ROOT

    _fake_fashion_mnist(tmp_path / "flag", [1])
    _fake_fashion_mnist(tmp_path / "env", [2, 2])
    monkeypatch.setenv("DFKD_FASHION_MNIST", str(tmp_path / "env"))
    assert load_split("fashion-mnist", "test", root=str(tmp_path / "flag")).labels.tolist() == [1]
    split = load_split("fashion-mnist", "test")
    assert split.labels.tolist() == [2, 2] and split.info.root == str(tmp_path / "env")
    monkeypatch.delenv("DFKD_FASHION_MNIST")
    assert resolve_data_root("fashion-mnist") == FASHION_MNIST_DEFAULT_ROOT
    assert resolve_data_root("digits") is None


def test_a_checkpoint_names_its_dataset_not_where_its_files_were(tmp_path, monkeypatch):
    """A teacher trained on machine A (data in a/) and moved to machine B must read B's copy."""
    from dfkd_core.models import create_model, load_checkpoint, save_checkpoint

    _fake_fashion_mnist(tmp_path / "a", [1])
    info = load_split("fashion-mnist", "test", root=str(tmp_path / "a")).info
    path = save_checkpoint(tmp_path / "teacher.pt", create_model("lenet5", 10, 1, 28), info)
    payload = torch.load(path, weights_only=True)
    assert "root" not in payload["dataset"]
    payload["dataset"]["root"] = str(tmp_path / "a")   # as checkpoints written before this fix recorded it
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").dataset.root is None


def _image_folder(root, layout: dict, size=(16, 16)):
    """layout: split → {class: number of images}; each class's images one grey level, so labels can be checked."""
    from PIL import Image
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", size, color=10 * (ord(cls[0]) - 96)).save(root / split / cls / f"{i}.png")
    return root


def test_an_imagefolder_test_split_is_labelled_by_train_s_classes_even_without_one_of_them(tmp_path):
    """val/ numbered its own classes: without 'b', val's 'c' images were labelled 1 ('b') and a 98% teacher
    scored 11%."""
    root = _image_folder(tmp_path, {"train": {"a": 2, "b": 2, "c": 2}, "val": {"a": 1, "c": 3}})
    with pytest.warns(UserWarning, match=r"val/ has no images of b"):
        test = load_split("imagefolder", "test", root=str(root), image_size=16)
    assert test.labels.tolist() == [0, 2, 2, 2] and test.info.class_names == ["a", "b", "c"]
    assert test.images[1:, 0].float().mean() == 30   # the 'c' images (grey 30) carry c's label
    nested = root / "train" / "a" / "more"
    nested.mkdir()
    (root / "train" / "a" / "0.png").rename(nested / "0.png")   # a class's subfolders count, as torchvision's
    assert load_split("imagefolder", "train", root=str(root), image_size=16).labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert "no images of b" in test.note


def test_imagefolder_mistakes_are_refused_with_the_folder_named(tmp_path):
    from dfkd_core.data import DatasetMissingError
    with pytest.raises(DatasetMissingError, match="does not exist"):
        load_split("imagefolder", "train", root=str(tmp_path / "nope"))
    with pytest.raises(DatasetMissingError, match=r"has no train/ subdirectory: the layout is .*/train/<class>"):
        load_split("imagefolder", "train", root=str(tmp_path))
    extra = _image_folder(tmp_path / "extra", {"train": {"a": 1, "b": 1}, "test": {"a": 1, "z": 1}})
    with pytest.raises(DatasetMissingError, match=r"class folders that train/ lacks: z"):
        load_split("imagefolder", "test", root=str(extra))
    empty = _image_folder(tmp_path / "empty", {"train": {"a": 1, "b": 0}})
    with pytest.raises(DatasetMissingError, match=r"no images for b"):
        load_split("imagefolder", "train", root=str(empty))
    broken = _image_folder(tmp_path / "broken", {"train": {"a": 2}})
    (broken / "train" / "a" / "broken.png").write_text("not an image")
    (broken / "train" / "a" / "notes.txt").write_text("skipped: not an image extension")
    with pytest.raises(DatasetMissingError, match=r"1 file\(s\) .* cannot be read as images: .*broken\.png"):
        load_split("imagefolder", "train", root=str(broken))


def test_imagefolder_says_when_it_resizes(tmp_path):
    root = _image_folder(tmp_path, {"train": {"a": 2}}, size=(64, 48))
    with pytest.warns(UserWarning, match=r"2 of 2 train/ images resized to 32x32 \(found 64x48\)"):
        split = load_split("imagefolder", "train", root=str(root))
    assert split.images.shape == (2, 3, 32, 32) and "resized" in split.subset(1).note


def _cifar_batch(path, n, label_key=b"labels", labels=None):
    import pickle
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({label_key: labels if labels is not None else [i % 10 for i in range(n)], b"data": data,
                     b"batch_label": b"x"}, f)
    return data


def test_a_cifar10_folder_of_other_data_loads_without_the_official_checksums(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = _cifar_batch(folder / "data_batch_1", 4)
    for i in range(2, 6):
        _cifar_batch(folder / f"data_batch_{i}", 3)
    _cifar_batch(folder / "test_batch", 5)
    train = load_split("cifar10", "train", root=str(tmp_path))
    assert train.images.shape == (16, 3, 32, 32) and train.labels[:4].tolist() == [0, 1, 2, 3]
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(first[0]))   # channel-major rows, as CIFAR's
    assert len(load_split("cifar10", "test", root=str(tmp_path))) == 5


def test_a_cifar10_folder_is_checked_before_anything_runs(tmp_path):
    import os
    import pickle
    from dfkd_core.data import DatasetMissingError
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _cifar_batch(folder / "test_batch", 2)
    with pytest.raises(DatasetMissingError, match=r"lacks data_batch_1, .*data_batch_5"):
        load_split("cifar10", "train", root=str(tmp_path))
    _cifar_batch(folder / "test_batch", 2, labels=[3, 12])
    with pytest.raises(DatasetMissingError, match="labels must be 0-9"):
        load_split("cifar10", "test", root=str(tmp_path))

    class Payload:   # a pickle that would run a command when loaded
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(DatasetMissingError, match="is not a CIFAR-10 batch"):
        load_split("cifar10", "test", root=str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_a_teacher_of_a_users_folder_is_named_by_the_folder(tmp_path, monkeypatch):
    from dfkd_core.training import TeacherConfig
    assert TeacherConfig(dataset="digits").resolved().run_name() == "bncnn3_w32 on digits"
    named = TeacherConfig(dataset="imagefolder", model="bncnn3_w16", data_root=str(tmp_path / "shoes"))
    assert named.run_name() == "bncnn3_w16 on imagefolder (shoes)"
    monkeypatch.setenv("DFKD_CIFAR10", str(tmp_path / "my-cifar"))   # the folder the run reads, wherever it is set
    assert TeacherConfig(dataset="cifar10", model="bncnn3_w16").run_name() == "bncnn3_w16 on cifar10 (my-cifar)"
