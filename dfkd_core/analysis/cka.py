"""Centered kernel alignment (methods.md#cka, Kornblith et al. 2019): how similar two representations of the same
n inputs are, whatever their widths.

Features X (n×p1), Y (n×p2) are column-centered. With Gram matrices K = XXᵀ, L = YYᵀ and H = I − 11ᵀ/n:

    HSIC(K, L) = tr(KHLH) / (n − 1)²               CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))
    linear CKA = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)      (the same number, computed in feature space)

Each name is one quantity (`KERNELS`), computed exactly by the function of that name:
- 'linear' (`linear_cka`): the linear kernel; in feature space or Gram space, whichever is cheaper.
- 'rbf' (`rbf_cka`): k(x, x') = exp(−||x − x'||² / (2 · threshold² · median(d²))), the median taken over all n²
  squared distances, diagonal included — exactly Kornblith et al.'s reference code (`gram_rbf` in
  google-research/representation_similarity/Demo.ipynb), so numbers compare across papers. `bandwidth=
  'offdiagonal'` keeps this project's earlier rule, σ = threshold × median distance over pairs i < j.
- 'debiased' (`debiased_linear_cka`): linear CKA with HSIC replaced by the unbiased estimator HSIC₁ of Song et al.
  (2012), which removes the upward bias of CKA between wide representations on few samples (may be slightly < 0).
- 'debiased_rbf' (`debiased_rbf_cka`): the RBF kernel with HSIC₁.

`cka_accumulators` streams these over batches when n×n Grams do not fit.

All functions take features (n, ...) — extra dimensions are flattened — and return a Python float; arithmetic is
float64. Every method has the call signature `method(x, y, **options)`; `CKA_METHODS` finds them by name.
"""
from __future__ import annotations

from typing import Callable

import torch

KERNELS = ("linear", "rbf", "debiased", "debiased_rbf")
RBF_BANDWIDTHS = ("reference", "offdiagonal")   # see the module docstring


def _as_matrix(x: torch.Tensor, name: str = "features") -> torch.Tensor:
    x = torch.as_tensor(x)
    x = x.reshape(len(x), -1) if x.dim() != 1 else x[:, None]
    x = x.detach().to(torch.float64)
    # One sum is ~10x cheaper than an elementwise isfinite, and NaN/inf anywhere makes it non-finite.
    if not torch.isfinite(x.sum()):
        raise ValueError(f"{name} contain NaN or inf; CKA is undefined")
    return x


