"""Dataset loaders: sklearn digits (embedded), Fashion-MNIST IDX, CIFAR-10 (torchvision layout), ImageFolder."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DatasetMissingError(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message says how to get them."""


# Where each dataset's files live is the user's setting, never the checkpoint's: a teacher moved to another machine
# must read that machine's copy. Precedence: the command's --data-root (or the app's setting) > this environment
# variable > the default location (Debian's package for Fashion-MNIST; digits are embedded and need none).
DATA_ROOT_ENV = {"fashion-mnist": "DFKD_FASHION_MNIST", "cifar10": "DFKD_CIFAR10", "imagefolder": "DFKD_IMAGEFOLDER"}
DEFAULT_DATA_ROOT = {"fashion-mnist": FASHION_MNIST_DEFAULT_ROOT}


def resolve_data_root(name: str, root: str | os.PathLike | None = None) -> str | None:
    """The directory to read dataset `name` from: `root` if given, else $DFKD_<NAME>, else the default (or None)."""
    if root:
        return str(root)
    env = DATA_ROOT_ENV.get(name)
    if env and os.environ.get(env):
        return os.environ[env]
    return DEFAULT_DATA_ROOT.get(name)


@dataclass
class DatasetInfo:
    """What a model needs to know about its input; stored in every checkpoint."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str] = field(default_factory=list)
    root: str | None = None

    def to_dict(self) -> dict:
        """What a checkpoint or a pool records: the dataset's name and facts, never where its files were read
        (that is the reader's setting, see `resolve_data_root`)."""
        d = asdict(self)
        d.pop("root")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        # Files written before the root was dropped still carry one: ignored, for the same reason.
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "root"})

    def _stats(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return mean, std

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the teacher's normalized input space."""
        mean, std = self._stats(images01.device)
        return (images01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized input space -> [0, 1] pixels (clamped, for display)."""
        mean, std = self._stats(x.device)
        return (x * std + mean).clamp(0, 1)

    def pixel_bounds(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel lower/upper bound of valid pixels in normalized space (images of 0 and of 1)."""
        mean, std = self._stats(device)
        return (0 - mean) / std, (1 - mean) / std


@dataclass
class ImageSplit:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    note: str = ""          # what loading changed or found odd (images resized, a class without test images)

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, index=slice(None), device=None) -> torch.Tensor:
        """The images (all, or `index`) as floats in the normalized input space a model of this dataset takes."""
        x = self.images[index].to(device=device, dtype=torch.float32) / 255.0
        return self.info.normalize(x)

    def subset(self, n: int, seed: int = 0) -> "ImageSplit":
        """`n` images drawn without replacement (seeded); the whole split when it has no more than `n`."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return ImageSplit(self.images[idx], self.labels[idx], self.info, self.note)


# ---------------------------------------------------------------- digits (embedded in scikit-learn)

def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # sklearn's digits are 8x8 with intensities 0..16; scale to uint8 0..255 like every other dataset.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    idx = np.arange(len(images))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    chosen = train_idx if split == "train" else test_idx
    return torch.from_numpy(images[chosen]), torch.from_numpy(digits.target[chosen]).long()


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (the format of MNIST and Fashion-MNIST)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} bytes")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    installed = Path(FASHION_MNIST_DEFAULT_ROOT)
    if root.resolve() != installed.resolve() and any((installed / n).exists() for n in (stem, stem + ".gz")):
        raise DatasetMissingError(
            f"Fashion-MNIST file '{stem}[.gz]' not found in {root}, the folder given; the installed copy is in "
            f"{installed}: leave the folder setting empty to use it (the app's Data folder box on the Teacher page, "
            "the CLI's --data-root).")
    raise DatasetMissingError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in {root}. Install it with "
        "`sudo apt-get install dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_DEFAULT_ROOT}), or point the Data folder box (Teacher page) or the CLI's --data-root at a "
        "directory with the four IDX files.")


def _fashion_split(split: str, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = Path(root)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(base, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"))
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------- CIFAR-10 and ImageFolder (torchvision layouts)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArrayUnpickler(pickle.Unpickler):
    """The python-version CIFAR-10 batches are pickles: only what a batch holds (dicts, lists, bytes, numpy arrays)
    may be built, so a foreign pickle in a data folder cannot run code (as `torch.load(weights_only=True)` for
    checkpoints)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar10_split(split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The torchvision layout read directly: torchvision's reader also checks each file's MD5 against the official
    release, so any other data in that layout was reported 'not found'."""
    if root is None:
        raise DatasetMissingError("CIFAR-10 needs a data folder (the CLI's --data-root, the Teacher page's Data "
                                  f"folder, or $DFKD_CIFAR10): the directory holding '{CIFAR10_FOLDER}'.")
    folder = Path(root) / CIFAR10_FOLDER
    missing = [name for name in CIFAR10_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise DatasetMissingError(f"CIFAR-10 not found under {root}: {folder} lacks {', '.join(missing)} (the "
                                  "torchvision layout: data_batch_1..5 and test_batch, python pickles). Nothing is "
                                  "downloaded at run time.")
    images, labels = [], []
    for name in CIFAR10_FILES[split]:
        try:
            with open(folder / name, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64).reshape(-1)
        except Exception as e:   # a truncated file, another format, a pickle of other objects
            raise DatasetMissingError(f"{folder / name} is not a CIFAR-10 batch ({type(e).__name__}: {e}): a dict "
                                      "with 'data' (N x 3072 uint8) and 'labels'.") from e
        if len(targets) != len(data) or (len(targets) and not 0 <= targets.min() <= targets.max() < 10):
            raise DatasetMissingError(f"{folder / name}: {len(data)} images and {len(targets)} labels, labels "
                                      "must be 0-9.")
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(targets.copy()))
    return torch.cat(images), torch.cat(labels)


def _imagefolder_classes(root: str | None) -> list[str]:
    """The classes, train/'s subfolders in sorted order: every split is labelled by this list (a test/ folder
    numbering its own classes labelled a test set without one class against the wrong classes)."""
    if root is None:
        raise DatasetMissingError("ImageFolder needs a data folder (the CLI's --data-root, the Teacher page's Data "
                                  "folder, or $DFKD_IMAGEFOLDER): a directory with train/ and test/ (or val/), each "
                                  "holding one folder of images per class.")
    if not Path(root).is_dir():
        raise DatasetMissingError(f"ImageFolder root {root} does not exist.")
    if not (Path(root) / "train").is_dir():
        raise DatasetMissingError(f"ImageFolder root {root} has no train/ subdirectory: the layout is "
                                  f"{root}/train/<class>/<images> and {root}/test/<class>/<images> (or val/).")
    return sorted(p.name for p in (Path(root) / "train").iterdir() if p.is_dir())


def _imagefolder_split(split: str, root: str | None, image_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.transforms import v2

    classes = _imagefolder_classes(root)
    candidates = ["train"] if split == "train" else ["test", "val"]
    folder = next((Path(root) / c for c in candidates if (Path(root) / c).is_dir()), None)
    if folder is None:
        raise DatasetMissingError(f"ImageFolder root {root} has no {' or '.join(candidates)}/ subdirectory.")
    here = sorted(p.name for p in folder.iterdir() if p.is_dir())
    foreign = [name for name in here if name not in classes]
    if foreign:
        raise DatasetMissingError(f"{folder} has class folders that train/ lacks: {', '.join(foreign)}. Every "
                                  f"split is labelled by train/'s classes ({', '.join(classes)}).")
    # Nested folders inside a class count, as torchvision's ImageFolder walks them.
    samples = [(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
               for path in sorted((folder / name).rglob("*")) if path.suffix.lower() in IMG_EXTENSIONS
               and path.is_file()]
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [classes[k] for k in range(len(classes)) if counts[k] == 0]
    if split == "train" and empty:
        raise DatasetMissingError(f"{folder} has no images for {', '.join(empty)}: add some or remove the "
                                  "folder (a class the teacher never sees cannot be learnt or inverted).")
    if not samples:
        raise DatasetMissingError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}).")
    resize = v2.Resize((image_size, image_size), antialias=True)
    images, unreadable, sizes = [], [], {}
    for path, _ in samples:
        try:
            with Image.open(path) as picture:
                picture = picture.convert("RGB")
                sizes[picture.size] = sizes.get(picture.size, 0) + 1
                images.append(resize(v2.functional.pil_to_tensor(picture)))
        except Exception as e:   # PIL's UnidentifiedImageError, a truncated file
            unreadable.append(f"{path} ({type(e).__name__})")
    if unreadable:
        raise DatasetMissingError(f"{len(unreadable)} file(s) in {folder} cannot be read as images: "
                                  + "; ".join(unreadable[:3]) + ("…" if len(unreadable) > 3 else "")
                                  + ". Remove or replace them.")
    notes = []
    resized = sum(n for size, n in sizes.items() if size != (image_size, image_size))
    if resized:
        found = ", ".join(f"{w}x{h}" for w, h in sorted(sizes, key=sizes.get, reverse=True)[:3])
        notes.append(f"{resized:,} of {len(samples):,} {folder.name}/ images resized to {image_size}x{image_size} "
                     f"(found {found}{', …' if len(sizes) > 3 else ''})")
    if empty:
        notes.append(f"{folder.name}/ has no images of {', '.join(empty)}: accuracy there covers the other classes")
    return torch.stack(images), labels, "; ".join(notes)


# ---------------------------------------------------------------- registry

DATASETS = {
    # name: (num_classes, channels, size, mean, std, class names)
    "digits": (10, 1, 8, [0.3054], [0.3760], [str(i) for i in range(10)]),
    "fashion-mnist": (10, 1, 28, [0.2860], [0.3530], FASHION_MNIST_CLASSES),
    "cifar10": (10, 3, 32, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], CIFAR10_CLASSES),
    "imagefolder": (None, 3, 32, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], []),
}


def dataset_info(name: str, root: str | None = None, image_size: int | None = None) -> DatasetInfo:
    """Static facts about a dataset (ImageFolder reads its class list from disk, found as `resolve_data_root` says)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)}")
    root = resolve_data_root(name, root)
    num_classes, channels, size, mean, std, classes = DATASETS[name]
    size = image_size or size
    if name == "imagefolder":
        classes = _imagefolder_classes(root)
        num_classes = len(classes)
    return DatasetInfo(name, num_classes, channels, size, list(mean), list(std), list(classes), root)


def load_split(name: str, split: str = "train", root: str | None = None,
               image_size: int | None = None) -> ImageSplit:
    """Load one split ('train' or 'test') of a dataset into memory. `root`: the user's data directory (None: the
    environment variable, then the default; see `resolve_data_root`). `info.root` says where it was read from."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    root = resolve_data_root(name, root)
    info = dataset_info(name, root, image_size)
    note = ""
    if name == "digits":
        images, labels = _digits_split(split)
    elif name == "fashion-mnist":
        images, labels = _fashion_split(split, root)
    elif name == "cifar10":
        images, labels = _cifar10_split(split, root)
    else:
        images, labels, note = _imagefolder_split(split, root, info.image_size)
        if note:   # the command line shows warnings; pages and summaries read `note`
            warnings.warn(note + ".", stacklevel=2)
    return ImageSplit(images, labels, info, note)
