"""MagSim / AngSim: how similar a student's decision boundaries are to its teacher's (methods.md#bss, Heo et al.).

From one base sample x_n (class b) and one target class k, the BSS attack is run on the teacher and, separately,
on the student; the perturbations x̄^{k,m}_n = ẋ^{k,m}_n − x_n point from x_n to each model's b/k boundary. Over the
pairs (n, k) where BOTH attacks were accepted, with weights p_n^k normalized by their total:

    MagSim = Σ p_n^k · min(||x̄^t||, ||x̄^s||) / max(||x̄^t||, ||x̄^s||) / Σ p_n^k
    AngSim = Σ p_n^k · max(0, cos(x̄^t, x̄^s)) / Σ p_n^k

Both lie in [0, 1]; 1 means the same boundary distance / direction — exactly 1.0 for an exact copy of the teacher,
as ratios and cosines are taken in float64. Without a single pair accepted by both models the metric does not
exist: the result holds NaN and a note saying why, never a made-up number; on fewer than `MIN_PAIRS` pairs it is
flagged as resting on too little.

Uncertainty: the pairs of one base sample share its image, so they are not independent. Each base sample n
contributes a_n = Σ_k p_n^k·sim and b_n = Σ_k p_n^k (over its pairs accepted by both), MagSim = Σ a_n / Σ b_n, and
the 95% interval resamples base samples (`stats.ratio_interval`, a cluster bootstrap). Two students measured on the
same base samples are compared with a paired interval (`paired_differences`).

Pairs: by default every k ≠ b of each base sample, weighted by p_n^k (the sum of methods.md#bss taken exactly).
`targets="sampled"` draws one k per base sample with probability p_n^k instead, as BSS-KD training does; the draw
already applies p_n^k, so those pairs carry weight 1 (a Monte Carlo estimate of the same weighted sums).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Mapping

import torch
import torch.nn as nn

from dfkd_core.analysis.checks import require_normalized_images
from dfkd_core.synthesis.bss import (ACCEPTED, AttackSettings, BoundaryAttackResult, PixelBounds, pair_gap_score,
                                     sample_target_classes, target_class_weights)
from dfkd_core.stats import Interval, paired_ratio_difference_interval, ratio_interval
from dfkd_core.training import predict_logits

METRIC_ATTACK = AttackSettings(eta=1.0, eps=1e-4, max_steps=20)
"""Attack settings for the metric. methods.md#bss's training values (η = 0.3, 10 steps) shrink L_a only by the factor
(1 − η) per step on a locally linear model, so from a typical logit gap of ~7 almost nothing crosses in 10 steps
(measured on the Fashion-MNIST teacher: 0 of 184 accepted). η = 1 is the full Newton step onto the linearized
boundary; with 20 steps 86% of pairs cross, ending within ~0.01 logits of the boundary, which is what the
perturbation norms are meant to measure."""

MIN_PAIRS = 100
"""Below this many pairs accepted by both models a MagSim/AngSim is flagged as resting on too little (drawn faded
with a warning in the app, marked in the CLI): on 27 pairs a 10%-accuracy student once scored above a 94% one."""


def _squared_norms(perturbations: torch.Tensor) -> torch.Tensor:
    flat = perturbations.flatten(1).to(torch.float64)
    return (flat * flat).sum(1)


def magnitude_ratio(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor) -> torch.Tensor:
    """min(||x̄^t||, ||x̄^s||) / max(||x̄^t||, ||x̄^s||) per pair, float64 (1 when both are zero)."""
    t, s = _squared_norms(teacher_perturbations).sqrt(), _squared_norms(student_perturbations).sqrt()
    high = torch.maximum(t, s)
    return torch.where(high > 0, torch.minimum(t, s) / high.clamp_min(1e-300), torch.ones_like(high))


def clipped_cosine(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor) -> torch.Tensor:
    """max(0, cos(x̄^t, x̄^s)) per pair, cos = <x̄^t, x̄^s> / sqrt(||x̄^t||²·||x̄^s||²) in float64 (0 for a zero
    vector).

    Why this form: for identical perturbations the three sums are the same number q and sqrt(q·q) = q exactly in
    IEEE arithmetic, so a model against its own copy gets exactly 1 (float32 cosine_similarity gave 0.99999988)."""
    t = teacher_perturbations.flatten(1).to(torch.float64)
    s = student_perturbations.flatten(1).to(torch.float64)
    den = (_squared_norms(t) * _squared_norms(s)).sqrt()
    cos = torch.where(den > 0, (t * s).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))
    return cos.clamp(0.0, 1.0)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ w·v / Σ w in float64; NaN when there is no weight at all (no pair to average over)."""
    values, weights = values.to(torch.float64), weights.to(torch.float64)
    total = weights.sum()
    return float((weights * values).sum() / total) if total > 0 else math.nan


