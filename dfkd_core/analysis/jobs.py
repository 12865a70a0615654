"""CKA and Grad-CAM comparisons as jobs (one batch per step), saving their results into an "analysis" run.

Inputs are either the teacher's real test split ('real') or the images of a synthesis run (its id): the same
comparison on real and on synthesized data shows whether the student learned the teacher's representation of
the data or only of the synthetic images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dfkd_core.analysis.checks import sample_count_note
from dfkd_core.analysis.cka import KERNELS, RBF_BANDWIDTHS
from dfkd_core.analysis.cka_intervals import CKA_RESAMPLES
from dfkd_core.analysis.cka_matrix import ESTIMATORS, CKAMatrix
from dfkd_core.analysis.gradcam import TARGETS, AttentionComparator, AttentionComparison
from dfkd_core.config import Config
from dfkd_core.data import DatasetInfo, load_split
from dfkd_core.device import prepare_model, resolve_device
from dfkd_core.jobs import Job
from dfkd_core.models import CheckpointError, load_tensors
from dfkd_core.runs import atomic_torch_save, atomic_write_text

GRADCAM_MAPS_KEPT = 16   # images whose maps are saved for display; scores are kept for all


@dataclass
class AnalysisInputs:
    """The images an analysis runs on, and how many were asked for (0: all) out of how many exist where."""

    images: torch.Tensor
    labels: torch.Tensor | None
    asked: int
    available: int
    source: str            # "the digits test split", "synthesis run <id>"

    @property
    def note(self) -> str:
        """'1,000 images asked, the digits test split has 360: all 360 are used', or ''."""
        return sample_count_note(self.asked, self.available, self.source)


def _synthesized(inputs: str, info: DatasetInfo, store) -> dict:
    if store is None:
        raise ValueError(f"inputs '{inputs}' is not 'real'; a run store is needed to find a synthesis run")
    run = store.get(inputs)
    path = run.path("images.pt")
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no images.pt; --inputs takes 'real' or a synthesis run id")
    try:
        payload = load_tensors(path, "image pool")
    except CheckpointError as e:   # a damaged or foreign file: our sentence, not torch's
        raise ValueError(str(e)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), torch.Tensor):
        raise ValueError(f"{path} holds no 'images' tensor; --inputs takes 'real' or a synthesis run id")
    saved = (payload.get("dataset") or {}).get("name")
    if saved and saved != info.name:
        raise ValueError(f"run {run.id} holds {saved} images but the teacher was trained on {info.name}")
    return payload


def available_inputs(inputs: str, info: DatasetInfo, store=None, data_root: str | None = None) -> tuple[int, str]:
    """(how many images `inputs` holds, where they are): what a page says before a run, e.g. (360, "the digits test
    split")."""
    if inputs == "real":
        return len(load_split(info.name, "test", data_root)), f"the {info.name} test split"
    return len(_synthesized(inputs, info, store)["images"]), f"synthesis run {inputs}"


def load_inputs(inputs: str, info: DatasetInfo, samples: int = 0, seed: int = 0, store=None,
                data_root: str | None = None) -> AnalysisInputs:
    """Normalized images and labels from 'real' (the test split of the teacher's dataset, read from `data_root` or
    where `resolve_data_root` finds it) or a synthesis run id (labels = the classes the images were synthesized
    for). `samples` > 0 draws that many at random (seeded); the result says when fewer exist."""
    if inputs == "real":
        split = load_split(info.name, "test", data_root)
        available, source = len(split), f"the {info.name} test split"
        if samples and samples < len(split):
            split = split.subset(samples, seed)
        return AnalysisInputs(split.normalized(), split.labels, samples, available, source)
    payload = _synthesized(inputs, info, store)
    images, labels = payload["images"].float(), payload.get("targets")
    available, source = len(images), f"synthesis run {inputs}"
    if samples and samples < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:samples]
        images, labels = images[idx], labels[idx] if labels is not None else None
    return AnalysisInputs(images, labels, samples, available, source)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class CKAConfig(Config):
    teacher: str = ""                 # checkpoint path or run id (recorded with the run)
    student: str = ""
    kernel: str = "linear"            # linear | rbf | debiased | debiased_rbf
    threshold: float = 1.0            # RBF: σ² = threshold² × median of the squared distances
    bandwidth: str = "reference"      # reference (Kornblith et al.'s median, n² entries) | offdiagonal
    layers_teacher: list[str] = field(default_factory=list)   # empty: layer_names(teacher)
    layers_student: list[str] = field(default_factory=list)
    inputs: str = "real"              # 'real' or a synthesis run id
    samples: int = 2000               # 0: all
    batch_size: int = 500
    reduce: str = "flatten"           # flatten | mean
    estimator: str = "auto"           # auto | full | streaming | minibatch
    resamples: int = CKA_RESAMPLES    # resamples for the 95% intervals (cka_intervals; 0: none)
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None      # where the real dataset lives (None: $DFKD_<NAME>, then the default)

    def validate(self) -> None:
        """Refuse settings that cannot give a meaningful CKA, in one sentence, before any run exists."""
        self.require_finite()
        _require(self.kernel in KERNELS, f"kernel must be one of {KERNELS}, got '{self.kernel}'")
        _require(self.estimator in ESTIMATORS, f"estimator must be one of {ESTIMATORS}, got '{self.estimator}'")
        _require(self.estimator != "streaming" or self.kernel == "linear",
                 f"the streaming estimator is exact linear CKA only; use 'full' or 'minibatch' for '{self.kernel}'")
        _require(self.bandwidth in RBF_BANDWIDTHS, f"bandwidth must be one of {RBF_BANDWIDTHS}, got "
                                                   f"'{self.bandwidth}'")
        _require(self.reduce in ("flatten", "mean"), f"reduce must be 'flatten' or 'mean', got '{self.reduce}'")
        _require(self.threshold > 0, f"threshold must be > 0 (the RBF bandwidth's scale), got {self.threshold}")
        _require(self.samples == 0 or self.samples >= 4, f"samples must be 0 (all) or at least 4, got {self.samples}")
        _require(self.batch_size >= 4, f"batch_size must be at least 4, got {self.batch_size}")
        _require(self.resamples >= 0, f"resamples must be ≥ 0, got {self.resamples}")