def _pair(x: torch.Tensor, y: torch.Tensor, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_matrix(x, "X"), _as_matrix(y, "Y")
    if len(x) != len(y):
        raise ValueError(f"X and Y must describe the same inputs: {len(x)} rows vs {len(y)} rows")
    if len(x) < min_n:
        raise ValueError(f"need at least {min_n} inputs, got {len(x)}")
    return x.to(y.device), y


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    """num / den, NaN when a representation is constant over the inputs (CKA undefined)."""
    return float(num / den) if float(den) > 0 else float("nan")


# ---------------------------------------------------------------- kernels and HSIC

def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """K = XXᵀ (n×n)."""
    x = _as_matrix(x)
    return x @ x.T


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """D_ij = ||x_i − x_j||² (n×n), from the dot products as in the reference code; rounding below 0 is clipped."""
    x = _as_matrix(x)
    sq_norms = (x * x).sum(1)
    return (sq_norms[:, None] + sq_norms[None, :] - 2 * x @ x.T).clamp_min_(0)


def _median(values: torch.Tensor) -> torch.Tensor:
    """numpy's median: the mean of the two middle values for an even count (kthvalue has no size limit, unlike
    torch.quantile)."""
    m = len(values)
    return (values.kthvalue((m + 1) // 2).values + values.kthvalue(m // 2 + 1).values) / 2


def reference_bandwidth(sq_dist: torch.Tensor) -> torch.Tensor:
    """median(D) over all n² entries, diagonal zeros included: `sq_median_distance` of Kornblith et al.'s gram_rbf."""
    return _median(sq_dist.flatten())


def offdiagonal_bandwidth(sq_dist: torch.Tensor) -> torch.Tensor:
    """(median over i < j of d_ij)²: the earlier rule of this project (σ = threshold × median distance)."""
    i, j = torch.triu_indices(len(sq_dist), len(sq_dist), 1, device=sq_dist.device)
    return _median(sq_dist[i, j].sqrt()) ** 2


BANDWIDTH_RULES = {"reference": reference_bandwidth, "offdiagonal": offdiagonal_bandwidth}


def rbf_from_squared_distances(sq_dist: torch.Tensor, threshold: float, median_sq: torch.Tensor | float
                               ) -> torch.Tensor:
    """K_ij = exp(−D_ij / (2 · threshold² · median_sq)), in place (the n×n matrix is the memory bill)."""
    if float(median_sq) <= 0:
        raise ValueError("RBF bandwidth is 0: more than half of the input pairs have identical features")
    return sq_dist.mul_(-1.0 / (2 * threshold ** 2 * median_sq)).exp_()


def gram_rbf(x: torch.Tensor, threshold: float = 1.0, bandwidth: str = "reference") -> torch.Tensor:
    """K_ij = exp(−d_ij² / (2 · threshold² · median(d²))); 'reference': the median over all n² squared distances,
    diagonal included (Kornblith et al.'s code); 'offdiagonal': (median distance over i < j)²."""
    if bandwidth not in BANDWIDTH_RULES:
        raise ValueError(f"unknown RBF bandwidth rule '{bandwidth}'; choose one of {RBF_BANDWIDTHS}")
    sq_dist = squared_distances(x)
    return rbf_from_squared_distances(sq_dist, threshold, BANDWIDTH_RULES[bandwidth](sq_dist))


def center_gram(k: torch.Tensor) -> torch.Tensor:
    """HKH: subtract row and column means, add back the grand mean."""
    return (k - k.mean(0, keepdim=True)).sub_(k.mean(1, keepdim=True)).add_(k.mean())


def center_gram_unbiased(k: torch.Tensor) -> torch.Tensor:
    """The centering under which <K̃, L̃>_F = n(n − 3) · HSIC₁(K, L) (Song et al. 2012's U-statistic).

    Zeroing the diagonal drops the i = j terms that bias HSIC; the mean corrections use n − 2 and 2(n − 1)
    instead of n because only off-diagonal entries remain.
    """
    n = len(k)
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 inputs, got {n}")
    k = k.clone()
    k.fill_diagonal_(0)
    means = k.sum(0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0)
    return k


def hsic(k: torch.Tensor, l: torch.Tensor) -> float:
    """Biased HSIC = tr(KHLH) / (n − 1)² (Gretton et al. 2005)."""
    n = len(k)
    return float((center_gram(k) * center_gram(l)).sum() / (n - 1) ** 2)


def unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> float:
    """HSIC₁ (Song et al. 2012), unbiased; needs n ≥ 4."""
    n = len(k)
    return float((center_gram_unbiased(k) * center_gram_unbiased(l)).sum() / (n * (n - 3)))


def gram_cka(k: torch.Tensor, l: torch.Tensor, debiased: bool = False) -> float:
    """CKA of two Gram matrices of the same inputs (any kernel)."""
    center = center_gram_unbiased if debiased else center_gram
    kc, lc = center(k.to(torch.float64)), center(l.to(torch.float64))
    return _ratio((kc * lc).sum(), torch.linalg.norm(kc) * torch.linalg.norm(lc))


# ---------------------------------------------------------------- the three methods

def _feature_space_cheaper(n: int, p1: int, p2: int) -> bool:
    return n * (p1 * p1 + p2 * p2 + p1 * p2) <= n * n * (p1 + p2)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA = ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F) on column-centered features, in [0, 1]."""
    x, y = _pair(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    if _feature_space_cheaper(len(x), x.shape[1], y.shape[1]):
        return _ratio(torch.linalg.norm(y.T @ x) ** 2, torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y))
    return gram_cka(x @ x.T, y @ y.T)


def rbf_cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0, bandwidth: str = "reference") -> float:
    """CKA with RBF kernels (bandwidth per representation, see `gram_rbf`), in [0, 1]."""
    x, y = _pair(x, y, min_n=3)
    return gram_cka(gram_rbf(x, threshold, bandwidth), gram_rbf(y, threshold, bandwidth))


def debiased_rbf_cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0, bandwidth: str = "reference"
                     ) -> float:
    """RBF CKA with the unbiased HSIC₁ estimator (Song et al. 2012); needs n ≥ 4."""
    x, y = _pair(x, y, min_n=4)
    return gram_cka(gram_rbf(x, threshold, bandwidth), gram_rbf(y, threshold, bandwidth), debiased=True)


def _linear_unbiased_hsic_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """n(n−3)·HSIC₁ for (X,Y), (X,X), (Y,Y) with linear kernels, without forming n×n matrices.

    With K̃ = XXᵀ − diag: tr(K̃L̃) = ||YᵀX||² − Σ_i |x_i|²|y_i|², 1ᵀK̃1 = |Xᵀ1|² − Σ_i |x_i|², and
    1ᵀK̃L̃1 = <X Xᵀ1 − |x|², Y Yᵀ1 − |y|²>; HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3)).
    """
    n = len(x)

    def parts(a):
        sq = (a * a).sum(1)
        row_sums = a @ a.sum(0) - sq
        return sq, row_sums, row_sums.sum()

    def term(cross_sq, a, b):
        return (cross_sq - (a[0] * b[0]).sum() + a[2] * b[2] / ((n - 1) * (n - 2))
                - 2 * (a[1] * b[1]).sum() / (n - 2))

    px, py = parts(x), parts(y)
    xy = term(torch.linalg.norm(y.T @ x) ** 2, px, py)
    xx = term(torch.linalg.norm(x.T @ x) ** 2, px, px)
    yy = term(torch.linalg.norm(y.T @ y) ** 2, py, py)
    return xy, xx, yy


def debiased_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA with the unbiased HSIC₁ estimator (Song et al. 2012; Kornblith et al. 2019 §A); needs n ≥ 4."""
    x, y = _pair(x, y, min_n=4)
    x, y = x - x.mean(0), y - y.mean(0)
    if _feature_space_cheaper(len(x), x.shape[1], y.shape[1]):
        xy, xx, yy = _linear_unbiased_hsic_terms(x, y)
        return _ratio(xy, (xx.clamp_min(0) * yy.clamp_min(0)).sqrt())
    return gram_cka(x @ x.T, y @ y.T, debiased=True)


