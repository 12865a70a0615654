"""95% intervals of CKA over inputs (methods.md#cka).

Why not the plain bootstrap: a resample drawn with replacement repeats inputs, and a repeated input is a pair at
distance 0 whose kernel entries agree perfectly in both representations — CKA of such resamples is inflated (RBF
most), so the estimate sits at the bottom edge of its own percentile interval (measured on digits: RBF 0.885
[0.885, 0.900]). Half-sampling has no repeats: CKA is recomputed on R random halves of the inputs (m = ⌊n/2⌋,
drawn without replacement). For a smooth statistic the spread of a half around the whole is the spread of the
whole-sample estimate over fresh samples of n inputs (the finite-population variance σ²(1/m − 1/n) equals σ²/n at
m = n/2; McCarthy 1969, Politis, Romano & Wolf 1999), so

    interval = estimate + [q_2.5%, q_97.5%] of (CKA(half) − median over halves)

Recentring on the halves' median removes their larger small-sample bias (biased CKA's bias grows as 1/m): the
interval says how far the named estimate moves with the luck of the draw of n inputs.

A subset is described by its weights w (1 for its inputs, 0 otherwise; Σ w = m); its Gram is K[idx][:, idx]. Every
term CKA needs is a quadratic form of w in the full-sample Gram, so R halves cost a few (n × n)·(n × R) matrix
products instead of R recomputations:

    biased HSIC (× m²):   wᵀ(K∘L)w − (2/m)·Σ_a w_a (Kw)_a (Lw)_a + (wᵀKw)(wᵀLw)/m²
    unbiased HSIC₁ (× m(m − 3)), K̃ = K off its diagonal (Song et al. 2012):
                          tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((m − 1)(m − 2)) − 2·1ᵀK̃L̃1/(m − 2), where
                          tr(K̃L̃) = wᵀ(K∘L)w − Σ_a w_a K_aa L_aa,  1ᵀK̃1 = wᵀKw − Σ_a w_a K_aa,
                          1ᵀK̃L̃1 = Σ_a w_a ((Kw)_a − K_aa)((Lw)_a − L_aa)

Both HSICs are unchanged when K gains terms a_i + a_j + c, so the Grams enter already centered over the full
sample (HKH): the correction terms stay small and float64 keeps its digits. With w = 1 (m = n) the formulas are the
full-sample estimates themselves, so `cka_with_draws` returns the estimate and its halves from one code path. The
RBF bandwidth is held at its full-sample value (its own spread, a median over n² distances, is second order).

Per estimator (each result names its method):
- full: half-sampling over inputs, every cell.
- streaming (n > 3,000, linear): half-sampling on a random subsample of m' inputs, widths rescaled by √(m'/n)
  around the full-sample estimate (a √n-consistent statistic's spread shrinks as 1/√n).
- minibatch: a jackknife over the batches with Student's t (`minibatch_leave_one_out`, `stats.jackknife_t_bounds`):
  each batch's HSIC₁ is computed inside the batch, so batches, not inputs, are the units. A percentile bootstrap over
  them came out far too narrow for the few batches a run has (4 batches of 100 on digits: [0.825, 0.830] around 0.826,
  while the full-sample estimate was 0.831): k units have few distinct resamples and no t correction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from dfkd_core.stats import LEVEL

CKA_RESAMPLES = 500
"""Halves per CKA interval: fewer than stats.RESAMPLES because each costs (Lt·Ls + Lt + Ls) n×n-by-n products.
Measured for a 4 × 4 layer matrix, one thread on a busy 2-core machine (`python benchmarks/cka_speed.py --threads 1
--repeats 1 --intervals 360 1000 2000 3000`): n = 360 0.2 s, 1,000 0.9 s (the app's default), 2,000 3.7 s (the
CLI's), 3,000 8.7 s; 1,000 take twice as long."""


def half_sample_weights(n: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """(n, 1 + resamples) float64: column 0 is the whole sample (all ones), each other column one random half
    (⌊n/2⌋ ones, drawn without replacement)."""
    generator = torch.Generator().manual_seed(seed)
    halves = torch.zeros(resamples, n, dtype=torch.float64)
    chosen = torch.rand(resamples, n, generator=generator).argsort(1)[:, :n // 2]
    halves.scatter_(1, chosen, 1.0)
    return torch.cat([torch.ones(1, n, dtype=torch.float64), halves]).T.contiguous()


@dataclass
class GramTerms:
    """What one centered Gram K contributes to every CKA cell it enters, for all subsets w at once."""

    gram: torch.Tensor   # (n, n), centered over the full sample
    kw: torch.Tensor     # (n, R) = K w
    quad: torch.Tensor   # (R,) = wᵀ K w
    diag: torch.Tensor   # (n,) = K_aa


def gram_terms(centered_gram: torch.Tensor, weights: torch.Tensor) -> GramTerms:
    kw = centered_gram @ weights
    return GramTerms(centered_gram, kw, (weights * kw).sum(0), centered_gram.diagonal().clone())


def biased_hsic_draws(k: GramTerms, l: GramTerms, weights: torch.Tensor) -> torch.Tensor:
    """m²·HSIC(K, L) of each subset: wᵀ(K∘L)w − (2/m)·Σ_a w_a (Kw)_a (Lw)_a + (wᵀKw)(wᵀLw)/m²."""
    m = weights.sum(0)
    hadamard = ((k.gram * l.gram) @ weights * weights).sum(0)
    return hadamard - 2 * (weights * k.kw * l.kw).sum(0) / m + k.quad * l.quad / m ** 2


def unbiased_hsic_draws(k: GramTerms, l: GramTerms, weights: torch.Tensor) -> torch.Tensor:
    """m(m − 3)·HSIC₁(K, L) of each subset (Song et al. 2012, terms in the module docstring)."""
    m = weights.sum(0)
    trace = ((k.gram * l.gram) @ weights * weights).sum(0) - (k.diag * l.diag) @ weights
    sum_k, sum_l = k.quad - k.diag @ weights, l.quad - l.diag @ weights
    cross = (weights * (k.kw - k.diag[:, None]) * (l.kw - l.diag[:, None])).sum(0)
    return trace + sum_k * sum_l / ((m - 1) * (m - 2)) - 2 * cross / (m - 2)


def _cka_ratio(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)); NaN where a representation is constant (no variance to compare)."""
    den = (self_x.clamp_min(0) * self_y.clamp_min(0)).sqrt()
    return torch.where(den > 0, cross / den.clamp_min(1e-300), torch.full_like(den, math.nan))


def cka_with_draws(centered_grams_x: Iterable[torch.Tensor], centered_grams_y: list[torch.Tensor], debiased: bool,
                   resamples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate (Lx, Ly), CKA of `resamples` random halves (resamples, Lx, Ly)) for every pair of layers, from their
    centered Grams. `centered_grams_x` may be a generator: one X Gram is held at a time, beside all Y Grams.
    Halves too small for the estimator (HSIC₁ needs 4 inputs) give NaN draws, i.e. no interval."""
    hsic = unbiased_hsic_draws if debiased else biased_hsic_draws
    weights = None
    ys, self_y, rows = [], [], []
    for gx in centered_grams_x:
        if weights is None:
            weights = half_sample_weights(len(gx), resamples, seed)
            if len(gx) // 2 < (4 if debiased else 2):
                weights = weights[:, :1]
            ys = [gram_terms(g, weights) for g in centered_grams_y]
            self_y = [hsic(y, y, weights) for y in ys]
        x = gram_terms(gx, weights)
        self_x = hsic(x, x, weights)
        rows.append(torch.stack([_cka_ratio(hsic(x, y, weights), self_x, sy) for y, sy in zip(ys, self_y)], -1))
    values = torch.stack(rows, 1)   # (1 + resamples, Lx, Ly)
    return values[0], values[1:]


def half_sample_bounds(estimate: torch.Tensor, draws: torch.Tensor, level: float = LEVEL
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """estimate + [q_low, q_high] of (draw − median of the draws), per cell; NaN with fewer than 2 finite draws."""
    nan = torch.full_like(estimate, math.nan)
    if len(draws) == 0:
        return nan, nan.clone()
    tail = (1 - level) / 2
    deviations = draws - torch.nanmedian(draws, dim=0).values
    q = torch.nanquantile(deviations, torch.tensor([tail, 1 - tail], dtype=draws.dtype), dim=0)
    enough = (~torch.isnan(draws)).sum(0) >= 2
    return torch.where(enough, estimate + q[0], nan), torch.where(enough, estimate + q[1], nan)


def m_out_of_n_bounds(estimate: torch.Tensor, subsample_estimate: torch.Tensor, subsample_low: torch.Tensor,
                      subsample_high: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds for the n-input estimate from an interval of an m-input subsample: estimate + √(m/n)·(bound_m − est_m)
    (a √n-consistent statistic's spread shrinks as 1/√n; Bickel, Götze & van Zwet 1997)."""
    scale = math.sqrt(m / n)
    return (estimate + scale * (subsample_low - subsample_estimate),
            estimate + scale * (subsample_high - subsample_estimate))


def minibatch_leave_one_out(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> torch.Tensor:
    """(B, Lx, Ly) minibatch CKA with each of the B batches left out in turn: per-batch HSIC₁ terms cross (B, Lx, Ly),
    self_x (B, Lx), self_y (B, Ly) summed over the other batches."""
    cross, self_x, self_y = (t.to(torch.float64) for t in (cross, self_x, self_y))
    num = cross.sum(0, keepdim=True) - cross
    return _cka_ratio(num, (self_x.sum(0, keepdim=True) - self_x)[:, :, None],
                      (self_y.sum(0, keepdim=True) - self_y)[:, None, :])


__all__ = ["CKA_RESAMPLES", "GramTerms", "biased_hsic_draws", "cka_with_draws", "gram_terms", "half_sample_bounds",
           "half_sample_weights", "m_out_of_n_bounds", "minibatch_leave_one_out", "unbiased_hsic_draws"]
