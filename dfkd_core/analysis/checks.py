"""What every analysis (CKA, Grad-CAM, MagSim/AngSim) checks before a run exists, in one place for the CLI and the
app: that teacher and student can be compared at all, and how many samples a request will really get.

A comparison feeds the same inputs to both models and compares what comes out, so both must have been made for the
same task: the same dataset, the same input shape (channels, image size) and the same classes. A student of another
dataset would still produce numbers — on inputs it was never meant to see — which is worse than no number.
"""
from __future__ import annotations

from typing import Protocol

import torch

from dfkd_core.data import DatasetInfo


class ModelFile(Protocol):
    """What a checkpoint tells about its model (dfkd_core.models.Checkpoint)."""

    dataset: DatasetInfo
    model_cfg: dict


def task_of(model: ModelFile) -> dict:
    """The facts two compared models must share: dataset, input channels and size, number of classes."""
    cfg, info = model.model_cfg or {}, model.dataset
    return {"dataset": info.name, "channels": cfg.get("in_channels", info.in_channels),
            "image size": cfg.get("image_size", info.image_size),
            "classes": cfg.get("num_classes", info.num_classes)}


def require_comparable(teacher: ModelFile, student: ModelFile, student_name: str = "the student") -> None:
    """Raise ValueError, in one sentence, when `student` was not made for the teacher's task."""
    t, s = task_of(teacher), task_of(student)
    differ = [k for k in t if t[k] != s[k]]
    if differ:
        what = ", ".join(f"{k} {s[k]} (teacher: {t[k]})" for k in differ)
        raise ValueError(f"{student_name} cannot be compared with the teacher: it was made for {what}; an analysis "
                         "feeds both the same inputs, so both must be made for the same dataset, input shape and "
                         "classes.")


def require_normalized_images(images, name: str = "images", models=()) -> None:
    """Raise, in one sentence, for inputs an analysis cannot feed its models: not a float (N, C, H, W) batch in the
    normalized input space (raw uint8 pixels raised torch's 'expected scalar type Byte'; float64 'expected scalar
    type Double'), NaN or infinite values (each analysis dropped or refused them its own way), or images of another
    size or channel count than a model (built by create_model) takes, which adaptive pooling would accept."""
    if not isinstance(images, torch.Tensor):
        return   # an ImageSplit normalizes itself batch by batch
    if images.dim() != 4 or not images.is_floating_point():
        raise TypeError(f"{name} must be a float batch (N, C, H, W) of normalized images, got a {images.dtype} "
                        f"tensor of shape {tuple(images.shape)}; an ImageSplit's .normalized() gives one")
    weights = [next(m.parameters(), None) for m in models if hasattr(m, "default_cfg")]   # the tool's models
    if images.dtype == torch.float64 and any(w is not None and w.dtype != torch.float64 for w in weights):
        raise TypeError(f"{name} are float64 and the models compute in float32: pass {name}.float()")
    bad = ~torch.isfinite(images.flatten(1)).all(1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(images)} {name} hold NaN or infinite values (e.g. number "
                         f"{int(bad.nonzero()[0])}); an analysis of them would drop or distort those images")
    for model in models:
        cfg = getattr(model, "default_cfg", None)
        if cfg and tuple(images.shape[1:]) != (cfg["in_channels"], cfg["image_size"], cfg["image_size"]):
            raise ValueError(f"{name} are {'×'.join(map(str, images.shape[1:]))} and {cfg['name']} takes "
                             f"{cfg['in_channels']}×{cfg['image_size']}×{cfg['image_size']} images (its dataset's)")


def sample_count_note(asked: int, available: int, source: str, unit: str = "images") -> str:
    """'1,000 images asked, the digits test split has 360: all 360 are used' — or '' when nothing is cut.
    `asked` 0 means all."""
    if asked <= available or asked == 0:
        return ""
    return f"{asked:,} {unit} asked, {source} has {available:,}: all {available:,} are used"


__all__ = ["ModelFile", "require_comparable", "sample_count_note", "task_of"]
