"""Centered kernel alignment (METHODS §7, Kornblith et al. 2019): how similar two representations of the same
n inputs are, whatever their widths.

Features X (n×p1), Y (n×p2) are column-centered. With Gram matrices K = XXᵀ, L = YYᵀ and H = I − 11ᵀ/n:

    HSIC(K, L) = tr(KHLH) / (n − 1)²               CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))
    linear CKA = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)      (the same number, computed in feature space)

- `linear_cka`: the linear kernel; computed in feature space or Gram space, whichever is cheaper.
- `rbf_cka`: k(x, x') = exp(−||x − x'||² / (2σ²)), σ = threshold × median pairwise distance (off-diagonal pairs).
- `debiased_linear_cka`: HSIC replaced by the unbiased estimator HSIC₁ of Song et al. (2012), which removes the
  upward bias of CKA between wide representations on few samples (may be slightly negative).
- `LinearCKAAccumulator`: exact linear CKA streamed over batches (sums, XᵀX, YᵀY, YᵀX), memory O(p²), n unbounded.
- `MinibatchCKA`: Nguyen, Raghu & Kornblith (2021) — HSIC₁ averaged over minibatches, memory O(b²) per layer
  whatever the feature size, for ≥10,000 inputs × large feature maps; converges to debiased CKA.

All functions take features (n, ...) — extra dimensions are flattened — and return a Python float; arithmetic is
float64. Every method has the call signature `method(x, y, **options)`; `CKA_METHODS` finds them by name.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

KERNELS = ("linear", "rbf", "debiased")


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


def gram_rbf(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """K_ij = exp(−d_ij² / (2σ²)), σ = threshold × median of the pairwise distances d_ij, i < j."""
    x = _as_matrix(x)
    sq_norms = (x * x).sum(1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * x @ x.T).clamp_min_(0)
    i, j = torch.triu_indices(len(x), len(x), 1, device=x.device)
    pairs = sq_dist[i, j]
    # The usual median (mean of the two middle values for an even count); kthvalue has no size limit, unlike
    # torch.quantile, and sqrt is monotone so the middle squared distances are the middle distances.
    m = len(pairs)
    median = (pairs.kthvalue((m + 1) // 2).values.sqrt() + pairs.kthvalue(m // 2 + 1).values.sqrt()) / 2
    if float(median) <= 0:
        raise ValueError("RBF bandwidth is 0: more than half of the input pairs have identical features")
    return sq_dist.mul_(-1.0 / (2 * (threshold * median) ** 2)).exp_()  # in place: n×n is the memory bill


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


def rbf_cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0) -> float:
    """CKA with RBF kernels, bandwidth σ = threshold × median pairwise distance (per representation), in [0, 1]."""
    x, y = _pair(x, y, min_n=3)
    return gram_cka(gram_rbf(x, threshold), gram_rbf(y, threshold))


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


CKA_METHODS: dict[str, Callable[..., float]] = {"linear": linear_cka, "rbf": rbf_cka, "debiased": debiased_linear_cka}


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", threshold: float = 1.0) -> float:
    """CKA by kernel name: 'linear' | 'rbf' (uses `threshold`) | 'debiased'."""
    if kernel not in CKA_METHODS:
        raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
    return rbf_cka(x, y, threshold) if kernel == "rbf" else CKA_METHODS[kernel](x, y)


# ---------------------------------------------------------------- accumulation over batches

def _layers(xs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [xs] if isinstance(xs, torch.Tensor) else list(xs)


class LinearCKAAccumulator:
    """Exact linear CKA of every (X_i, Y_j) layer pair, streamed batch by batch.

    Keeps per layer the column sums and XᵀX, and per pair YᵀX (float64), so `value()` equals `linear_cka` on all
    inputs at once up to rounding, with memory independent of n: O(Σ p_i² + Σ p_i p_j). Use it for features up to a
    few thousand dimensions (pooled maps, penultimate layers, logits); `MinibatchCKA` has no such limit.
    """

    def __init__(self):
        self.n = 0
        self._shift_x = self._shift_y = None

    def update(self, xs: torch.Tensor | Sequence[torch.Tensor], ys: torch.Tensor | Sequence[torch.Tensor]) -> None:
        xs, ys = [_as_matrix(x, "X") for x in _layers(xs)], [_as_matrix(y, "Y") for y in _layers(ys)]
        if len({len(t) for t in xs + ys}) != 1:
            raise ValueError("every layer of one update must describe the same inputs (same number of rows)")
        if self._shift_x is None:
            # Moments about the first batch's mean (CKA is shift-invariant): avoids float64 cancellation when
            # activations have a large mean relative to their spread.
            self._shift_x, self._shift_y = [x.mean(0) for x in xs], [y.mean(0) for y in ys]
            self.sum_x, self.sum_y = [torch.zeros_like(s) for s in self._shift_x], [torch.zeros_like(s)
                                                                                    for s in self._shift_y]
            self.xx = [torch.zeros(len(s), len(s), dtype=torch.float64) for s in self._shift_x]
            self.yy = [torch.zeros(len(s), len(s), dtype=torch.float64) for s in self._shift_y]
            self.yx = [[torch.zeros(len(sy), len(sx), dtype=torch.float64) for sy in self._shift_y]
                       for sx in self._shift_x]
        if len(xs) != len(self.xx) or len(ys) != len(self.yy):
            raise ValueError("every update must pass the same layers")
        xs = [x - s for x, s in zip(xs, self._shift_x)]
        ys = [y - s for y, s in zip(ys, self._shift_y)]
        self.n += len(xs[0])
        for i, x in enumerate(xs):
            self.sum_x[i] += x.sum(0)
            self.xx[i] += x.T @ x
            for j, y in enumerate(ys):
                self.yx[i][j] += y.T @ x
        for j, y in enumerate(ys):
            self.sum_y[j] += y.sum(0)
            self.yy[j] += y.T @ y

    def value(self) -> torch.Tensor:
        """(layers of X) × (layers of Y) matrix of linear CKA; a single pair gives a 1×1 matrix."""
        if self.n < 2:
            raise ValueError(f"need at least 2 inputs, got {self.n}")
        n = self.n
        cxx = [torch.linalg.norm(xx - torch.outer(s, s) / n) for xx, s in zip(self.xx, self.sum_x)]
        cyy = [torch.linalg.norm(yy - torch.outer(s, s) / n) for yy, s in zip(self.yy, self.sum_y)]
        out = torch.empty(len(cxx), len(cyy), dtype=torch.float64)
        for i, sx in enumerate(self.sum_x):
            for j, sy in enumerate(self.sum_y):
                cross = torch.linalg.norm(self.yx[i][j] - torch.outer(sy, sx) / n) ** 2
                out[i, j] = _ratio(cross, cxx[i] * cyy[j])
        return out


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) for every (X_i, Y_j) layer pair:

        CKA_mb = Σ_b HSIC₁(K_ib, L_jb) / sqrt(Σ_b HSIC₁(K_ib, K_ib) · Σ_b HSIC₁(L_jb, L_jb))

    over minibatches b (≥ 4 inputs each). Memory is one b×b Gram per layer, whatever the feature size, so 10,000
    inputs × large feature maps fit. HSIC₁ is unbiased for every batch size, so the estimate does not drift with
    b; with a single batch it equals `debiased_linear_cka` ('linear'). For 'rbf', σ is set per minibatch.
    """

    def __init__(self, kernel: str = "linear", threshold: float = 1.0):
        if kernel not in KERNELS:
            raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
        self.kernel, self.threshold = kernel, threshold
        self.n = self.batches = 0
        self.cross = self.self_x = self.self_y = None

    def _grams(self, feats: list[torch.Tensor]) -> torch.Tensor:
        grams = [gram_rbf(f, self.threshold) if self.kernel == "rbf" else gram_linear(f) for f in feats]
        return torch.stack([center_gram_unbiased(g).flatten() for g in grams])

    def update(self, xs: torch.Tensor | Sequence[torch.Tensor], ys: torch.Tensor | Sequence[torch.Tensor]) -> None:
        gx, gy = self._grams(_layers(xs)), self._grams(_layers(ys))
        if gx.shape[1] != gy.shape[1]:
            raise ValueError("X and Y layers must describe the same inputs")
        b = int(round(gx.shape[1] ** 0.5))
        scale = 1.0 / (b * (b - 3))
        cross, self_x, self_y = (gx @ gy.T) * scale, (gx * gx).sum(1) * scale, (gy * gy).sum(1) * scale
        if self.cross is None:
            self.cross, self.self_x, self.self_y = cross, self_x, self_y
        else:
            self.cross, self.self_x, self.self_y = self.cross + cross, self.self_x + self_x, self.self_y + self_y
        self.n += b
        self.batches += 1

    def value(self) -> torch.Tensor:
        if self.cross is None:
            raise ValueError("no minibatch was accumulated")
        den = (self.self_x.clamp_min(0)[:, None] * self.self_y.clamp_min(0)[None, :]).sqrt()
        return torch.where(den > 0, self.cross / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


__all__ = ["CKA_METHODS", "KERNELS", "LinearCKAAccumulator", "MinibatchCKA", "center_gram", "center_gram_unbiased",
           "cka", "debiased_linear_cka", "gram_cka", "gram_linear", "gram_rbf", "hsic", "linear_cka", "rbf_cka",
           "unbiased_hsic"]