def per_base_sums(values: torch.Tensor, weights: torch.Tensor, pair_base: torch.Tensor, n_base: int
                  ) -> torch.Tensor:
    """a_n = Σ_k w_nk·v_nk over the pairs of each base sample n (float64, length n_base): the cluster totals the
    interval resamples."""
    return torch.zeros(n_base, dtype=torch.float64).index_add_(0, pair_base, (weights * values).to(torch.float64))


def magnitude_similarity(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor,
                         weights: torch.Tensor) -> float:
    """MagSim (methods.md#bss) over the given pairs (pass only pairs accepted by both models)."""
    return weighted_mean(magnitude_ratio(teacher_perturbations, student_perturbations), weights)


def angle_similarity(teacher_perturbations: torch.Tensor, student_perturbations: torch.Tensor,
                     weights: torch.Tensor) -> float:
    """AngSim (methods.md#bss) over the given pairs (pass only pairs accepted by both models)."""
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
    asked: int = 0               # base samples asked for
    qualified: int = 0           # inputs classified correctly by the teacher and every student
    selection: str = "random"

    def __len__(self) -> int:
        return len(self.pair_base)

    SHARED_NOTE = ("the base samples are the inputs the teacher and every student of this comparison get right, so the "
                   "students here are compared on the same samples; the same student compared beside other students "
                   "can be scored on other samples, and its MagSim/AngSim there is not comparable with this one")

    def shortfall_note(self, what: str = "test images") -> str:
        """'200 base samples asked, 33 qualified: only 33 test images are classified correctly by the teacher and
        every student' — or '' when every base sample asked for was found."""
        if len(self.labels) >= self.asked:
            return ""
        return (f"{self.asked:,} base samples asked, {self.qualified:,} qualified: only {self.qualified:,} {what} "
                "are classified correctly by the teacher and every student")

    def selection_note(self) -> str:
        """'' unless the base samples are the ones the students disagree with the teacher on most and some qualifying
        ones were left out: then MagSim/AngSim describe those samples only, and change with their number."""
        if self.selection != "gap" or len(self.labels) >= self.qualified:
            return ""
        return (f"gap selection: these are the {len(self.labels):,} of {self.qualified:,} qualifying samples where the "
                "students' outputs differ most from the teacher's, so MagSim/AngSim describe those samples and change "
                "with their number (one digits student: MagSim 0.28 on 60, 0.55 on all 272), and the interval does not "
                "cover that; random selection (the default) estimates the value over every qualifying sample")

    @property
    def pair_class(self) -> torch.Tensor:
        return self.labels[self.pair_base]


def correct_for_all(teacher_scores: torch.Tensor, students_scores: list[torch.Tensor], labels: torch.Tensor
                    ) -> torch.Tensor:
    """Which inputs can be base samples: classified correctly by the teacher and every student (methods.md#bss)."""
    correct = teacher_scores.argmax(1) == labels
    for scores in students_scores:
        correct &= scores.argmax(1) == labels
    return correct


def qualifying_base_samples(teacher: nn.Module, students: list[nn.Module], inputs: torch.Tensor,
                            labels: torch.Tensor) -> int:
    """How many of `inputs` qualify as base samples — known before any attack, so a page can say it up front."""
    with torch.no_grad():
        scores = [predict_logits(m, inputs) for m in [teacher, *students]]
    return int(correct_for_all(scores[0], scores[1:], labels.cpu()).sum())


