"""Uncertainty of every comparison metric: 95% percentile-bootstrap intervals (Efron & Tibshirani 1993, ch. 13).

A number the tool reports — an accuracy over test images, MagSim over attacked pairs, CKA over inputs, a Grad-CAM
overlap over images — is an estimate from a finite sample. `Interval` carries it with the range that resampling the
sample's units (test images, base samples, inputs) gives, and says how many units it rests on.

- `mean_interval(values)`: a mean over independent units (per-image scores; accuracy is the mean of 0/1 hits).
- `ratio_interval(numerators, denominators)`: Σ a_g / Σ b_g, resampling whole groups g. MagSim/AngSim are weighted
  means over (n, k) pairs whose pairs share a base sample n: resampling base samples (clusters), not pairs, keeps
  the correlation between a base sample's pairs in the interval.
- `paired_difference_interval(a, b)`: the mean of a − b on the SAME units, resampled together: two students
  compared on the same test images or base samples (much tighter than two separate intervals).
- Kernel statistics such as CKA are not bootstrapped with replacement: a repeated input inflates them
  (`dfkd_core.analysis.cka_intervals` uses random halves instead).

Resampling is seeded, so a stored result is reproducible; resample counts are vectors of multinomial counts, so the
mean-type intervals cost a matrix product, not a Python loop.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

LEVEL = 0.95
RESAMPLES = 1000
_CHUNK = 250   # resamples per counts matrix: bounds memory at _CHUNK × n floats


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval; `units` is how many independent units it rests on."""

    estimate: float
    low: float
    high: float
    units: int
    level: float = LEVEL
    resamples: int = RESAMPLES
    method: str = "percentile bootstrap"

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict:
        """The JSON form runs store (`Interval.from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        """Read back from a run's JSON too, where an undefined bound was stored as None or "nan"."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("estimate", "low", "high", "level"):
            if k in fields:
                fields[k] = math.nan if fields[k] is None or fields[k] == "nan" else float(fields[k])
        return cls(**fields)

    def format(self, spec: str = ".3f") -> str:
        """'0.912 [0.893, 0.929]' (percent specs too: '.1%')."""
        if math.isnan(self.estimate):
            return "nan"
        if not self.defined:
            return f"{format(self.estimate, spec)} [no interval: {self.units} unit(s)]"
        return f"{format(self.estimate, spec)} [{format(self.low, spec)}, {format(self.high, spec)}]"

    def __str__(self) -> str:
        return self.format()


def _undefined(estimate: float, units: int, resamples: int, level: float) -> Interval:
    return Interval(estimate, math.nan, math.nan, units, level, resamples)


def _percentiles(draws: torch.Tensor, estimate: float, units: int, resamples: int, level: float) -> Interval:
    draws = draws[~torch.isnan(draws)]
    if len(draws) < 2:
        return _undefined(estimate, units, resamples, level)
    tail = (1 - level) / 2
    low, high = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=draws.dtype)).tolist()
    return Interval(estimate, low, high, units, level, resamples)


