"""Bootstrap intervals of CKA over inputs (METHODS §7; the method is dfkd_core.stats').

A bootstrap resample of the n inputs is described by its counts w (how often each input was drawn, Σ w = n); the
resample's Gram matrix is K[idx][:, idx]. Every term CKA needs is a quadratic form of w in the full-sample Gram, so
R resamples cost a few (n × n)·(n × R) matrix products instead of R recomputations of CKA:

    biased HSIC (× n²):   wᵀ(K∘L)w − (2/n)·Σ_a w_a (Kw)_a (Lw)_a + (wᵀKw)(wᵀLw)/n²
    unbiased HSIC₁ (× n(n − 3)), K̃ = K with the resample's diagonal removed (Song et al. 2012):
                          tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n − 1)(n − 2)) − 2·1ᵀK̃L̃1/(n − 2), where
                          tr(K̃L̃) = wᵀ(K∘L)w − Σ_a w_a K_aa L_aa,  1ᵀK̃1 = wᵀKw − Σ_a w_a K_aa,
                          1ᵀK̃L̃1 = Σ_a w_a ((Kw)_a − K_aa)((Lw)_a − L_aa)

Both HSICs are unchanged when K gains terms a_i + a_j + c, so the Grams enter already centered over the full
sample (HKH): the correction terms stay small and float64 keeps its digits. With w = 1 the formulas are the full-
sample estimates themselves, so `cka_with_draws` returns the estimate and its resamples from one code path.

Three estimators, three interval methods (each named in the result):
- full: the percentile bootstrap over inputs above, every cell. The RBF bandwidth is held at its full-sample value
  (its own resampling spread, from a median over n² distances, is second order and would cost a median per draw).
- streaming (n > 3,000, linear): the same bootstrap on a random subsample of m inputs, widths rescaled by √(m/n)
  around the full-sample estimate (the m-out-of-n bootstrap, Bickel, Götze & van Zwet 1997).
- minibatch: the per-batch HSIC₁ terms are resampled as clusters (batches are random groups of inputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from dfkd_core.stats import resample_counts

CKA_RESAMPLES = 500
"""Resamples per CKA interval: fewer than stats.RESAMPLES because each costs (Lt·Ls + Lt + Ls) n×n-by-n products.
Measured for a 4 × 4 layer matrix, one thread on a busy 2-core machine (`python benchmarks/cka_speed.py --threads 1
--repeats 1 --intervals 360 1000 2000 3000`): n = 360 0.2 s, 1,000 0.9 s (the app's default), 2,000 3.7 s (the
CLI's), 3,000 8.7 s; 1,000 resamples take twice as long."""


def resample_weights(n: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """(n, 1 + resamples) float64 counts: column 0 is the full sample (all ones), the rest bootstrap resamples."""
    generator = torch.Generator().manual_seed(seed)
    counts = [torch.ones(1, n, dtype=torch.float64)]
    for start in range(0, resamples, 250):
        counts.append(resample_counts(n, min(250, resamples - start), generator))
    return torch.cat(counts).T.contiguous()


@dataclass
class GramTerms:
    """What one centered Gram K contributes to every CKA cell it enters, for all resamples w at once."""

    gram: torch.Tensor   # (n, n), centered over the full sample
    kw: torch.Tensor     # (n, R) = K w
    quad: torch.Tensor   # (R,) = wᵀ K w
    diag: torch.Tensor   # (n,) = K_aa


def gram_terms(centered_gram: torch.Tensor, weights: torch.Tensor) -> GramTerms:
    kw = centered_gram @ weights
    return GramTerms(centered_gram, kw, (weights * kw).sum(0), centered_gram.diagonal().clone())


def biased_hsic_draws(k: GramTerms, l: GramTerms, weights: torch.Tensor) -> torch.Tensor:
    """n²·HSIC(K, L) of each resample: wᵀ(K∘L)w − (2/n)·Σ_a w_a (Kw)_a (Lw)_a + (wᵀKw)(wᵀLw)/n²."""
    n = weights.shape[0]
    hadamard = ((k.gram * l.gram) @ weights * weights).sum(0)
    return hadamard - 2 * (weights * k.kw * l.kw).sum(0) / n + k.quad * l.quad / n ** 2


def unbiased_hsic_draws(k: GramTerms, l: GramTerms, weights: torch.Tensor) -> torch.Tensor:
    """n(n − 3)·HSIC₁(K, L) of each resample (Song et al. 2012, terms in the module docstring)."""
    n = weights.shape[0]
    trace = ((k.gram * l.gram) @ weights * weights).sum(0) - (k.diag * l.diag) @ weights
    sum_k, sum_l = k.quad - k.diag @ weights, l.quad - l.diag @ weights
    cross = (weights * (k.kw - k.diag[:, None]) * (l.kw - l.diag[:, None])).sum(0)
    return trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)


def _cka_ratio(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)); NaN where a representation is constant (no variance to compare)."""
    den = (self_x.clamp_min(0) * self_y.clamp_min(0)).sqrt()
    return torch.where(den > 0, cross / den.clamp_min(1e-300), torch.full_like(den, math.nan))


def cka_with_draws(centered_grams_x: Iterable[torch.Tensor], centered_grams_y: list[torch.Tensor], debiased: bool,
                   resamples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate (Lx, Ly), draws (resamples, Lx, Ly)) of CKA between every pair of layers from their centered Grams.

    `centered_grams_x` may be a generator: one X Gram is held at a time, beside all Y Grams."""
    hsic = unbiased_hsic_draws if debiased else biased_hsic_draws
    weights = None
    ys, self_y, rows = [], [], []
    for gx in centered_grams_x:
        if weights is None:
            weights = resample_weights(len(gx), resamples, seed)
            ys = [gram_terms(g, weights) for g in centered_grams_y]
            self_y = [hsic(y, y, weights) for y in ys]
        x = gram_terms(gx, weights)
        self_x = hsic(x, x, weights)
        rows.append(torch.stack([_cka_ratio(hsic(x, y, weights), self_x, sy) for y, sy in zip(ys, self_y)], -1))
    values = torch.stack(rows, 1)   # (1 + resamples, Lx, Ly)
    return values[0], values[1:]