def choose_base_pairs(teacher_probs: torch.Tensor, students_probs: list[torch.Tensor], inputs: torch.Tensor,
                      labels: torch.Tensor, n_base: int, seed: int = 0, targets: str = "all",
                      selection: str = "random") -> BasePairs:
    """Base samples (methods.md#bss): correct for the teacher and every student; a seeded random choice of n_base
    of them (an estimate of the value over all of them), or `gap`: the n_base with the largest Σ_k (p_T,k − p_S,k)²
    (averaged over the students, so all share them), as BSS-KD picks its training samples."""
    if targets not in ("all", "sampled") or selection not in ("gap", "random"):
        raise ValueError(f"targets must be 'all' or 'sampled' and selection 'gap' or 'random' "
                         f"(got {targets!r}, {selection!r})")
    candidates = correct_for_all(teacher_probs, students_probs, labels).nonzero().flatten()
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
    return BasePairs(inputs[chosen], base_labels, chosen, pair_base, pair_target, pair_weight, targets, n_base,
                     len(candidates), selection)


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
    magsim_interval: Interval | None = None   # 95%, base samples resampled (module docstring)
    angsim_interval: Interval | None = None
    pair_data: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # per pair / base sample

    @property
    def too_few_pairs(self) -> bool:
        """Fewer than MIN_PAIRS pairs accepted by both models: the numbers rest on too little to compare."""
        return self.both_accepted < MIN_PAIRS

    def to_dict(self) -> dict:
        """Everything but the per-pair tensors (JSON-ready; NaN stays NaN); intervals as dicts."""
        d = {k: v for k, v in self.__dict__.items() if k != "pair_data"}
        d.update(magsim_interval=self.magsim_interval.to_dict() if self.magsim_interval else None,
                 angsim_interval=self.angsim_interval.to_dict() if self.angsim_interval else None,
                 too_few_pairs=self.too_few_pairs)
        return d


def boundary_similarity(pairs: BasePairs, teacher_attack: BoundaryAttackResult,
                        student_attack: BoundaryAttackResult) -> BoundarySimilarity:
    """MagSim and AngSim (methods.md#bss) from the two models' attacks on the same pairs, overall and per base class."""
    x = pairs.inputs[pairs.pair_base]
    t_pert = teacher_attack.adversarial.cpu() - x
    s_pert = student_attack.adversarial.cpu() - x
    t_ok, s_ok = teacher_attack.outcome == ACCEPTED, student_attack.outcome == ACCEPTED
    both = t_ok & s_ok
    ratio, cosine = magnitude_ratio(t_pert, s_pert), clipped_cosine(t_pert, s_pert)
    weight = pairs.pair_weight.to(torch.float64) * both
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
    elif n_both < MIN_PAIRS:
        note = (f"rests on only {n_both} pairs accepted by both models (< {MIN_PAIRS}): too few to compare "
                "students; use more base samples")
    n_base = len(pairs.labels)
    base = {"base_magsim": per_base_sums(ratio, weight, pairs.pair_base, n_base),
            "base_angsim": per_base_sums(cosine, weight, pairs.pair_base, n_base),
            "base_weight": per_base_sums(torch.ones_like(weight), weight, pairs.pair_base, n_base)}
    magsim = ratio_interval(base["base_magsim"], base["base_weight"])
    angsim = ratio_interval(base["base_angsim"], base["base_weight"])
    pair_data = {**base, "base": pairs.pair_base, "base_class": pairs.pair_class, "target": pairs.pair_target,
                 "weight": pairs.pair_weight, "teacher_perturbation": t_pert, "student_perturbation": s_pert,
                 "teacher_outcome": teacher_attack.outcome, "student_outcome": student_attack.outcome,
                 "teacher_crossed_step": teacher_attack.crossed_step,
                 "student_crossed_step": student_attack.crossed_step,
                 "magnitude_ratio": ratio, "cosine": cosine}
    return BoundarySimilarity(magsim.estimate, angsim.estimate, len(pairs), n_base, int(t_ok.sum()), int(s_ok.sum()),
                              n_both, teacher_attack.counts(), student_attack.counts(), per_class, note, magsim, angsim,
                              pair_data)


