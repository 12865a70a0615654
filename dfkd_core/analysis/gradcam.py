"""Grad-CAM teacher vs students on the same images, with per-image overlap scores (methods.md#grad-cam).

    map = ReLU( Σ_c α_c · A_c ),   α_c = mean over (h, w) of ∂z_target / ∂A_c        (Selvaraju et al. 2017)

computed by captum's `LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)` and upsampled to the
input size with `LayerAttribution.interpolate`, models in eval mode. Overlap of a student's map with the teacher's:

- `attention_correlation`: Pearson correlation of the two maps over pixels (NaN if either map is constant),
- `top_region_iou`: IoU of the top-`fraction` (default 20%) regions — the pixels at or above each map's k-th
  largest value, k = round(fraction · H · W), ties at the cut included, pixels with zero attention never included
  (NaN if both regions are empty).

Means over a set skip undefined (NaN) images and report how many there were; each mean carries its 95% bootstrap
interval over images (images are the independent units: dfkd_core.stats.mean_interval). Two students scored on
the same images are compared by their paired difference (`paired_differences`: dfkd_core.stats.
paired_difference_interval, both students' per-image scores resampled together).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from dfkd_core.analysis.checks import require_normalized_images
from dfkd_core.analysis.features import LayerRef, default_attention_layer, resolve_layers, trace_layers
from dfkd_core.device import prepare_input
from dfkd_core.stats import mean_interval, paired_difference_interval

TARGETS = ("true", "predicted", "teacher")


def grad_cam(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int, layer: LayerRef | None = None,
             interpolate_mode: str = "bilinear") -> torch.Tensor:
    """Grad-CAM maps (N, H, W) at the input resolution for class `target` (int or (N,) tensor), on the CPU.

    `layer`: name or module (default: the last block with a spatial output, `default_attention_layer`). The model
    is put in eval mode for the call and returned to its previous mode; no parameter gradient is accumulated.
    """
    from captum.attr import LayerAttribution, LayerGradCam  # captum costs ~1 s to import: only when used

    device = next(model.parameters()).device
    x = prepare_input(inputs, device)
    (_, module), = resolve_layers(model, [layer if layer is not None else default_attention_layer(model, x[:2])])
    target = torch.as_tensor(target, device=device).long().expand(len(x)) if not isinstance(target, int) \
        else target
    was_training = model.training
    model.eval()
    try:
        attribution = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    finally:
        model.train(was_training)
    if attribution.dim() != 4:
        raise ValueError(f"layer {type(module).__name__} gives {attribution.dim() - 2}-d maps; Grad-CAM needs a "
                         "convolutional layer with a spatial output")
    upsampled = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode=interpolate_mode)
    return upsampled[:, 0].detach().float().cpu()


def attention_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of two stacks of maps (N, H, W); NaN where either map is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = torch.linalg.norm(a, dim=1) * torch.linalg.norm(b, dim=1)
    corr = (a * b).sum(1) / den.clamp_min(1e-300)
    return torch.where(den > 0, corr.clamp(-1, 1), torch.full_like(corr, float("nan"))).float()


def top_region(maps: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """Boolean (N, H·W): pixels ≥ the map's k-th largest value (k = round(fraction·H·W)) and > 0."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = maps.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    cut = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= cut) & (flat > 0)


def top_region_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """Per-image IoU of the top-`fraction` regions of two stacks of maps; NaN where both regions are empty."""
    ra, rb = top_region(a, fraction), top_region(b, fraction)
    inter, union = (ra & rb).sum(1).float(), (ra | rb).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


CHANCE_PAIRINGS = 5   # other images each teacher map is scored against for its chance level


