"""MagSim / AngSim: how similar a student's decision boundaries are to its teacher's (METHODS §4, Heo et al.).

From one base sample x_n (class b) and one target class k, the BSS attack is run on the teacher and, separately,
on the student; the perturbations x̄^{k,m}_n = ẋ^{k,m}_n − x_n point from x_n to each model's b/k boundary. Over the
pairs (n, k) where BOTH attacks were accepted, with weights p_n^k normalized by their total:

    MagSim = Σ p_n^k · min(||x̄^t||, ||x̄^s||) / max(||x̄^t||, ||x̄^s||) / Σ p_n^k
    AngSim = Σ p_n^k · max(0, cos(x̄^t, x̄^s)) / Σ p_n^k

Both lie in [0, 1]; 1 means the same boundary distance / direction. Without a single pair accepted by both
models the metric does not exist: the result holds NaN and a note saying why, never a made-up number.

Pairs: by default every k ≠ b of each base sample, weighted by p_n^k (the sum of METHODS §4 taken exactly).
`targets="sampled"` draws one k per base sample with probability p_n^k instead, as BSS-KD training does; the draw
already applies p_n^k, so those pairs carry weight 1 (a Monte Carlo estimate of the same weighted sums).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

from dfkd_core.synthesis.bss import (ACCEPTED, AttackSettings, BoundaryAttackResult, PixelBounds, pair_gap_score,
                                     sample_target_classes, target_class_weights)
from dfkd_core.training import predict_logits

METRIC_ATTACK = AttackSettings(eta=1.0, eps=1e-4, max_steps=20)
"""Attack settings for the metric. METHODS §4's training values (η = 0.3, 10 steps) shrink L_a only by the factor
(1 − η) per step on a locally linear model, so from a typical logit gap of ~7 almost nothing crosses in 10 steps
(measured on the Fashion-MNIST teacher: 0 of 184 accepted). η = 1 is the full Newton step onto the linearized
boundary; with 20 steps 86% of pairs cross, ending within ~0.01 logits of the boundary, which is what the
perturbation norms are meant to measure."""

FEW_PAIRS = 30


def magnitude_ratio(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor) -> torch.Tensor:
    """min(||x̄^t||, ||x̄^s||) / max(||x̄^t||, ||x̄^s||) per pair (1 when both are zero)."""
    t = teacher_perturbations.flatten(1).norm(dim=1)
    s = student_perturbations.flatten(1).norm(dim=1)
    high = torch.maximum(t, s)
    return torch.where(high > 0, torch.minimum(t, s) / high.clamp_min(1e-30), torch.ones_like(high))


def clipped_cosine(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor) -> torch.Tensor:
    """max(0, cos(x̄^t, x̄^s)) per pair."""
    cos = torch.nn.functional.cosine_similarity(teacher_perturbations.flatten(1), student_perturbations.flatten(1),
                                                dim=1, eps=1e-30)
    return cos.clamp(0.0, 1.0)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ w·v / Σ w; NaN when there is no weight at all (no pair to average over)."""
    total = weights.sum()
    return float((weights * values).sum() / total) if total > 0 else math.nan


def magnitude_similarity(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor,
                         weights: torch.Tensor) -> float:
    """MagSim (METHODS §4) over the given pairs (pass only pairs accepted by both models)."""
    return weighted_mean(magnitude_ratio(teacher_perturbations, student_perturbations), weights)


def angle_similarity(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor,
                     weights: torch.Tensor) -> float:
    """AngSim (METHODS §4) over the given pairs (pass only pairs accepted by both models)."""
    return weighted_mean(clipped_cosine(teacher_perturbations, student_perturbations), weights)


@dataclass
class BasePairs:
    """Base samples x_n and the (n, k) pairs attacked from them; shared by every student of a comparison."""

    inputs: torch.Tensor         # (N, C, H, W) base samples, normalized
    labels: torch.Tensor         # (N,) base class b
    source_index: torch.Tensor   # (N,) index of each base sample in the inputs it was chosen from
    pair_base: torch.Tensor      # (P,) which base sample
    pair_target: torch.Tensor    # (P,) target class k
    pair_weight: torch.Tensor    # (P,) p_n^k ("all") or 1 ("sampled")
    targets: str = "all"

    def __len__(self) -> int:
        return len(self.pair_base)

    @property
    def pair_class(self) -> torch.Tensor:
        return self.labels[self.pair_base]


