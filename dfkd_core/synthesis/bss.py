"""Boundary-supporting samples (BSS, methods.md#bss; Heo et al., AAAI 2019).

A BSS is a base sample pushed by an iterative targeted attack just across the teacher's decision boundary between
its class b and a target class k. The pieces, one function each: choose base samples, sample target classes,
the attack loss L_a = f_b − f_k, and the attack itself with its three stopping rules.

Differences from the official code (bhheo/BSS_distillation), kept on purpose because METHODS.md is the spec:
the official step divides by ||∇L_a||₂ rather than ||∇L_a||₂² (available here as `gradient_norm_power=1`), it
clamps to a fixed [-2.5, 2.5] instead of the dataset's real pixel range, it stops a sample as soon as the argmax
leaves the base class (any class), and it keeps every attacked sample, accepted or not.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from dfkd_core.config import Config

log = logging.getLogger(__name__)

ACCEPTED, REJECTED_THIRD_CLASS, REJECTED_MAX_STEPS = 0, 1, 2
OUTCOMES = ("accepted", "rejected_third_class", "rejected_max_steps")
"""Outcome codes of the attack, indexed by the integer stored per sample."""

PixelBounds = tuple[torch.Tensor | float, torch.Tensor | float]


def pair_gap_score(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> torch.Tensor:
    """Σ_k (p_T,k − p_S,k)² per sample: how far apart teacher and student are on it (methods.md#bss)."""
    return ((teacher_probs - student_probs) ** 2).sum(dim=1)


def select_base_samples(teacher_probs: torch.Tensor, student_probs: torch.Tensor, labels: torch.Tensor,
                        n: int) -> torch.Tensor:
    """Base samples (methods.md#bss): indices of the ≤ n samples that teacher AND student classify correctly,
    with the largest Σ_k (p_T,k − p_S,k)², largest first (ties keep the input order)."""
    both_correct = (teacher_probs.argmax(1) == labels) & (student_probs.argmax(1) == labels)
    candidates = both_correct.nonzero().flatten()
    score = pair_gap_score(teacher_probs[candidates], student_probs[candidates])
    order = torch.sort(score, descending=True, stable=True).indices
    return candidates[order[:n]]


def target_class_weights(teacher_probs: torch.Tensor, base_labels: torch.Tensor) -> torch.Tensor:
    """p_n^k (methods.md#bss): the teacher's probabilities renormalized over k ≠ b; zero at the base class b."""
    weights = teacher_probs.clone()
    weights.scatter_(1, base_labels.view(-1, 1), 0.0)
    # A teacher certain of b in float32 can leave all other classes at exactly 0: fall back to uniform over k ≠ b.
    empty = weights.sum(1) <= 0
    if empty.any():
        uniform = torch.ones_like(weights[empty]).scatter_(1, base_labels[empty].view(-1, 1), 0.0)
        weights[empty] = uniform
    return weights / weights.sum(1, keepdim=True)


def sample_target_classes(teacher_probs: torch.Tensor, base_labels: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Target class k per base sample, drawn with probability p_n^k ∝ p_T,k over k ≠ b (methods.md#bss).

    Returns (targets, p_n^k of the drawn target)."""
    weights = target_class_weights(teacher_probs, base_labels)
    targets = torch.multinomial(weights.cpu(), 1, generator=generator).flatten().to(base_labels.device)
    return targets, weights.gather(1, targets.view(-1, 1)).flatten()


def boundary_attack_loss(logits: torch.Tensor, base_class: torch.Tensor, target_class: torch.Tensor
                         ) -> torch.Tensor:
    """L_a(x) = f_b(x) − f_k(x) per sample (methods.md#bss); negative once x is on the target's side."""
    return (logits.gather(1, base_class.view(-1, 1)) - logits.gather(1, target_class.view(-1, 1))).flatten()


@dataclass
class AttackSettings(Config):
    """The attack's knobs (methods.md#bss defaults), saved with every analysis or BSS-KD run."""

    eta: float = 0.3
    eps: float = 1e-4
    max_steps: int = 10
    gradient_norm_power: int = 2   # 2: METHODS/paper step; 1: the official code's step

    def build(self, model: nn.Module, pixel_bounds: "PixelBounds | None" = None,
              record_trajectory: bool = False) -> "BoundaryAttack":
        return BoundaryAttack(model, self.eta, self.eps, self.max_steps, pixel_bounds, self.gradient_norm_power,
                              record_trajectory)


@dataclass
class BoundaryAttackResult:
    """Per-sample outcome of the BSS attack. `crossed_step` is the number of update steps after which the
    sample was accepted (-1 if it was not); `steps` counts the steps each sample actually moved."""

    adversarial: torch.Tensor          # final x (B, C, H, W); the accepted ones are the BSS ẋ
    outcome: torch.Tensor              # int64 codes into OUTCOMES
    crossed_step: torch.Tensor
    steps: torch.Tensor
    final_loss: torch.Tensor           # L_a at the final x
    final_prediction: torch.Tensor     # argmax at the final x
    trajectory: torch.Tensor | None = None   # (max_steps + 1, B, C, H, W) when recorded; frozen after stopping
    loss_trajectory: torch.Tensor | None = None  # (max_steps + 1, B)

    @property
    def accepted(self) -> torch.Tensor:
        return self.outcome == ACCEPTED

    def counts(self) -> dict[str, int]:
        return {name: int((self.outcome == code).sum()) for code, name in enumerate(OUTCOMES)}


@dataclass
class BoundaryAttack:
    """The BSS attack on one model (methods.md#bss): x ← x − η (L_a(x) + ε) / ||∇L_a(x)||₂² · ∇L_a(x), clamped to
    the valid pixel range, until one of: accept (L_a < 0, argmax = k), reject (argmax is a third class),
    reject (max_steps updates without crossing). Vectorized over the batch; finished samples stop moving.

    For a model linear in x one step changes L_a by exactly −η (L_a + ε), so L_a(t) = (1 − η)^t (L_a(0) + ε) − ε.
    """

    model: nn.Module
    eta: float = 0.3
    eps: float = 1e-4
    max_steps: int = 10
    pixel_bounds: PixelBounds | None = None   # (low, high) in the model's normalized input space
    gradient_norm_power: int = 2              # 2: METHODS/paper; 1: the official code's step
    record_trajectory: bool = False

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixel_bounds is None:
            return x
        low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in self.pixel_bounds)
        return torch.maximum(torch.minimum(x, high), low)

    def _loss_and_gradient(self, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        # L_a near 0 decides acceptance, so never judge it in half precision.
        logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        loss = boundary_attack_loss(logits, base, target)
        # Samples are independent in eval mode, so the gradient of the sum is every sample's own gradient.
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), logits.detach().argmax(1), grad

    def attack(self, x: torch.Tensor, base_class: torch.Tensor, target_class: torch.Tensor
               ) -> BoundaryAttackResult:
        """Attack every sample of x from class base_class[i] toward target_class[i]."""
        if x.shape[0] != base_class.shape[0] or x.shape[0] != target_class.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but base_class has {base_class.shape[0]} and "
                             f"target_class {target_class.shape[0]}")
        if (base_class == target_class).any():
            raise ValueError("a target class equals its base class; the attack needs k ≠ b")
        if self.max_steps < 0 or not self.eta > 0:
            raise ValueError(f"need eta > 0 and max_steps ≥ 0 (got eta={self.eta}, max_steps={self.max_steps})")
        if not torch.isfinite(x).all():
            raise ValueError("the images to attack contain NaN or inf values")
        device = next(self.model.parameters()).device
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = self._clamp(x.detach().to(device, dtype))
        base, target = base_class.to(device), target_class.to(device)
        n = x.shape[0]
        outcome = torch.full((n,), -1, dtype=torch.long, device=device)
        crossed = torch.full((n,), -1, dtype=torch.long, device=device)
        steps = torch.zeros(n, dtype=torch.long, device=device)
        final_loss = torch.zeros(n, dtype=dtype, device=device)
        final_pred = base.clone()
        path = [x.cpu()] if self.record_trajectory else None   # path[t] = x after t updates
        loss_path: list[torch.Tensor] = []                        # loss_path[t] = L_a at path[t]
        was_training = self.model.training
        self.model.eval()  # BN must use running statistics, or samples in a batch would move each other
        try:
            for t in range(self.max_steps + 1):
                active = (outcome < 0).nonzero().flatten()
                if len(active) == 0:
                    break
                loss, pred, grad = self._loss_and_gradient(x[active], base[active], target[active])
                final_loss[active], final_pred[active] = loss, pred
                if path is not None:
                    loss_path.append(final_loss.cpu().clone())
                third = (pred != base[active]) & (pred != target[active])
                crossed_now = ~third & (loss < 0)
                outcome[active[third]] = REJECTED_THIRD_CLASS
                outcome[active[crossed_now]] = ACCEPTED
                crossed[active[crossed_now]] = t
                keep = ~third & ~crossed_now
                moving = active[keep]
                if t == self.max_steps:
                    outcome[moving] = REJECTED_MAX_STEPS
                    break
                if len(moving):
                    g, l_a = grad[keep], loss[keep]
                    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12) ** self.gradient_norm_power
                    scale = (self.eta * (l_a + self.eps) / norm).view(-1, *([1] * (g.dim() - 1)))
                    x = x.clone()
                    x[moving] = self._clamp(x[moving] - scale * g)
                    steps[moving] += 1
                if path is not None:
                    path.append(x.cpu())
        finally:
            self.model.train(was_training)
        result = BoundaryAttackResult(x.detach(), outcome, crossed, steps, final_loss, final_pred)
        if path is not None:
            # Every run gets max_steps + 1 frames; a finished sample stays frozen where it stopped.
            path += [path[-1]] * (self.max_steps + 1 - len(path))
            loss_path += [loss_path[-1]] * (self.max_steps + 1 - len(loss_path))
            result.trajectory = torch.stack(path)
            result.loss_trajectory = torch.stack(loss_path)
        log.info("BSS attack on %d samples: %s", n, result.counts())
        return result


def boundary_supporting_samples(model: nn.Module, x: torch.Tensor, base_class: torch.Tensor,
                                target_class: torch.Tensor, eta: float = 0.3, eps: float = 1e-4,
                                max_steps: int = 10, pixel_bounds: PixelBounds | None = None,
                                record_trajectory: bool = False, gradient_norm_power: int = 2
                                ) -> BoundaryAttackResult:
    """Run the BSS attack (methods.md#bss) once; see `BoundaryAttack`."""
    return BoundaryAttack(model, eta, eps, max_steps, pixel_bounds, gradient_norm_power,
                          record_trajectory).attack(x, base_class, target_class)


@dataclass
class BoundarySupportingBatch:
    """The accepted BSS of one training batch, ready for `bss_kd_loss` (methods.md#bss)."""

    samples: torch.Tensor              # accepted ẋ_n^k (M, C, H, W)
    base_index: torch.Tensor           # (M,) index in the training batch of each sample's base x_n
    target_class: torch.Tensor         # (M,) k
    target_probability: torch.Tensor   # (M,) p_n^k of the drawn k
    weights: torch.Tensor              # (M,) 1: the draw already applied p_n^k (see bss_term)
    n_base_samples: int                # base samples attacked, accepted or not
    counts: dict[str, int]


def boundary_supporting_batch(teacher: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                              teacher_logits: torch.Tensor, student_logits: torch.Tensor, n_base: int,
                              settings: AttackSettings | None = None, pixel_bounds: PixelBounds | None = None,
                              generator: torch.Generator | None = None) -> BoundarySupportingBatch:
    """One BSS-KD batch's BSS (methods.md#bss): choose base samples, draw one target each ∝ p_n^k, attack the
    teacher, keep the accepted samples."""
    settings = settings or AttackSettings()
    t_probs, s_probs = teacher_logits.detach().softmax(1), student_logits.detach().softmax(1)
    base = select_base_samples(t_probs, s_probs, labels, n_base)
    targets, p_nk = sample_target_classes(t_probs[base], labels[base], generator)
    result = settings.build(teacher, pixel_bounds).attack(x[base], labels[base], targets)
    ok = result.accepted
    return BoundarySupportingBatch(result.adversarial[ok], base[ok], targets[ok], p_nk[ok],
                                   torch.ones(int(ok.sum()), device=x.device), len(base), result.counts())


__all__ = ["BoundarySupportingBatch", "boundary_supporting_batch", "ACCEPTED", "REJECTED_THIRD_CLASS", "REJECTED_MAX_STEPS", "OUTCOMES", "AttackSettings",
           "BoundaryAttack", "BoundaryAttackResult", "boundary_attack_loss", "boundary_supporting_samples",
           "pair_gap_score", "sample_target_classes", "select_base_samples", "target_class_weights"]
