"""MagSim / AngSim of several students against one teacher as a Job (methods.md#bss), saved into an "analysis" run.

Step 0 chooses the base samples and attacks the teacher; step i attacks student i from the same base samples
toward the same targets. A cancelled run keeps the students it finished. Files written:
boundary.json (config, table with 95% intervals, paired differences between students, per-class breakdown,
outcome counts, how many base samples qualified), boundary_pairs.pt (per-pair scalars for every pair and
perturbations for the first `keep_base_samples` base samples; plain tensors, weights_only-loadable),
boundary_bars.json (the plotly bar chart).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dfkd_core.analysis.boundary import (METRIC_ATTACK, BoundarySimilarity, attack_pairs, boundary_similarity,
                                         choose_base_pairs, paired_differences)
from dfkd_core.config import Config
from dfkd_core.data import DatasetInfo, load_split
from dfkd_core.device import prepare_model, resolve_device
from dfkd_core.jobs import Job
from dfkd_core.runs import atomic_torch_save, atomic_write_text
from dfkd_core.stats import Interval, accuracy_interval
from dfkd_core.synthesis.bss import AttackSettings
from dfkd_core.training import evaluate, predict_logits


@dataclass
class BoundaryConfig(Config):
    teacher: str = ""                                   # checkpoint path or run id (recorded with the run)
    students: list[str] = field(default_factory=list)
    samples: int = 500                                  # base samples N
    pool: int = 0                                       # 0: the whole split; else a seeded random subset
    split: str = "test"                                 # real split the base samples come from
    targets: str = "all"                                # all k ≠ b weighted by p_n^k | one sampled k
    selection: str = "random"                           # random | gap (BSS-KD's choice; methods.md#bss)
    eta: float = METRIC_ATTACK.eta
    eps: float = METRIC_ATTACK.eps
    max_steps: int = METRIC_ATTACK.max_steps
    gradient_norm_power: int = METRIC_ATTACK.gradient_norm_power
    batch_size: int = 1024
    keep_base_samples: int = 50                         # base samples whose perturbations are saved
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None                        # where the dataset lives (None: $DFKD_<NAME>, default)

    @property
    def attack(self) -> AttackSettings:
        return AttackSettings(self.eta, self.eps, self.max_steps, self.gradient_norm_power)

    def validate(self) -> None:
        """Refuse settings that cannot give a meaningful MagSim/AngSim, in one sentence, before any run exists."""
        self.require_finite()
        checks = [
            (self.samples >= 1, f"samples (base samples N) must be at least 1, got {self.samples}"),
            (self.pool >= 0, f"pool must be ≥ 0 (0: the whole split), got {self.pool}"),
            (self.split in ("test", "train"), f"split must be 'test' or 'train', got '{self.split}'"),
            (self.targets in ("all", "sampled"), f"targets must be 'all' or 'sampled', got '{self.targets}'"),
            (self.selection in ("gap", "random"), f"selection must be 'gap' or 'random', got '{self.selection}'"),
            (self.eta > 0, f"eta (the attack's step factor) must be > 0, got {self.eta}"),
            (self.eps >= 0, f"eps (the attack's overshoot) must be ≥ 0, got {self.eps}"),
            (self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}"),
            (self.gradient_norm_power in (1, 2), f"gradient_norm_power must be 1 or 2, got "
                                                 f"{self.gradient_norm_power}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.keep_base_samples >= 0, f"keep_base_samples must be ≥ 0, got {self.keep_base_samples}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def available_note(self, split_size: int, dataset: str) -> str:
        """Before the run: '500 base samples asked; the digits test split has 360 images: at most 360 can qualify
        …' when the split (or pool) is smaller than the request, else ''."""
        available = min(self.pool, split_size) if self.pool else split_size
        if self.samples <= available:
            return ""
        where = f"a {available:,}-image pool of the {dataset} {self.split} split" if self.pool else \
            f"the {dataset} {self.split} split has {available:,} images"
        return (f"{self.samples:,} base samples asked; {where}: at most {available:,} can qualify (those the "
                "teacher and every student classify correctly)")