class CKAAnalysis(Job):
    """Teacher × student layer CKA matrix (methods.md#cka); saves cka.json and the heatmap figure (cka_heatmap.json)."""

    kind = "analysis"

    def __init__(self, teacher: nn.Module, student: nn.Module, images: torch.Tensor, config: CKAConfig, run=None,
                 samples_note: str = ""):
        super().__init__(run)
        config.validate()
        self.teacher, self.student, self.images, self.config = teacher, student, images, config
        self.samples_note = samples_note   # when fewer inputs exist than were asked for (AnalysisInputs.note)

    def setup(self) -> None:
        device = resolve_device(self.config.device)
        self.teacher, self.student = prepare_model(self.teacher, device), prepare_model(self.student, device)
        c = self.config
        self.matrix = CKAMatrix(self.teacher, self.student, self.images, c.layers_teacher or None,
                                c.layers_student or None, c.kernel, c.threshold, c.batch_size, c.reduce, c.estimator,
                                c.bandwidth, c.seed)
        self.total_steps = self.matrix.total_steps

    def step(self, index: int) -> dict:
        return {"samples": self.matrix.step(index)}

    def finish(self, status: str) -> dict:
        # A cancelled run keeps the estimate over the batches it finished (fewer samples, marked partial).
        if status == "failed" or not hasattr(self, "matrix") or self.matrix.samples < 4:
            return {}
        self.cka = r = self.matrix.result(self.config.resamples)
        m, teacher_layers, student_layers = r.matrix, r.layers_teacher, r.layers_student
        summary = {"kernel": r.kernel, "quantity": r.quantity, "estimator": r.estimator, "note": r.note,
                   "requested_kernel": r.requested_kernel, "samples": r.samples, "samples_asked": self.config.samples,
                   "samples_note": self.samples_note, "inputs": self.config.inputs,
                   "layers_teacher": len(teacher_layers), "layers_student": len(student_layers),
                   "cka_last_pair": float(m[-1, -1]),
                   "cka_last_pair_interval": r.interval(teacher_layers[-1], student_layers[-1]).to_dict(),
                   "partial": status != "done"}
        if m.shape[0] == m.shape[1]:
            # Same depth (e.g. a half-width student): layer i of one faces layer i of the other.
            summary["cka_diagonal"] = {f"{a} | {b}": r.interval(a, b).to_dict()
                                       for a, b in zip(teacher_layers, student_layers)}
            summary["cka_diagonal_mean"] = float(m.diagonal().nanmean())
        if self.run_record is not None:
            from dfkd_core.plots.representations import cka_heatmap_figure

            self.run_record.save_json("cka.json", {**r.to_dict(), "samples_asked": self.config.samples,
                                                   "samples_note": self.samples_note})
            atomic_write_text(self.run_record.path("cka_heatmap.json"), cka_heatmap_figure(r).to_json())
        return summary