def choose_base_pairs(teacher_probs: torch.Tensor, students_probs: list[torch.Tensor], inputs: torch.Tensor,
                      labels: torch.Tensor, n_base: int, seed: int = 0, targets: str = "all",
                      selection: str = "gap") -> BasePairs:
    """Base samples (METHODS §4): correct for the teacher and every student; the n_base with the largest
    Σ_k (p_T,k − p_S,k)² (averaged over the students, so all share them), or a seeded random choice."""
    if targets not in ("all", "sampled") or selection not in ("gap", "random"):
        raise ValueError(f"targets must be 'all' or 'sampled' and selection 'gap' or 'random' "
                         f"(got {targets!r}, {selection!r})")
    correct = teacher_probs.argmax(1) == labels
    for p in students_probs:
        correct &= p.argmax(1) == labels
    candidates = correct.nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    if selection == "gap":
        score = torch.stack([pair_gap_score(teacher_probs[candidates], p[candidates])
                             for p in students_probs]).mean(0)
        chosen = candidates[torch.sort(score, descending=True, stable=True).indices[:n_base]]
    else:
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n_base]]
    base_labels = labels[chosen]
    if targets == "all":
        weights = target_class_weights(teacher_probs[chosen], base_labels)
        pair_base, pair_target = (weights > 0).nonzero(as_tuple=True)
        pair_weight = weights[pair_base, pair_target]
    else:
        pair_target, _ = sample_target_classes(teacher_probs[chosen], base_labels, generator)
        pair_base = torch.arange(len(chosen))
        pair_weight = torch.ones(len(chosen))
    return BasePairs(inputs[chosen], base_labels, chosen, pair_base, pair_target, pair_weight, targets)


def attack_pairs(model: nn.Module, pairs: BasePairs, settings: AttackSettings = METRIC_ATTACK,
                 pixel_bounds: PixelBounds | None = None, batch_size: int = 1024) -> BoundaryAttackResult:
    """Run the BSS attack on `model` for every (n, k) pair, in chunks; results come back on CPU."""
    attack = settings.build(model, pixel_bounds)
    parts = []
    for i in range(0, len(pairs), batch_size):
        idx = slice(i, i + batch_size)
        parts.append(attack.attack(pairs.inputs[pairs.pair_base[idx]], pairs.pair_class[idx], pairs.pair_target[idx]))
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return BoundaryAttackResult(pairs.inputs[:0].clone(), empty, empty, empty, torch.empty(0), empty)
    cat = lambda name: torch.cat([getattr(p, name).cpu() for p in parts])  # noqa: E731
    return BoundaryAttackResult(*(cat(n) for n in ("adversarial", "outcome", "crossed_step", "steps",
                                                   "final_loss", "final_prediction")))


@dataclass
class BoundarySimilarity:
    """MagSim / AngSim of one student against the teacher, with the counts that say how much to trust them."""

    magsim: float
    angsim: float
    pairs: int                      # (n, k) pairs attacked
    base_samples: int
    teacher_accepted: int
    student_accepted: int
    both_accepted: int
    teacher_outcomes: dict[str, int]
    student_outcomes: dict[str, int]
    per_class: dict[int, dict[str, float]]   # base class → magsim, angsim, both_accepted, pairs
    note: str = ""
    pair_data: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # per pair, for the app

    def to_dict(self) -> dict:
        """Everything but the per-pair tensors (JSON-ready; NaN stays NaN)."""
        return {k: v for k, v in self.__dict__.items() if k != "pair_data"}


def boundary_similarity(pairs: BasePairs, teacher_attack: BoundaryAttackResult,
                        student_attack: BoundaryAttackResult) -> BoundarySimilarity:
    """MagSim and AngSim (METHODS §4) from the two models' attacks on the same pairs, overall and per base class."""
    x = pairs.inputs[pairs.pair_base]
    t_pert = teacher_attack.adversarial.cpu() - x
    s_pert = student_attack.adversarial.cpu() - x
    t_ok, s_ok = teacher_attack.outcome == ACCEPTED, student_attack.outcome == ACCEPTED
    both = t_ok & s_ok
    ratio, cosine = magnitude_ratio(t_pert, s_pert), clipped_cosine(t_pert, s_pert)
    weight = pairs.pair_weight * both
    per_class = {}
    for c in pairs.labels.unique().tolist():
        in_c = pairs.pair_class == c
        per_class[int(c)] = {"magsim": weighted_mean(ratio[in_c], weight[in_c]),
                             "angsim": weighted_mean(cosine[in_c], weight[in_c]),
                             "both_accepted": int(both[in_c].sum()), "pairs": int(in_c.sum())}
    n_both = int(both.sum())
    note = ""
    if n_both == 0:
        note = (f"no pair was accepted by both models (teacher accepted {int(t_ok.sum())}, student "
                f"{int(s_ok.sum())} of {len(pairs)}): MagSim/AngSim are undefined. Use more base samples, more "
                f"attack steps or a larger η.")
    elif n_both < FEW_PAIRS:
        note = f"only {n_both} pairs accepted by both models: the numbers are noisy"
    pair_data = {"base": pairs.pair_base, "base_class": pairs.pair_class, "target": pairs.pair_target,
                 "weight": pairs.pair_weight, "teacher_perturbation": t_pert, "student_perturbation": s_pert,
                 "teacher_outcome": teacher_attack.outcome, "student_outcome": student_attack.outcome,
                 "teacher_crossed_step": teacher_attack.crossed_step,
                 "student_crossed_step": student_attack.crossed_step,
                 "magnitude_ratio": ratio, "cosine": cosine}
    return BoundarySimilarity(weighted_mean(ratio, weight), weighted_mean(cosine, weight), len(pairs),
                              len(pairs.labels), int(t_ok.sum()), int(s_ok.sum()), n_both,
                              teacher_attack.counts(), student_attack.counts(), per_class, note, pair_data)


