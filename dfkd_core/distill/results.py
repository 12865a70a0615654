"""A distillation's accuracies with their uncertainty, and the paired comparison of two students (issue 14).

Every accuracy is a mean of per-image hits over the real test set, so its 95% bootstrap interval resamples those
images (`dfkd_core.stats`); the student/teacher ratio resamples them once for both models (a paired interval: Σ s_i /
Σ t_i). The hits are stored with the run (`test_hits.pt`), so that two students can later be compared on the same
images with a paired bootstrap, much tighter than their two separate intervals.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dfkd_core.runs import atomic_torch_save
from dfkd_core.stats import Interval, accuracy_interval, paired_difference_interval, ratio_interval, wilson_interval

TEST_HITS_FILE = "test_hits.pt"


def accuracy(hits: torch.Tensor) -> float:
    return int(hits.sum()) / max(len(hits), 1)


def accuracy_summary(hits: dict[str, torch.Tensor]) -> dict:
    """`<model>_accuracy` and `<model>_accuracy_ci` for every model's hits ('student', 'teacher', IE-DML's
    'student_b'), and the student/teacher `ratio` with its paired `ratio_ci`."""
    summary = {}
    for name, model_hits in hits.items():
        summary[f"{name}_accuracy"] = accuracy(model_hits)
        summary[f"{name}_accuracy_ci"] = accuracy_interval(model_hits).to_dict()
    ratio = ratio_interval(hits["student"].double(), hits["teacher"].double())
    return {**summary, "ratio": ratio.estimate, "ratio_ci": ratio.to_dict()}


def per_class_intervals(hits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[Interval]:
    """Accuracy among the images of each class with its Wilson 95% interval (a class has a few dozen held-out
    images, so the interval is wide: ±15 points at 36); NaN for a class with no image."""
    hits, labels = hits.bool().cpu(), labels.cpu()
    return [wilson_interval(int(hits[labels == k].sum()), int((labels == k).sum())) for k in range(num_classes)]


def per_class_accuracy(hits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy among the images of each class (NaN for a class with no image)."""
    return [i.estimate for i in per_class_intervals(hits, labels, num_classes)]


def save_test_hits(directory: Path, hits: dict[str, torch.Tensor], labels: torch.Tensor, dataset: str) -> Path:
    """Per-image hits (bool) of each model on the real test set, with the labels that identify the images."""
    return atomic_torch_save({"dataset": dataset, "labels": labels.cpu(),
                              "hits": {name: h.bool().cpu() for name, h in hits.items()}},
                             Path(directory) / TEST_HITS_FILE)


def load_test_hits(run) -> dict:
    """The test_hits.pt of a distill run (a `Run`, a record with `.dir`, or its directory)."""
    path = Path(getattr(run, "dir", run)) / TEST_HITS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path.parent.name} has no {TEST_HITS_FILE}: only distillations finished by this "
                                "version store their per-image test results")
    return torch.load(path, map_location="cpu", weights_only=True)


def compare_students_accuracy(run_a, run_b, model_a: str = "student", model_b: str = "student") -> Interval:
    """accuracy(a) − accuracy(b) on the same real test images with its paired 95% bootstrap interval (the images
    resampled together). `model_*` picks a model of the run: 'student', 'teacher' or IE-DML's 'student_b'."""
    a, b = load_test_hits(run_a), load_test_hits(run_b)
    if a["dataset"] != b["dataset"] or not torch.equal(a["labels"], b["labels"]):
        raise ValueError(f"the two runs were tested on different images ({a['dataset']}, {len(a['labels'])} vs "
                         f"{b['dataset']}, {len(b['labels'])}); a paired comparison needs the same test set")
    for run, hits, name in ((run_a, a, model_a), (run_b, b, model_b)):
        if name not in hits["hits"]:
            raise ValueError(f"{Path(getattr(run, 'dir', run)).name} has no model '{name}'; "
                             f"it has {sorted(hits['hits'])}")
    return paired_difference_interval(a["hits"][model_a], b["hits"][model_b])


__all__ = ["TEST_HITS_FILE", "accuracy_summary", "compare_students_accuracy", "load_test_hits", "per_class_accuracy",
           "per_class_intervals", "save_test_hits"]