class BoundaryAnalysis(Job):
    """Compare students' decision boundaries with the teacher's on the same base samples (methods.md#bss)."""

    kind = "analysis"

    def __init__(self, teacher: nn.Module, students: dict[str, nn.Module], dataset: DatasetInfo,
                 config: BoundaryConfig, run=None):
        super().__init__(run)
        if not students:
            raise ValueError("BoundaryAnalysis needs at least one student")
        config.validate()
        self.teacher, self.students, self.dataset, self.config = teacher, students, dataset, config
        self.results: dict[str, BoundarySimilarity] = {}
        self.accuracy: dict[str, Interval] = {}   # over the test images (`evaluate`'s per-image hits)

    def setup(self) -> None:
        c = self.config
        device = resolve_device(c.device)
        self.teacher = prepare_model(self.teacher, device)
        self.students = {k: prepare_model(m, device) for k, m in self.students.items()}
        split = load_split(self.dataset.name, c.split, c.data_root)
        self.test_split = split if c.split == "test" else load_split(self.dataset.name, "test", c.data_root)
        self.source = f"{c.split} images"
        if c.pool and c.pool < len(split):
            split = split.subset(c.pool, c.seed)
            self.source = f"images of the {c.pool:,}-image pool"
        inputs, labels = split.normalized(), split.labels
        teacher_probs = predict_logits(self.teacher, inputs).softmax(1)
        students_probs = [predict_logits(m, inputs).softmax(1) for m in self.students.values()]
        self.pairs = choose_base_pairs(teacher_probs, students_probs, inputs, labels, c.samples, c.seed,
                                       c.targets, c.selection)
        if len(self.pairs) == 0:
            raise ValueError(f"no sample of the {c.split} split is classified correctly by the teacher and every "
                             "student, so there is no base sample to attack")
        self.bounds = self.dataset.pixel_bounds()
        self.total_steps = 1 + len(self.students)

    def step(self, index: int) -> dict:
        c = self.config
        if index == 0:
            self.teacher_attack = attack_pairs(self.teacher, self.pairs, c.attack, self.bounds, c.batch_size)
            self.accuracy["teacher"] = accuracy_interval(evaluate(self.teacher, self.test_split)["correct"])
            counts = self.teacher_attack.counts()
            return {"model": "teacher", "base_samples": len(self.pairs.labels), "pairs": len(self.pairs),
                    **{f"teacher_{k}": v for k, v in counts.items()}}
        name = list(self.students)[index - 1]
        model = self.students[name]
        result = boundary_similarity(self.pairs, self.teacher_attack,
                                     attack_pairs(model, self.pairs, c.attack, self.bounds, c.batch_size))
        self.results[name] = result
        self.accuracy[name] = accuracy_interval(evaluate(model, self.test_split)["correct"])
        return {"model": name, "magsim": result.magsim, "angsim": result.angsim,
                "both_accepted": result.both_accepted, "accuracy": self.accuracy[name].estimate,
                **{f"student_{k}": v for k, v in result.student_outcomes.items()}}

    def table(self) -> list[dict]:
        """One row per student; every metric with its 95% interval (`*_interval`, Interval.to_dict())."""
        return [{"student": n, "accuracy": self.accuracy[n].estimate, "accuracy_interval": self.accuracy[n].to_dict(),
                 "magsim": r.magsim, "magsim_interval": r.magsim_interval.to_dict(), "angsim": r.angsim,
                 "angsim_interval": r.angsim_interval.to_dict(), "both_accepted": r.both_accepted,
                 "student_accepted": r.student_accepted, "teacher_accepted": r.teacher_accepted, "pairs": r.pairs,
                 "too_few_pairs": r.too_few_pairs, "note": r.note}
                for n, r in self.results.items()]

    def finish(self, status: str) -> dict:
        if not self.results:
            return {}
        teacher = self.accuracy.get("teacher")
        summary = {"teacher_accuracy": teacher.estimate if teacher else None,
                   "teacher_accuracy_interval": teacher.to_dict() if teacher else None,
                   "base_samples": len(self.pairs.labels), "base_samples_asked": self.config.samples,
                   "base_samples_qualified": self.pairs.qualified,
                   "samples_note": self.pairs.shortfall_note(self.source),
                   "selection_note": self.pairs.selection_note(),
                   "pairs": len(self.pairs), "teacher_outcomes": self.teacher_attack.counts(),
                   "students": {row["student"]: row for row in self.table()},
                   "differences": paired_differences(self.results), "partial": status != "done"}
        if self.run_record is not None:
            from dfkd_core.plots.boundary import similarity_bar_figure

            self.run_record.save_json("boundary.json", {
                "config": self.config.to_dict(), "dataset": self.dataset.to_dict(), **summary,
                "results": {n: r.to_dict() for n, r in self.results.items()}})
            atomic_torch_save(self._pair_tensors(), self.run_record.path("boundary_pairs.pt"))
            atomic_write_text(self.run_record.path("boundary_bars.json"), similarity_bar_figure(self.table()).to_json())
        return summary

    def _pair_tensors(self) -> dict:
        """Per-pair scalars for every pair; inputs and perturbations (float16) only for the first base samples."""
        p = self.pairs
        kept = p.pair_base < self.config.keep_base_samples
        out = {"base_inputs": p.inputs[:self.config.keep_base_samples].float(), "base_labels": p.labels,
               "source_index": p.source_index, "pair_base": p.pair_base, "pair_target": p.pair_target,
               "pair_weight": p.pair_weight, "kept_pairs": kept.nonzero().flatten(),
               "teacher_outcome": self.teacher_attack.outcome, "teacher_crossed_step": self.teacher_attack.crossed_step,
               "students": {}}
        for name, r in self.results.items():
            d = r.pair_data
            out["students"][name] = {
                "outcome": d["student_outcome"], "crossed_step": d["student_crossed_step"],
                "magnitude_ratio": d["magnitude_ratio"].float(), "cosine": d["cosine"].float(),
                "perturbation": d["student_perturbation"][kept].half()}
            out["teacher_perturbation"] = d["teacher_perturbation"][kept].half()
        return out


def load_boundary_run(run) -> tuple[dict, dict]:
    """(boundary.json, boundary_pairs.pt) of a finished boundary analysis run, for display."""
    path = run.path("boundary_pairs.pt")
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no boundary_pairs.pt (not a boundary analysis, or it failed)")
    return run.load_json("boundary.json"), torch.load(path, map_location="cpu", weights_only=True)


__all__ = ["BoundaryAnalysis", "BoundaryConfig", "load_boundary_run"]
