"""A pool of synthesized images that outlives its run: synthesize once, distill many students (`--pool <run>`)."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from dfkd_core.data import DatasetInfo
from dfkd_core.models import CheckpointError, load_tensors
from dfkd_core.runs import atomic_torch_save


class PoolError(ValueError):
    """A pool file that cannot serve this teacher; the message says why."""


def pool_setting(store, refs: Sequence[str]) -> str | list[str]:
    """The config's pool setting for the run ids or images.pt paths of a `--pool` flag: one path as a str, as a
    single pool has always been stored, several as a list (one pool of all their images)."""
    paths = [str(store.resolve_checkpoint(ref, "images.pt")) for ref in refs]
    return paths[0] if len(paths) == 1 else paths


def pool_files(setting: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The images.pt files a `DistillConfig.pool` setting names: none, one, or several joined into one pool."""
    if not setting:
        return []
    return [Path(setting)] if isinstance(setting, (str, Path)) else [Path(p) for p in setting]


class SyntheticPool:
    """Images in the teacher's normalized input space (N, C, H, W) with the class each was synthesized for."""

    def __init__(self, dataset: DatasetInfo, images: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                 source: str | None = None):
        shape = (0, dataset.in_channels, dataset.image_size, dataset.image_size)
        self.dataset = dataset
        self.images = images if images is not None else torch.empty(shape)
        self.targets = targets if targets is not None else torch.empty(0, dtype=torch.long)
        self.source = source
        self.note = ""   # what a user should know about a loaded pool (images repeated across the files combined)

    def __len__(self) -> int:
        return len(self.images)

    def append(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Add synthesized images (normalized, on any device) with the classes they were made for."""
        self.images = torch.cat([self.images, images.detach().float().cpu()])
        self.targets = torch.cat([self.targets, targets.detach().long().cpu()])

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (images, targets) of `batch_size`, drawn with `generator`."""
        if not len(self):
            raise PoolError("the pool is empty: nothing has been synthesized yet")
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return self.images[idx], self.targets[idx]

    def save(self, path: str | Path) -> Path:
        """Write the pool as an images.pt that `SyntheticPool.load` and `dfkd distill --pool` read."""
        return atomic_torch_save({"images": self.images, "targets": self.targets, "dataset": self.dataset.to_dict()},
                                 path)

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], dataset: DatasetInfo) -> "SyntheticPool":
        """Load an images.pt written by a synthesis or distillation run and check it fits `dataset`; several paths
        make one pool of all their images (e.g. the pools of one teacher's synthesis seeds), in the order given."""
        if not isinstance(path, (str, Path)):
            parts = [cls.load(p, dataset) for p in pool_files(path)]
            if not parts:
                raise PoolError("no pool given: an empty list of images.pt files")
            pool = cls(dataset, torch.cat([p.images for p in parts]), torch.cat([p.targets for p in parts]),
                       source=", ".join(p.source for p in parts))
            distinct = len(torch.unique(pool.images.flatten(1), dim=0))
            if distinct < len(pool):   # batch k of a synthesis uses seed + k: seeds 0 and 1 share batches
                pool.note = (f"the {len(parts)} pools hold {len(pool):,} images of which {distinct:,} are distinct: "
                             "some are the same batch (a synthesis's batch k uses seed + k, so runs whose seeds are "
                             "closer than their batch counts repeat batches)")
                warnings.warn(pool.note, stacklevel=2)
            return pool
        path = Path(path)
        try:
            payload = load_tensors(path, "image pool")
        except CheckpointError as e:   # our sentence for a damaged, foreign or unsafe file
            raise PoolError(str(e)) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("images"), torch.Tensor):
            raise PoolError(f"{path} holds no 'images' tensor; expected the images.pt of a synthesis run")
        if not payload["images"].is_floating_point():
            raise PoolError(f"{path} holds {payload['images'].dtype} pixels; a pool holds float images in the "
                            "teacher's normalized input space, as a synthesis run writes them "
                            "(dataset.normalize(pixels / 255) makes them from uint8)")
        images = payload["images"].float()
        expected = (dataset.in_channels, dataset.image_size, dataset.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise PoolError(f"{path} has images of shape {tuple(images.shape[1:])}, the teacher takes {expected}")
        made_for = (payload.get("dataset") or {}).get("name")
        if made_for and made_for != dataset.name:
            raise PoolError(f"{path} was synthesized for '{made_for}', this teacher is a '{dataset.name}' model")
        if not torch.isfinite(images).all():
            raise PoolError(f"{path} contains NaN or inf pixels")
        low, high = (b.view(-1) for b in dataset.pixel_bounds())
        per_channel = images.transpose(0, 1).flatten(1)
        slack = 0.1 * (high - low)   # inversions are clamped to the bounds; a little room for other writers
        if (per_channel.amin(1) < low - slack).any() or (per_channel.amax(1) > high + slack).any():
            raise PoolError(f"{path} has pixels from {float(images.min()):.3g} to {float(images.max()):.3g}, outside "
                            f"the teacher's normalized range ({float(low.min()):.3g} to {float(high.max()):.3g} for "
                            "images of 0 to 1): raw pixels (0–255, 0–16) rather than normalized ones?")
        targets = payload.get("targets")
        if not isinstance(targets, torch.Tensor) or len(targets) != len(images):
            targets = torch.full((len(images),), -1, dtype=torch.long)  # unknown classes: KD needs none
        elif ((targets < -1) | (targets >= dataset.num_classes)).any():
            raise PoolError(f"{path} has targets from {int(targets.min())} to {int(targets.max())}; the teacher has "
                            f"{dataset.num_classes} classes (0 to {dataset.num_classes - 1}, or -1 for unknown)")
        return cls(dataset, images, targets.long(), source=str(path))