CKA_METHODS: dict[str, Callable[..., float]] = {"linear": linear_cka, "rbf": rbf_cka, "debiased": debiased_linear_cka,
                                                "debiased_rbf": debiased_rbf_cka}
RBF_KERNELS = ("rbf", "debiased_rbf")


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", threshold: float = 1.0,
        bandwidth: str = "reference") -> float:
    """CKA by kernel name (`KERNELS`); `threshold` and `bandwidth` apply to the RBF kernels."""
    if kernel not in CKA_METHODS:
        raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
    if kernel in RBF_KERNELS:
        return CKA_METHODS[kernel](x, y, threshold, bandwidth)
    return CKA_METHODS[kernel](x, y)


def describe_kernel(kernel: str, threshold: float = 1.0, bandwidth: str = "reference") -> str:
    """The quantity a kernel name stands for, in words (for tables, titles and captions)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
    base = {"linear": "linear CKA", "debiased": "debiased linear CKA", "rbf": "RBF CKA",
            "debiased_rbf": "debiased RBF CKA"}[kernel]
    if kernel not in RBF_KERNELS:
        return base
    rule = ("median of all n² squared distances, Kornblith et al." if bandwidth == "reference"
            else "median distance over distinct pairs")
    return f"{base} (threshold {threshold:g}, {rule})"


__all__ = ["BANDWIDTH_RULES", "CKA_METHODS", "KERNELS", "RBF_BANDWIDTHS", "RBF_KERNELS", "center_gram",
           "center_gram_unbiased", "cka", "debiased_linear_cka", "debiased_rbf_cka", "describe_kernel", "gram_cka",
           "gram_linear", "gram_rbf", "hsic", "linear_cka", "offdiagonal_bandwidth", "rbf_cka",
           "rbf_from_squared_distances", "reference_bandwidth", "squared_distances", "unbiased_hsic"]