@dataclass
class GradCAMConfig(Config):
    teacher: str = ""
    students: list[str] = field(default_factory=list)
    target: str = "true"              # true | predicted (each model's own) | teacher (the teacher's prediction)
    layer_teacher: str = ""           # empty: last block with a spatial map
    layers_students: list[str] = field(default_factory=list)
    fraction: float = 0.2             # top-region size for the IoU
    inputs: str = "real"
    samples: int = 500
    batch_size: int = 100
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None      # where the real dataset lives (None: $DFKD_<NAME>, then the default)

    def validate(self) -> None:
        """Refuse settings that cannot give a meaningful comparison, in one sentence, before any run exists."""
        self.require_finite()
        _require(self.target in TARGETS, f"target must be one of {TARGETS}, got '{self.target}'")
        _require(0 < self.fraction <= 1, f"fraction (the top region's share of the image) must be in (0, 1], got "
                                         f"{self.fraction}")
        _require(self.samples >= 0, f"samples must be ≥ 0 (0: all), got {self.samples}")
        _require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _require(not self.layers_students or len(self.layers_students) == len(self.students),
                 f"layers_students needs one layer per student ({len(self.students)}), got "
                 f"{len(self.layers_students)}")


class GradCAMAnalysis(Job):
    """Grad-CAM teacher vs students (methods.md#grad-cam): per-image overlap scores for every image, the maps of the
    first `GRADCAM_MAPS_KEPT`; saves gradcam.json, gradcam_maps.pt and gradcam_overlays.png."""

    kind = "analysis"

    def __init__(self, teacher: nn.Module, students: dict[str, nn.Module], images: torch.Tensor,
                 labels: torch.Tensor | None, config: GradCAMConfig, dataset: DatasetInfo | None = None, run=None,
                 samples_note: str = ""):
        super().__init__(run)
        config.validate()
        self.teacher, self.students, self.images, self.labels = teacher, students, images, labels
        self.config, self.dataset, self.samples_note = config, dataset, samples_note

    def setup(self) -> None:
        c = self.config
        device = resolve_device(c.device)
        self.teacher = prepare_model(self.teacher, device)
        self.students = {k: prepare_model(m, device) for k, m in self.students.items()}
        layers = dict(zip(self.students, c.layers_students)) if c.layers_students else None
        self.comparator = AttentionComparator(self.teacher, self.students, c.target, c.layer_teacher or None,
                                              layers, c.fraction)
        self.total_steps = -(-len(self.images) // c.batch_size)
        self.parts: list[AttentionComparison] = []

    def step(self, index: int) -> dict:
        b = self.config.batch_size
        labels = None if self.labels is None else self.labels[index * b:(index + 1) * b]
        part = self.comparator.compare(self.images[index * b:(index + 1) * b], labels)
        self.parts.append(part)
        return {f"{s}_{k}": v for s, d in part.summary().items() for k, v in d.items() if k.endswith("mean")}

    def finish(self, status: str) -> dict:
        if status == "failed" or not getattr(self, "parts", None):
            return {}
        self.comparison = AttentionComparison.concat(self.parts, keep_maps=GRADCAM_MAPS_KEPT)
        summary = {"target": self.config.target, "inputs": self.config.inputs,
                   "samples": len(self.comparison.targets["teacher"]), "samples_asked": self.config.samples,
                   "samples_note": self.samples_note, "partial": status != "done",
                   "layers": self.comparison.layers, "students": self.comparison.summary(intervals=True),
                   "differences": self.comparison.paired_differences()}   # same images: paired intervals
        if self.run_record is not None:
            self._save(summary)
        return summary

    def _save(self, summary: dict) -> None:
        from dfkd_core.plots.representations import save_overlay_png

        c, r = self.comparison, self.run_record
        per_image = {s: {"correlation": c.correlation[s].tolist(), "iou": c.iou[s].tolist()} for s in c.students}
        r.save_json("gradcam.json", {**summary, "fraction": c.fraction, "per_image": per_image,
                                     "targets": {k: v.tolist() for k, v in c.targets.items()},
                                     "predictions": {k: v.tolist() for k, v in c.predictions.items()}})
        kept = self.images[:len(c.maps["teacher"])]
        atomic_torch_save({"images": kept, "maps": c.maps, "labels": c.labels[:len(kept)]
                           if c.labels is not None else None,
                           "dataset": self.dataset.to_dict() if self.dataset else None}, r.path("gradcam_maps.pt"))
        if self.dataset is not None:
            save_overlay_png(self.dataset.denormalize(kept[:8]), {k: v[:8] for k, v in c.maps.items()},
                             r.path("gradcam_overlays.png"))


__all__ = ["AnalysisInputs", "CKAAnalysis", "CKAConfig", "GRADCAM_MAPS_KEPT", "GradCAMAnalysis", "GradCAMConfig",
           "available_inputs", "load_inputs"]