def paired_differences(results: Mapping[str, BoundarySimilarity]) -> list[dict]:
    """For every two students measured on the same base samples: MagSim(a) − MagSim(b) and AngSim(a) − AngSim(b)
    with paired 95% intervals (both students' base-sample totals resampled together), e.g. the README's
    "MagSim(BSS-KD) − MagSim(KD) = −0.051 [−0.08, −0.02]". `too_few_pairs`: either student rests on fewer than
    MIN_PAIRS pairs accepted by both models, so the difference inherits that student's flag."""
    out = []
    for (a, ra), (b, rb) in combinations(results.items(), 2):
        da, db = ra.pair_data, rb.pair_data
        out.append({"student_a": a, "student_b": b,
                    "too_few_pairs": min(ra.both_accepted, rb.both_accepted) < MIN_PAIRS, **{
            metric: paired_ratio_difference_interval(da[f"base_{metric}"], da["base_weight"],
                                                     db[f"base_{metric}"], db["base_weight"]).to_dict()
            for metric in ("magsim", "angsim")}})
    return out


@dataclass
class BoundaryComparison:
    """Several students measured against one teacher on the SAME base samples and targets."""

    pairs: BasePairs
    teacher_attack: BoundaryAttackResult
    results: dict[str, BoundarySimilarity]
    settings: AttackSettings

    @property
    def notes(self) -> list[str]:
        """What limits these numbers, as `dfkd boundary` prints it: fewer base samples than asked, a gap selection
        that describes only part of the qualifying samples (each student's own `note` says if its pairs are few)."""
        return [n for n in (self.pairs.shortfall_note(), self.pairs.selection_note()) if n]

    def table(self) -> list[dict]:
        """One row per student: MagSim, AngSim and the pair counts behind them."""
        return [{"student": name, "magsim": r.magsim, "angsim": r.angsim, "both_accepted": r.both_accepted,
                 "student_accepted": r.student_accepted, "teacher_accepted": r.teacher_accepted, "pairs": r.pairs}
                for name, r in self.results.items()]


def compare_students(teacher: nn.Module, students: Mapping[str, nn.Module], inputs: torch.Tensor,
                     labels: torch.Tensor, n_base: int = 500, seed: int = 0, targets: str = "all",
                     selection: str = "random", settings: AttackSettings = METRIC_ATTACK, *,
                     pixel_bounds: PixelBounds | None,
                     progress: Callable[[str], None] | None = None) -> BoundaryComparison:
    """MagSim/AngSim of each student vs the teacher; the teacher is attacked once and every student is attacked
    from the same base samples toward the same targets, so the numbers are comparable. `pixel_bounds`: the valid
    pixel range in the normalized input space, which the attacks are clamped to (`checkpoint.dataset.
    pixel_bounds()`, as `dfkd boundary` and the app use); None attacks unclamped, for inputs with no pixel range.
    It has no default: the unclamped attack gives other numbers (AngSim 0.50 against 0.55 for one digits pair)."""
    if not students:
        raise ValueError("compare_students needs at least one student")
    if n_base < 1:
        raise ValueError(f"n_base must be at least 1, got {n_base}")
    require_normalized_images(inputs, "inputs", models=[teacher, *students.values()])
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
                                 selection: str = "random", settings: AttackSettings = METRIC_ATTACK, *,
                                 pixel_bounds: PixelBounds | None) -> BoundarySimilarity:
    """MagSim and AngSim of one student against its teacher on base samples drawn from inputs; `pixel_bounds` as
    in `compare_students` (required: pass `checkpoint.dataset.pixel_bounds()`, or None for no pixel range)."""
    return compare_students(teacher, {"student": student}, inputs, labels, n_base, seed, targets, selection,
                            settings, pixel_bounds=pixel_bounds).results["student"]


def attack_both(teacher: nn.Module, student: nn.Module, x: torch.Tensor, base_class: torch.Tensor,
                target_class: torch.Tensor, settings: AttackSettings = METRIC_ATTACK, *,
                pixel_bounds: PixelBounds | None) -> tuple[BoundaryAttackResult, BoundaryAttackResult]:
    """Teacher and student attacks from the same images with their full trajectories (for showing a few pairs)."""
    return tuple(settings.build(m, pixel_bounds, record_trajectory=True).attack(x, base_class, target_class)
                 for m in (teacher, student))


__all__ = ["METRIC_ATTACK", "MIN_PAIRS", "BasePairs", "BoundaryComparison", "BoundarySimilarity", "angle_similarity",
           "attack_both", "attack_pairs", "boundary_similarity", "choose_base_pairs", "clipped_cosine",
           "compare_students", "correct_for_all", "decision_boundary_similarity", "magnitude_ratio",
           "magnitude_similarity", "paired_differences", "per_base_sums", "qualifying_base_samples", "weighted_mean"]
