"""One synthesized image under the microscope: why does the teacher see it as it does?

For image i of a synthesized batch x̂ (in the teacher's normalized input space):

- `class_probabilities`: softmax T(x̂_i), the teacher's belief over the classes.
- `bn_leave_one_out`: image i's share of the batch's BN-statistics mismatch (the R_feature terms the synthesis
  minimizes, docs/methods.md#model-inversion), per BN layer l:

      Δ_l(i) = d_l(x̂) − d_l(x̂ without image i),   d_l = ||μ_l − running_mean_l||₂ + ||σ²_l − running_var_l||₂

  Δ_l(i) > 0: the batch sits closer to the teacher's statistics without this image — it pulls layer l away from the
  data; Δ_l(i) < 0: it helps. R_feature is a property of the batch, not of one image; leaving the image out is the
  direct way to ask what one image does to it.
- `nearest_real_images`: the real training images closest to image i in the teacher's feature space (the last block
  before the classifier, averaged over space), by cosine similarity — what the teacher thinks the image resembles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.analysis.features import FeatureCapture, layer_names
from dfkd_core.data import ImageSplit
from dfkd_core.device import prepare_input
from dfkd_core.hooks import BNStatisticsRecorder
from dfkd_core.losses import bn_layer_distance


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def class_probabilities(teacher: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """softmax T(x̂_i) for one normalized image (C, H, W): (classes,), on the CPU."""
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher(prepare_input(image[None], _device(teacher))).float().softmax(1)[0].cpu()
    finally:
        teacher.train(was_training)


@torch.no_grad()
def bn_layer_distances(teacher: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """d_l of the batch `images` for every BN layer of the teacher (eval mode: running statistics untouched)."""
    was_training = teacher.training
    teacher.eval()
    try:
        with BNStatisticsRecorder(teacher) as recorder:
            teacher(prepare_input(images, _device(teacher)))
            return {s.name: float(bn_layer_distance(s)) for s in recorder.statistics()}
    finally:
        teacher.train(was_training)


def bn_leave_one_out(teacher: nn.Module, images: torch.Tensor, index: int) -> list[dict]:
    """Per BN layer: the batch's distance d_l with and without image `index`, and Δ_l = with − without."""
    if len(images) < 2:
        raise ValueError("leaving one image out needs a batch of at least 2 images")
    if not 0 <= index < len(images):
        raise ValueError(f"image {index} is not in a batch of {len(images)}")
    with_image = bn_layer_distances(teacher, images)
    if not with_image:
        raise ValueError("this teacher has no BatchNorm layers: there are no statistics to compare")
    without = bn_layer_distances(teacher, torch.cat([images[:index], images[index + 1:]]))
    return [{"layer": name, "with_image": d, "without_image": without[name], "delta": d - without[name]}
            for name, d in with_image.items()]


def feature_layer(teacher: nn.Module, example: torch.Tensor) -> str:
    """The last block before the classifier: the teacher's own description of an image."""
    blocks = layer_names(teacher, "blocks", example)
    if len(blocks) < 2:
        raise ValueError(f"{type(teacher).__name__} has no block before its classifier to compare images in")
    return blocks[-2]


@torch.no_grad()
def embed(teacher: nn.Module, images: torch.Tensor | ImageSplit, layer: str, batch_size: int = 1000
          ) -> torch.Tensor:
    """L2-normalized features (N, channels) of `layer`, averaged over space, on the CPU."""
    was_training = teacher.training
    teacher.eval()
    n = len(images)
    parts = []
    try:
        with FeatureCapture(teacher, [layer], reduce="mean") as capture:
            for start in range(0, n, batch_size):
                end = min(n, start + batch_size)
                x = images.normalized(slice(start, end)) if isinstance(images, ImageSplit) else images[start:end]
                parts.append(capture(prepare_input(x, _device(teacher)))[layer])
    finally:
        teacher.train(was_training)
    return F.normalize(torch.cat(parts).float(), dim=1)


@dataclass
class Neighbours:
    """The real images nearest to a synthesized one: their indices in the searched split, labels, similarities."""

    indices: torch.Tensor
    labels: torch.Tensor
    similarity: torch.Tensor
    layer: str
    searched: int          # how many real images were searched
    available: int         # how many the split has


def nearest_real_images(query: torch.Tensor, real_features: torch.Tensor, real_labels: torch.Tensor,
                        layer: str, k: int = 6, available: int | None = None) -> Neighbours:
    """The k real images whose features (rows of `real_features`, L2-normalized) have the largest cosine similarity
    with the query's feature vector (L2-normalized)."""
    similarity = real_features @ query
    top = similarity.topk(min(k, len(similarity)))
    return Neighbours(top.indices, real_labels[top.indices], top.values, layer, len(real_features),
                      available if available is not None else len(real_features))


__all__ = ["Neighbours", "bn_layer_distances", "bn_leave_one_out", "class_probabilities", "embed", "feature_layer",
           "nearest_real_images"]
