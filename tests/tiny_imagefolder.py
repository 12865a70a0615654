"""A tiny ImageFolder dataset of 16x16 images on disk: the smallest input a LeNet takes (digits are 8x8)."""
from pathlib import Path

import numpy as np

from dfkd_core.data import dataset_info
from dfkd_core.models import create_model, load_checkpoint, save_checkpoint


def make_imagefolder(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """train/ and test/ with `per_class` random 16x16 RGB images per class (seeded)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def lenet_teacher(root: Path, directory: Path):
    """An untrained LeNet-5 checkpoint for the ImageFolder at `root` (enough where the attack is replaced)."""
    info = dataset_info("imagefolder", str(root), 16)
    model = create_model("lenet5", info.num_classes, info.in_channels, info.image_size)
    return load_checkpoint(save_checkpoint(directory / "lenet5.pt", model, info))