def resample_counts(n: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """(resamples, n) float64: how often each unit is drawn in each bootstrap resample of size n."""
    idx = torch.randint(0, n, (resamples, n), generator=generator)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def _ratio_draws(num: torch.Tensor, den: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, _CHUNK):
        counts = resample_counts(len(num), min(_CHUNK, resamples - start), generator)
        top, bottom = counts @ num, counts @ den
        out.append(torch.where(bottom > 0, top / bottom.clamp_min(1e-300), torch.full_like(top, math.nan)))
    return torch.cat(out)


def ratio_interval(numerators, denominators, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Σ a_g / Σ b_g over groups g, with the groups resampled (cluster bootstrap). Groups with b_g = 0 still count
    as units: a base sample whose pairs were all rejected is part of the sample."""
    num = torch.as_tensor(numerators, dtype=torch.float64).flatten()
    den = torch.as_tensor(denominators, dtype=torch.float64).flatten()
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators differ in length: {len(num)} vs {len(den)}")
    if not (torch.isfinite(num).all() and torch.isfinite(den).all()):
        raise ValueError("ratio_interval needs finite numerators and denominators")
    total = float(den.sum())
    estimate = float(num.sum()) / total if total > 0 else math.nan
    if len(num) < 2 or math.isnan(estimate):
        return _undefined(estimate, len(num), resamples, level)
    return _percentiles(_ratio_draws(num, den, resamples, seed), estimate, len(num), resamples, level)


def mean_interval(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean of independent per-unit values; NaN values (undefined units) are left out, and `units` counts the rest."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[~torch.isnan(v)]
    return ratio_interval(v, torch.ones_like(v), resamples, level, seed)


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """A binomial proportion k/n with Wilson's score interval (Wilson 1927): closed form, for many small groups at
    once (an accuracy per class on ~36 images each), where it keeps its level far better than p ± z·se and, unlike
    a bootstrap, gives a non-zero width at 0% and 100%. NaN with no trials."""
    if trials <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, level, 0, "Wilson score")
    z2 = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64))) ** 2
    p = successes / trials
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = math.sqrt(z2) / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials ** 2))
    low = 0.0 if successes == 0 else max(0.0, centre - half)      # exact ends, not 1 − 1e-16
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, low, high, trials, level, 0, "Wilson score")


def accuracy_interval(correct, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Accuracy over test images from their per-image hits (bool or 0/1). Where every image is right (or every one
    wrong) a bootstrap has nothing to resample and gives a zero-width [100%, 100%], which reads as certainty; there
    the interval is Wilson's score interval, [n/(n + z²), 1] at 100% (360 images: [98.94%, 100%])."""
    hits = torch.as_tensor(correct).to(torch.float64).flatten()
    hits = hits[~torch.isnan(hits)]
    n = len(hits)
    if n and bool((hits == hits[0]).all()) and float(hits[0]) in (0.0, 1.0):
        return replace(wilson_interval(int(hits.sum()), n, level),
                       method="Wilson score (every image alike: a bootstrap has nothing to resample)")
    return mean_interval(hits, resamples, level, seed)


def paired_difference_interval(a, b, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """mean(a − b) over the same units, resampled as pairs; units where either value is NaN are left out."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs values on the same units: {len(a)} vs {len(b)}")
    return mean_interval(a - b, resamples, level, seed)


def paired_ratio_difference_interval(num_a, den_a, num_b, den_b, resamples: int = RESAMPLES, level: float = LEVEL,
                                     seed: int = 0) -> Interval:
    """Σ a_g/Σ a'_g − Σ b_g/Σ b'_g over the same groups, resampled together (e.g. MagSim of two students on the
    same base samples)."""
    tensors = [torch.as_tensor(t, dtype=torch.float64).flatten() for t in (num_a, den_a, num_b, den_b)]
    if len({t.shape for t in tensors}) != 1:
        raise ValueError("a paired comparison needs values on the same groups")
    na, da, nb, db = tensors
    ta, tb = float(da.sum()), float(db.sum())
    estimate = (float(na.sum()) / ta if ta > 0 else math.nan) - (float(nb.sum()) / tb if tb > 0 else math.nan)
    if len(na) < 2 or math.isnan(estimate):
        return _undefined(estimate, len(na), resamples, level)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, _CHUNK):
        counts = resample_counts(len(na), min(_CHUNK, resamples - start), generator)
        ra, rb = (counts @ na) / (counts @ da), (counts @ nb) / (counts @ db)
        out.append(ra - rb)   # 0/0 = NaN: a resample without a single accepted pair, dropped below
    return _percentiles(torch.cat(out), estimate, len(na), resamples, level)


# ---------------------------------------------------------------- many statistics at once

def percentile_bounds(draws: torch.Tensor, level: float = LEVEL) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap bounds of many statistics at once: `draws` is (resamples, ...) (e.g. a CKA matrix per
    resample); returns (low, high) of shape `...`. NaN draws are left out; fewer than 2 finite draws give NaN."""
    draws = torch.as_tensor(draws, dtype=torch.float64)
    if len(draws) == 0:
        nan = torch.full(draws.shape[1:], math.nan, dtype=torch.float64)
        return nan, nan.clone()
    tail = (1 - level) / 2
    bounds = torch.nanquantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    enough = (~torch.isnan(draws)).sum(0) >= 2
    nan = torch.full_like(bounds[0], math.nan)
    return torch.where(enough, bounds[0], nan), torch.where(enough, bounds[1], nan)


# Student's t quantile at 0.975 for 1..30 degrees of freedom (beyond, the Cornish-Fisher expansion below is within
# 1e-3 of it): torch has no t distribution, and scipy is not a dependency of its own.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
          2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom (2.776 for df 4 at 95%)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if level == 0.95 and df <= len(_T_975):
        return _T_975[df - 1]
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def jackknife_t_bounds(estimate: torch.Tensor, leave_one_out: torch.Tensor, level: float = LEVEL
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds estimate ± t(k−1)·se of many statistics at once, from their values with each of k units left out
    (`leave_one_out`: (k, ...)); se² = (k−1)/k · Σ (θ₋ᵢ − mean θ₋)². For a handful of units (clusters), where a
    percentile bootstrap over k units has few distinct resamples and comes out too narrow. NaN with fewer than 3."""
    estimate = torch.as_tensor(estimate, dtype=torch.float64)
    values = torch.as_tensor(leave_one_out, dtype=torch.float64)
    k = len(values)
    if k < 3:
        nan = torch.full_like(estimate, math.nan)
        return nan, nan.clone()
    spread = ((values - values.mean(0)) ** 2).sum(0) * (k - 1) / k
    half = t_quantile(k - 1, level) * spread.sqrt()
    return estimate - half, estimate + half


__all__ = ["Interval", "LEVEL", "RESAMPLES", "accuracy_interval", "jackknife_t_bounds", "mean_interval",
           "percentile_bounds", "paired_difference_interval", "paired_ratio_difference_interval", "ratio_interval",
           "resample_counts", "t_quantile", "wilson_interval"]