@dataclass
class BoundaryComparison:
    """Several students measured against one teacher on the SAME base samples and targets."""

    pairs: BasePairs
    teacher_attack: BoundaryAttackResult
    results: dict[str, BoundarySimilarity]
    settings: AttackSettings

    def table(self) -> list[dict]:
        return [{"student": name, "magsim": r.magsim, "angsim": r.angsim, "both_accepted": r.both_accepted,
                 "student_accepted": r.student_accepted, "teacher_accepted": r.teacher_accepted, "pairs": r.pairs}
                for name, r in self.results.items()]


def compare_students(teacher: nn.Module, students: Mapping[str, nn.Module], inputs: torch.Tensor,
                     labels: torch.Tensor, n_base: int = 500, seed: int = 0, targets: str = "all",
                     selection: str = "gap", settings: AttackSettings = METRIC_ATTACK,
                     pixel_bounds: PixelBounds | None = None,
                     progress: Callable[[str], None] | None = None) -> BoundaryComparison:
    """MagSim/AngSim (METHODS §4) of each student vs the teacher; the teacher is attacked once and every student
    is attacked from the same base samples toward the same targets, so the numbers are comparable."""
    if not students:
        raise ValueError("compare_students needs at least one student")
    teacher_probs = predict_logits(teacher, inputs).softmax(1)
    students_probs = [predict_logits(m, inputs).softmax(1) for m in students.values()]
    for name, p in zip(students, students_probs):
        if p.shape != teacher_probs.shape:
            raise ValueError(f"student '{name}' predicts {p.shape[1]} classes, the teacher {teacher_probs.shape[1]}")
    pairs = choose_base_pairs(teacher_probs, students_probs, inputs, labels.cpu(), n_base, seed, targets, selection)
    if progress:
        progress(f"{len(pairs.labels)} base samples, {len(pairs)} pairs; attacking the teacher")
    teacher_attack = attack_pairs(teacher, pairs, settings, pixel_bounds)
    results = {}
    for name, model in students.items():
        if progress:
            progress(f"attacking student '{name}'")
        results[name] = boundary_similarity(pairs, teacher_attack, attack_pairs(model, pairs, settings, pixel_bounds))
    return BoundaryComparison(pairs, teacher_attack, results, settings)


def decision_boundary_similarity(teacher: nn.Module, student: nn.Module, inputs: torch.Tensor,
                                 labels: torch.Tensor, n_base: int = 500, seed: int = 0, targets: str = "all",
                                 selection: str = "gap", settings: AttackSettings = METRIC_ATTACK,
                                 pixel_bounds: PixelBounds | None = None) -> BoundarySimilarity:
    """MagSim and AngSim (METHODS §4) of one student against its teacher on base samples drawn from inputs."""
    return compare_students(teacher, {"student": student}, inputs, labels, n_base, seed, targets, selection,
                            settings, pixel_bounds).results["student"]


def attack_both(teacher: nn.Module, student: nn.Module, x: torch.Tensor, base_class: torch.Tensor,
                target_class: torch.Tensor, settings: AttackSettings = METRIC_ATTACK,
                pixel_bounds: PixelBounds | None = None) -> tuple[BoundaryAttackResult, BoundaryAttackResult]:
    """Teacher and student attacks from the same images with their full trajectories (for showing a few pairs)."""
    return tuple(settings.build(m, pixel_bounds, record_trajectory=True).attack(x, base_class, target_class)
                 for m in (teacher, student))


__all__ = ["METRIC_ATTACK", "BasePairs", "BoundaryComparison", "BoundarySimilarity", "angle_similarity",
           "attack_both", "attack_pairs", "boundary_similarity", "choose_base_pairs", "clipped_cosine",
           "compare_students", "decision_boundary_similarity", "magnitude_ratio", "magnitude_similarity",
           "weighted_mean"]