def mismatched_scores(teacher_maps: torch.Tensor, student_maps: torch.Tensor, fraction: float = 0.2,
                      pairings: int = CHANCE_PAIRINGS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The chance level of (r, IoU) per image: the teacher's map of the image against the student's maps of other
    images, averaged over `pairings` random derangements of the whole set (each a random cycle through all images,
    so no image meets itself; NaN for a set of one). Unrelated maps agree too where both lean to the same place (a
    centre bias, a layer of 2x2 cells upsampled); a student attends like its teacher only as far as it beats this.
    Random partners over the whole set, not the next image of each batch: the level no longer moved with the batch
    size (digits: "above chance" at batch 4, not at batch 100) or with the order the images come in."""
    n = len(student_maps)
    if n < 2:
        nan = torch.full((n,), float("nan"))
        return nan, nan.clone()
    generator = torch.Generator().manual_seed(seed)
    r, iou = [], []
    for _ in range(pairings):
        cycle = torch.randperm(n, generator=generator)
        partner = torch.empty(n, dtype=torch.long)
        partner[cycle] = cycle.roll(-1)
        other = student_maps[partner]
        r.append(attention_correlation(teacher_maps, other))
        iou.append(top_region_iou(teacher_maps, other, fraction))
    return torch.stack(r).nanmean(0), torch.stack(iou).nanmean(0)


def nan_mean(values: torch.Tensor) -> float:
    ok = ~torch.isnan(values)
    return float(values[ok].double().mean()) if ok.any() else float("nan")


def _scores(values) -> torch.Tensor:
    """Per-image scores as float64, from a tensor or a run's JSON list (where NaN may have been stored as None)."""
    if isinstance(values, torch.Tensor):
        return values.double()
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


def paired_differences(scores: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict]:
    """For every two students scored on the same images, a given before b: the paired differences
    r(b) − r(a) and IoU(b) − IoU(a) (mean over the images defined for both) with their 95% paired bootstrap
    intervals over those images. `scores`: student → {"correlation": (N,), "iou": (N,)} (the `AttentionComparison`'s
    tensors, or a saved gradcam.json's "per_image"). As in `boundary.paired_differences`, each entry's value is
    student_a − student_b, so here student_a is the later student: `--student A --student B` gives B − A."""
    out = []
    for (a, sa), (b, sb) in combinations(scores.items(), 2):
        out.append({"student_a": b, "student_b": a, **{
            metric: paired_difference_interval(_scores(sb[metric]), _scores(sa[metric])).to_dict()
            for metric in ("correlation", "iou")}})
    return out


@dataclass
class AttentionComparison:
    """Grad-CAM maps of a teacher and its students on the same images, and each student's overlap with it."""

    maps: dict[str, torch.Tensor]          # model name -> (N, H, W); "teacher" first
    targets: dict[str, torch.Tensor]       # model name -> (N,) class each map explains
    predictions: dict[str, torch.Tensor]   # model name -> (N,)
    correlation: dict[str, torch.Tensor]   # student name -> (N,)
    iou: dict[str, torch.Tensor]           # student name -> (N,)
    chance_correlation: dict[str, torch.Tensor]   # student name -> (N,): `mismatched_scores`
    chance_iou: dict[str, torch.Tensor]
    map_sizes: dict[str, tuple[int, int]]         # model name -> its Grad-CAM layer's (h, w)
    layers: dict[str, str]
    target: str
    fraction: float
    labels: torch.Tensor | None = None

    @property
    def students(self) -> list[str]:
        return list(self.correlation)

    def summary(self, intervals: bool = False) -> dict[str, dict]:
        """Per student: mean correlation, mean top-region IoU (undefined images skipped) and their counts; with
        `intervals`, each mean's 95% bootstrap interval over the images (`*_interval`, Interval.to_dict())."""
        out = {s: {"correlation_mean": nan_mean(self.correlation[s]), "iou_mean": nan_mean(self.iou[s]),
                   "images": len(self.iou[s]),
                   "correlation_undefined": int(torch.isnan(self.correlation[s]).sum()),
                   "iou_undefined": int(torch.isnan(self.iou[s]).sum())} for s in self.students}
        for s in self.students:
            out[s]["chance_correlation_mean"] = nan_mean(self.chance_correlation[s])
            out[s]["chance_iou_mean"] = nan_mean(self.chance_iou[s])
            out[s]["map_size"], out[s]["teacher_map_size"] = self.map_sizes[s], self.map_sizes["teacher"]
        if intervals:
            for s in self.students:
                out[s]["correlation_interval"] = mean_interval(self.correlation[s]).to_dict()
                out[s]["iou_interval"] = mean_interval(self.iou[s]).to_dict()
                # paired per image: the same teacher map in both
                out[s]["correlation_above_chance"] = paired_difference_interval(
                    self.correlation[s], self.chance_correlation[s]).to_dict()
                out[s]["iou_above_chance"] = paired_difference_interval(self.iou[s], self.chance_iou[s]).to_dict()
        return out

    def paired_differences(self) -> list[dict]:
        """Every later student minus every earlier one on these images, with paired 95% intervals
        (module-level `paired_differences`)."""
        return paired_differences({s: {"correlation": self.correlation[s], "iou": self.iou[s]}
                                   for s in self.students})

    @staticmethod
    def concat(parts: Sequence["AttentionComparison"], keep_maps: int | None = None) -> "AttentionComparison":
        """Join batches (each with every map of its images); keep the maps of the first `keep_maps` images only
        (None: all)."""
        first = parts[0]

        def cat(attr):
            return {k: torch.cat([getattr(p, attr)[k] for p in parts]) for k in getattr(first, attr)}

        maps = cat("maps")
        # The chance level over the whole set, not batch by batch (`mismatched_scores`).
        chance = {s: mismatched_scores(maps["teacher"], maps[s], first.fraction) for s in first.correlation}
        if keep_maps is not None:
            maps = {k: v[:keep_maps] for k, v in maps.items()}
        labels = torch.cat([p.labels for p in parts]) if first.labels is not None else None
        return AttentionComparison(maps, cat("targets"), cat("predictions"), cat("correlation"), cat("iou"),
                                   {s: c[0] for s, c in chance.items()}, {s: c[1] for s, c in chance.items()},
                                   first.map_sizes, first.layers, first.target, first.fraction, labels)


def _output_size(model: nn.Module, layer: LayerRef, images: torch.Tensor) -> tuple[int, int]:
    """(h, w) of `layer`'s output on these images: the resolution Grad-CAM's map has before it is upsampled."""
    (name, _), = resolve_layers(model, [layer])
    info = next(i for i in trace_layers(model, prepare_input(images, next(model.parameters()).device))
                if i.name == name)
    return tuple(int(v) for v in info.output_shape[-2:])


def _named_students(students: Mapping[str, nn.Module] | Sequence[nn.Module] | nn.Module) -> dict[str, nn.Module]:
    if isinstance(students, nn.Module):
        students = [students]
    if isinstance(students, Mapping):
        named = dict(students)
    else:
        named = {("student" if i == 0 else f"student_{i + 1}"): m for i, m in enumerate(students)}
    if not named or "teacher" in named:
        raise ValueError("give at least one student, none of them named 'teacher'")
    return named


class AttentionComparator:
    """Configured once (models, layers, target rule), then `compare(images, labels)` per batch (captum style)."""

    def __init__(self, teacher: nn.Module, students: Mapping[str, nn.Module] | Sequence[nn.Module] | nn.Module,
                 target: str = "true", layer_teacher: LayerRef | None = None,
                 layers_students: Mapping[str, LayerRef] | Sequence[LayerRef] | None = None,
                 fraction: float = 0.2, interpolate_mode: str = "bilinear"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}: the true label, each model's own prediction, or "
                             f"the teacher's prediction; got '{target}'")
        self.models = {"teacher": teacher, **_named_students(students)}
        if layers_students is not None and not isinstance(layers_students, Mapping):
            layers_students = dict(zip(list(self.models)[1:], layers_students))
        chosen = {"teacher": layer_teacher, **(layers_students or {})}
        unknown = set(chosen) - set(self.models)
        if unknown:
            raise ValueError(f"layers given for unknown models {sorted(unknown)}; models: {list(self.models)}")
        # Given layers are checked now; defaults need an input of the real size, so they wait for the first batch.
        self.layers = {name: resolve_layers(model, [chosen[name]])[0][0] if chosen.get(name) is not None else None
                       for name, model in self.models.items()}
        self.target, self.fraction, self.interpolate_mode = target, fraction, interpolate_mode
        self.map_sizes: dict[str, tuple[int, int]] | None = None

    def compare(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> AttentionComparison:
        """Maps and overlap scores for one batch of normalized images."""
        if self.target == "true" and labels is None:
            raise ValueError("target='true' needs the images' labels; use 'predicted' or 'teacher' without them")
        predictions = {}
        for name, model in self.models.items():
            if self.layers[name] is None:
                self.layers[name] = default_attention_layer(
                    model, prepare_input(images[:2], next(model.parameters()).device))
            was_training = model.training
            model.eval()
            with torch.no_grad():
                predictions[name] = model(prepare_input(images, next(model.parameters()).device)).argmax(1).cpu()
            model.train(was_training)
        targets = {name: labels.long().cpu() if self.target == "true" else
                   predictions["teacher" if self.target == "teacher" else name] for name in self.models}
        if self.map_sizes is None:
            self.map_sizes = {name: _output_size(model, self.layers[name], images[:2])
                              for name, model in self.models.items()}
        maps = {name: grad_cam(model, images, targets[name], self.layers[name], self.interpolate_mode)
                for name, model in self.models.items()}
        students = list(self.models)[1:]
        chance = {s: mismatched_scores(maps["teacher"], maps[s], self.fraction) for s in students}
        return AttentionComparison(
            maps, targets, predictions,
            {s: attention_correlation(maps["teacher"], maps[s]) for s in students},
            {s: top_region_iou(maps["teacher"], maps[s], self.fraction) for s in students},
            {s: c[0] for s, c in chance.items()}, {s: c[1] for s, c in chance.items()}, dict(self.map_sizes),
            dict(self.layers), self.target, self.fraction, None if labels is None else labels.long().cpu())


def compare_attention(teacher: nn.Module, students: Mapping[str, nn.Module] | Sequence[nn.Module] | nn.Module,
                      images: torch.Tensor, labels: torch.Tensor | None = None, target: str = "true",
                      layer_teacher: LayerRef | None = None,
                      layers_students: Mapping[str, LayerRef] | Sequence[LayerRef] | None = None,
                      fraction: float = 0.2, batch_size: int = 100, keep_maps: int | None = None,
                      interpolate_mode: str = "bilinear") -> AttentionComparison:
    """Grad-CAM of the teacher and every student on the same normalized `images`, with per-image overlap scores;
    `.summary()` gives each student's mean over the set. `keep_maps` bounds memory on large sets."""
    models = list(students.values()) if isinstance(students, Mapping) else \
        [students] if isinstance(students, nn.Module) else list(students)
    require_normalized_images(images, models=[teacher, *models])
    classes = {getattr(m, "default_cfg", {}).get("num_classes") for m in [teacher, *models]} - {None}
    if len(classes) > 1:   # a map of "class k" must mean the same class in every model
        raise ValueError(f"the teacher and students predict different numbers of classes ({sorted(classes)}); "
                         "Grad-CAM compares maps of the same class")
    comparator = AttentionComparator(teacher, students, target, layer_teacher, layers_students, fraction,
                                     interpolate_mode)
    parts = [comparator.compare(images[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    if not parts:
        raise ValueError("no images to compare")
    return AttentionComparison.concat(parts, keep_maps)


__all__ = ["AttentionComparator", "AttentionComparison", "TARGETS", "attention_correlation", "compare_attention",
           "grad_cam", "mismatched_scores", "nan_mean", "paired_differences", "top_region", "top_region_iou"]
