"""CKA accumulated batch by batch (methods.md#cka: "must work on ≥10,000 samples"), for when n×n Grams do not fit.

- `LinearCKAAccumulator`: exact linear CKA of every layer pair from running sums and XᵀX, YᵀY, YᵀX; memory O(p²),
  n unbounded. The same number as `linear_cka` on all inputs at once.
- `MinibatchCKA`: Nguyen, Raghu & Kornblith (2021), HSIC₁ summed over minibatches; memory O(b²) per layer whatever
  the feature size. It estimates *debiased* CKA, and is named so ('debiased' / 'debiased_rbf').
"""
from __future__ import annotations

from typing import Sequence

import torch

from dfkd_core.analysis.cka import (_as_matrix, _ratio, center_gram_unbiased, gram_linear, rbf_from_squared_distances,
                                    squared_distances)

MINIBATCH_KERNELS = ("debiased", "debiased_rbf")


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


def _quantile(values: torch.Tensor, level: float) -> torch.Tensor:
    """Linear-interpolation quantile (numpy's default) by kthvalue, which has no size limit unlike torch.quantile."""
    position = level * (len(values) - 1)
    below = int(position)
    low = values.kthvalue(below + 1).values
    if below + 1 >= len(values):
        return low
    return low + (position - below) * (values.kthvalue(below + 2).values - low)


def reference_median_levels(n: int) -> tuple[float, float]:
    """Where numpy's median of the n² squared distances (n zeros on the diagonal, each distinct pair twice) falls
    among the n(n − 1)/2 distinct pairs, as quantile levels of them: the two middle entries of the n² values are
    distinct pairs number ⌈(P − n)/2⌉ for P = ⌊(n² + 1)/2⌋ and ⌊n²/2⌋ + 1 (1-based)."""
    pairs = n * (n - 1) // 2
    ranks = [-(-(p - n) // 2) for p in ((n * n + 1) // 2, n * n // 2 + 1)]
    return tuple((r - 1) / (pairs - 1) for r in ranks)


def bandwidth_from_pairs(pair_sq_distances: torch.Tensor, n: int, rule: str) -> torch.Tensor:
    """The bandwidth median of `n` inputs estimated from a uniform sample of their distinct pairs' squared distances
    (exact when the sample is every pair): 'reference' = median of the n² squared distances, 'offdiagonal' =
    (median distance over distinct pairs)²."""
    if rule == "reference":
        low, high = reference_median_levels(n)
        return (_quantile(pair_sq_distances, low) + _quantile(pair_sq_distances, high)) / 2
    return _quantile(pair_sq_distances.sqrt(), 0.5) ** 2


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) for every (X_i, Y_j) layer pair:

        CKA_mb = Σ_b HSIC₁(K_ib, L_jb) / sqrt(Σ_b HSIC₁(K_ib, K_ib) · Σ_b HSIC₁(L_jb, L_jb))

    over minibatches b (≥ 4 inputs each; random groups of inputs, see `CKAMatrix`). HSIC₁ is unbiased on every
    batch, so CKA_mb estimates what debiased CKA over all n inputs estimates, with more noise; with one batch it
    is exactly `debiased_linear_cka` / `debiased_rbf_cka`. Biased CKA has no such estimator (its bias shrinks with
    n, a batch's with b), so 'linear' and 'rbf' are refused rather than renamed silently.

    'debiased_rbf': one bandwidth for every batch, as the named quantity has one over all n inputs. It is estimated
    from every within-batch pair (`bandwidth_from_pairs`), so the batches' squared distances are kept until
    `value()` (float64, O(n·b) per layer: 40 MB per layer for 10,000 inputs in batches of 500).
    """

    def __init__(self, kernel: str = "debiased", threshold: float = 1.0, bandwidth: str = "reference"):
        if kernel not in MINIBATCH_KERNELS:
            raise ValueError(f"the minibatch estimator estimates debiased CKA (unbiased HSIC per batch); kernel "
                             f"'{kernel}' is not one of {MINIBATCH_KERNELS}")
        self.kernel, self.threshold, self.bandwidth = kernel, threshold, bandwidth
        self.n = 0
        self._distances: list[list[torch.Tensor]] = []   # per batch, per layer (X layers then Y layers); RBF only
        self._terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._layers_x = 0

    @property
    def batches(self) -> int:
        return len(self._distances) if self.kernel == "debiased_rbf" else len(self._terms)

    def update(self, xs: torch.Tensor | Sequence[torch.Tensor], ys: torch.Tensor | Sequence[torch.Tensor]) -> None:
        xs, ys = [_as_matrix(x, "X") for x in _layers(xs)], [_as_matrix(y, "Y") for y in _layers(ys)]
        if len({len(t) for t in xs + ys}) != 1:
            raise ValueError("X and Y layers must describe the same inputs")
        if len(xs[0]) < 4:
            raise ValueError(f"every minibatch needs at least 4 inputs, got {len(xs[0])}")
        self._layers_x = len(xs)
        self.n += len(xs[0])
        if self.kernel == "debiased_rbf":
            self._distances.append([squared_distances(f) for f in xs + ys])
            self._terms = []   # the bandwidth depends on every batch: terms are computed in value()
        else:
            self._terms.append(self._batch_terms([gram_linear(f - f.mean(0)) for f in xs + ys]))

    def _batch_terms(self, grams: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n(n − 3)·HSIC₁ of one batch: cross (Lx, Ly), self_x (Lx), self_y (Ly); the scale cancels in CKA."""
        g = torch.stack([center_gram_unbiased(k).flatten() for k in grams])
        gx, gy = g[:self._layers_x], g[self._layers_x:]
        return gx @ gy.T, (gx * gx).sum(1), (gy * gy).sum(1)

    def bandwidths(self) -> list[torch.Tensor]:
        """Per layer (X then Y), the global median of squared distances the RBF Grams use."""
        out = []
        for layer in range(len(self._distances[0])):
            pairs = [d[layer][tuple(torch.triu_indices(len(d[layer]), len(d[layer]), 1))] for d in self._distances]
            out.append(bandwidth_from_pairs(torch.cat(pairs), self.n, self.bandwidth))
        return out

    def batch_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-batch HSIC₁ terms stacked: cross (B, Lx, Ly), self_x (B, Lx), self_y (B, Ly)."""
        if self.batches == 0:
            raise ValueError("no minibatch was accumulated")
        if self.kernel == "debiased_rbf" and not self._terms:
            medians = self.bandwidths()
            self._terms = [self._batch_terms([rbf_from_squared_distances(d.clone(), self.threshold, m)
                                              for d, m in zip(batch, medians)]) for batch in self._distances]
        cross, self_x, self_y = zip(*self._terms)
        return torch.stack(cross), torch.stack(self_x), torch.stack(self_y)

    def value(self) -> torch.Tensor:
        """(layers of X) × (layers of Y) matrix of minibatch CKA."""
        cross, self_x, self_y = (t.sum(0) for t in self.batch_terms())
        den = (self_x.clamp_min(0)[:, None] * self_y.clamp_min(0)[None, :]).sqrt()
        return torch.where(den > 0, cross / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


__all__ = ["LinearCKAAccumulator", "MINIBATCH_KERNELS", "MinibatchCKA", "bandwidth_from_pairs",
           "reference_median_levels"]
