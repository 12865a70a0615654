"""MagSim / AngSim of several students against one teacher as a Job (METHODS §4), saved into an "analysis" run.

Step 0 chooses the base samples and attacks the teacher; step i attacks student i from the same base samples
toward the same targets. A cancelled run keeps the students it finished. Files written:
boundary.json (config, table, per-class breakdown, outcome counts), boundary_pairs.pt (per-pair scalars for every
pair and perturbations for the first `keep_base_samples` base samples; plain tensors, weights_only-loadable),
boundary_bars.json (the plotly bar chart).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dfkd_core.analysis.boundary import (METRIC_ATTACK, BoundarySimilarity, attack_pairs, boundary_similarity,
                                         choose_base_pairs)
from dfkd_core.config import Config
from dfkd_core.data import DatasetInfo, load_split
from dfkd_core.device import prepare_model, resolve_device
from dfkd_core.jobs import Job
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
    selection: str = "gap"                              # gap (METHODS §4) | random
    eta: float = METRIC_ATTACK.eta
    eps: float = METRIC_ATTACK.eps
    max_steps: int = METRIC_ATTACK.max_steps
    gradient_norm_power: int = METRIC_ATTACK.gradient_norm_power
    batch_size: int = 1024
    keep_base_samples: int = 50                         # base samples whose perturbations are saved
    seed: int = 0
    device: str = "auto"

    @property
    def attack(self) -> AttackSettings:
        return AttackSettings(self.eta, self.eps, self.max_steps, self.gradient_norm_power)


class BoundaryAnalysis(Job):
    """Compare students' decision boundaries with the teacher's on the same base samples (METHODS §4)."""

    kind = "analysis"

    def __init__(self, teacher: nn.Module, students: dict[str, nn.Module], dataset: DatasetInfo,
                 config: BoundaryConfig, run=None):
        super().__init__(run)
        if not students:
            raise ValueError("BoundaryAnalysis needs at least one student")
        self.teacher, self.students, self.dataset, self.config = teacher, students, dataset, config
        self.results: dict[str, BoundarySimilarity] = {}
        self.accuracy: dict[str, float] = {}

    def setup(self) -> None:
        c = self.config
        device = resolve_device(c.device)
        self.teacher = prepare_model(self.teacher, device)
        self.students = {k: prepare_model(m, device) for k, m in self.students.items()}
        split = load_split(self.dataset.name, c.split, self.dataset.root)
        self.test_split = split if c.split == "test" else load_split(self.dataset.name, "test", self.dataset.root)
        if c.pool and c.pool < len(split):
            split = split.subset(c.pool, c.seed)
        inputs, labels = split.normalized(), split.labels
        teacher_probs = predict_logits(self.teacher, inputs).softmax(1)
        students_probs = [predict_logits(m, inputs).softmax(1) for m in self.students.values()]
        for name, p in zip(self.students, students_probs):
            if p.shape[1] != teacher_probs.shape[1]:
                raise ValueError(f"student '{name}' has {p.shape[1]} classes, the teacher {teacher_probs.shape[1]}")
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
            self.accuracy["teacher"] = evaluate(self.teacher, self.test_split)["accuracy"]
            counts = self.teacher_attack.counts()
            return {"model": "teacher", "base_samples": len(self.pairs.labels), "pairs": len(self.pairs),
                    **{f"teacher_{k}": v for k, v in counts.items()}}
        name = list(self.students)[index - 1]
        model = self.students[name]
        result = boundary_similarity(self.pairs, self.teacher_attack,
                                     attack_pairs(model, self.pairs, c.attack, self.bounds, c.batch_size))
        self.results[name] = result
        self.accuracy[name] = evaluate(model, self.test_split)["accuracy"]
        return {"model": name, "magsim": result.magsim, "angsim": result.angsim,
                "both_accepted": result.both_accepted, "accuracy": self.accuracy[name],
                **{f"student_{k}": v for k, v in result.student_outcomes.items()}}

    def table(self) -> list[dict]:
        return [{"student": n, "accuracy": self.accuracy.get(n, float("nan")), "magsim": r.magsim,
                 "angsim": r.angsim, "both_accepted": r.both_accepted, "student_accepted": r.student_accepted,
                 "teacher_accepted": r.teacher_accepted, "pairs": r.pairs, "note": r.note}
                for n, r in self.results.items()]

    def finish(self, status: str) -> dict:
        if not self.results:
            return {}
        summary = {"teacher_accuracy": self.accuracy.get("teacher"), "base_samples": len(self.pairs.labels),
                   "pairs": len(self.pairs), "teacher_outcomes": self.teacher_attack.counts(),
                   "students": {row["student"]: row for row in self.table()}, "partial": status != "done"}
        if self.run_record is not None:
            from dfkd_core.plots.boundary import similarity_bar_figure

            self.run_record.save_json("boundary.json", {
                "config": self.config.to_dict(), "dataset": self.dataset.to_dict(), **summary,
                "results": {n: r.to_dict() for n, r in self.results.items()}})
            torch.save(self._pair_tensors(), self.run_record.path("boundary_pairs.pt"))
            self.run_record.path("boundary_bars.json").write_text(similarity_bar_figure(self.table()).to_json())
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
