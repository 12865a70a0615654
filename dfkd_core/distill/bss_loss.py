"""The BSS-KD objective and its official epoch schedules (methods.md#bss, Heo et al., AAAI 2019).

    L(n) = CE(S(x_n), c_n) + α · L_KD(x_n) + β · Σ_k p_n^k · L_KD(ẋ_n^k)

L_KD is `dfkd_core.losses.kd_loss` (methods.md#knowledge-distillation: T² · KL, T_kd = 4 by default, as every KD of the
project; the official BSS code uses 3). The BSS part is averaged over the attacked base samples, not over the batch, as
the official code does: with half of a batch attacked, β weighs it twice what an average over the batch would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd_core.losses import kd_loss


def bss_alpha(epoch: float, epochs: float) -> float:
    """α = 3 (1 − e/E) + 1: KD on real samples, from 4 down to 1 (official schedule, methods.md#bss)."""
    return 3.0 * (1.0 - epoch / epochs) + 1.0


def bss_beta(epoch: float, epochs: float) -> float:
    """β = max(2 (1 − 4e/(3E)), 0): KD on BSS, from 2 down to 0 at three quarters of training (methods.md#bss)."""
    return max(2.0 * (1.0 - 4.0 * epoch / (3.0 * epochs)), 0.0)


def bss_term(bss_student_logits: torch.Tensor, bss_teacher_logits: torch.Tensor, bss_weights: torch.Tensor,
             n_base_samples: int, temperature: float = 4.0) -> torch.Tensor:
    """Σ_n Σ_k p_n^k · L_KD(ẋ_n^k) / n_base_samples: the BSS part of L(n), averaged over the base samples.

    Pass only the accepted BSS. bss_weights = p_n^k when every k ≠ b of a base sample was attacked; weight 1 when
    one k was drawn with probability p_n^k (the draw already applies p_n^k; this is what the official code does).
    A base sample whose attacks were all rejected adds 0 but still counts in n_base_samples.
    """
    if len(bss_student_logits) == 0:
        return bss_student_logits.new_zeros(())
    if n_base_samples <= 0:
        raise ValueError(f"n_base_samples must be positive when there are BSS (got {n_base_samples})")
    per_sample = kd_loss(bss_student_logits, bss_teacher_logits, temperature, reduction="none")
    return (bss_weights.to(per_sample) * per_sample).sum() / n_base_samples


def bss_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                bss_student_logits: torch.Tensor, bss_teacher_logits: torch.Tensor, bss_weights: torch.Tensor,
                alpha: float, beta: float, temperature: float = 4.0, n_base_samples: int | None = None
                ) -> dict[str, torch.Tensor]:
    """L(n) of methods.md#bss averaged over the batch; returns {"total", "cross_entropy", "kd", "bss"} so the
    trainer can log each term. n_base_samples defaults to the number of BSS rows (one target per base sample)."""
    ce = F.cross_entropy(student_logits, labels)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    n_base = len(bss_student_logits) if n_base_samples is None else n_base_samples
    bss = bss_term(bss_student_logits, bss_teacher_logits, bss_weights, n_base, temperature)
    return {"total": ce + alpha * kd + beta * bss, "cross_entropy": ce, "kd": kd, "bss": bss}


__all__ = ["bss_alpha", "bss_beta", "bss_kd_loss", "bss_term"]
