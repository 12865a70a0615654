"""Every loss term of METHODS.md as one small function; `LOSSES` finds them by name (torchdistill style).

Conventions: images x are (B, C, H, W) in the teacher's normalized input space; logits are (B, K).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def total_variation_loss(x: torch.Tensor) -> torch.Tensor:
    """R_TV (methods.md#model-inversion): sum of the L2 norms of the right, down, down-right and down-left difference
    maps.

    Each norm is taken over the whole batch, as in the DeepInversion reference implementation.
    """
    right = x[:, :, :, :-1] - x[:, :, :, 1:]
    down = x[:, :, :-1, :] - x[:, :, 1:, :]
    down_right = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    down_left = x[:, :, :-1, 1:] - x[:, :, 1:, :-1]
    return sum(torch.linalg.vector_norm(d) for d in (right, down, down_right, down_left))


def l2_prior_loss(x: torch.Tensor) -> torch.Tensor:
    """||x̂||₂ (methods.md#model-inversion): mean over images of each image's L2 norm."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


@dataclass
class BNStatistics:
    """Batch statistics of one BatchNorm layer's input next to the layer's running statistics."""

    name: str
    batch_mean: torch.Tensor
    batch_var: torch.Tensor  # biased (divides by N), as BN itself normalizes
    running_mean: torch.Tensor
    running_var: torch.Tensor


def bn_layer_distance(s: BNStatistics) -> torch.Tensor:
    """One layer's term of R_feature: ||μ_l(x̂) − running_mean_l||₂ + ||σ²_l(x̂) − running_var_l||₂."""
    return (torch.linalg.vector_norm(s.batch_mean - s.running_mean)
            + torch.linalg.vector_norm(s.batch_var - s.running_var))


def bn_feature_loss(stats: Sequence[BNStatistics], first_bn_multiplier: float = 10.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """R_feature (methods.md#model-inversion): Σ_l w_l · layer distance, w_1 = first_bn_multiplier, other w_l = 1.

    Returns (weighted total, unweighted per-layer distances) — the breakdown feeds the app's per-layer chart.
    """
    if not stats:
        raise ValueError("bn_feature_loss needs at least one BatchNorm layer; this model has none, so the "
                         "feature loss (α_f) cannot be used — set α_f = 0 (DeepDream) or pick a BN teacher")
    per_layer = torch.stack([bn_layer_distance(s) for s in stats])
    weights = torch.ones_like(per_layer)
    weights[0] = first_bn_multiplier
    return (weights * per_layer).sum(), per_layer


def blend_statistics(stats: Sequence[BNStatistics], memory: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
                     momentum: float) -> list[BNStatistics]:
    """Each layer's batch (μ, σ²) blended with a memory of earlier batches': (1 − m)·μ(x̂) + m·μ_memory (the same
    for σ²). With it R_feature pulls the pool as a whole, not each batch alone, toward the running statistics
    (Fast-Datafree's `bn_mmt`). No memory, or m = 0: the statistics as they are."""
    if memory is None or momentum == 0:
        return list(stats)
    return [replace(s, batch_mean=(1 - momentum) * s.batch_mean + momentum * mean,
                    batch_var=(1 - momentum) * s.batch_var + momentum * var)
            for s, (mean, var) in zip(stats, memory)]


def disagreement_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The adversarial term of DFAD / Fast-Datafree: −KL(p_T ‖ p_S) (T = 1), counted only on the images whose argmax
    the student and the teacher still share, mean over the batch. Minimizing it moves images to where the student is
    most wrong about the teacher's distribution, without pushing them into another class of the teacher's."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).to(student_logits.dtype)
    return -(kd_loss(student_logits, teacher_logits, 1.0, reduction="none") * agree).mean()


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Jensen–Shannon divergence (natural log, mean over the batch) between rows of two distributions."""
    m = 0.5 * (p + q)
    kl_pm = (p * ((p + eps).log() - (m + eps).log())).sum(dim=1)
    kl_qm = (q * ((q + eps).log() - (m + eps).log())).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def js_competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                        temperature: float = 3.0) -> torch.Tensor:
    """R_compete (methods.md#model-inversion, Adaptive DI): 1 − JS(p_T, p_S) of T-softened outputs, JS clamped to [0,
    1].

    Minimizing it pushes images to where teacher and student disagree. JS is in nats, at most ln 2, so the clamp
    never acts and the loss lies in [1 − ln 2, 1] (docs/methods.md, "Competition").
    """
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    p_s = F.softmax(student_logits / temperature, dim=1)
    return 1.0 - js_divergence(p_t, p_s).clamp(0.0, 1.0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            reduction: str = "batchmean") -> torch.Tensor:
    """L_KD (methods.md#knowledge-distillation): T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)), batch mean by default.

    reduction='none' gives one value per sample (BSS weights samples individually).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    per_sample = F.kl_div(log_p_s, p_t, reduction="none").sum(dim=1) * temperature ** 2
    return per_sample if reduction == "none" else per_sample.mean()


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE(T(x̂), y): the class term of the inversion objective."""
    return F.cross_entropy(logits, targets)


def feature_distillation_loss(student_features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """L_feat = Σ_i ‖f_S(x_i) − f_old(x_i)‖² / Σ_i ‖f_old(x_i)‖²: the student's penultimate features against the old
    model's on the same images, relative to the old features' energy so one weight fits any width or scale. In
    continual learning it holds the feature extractor where the old classes' decision regions are, on real images
    as well as synthesized ones; the old model gets no gradient."""
    old = old_features.detach().flatten(1)
    return (student_features.flatten(1) - old).pow(2).sum() / old.pow(2).sum().clamp_min(1e-12)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy_loss,
    "tv": total_variation_loss,
    "l2": l2_prior_loss,
    "bn_feature": bn_feature_loss,
    "compete": js_competition_loss,
    "kd": kd_loss,
    "feature": feature_distillation_loss,
    "disagreement": disagreement_loss,
}