def m_out_of_n_bounds(estimate: torch.Tensor, subsample_estimate: torch.Tensor, subsample_low: torch.Tensor,
                      subsample_high: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds for the n-input estimate from a bootstrap of an m-input subsample: estimate + √(m/n)·(bound_m − est_m)
    (a √n-consistent statistic's spread shrinks as 1/√n; Bickel, Götze & van Zwet 1997)."""
    scale = math.sqrt(m / n)
    return (estimate + scale * (subsample_low - subsample_estimate),
            estimate + scale * (subsample_high - subsample_estimate))


def minibatch_draws(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor, resamples: int,
                    seed: int = 0) -> torch.Tensor:
    """(resamples, Lx, Ly) minibatch CKA with the batches resampled: per-batch HSIC₁ terms cross (B, Lx, Ly),
    self_x (B, Lx), self_y (B, Ly) summed with each resample's batch counts."""
    counts = resample_counts(len(cross), resamples, torch.Generator().manual_seed(seed))
    cross, self_x, self_y = (t.to(torch.float64) for t in (cross, self_x, self_y))
    num = torch.einsum("rb,bij->rij", counts, cross)
    return _cka_ratio(num, (counts @ self_x)[:, :, None], (counts @ self_y)[:, None, :])


__all__ = ["CKA_RESAMPLES", "GramTerms", "biased_hsic_draws", "cka_with_draws", "gram_terms", "m_out_of_n_bounds",
           "minibatch_draws", "resample_weights", "unbiased_hsic_draws"]
