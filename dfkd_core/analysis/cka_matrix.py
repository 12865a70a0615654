"""Layer × layer CKA between a teacher and a student on the same inputs (methods.md#cka), batch by batch, with a 95%
interval for every cell.

The kernel names the quantity (`cka.KERNELS`, one estimator each); the estimator says how it was computed, and
'auto' picks the first that fits:

- 'full': exact, from the n×n Gram matrices of all inputs; memory O(n² + n·p): n ≤ 3,000.
- 'streaming': exact linear CKA from running sums and cross-covariances (`LinearCKAAccumulator`), 'linear' only;
  memory O(p_t·p_s) per pair whatever n.
- 'minibatch': Nguyen et al. (2021), HSIC₁ summed over minibatches (`MinibatchCKA`); memory one b×b Gram per
  layer. It estimates *debiased* CKA, so a request for 'linear' or 'rbf' that ends here is answered with
  'debiased' / 'debiased_rbf', and the result says so (`requested_kernel`, `note`): a name never changes meaning.

Batches are random groups of the inputs (a seeded permutation): the minibatch estimator needs it (consecutive inputs
are often one class, as in a synthesized pool, and a one-class batch measures within-class similarity), and the
streaming interval's subsample is then a random one. The exact estimators do not depend on the order.

Intervals (`cka_intervals`): full — half-sampling over inputs; streaming — the same on a random subsample of
`INTERVAL_SUBSAMPLE` inputs, widths rescaled by √(m/n); minibatch — a jackknife over the batches, with t.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from dfkd_core.analysis.checks import require_normalized_images
from dfkd_core.analysis.cka import (KERNELS, RBF_BANDWIDTHS, _as_matrix, center_gram, describe_kernel, gram_linear,
                                    gram_rbf)
from dfkd_core.analysis.cka_accumulators import LinearCKAAccumulator, MinibatchCKA
from dfkd_core.analysis.cka_intervals import (CKA_RESAMPLES, cka_with_draws, half_sample_bounds, m_out_of_n_bounds,
                                              minibatch_leave_one_out)
from dfkd_core.analysis.features import (FeatureCapture, Inputs, LayerRef, batch_bounds, batch_of, layer_names,
                                        resolve_layers, trace_layers)
from dfkd_core.data import ImageSplit
from dfkd_core.device import prepare_input
from dfkd_core.stats import LEVEL, Interval, jackknife_t_bounds

ESTIMATORS = ("auto", "full", "streaming", "minibatch")
FULL_MAX_SAMPLES = 3000
STREAMING_MAX_ENTRIES = 2 ** 27   # float64 accumulator entries (1 GiB)
INTERVAL_SUBSAMPLE = 1000         # inputs whose features the streaming estimator keeps for its interval
MINIBATCH_KERNEL = {"linear": "debiased", "debiased": "debiased", "rbf": "debiased_rbf",
                    "debiased_rbf": "debiased_rbf"}   # what the minibatch estimator answers for each request

MIN_HALF_SAMPLE = 10   # inputs per half below which half-sampling gives no interval


def _nan_list(matrix: torch.Tensor | None) -> list | None:
    return None if matrix is None else [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]


def _nan_tensor(rows: list | None) -> torch.Tensor | None:
    return None if rows is None else torch.tensor([[math.nan if v is None else v for v in row] for row in rows],
                                                  dtype=torch.float64)


@dataclass
class CKAResult:
    """matrix[i, j] = CKA(teacher layer i, student layer j) of the quantity `kernel`, with its interval bounds."""

    matrix: torch.Tensor
    layers_teacher: list[str]
    layers_student: list[str]
    kernel: str                       # the quantity the numbers are (cka.KERNELS)
    estimator: str                    # full | streaming | minibatch
    samples: int
    threshold: float
    reduce: str
    bandwidth: str = "reference"      # RBF bandwidth rule (cka.RBF_BANDWIDTHS)
    requested_kernel: str = ""        # the kernel asked for, when the estimator answers another (see `note`)
    note: str = ""                    # why the estimator or the quantity differs from what was asked
    low: torch.Tensor | None = None   # interval bounds per cell (NaN: undefined)
    high: torch.Tensor | None = None
    interval_method: str = ""
    interval_units: int = 0
    resamples: int = 0
    level: float = LEVEL

    @property
    def quantity(self) -> str:
        """What the numbers are, in words: 'linear CKA', 'RBF CKA (threshold 1, median of all n² …)'."""
        return describe_kernel(self.kernel, self.threshold, self.bandwidth)

    def interval(self, layer_teacher: str, layer_student: str) -> Interval:
        """The 95% interval of one cell, by layer names."""
        i, j = self.layers_teacher.index(layer_teacher), self.layers_student.index(layer_student)
        low, high = (math.nan, math.nan) if self.low is None else (float(self.low[i, j]), float(self.high[i, j]))
        return Interval(float(self.matrix[i, j]), low, high, self.interval_units, self.level, self.resamples,
                        self.interval_method)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(matrix=_nan_list(self.matrix), low=_nan_list(self.low), high=_nan_list(self.high))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CKAResult":
        d = dict(d)
        if "bandwidth" not in d:   # written before the estimator and bandwidth were named
            d["bandwidth"] = "offdiagonal"
            if d["estimator"] == "minibatch" and d["kernel"] in ("linear", "rbf"):
                d["requested_kernel"], d["kernel"] = d["kernel"], MINIBATCH_KERNEL[d["kernel"]]
                d["note"] = "an older run: its minibatch estimator estimated debiased CKA under the requested name"
        names = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in names}
        return cls(**{**d, "matrix": _nan_tensor(d["matrix"]), "low": _nan_tensor(d.get("low")),
                      "high": _nan_tensor(d.get("high"))})

    def value(self, layer_teacher: str, layer_student: str) -> float:
        """One cell, by layer names."""
        return float(self.matrix[self.layers_teacher.index(layer_teacher), self.layers_student.index(layer_student)])


class _FullCKA:
    """Exact CKA per layer pair from all inputs' features (the 'full' estimator), with its halves' values."""

    def __init__(self, kernel: str, threshold: float, bandwidth: str, max_inputs: int | None = None):
        self.kernel, self.threshold, self.bandwidth = kernel, threshold, bandwidth
        self.max_inputs = max_inputs   # keep only the first inputs (the streaming estimator's interval subsample)
        self.n = 0
        self.xs: list[list[torch.Tensor]] = []
        self.ys: list[list[torch.Tensor]] = []

    def update(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        keep = len(xs[0]) if self.max_inputs is None else max(0, min(len(xs[0]), self.max_inputs - self.n))
        if keep == 0:
            return
        self.n += keep
        for store, feats in ((self.xs, xs), (self.ys, ys)):
            if not store:
                store.extend([] for _ in feats)
            for chunks, f in zip(store, feats):
                chunks.append(f[:keep])

    def _centered_gram(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        """HKH of the layer's Gram (both HSIC estimators are unchanged by the centering, see cka_intervals)."""
        x = _as_matrix(torch.cat(chunks))
        if self.kernel in ("rbf", "debiased_rbf"):
            return center_gram(gram_rbf(x, self.threshold, self.bandwidth))
        return center_gram(gram_linear(x - x.mean(0)))

    def estimate(self, resamples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(matrix, CKA of random halves (resamples, Lt, Ls)); one teacher Gram at a time beside the student Grams."""
        grams_y = [self._centered_gram(c) for c in self.ys]
        return cka_with_draws((self._centered_gram(c) for c in self.xs), grams_y,
                              self.kernel in ("debiased", "debiased_rbf"), resamples, seed)


class _StreamingCKA:
    """Exact linear CKA streamed (`LinearCKAAccumulator`), its interval from a random subsample (m-out-of-n)."""

    def __init__(self):
        self.exact = LinearCKAAccumulator()
        self.subsample = _FullCKA("linear", 1.0, "reference", max_inputs=INTERVAL_SUBSAMPLE)

    def update(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        self.exact.update(xs, ys)
        self.subsample.update(xs, ys)


def feature_size(shape: tuple[int, ...], reduce: str) -> int:
    """Number of features a layer output of `shape` (without batch) gives under `reduce`."""
    return shape[0] if reduce == "mean" and len(shape) > 1 else math.prod(shape)


def _rows(inputs: Inputs, index: torch.Tensor) -> torch.Tensor:
    """Normalized images at `index` of a tensor or an ImageSplit."""
    return inputs.normalized(index) if isinstance(inputs, ImageSplit) else inputs[index]


class CKAMatrix:
    """Incremental layer × layer CKA: `step(i)` adds batch i, `result()` gives the matrix (a Job drives it).

    Layers default to `layer_names(model)` ('blocks'). Both models run in eval mode without gradients and are left
    in the mode they were found in; hooks are removed after every batch. `seed` orders the inputs into batches and
    draws the interval's resamples.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, inputs: Inputs,
                 layers_teacher: Sequence[LayerRef] | None = None, layers_student: Sequence[LayerRef] | None = None,
                 kernel: str = "linear", threshold: float = 1.0, batch_size: int = 500, reduce: str = "flatten",
                 estimator: str = "auto", bandwidth: str = "reference", seed: int = 0):
        if kernel not in KERNELS:
            raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown CKA estimator '{estimator}'; choose one of {ESTIMATORS}")
        if bandwidth not in RBF_BANDWIDTHS:
            raise ValueError(f"unknown RBF bandwidth rule '{bandwidth}'; choose one of {RBF_BANDWIDTHS}")
        if len(inputs) < 4:
            raise ValueError(f"CKA needs at least 4 inputs, got {len(inputs)}")
        self.teacher, self.student, self.inputs = teacher, student, inputs
        self.threshold, self.reduce, self.bandwidth, self.seed = threshold, reduce, bandwidth, seed
        self.requested_kernel = kernel
        example = batch_of(inputs, 0, 2)
        self.layers_teacher = [n for n, _ in resolve_layers(teacher, layers_teacher or layer_names(teacher, "blocks",
                                                                                                  example))]
        self.layers_student = [n for n, _ in resolve_layers(student, layers_student or layer_names(student, "blocks",
                                                                                                  example))]
        self.order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
        self.bounds = batch_bounds(len(inputs), batch_size)
        self.estimator, why = self._choose(estimator, example)
        self.kernel = MINIBATCH_KERNEL[kernel] if self.estimator == "minibatch" else kernel
        renamed = "" if self.kernel == kernel else (f"the minibatch estimator estimates debiased CKA, so the numbers "
                                                    f"are '{self.kernel}', not the '{kernel}' asked for")
        self.note = "; ".join(part for part in (why, renamed) if part)
        self.accumulator = {"full": lambda: _FullCKA(self.kernel, threshold, bandwidth),
                            "streaming": _StreamingCKA,
                            "minibatch": lambda: MinibatchCKA(self.kernel, threshold, bandwidth)}[self.estimator]()
        self.samples = 0

    def _sizes(self, model: nn.Module, layers: list[str], example: torch.Tensor) -> list[int]:
        device = next(model.parameters()).device
        shapes = {i.name: i.output_shape for i in trace_layers(model, prepare_input(example, device))}
        return [feature_size(shapes[n], self.reduce) for n in layers]

    def _choose(self, estimator: str, example: torch.Tensor) -> tuple[str, str]:
        """(estimator, why it differs from the exact full one, or '')."""
        kernel, n = self.requested_kernel, len(self.inputs)
        if estimator == "streaming" and kernel != "linear":
            raise ValueError("the streaming estimator is exact linear CKA only; use 'full' or 'minibatch' for "
                             f"'{kernel}'")
        if estimator != "auto":
            return estimator, ""
        if n <= FULL_MAX_SAMPLES:
            return "full", ""
        pt = self._sizes(self.teacher, self.layers_teacher, example)
        ps = self._sizes(self.student, self.layers_student, example)
        entries = sum(p * p for p in pt + ps) + sum(pt) * sum(ps)
        if kernel == "linear" and entries <= STREAMING_MAX_ENTRIES:
            return "streaming", ""
        why = "the RBF kernel" if kernel in ("rbf", "debiased_rbf") else \
            f"{entries * 8 / 2 ** 30:.1f} GiB of cross-covariances" if kernel == "linear" else "the debiased kernel"
        return "minibatch", (f"{n:,} inputs exceed the full estimator's {FULL_MAX_SAMPLES:,} and exact streaming "
                             f"does not serve {why}, so the minibatch estimator ran")

    @property
    def total_steps(self) -> int:
        return len(self.bounds)

    def _features(self, model: nn.Module, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
        was_training = model.training
        model.eval()
        try:
            with FeatureCapture(model, layers, self.reduce) as capture, torch.no_grad():
                feats = capture(prepare_input(x, next(model.parameters()).device))
        finally:
            model.train(was_training)
        return [feats[n] for n in layers]

    def step(self, index: int) -> int:
        """Add batch `index`; returns the number of inputs seen so far."""
        start, end = self.bounds[index]
        x = _rows(self.inputs, self.order[start:end])
        self.accumulator.update(self._features(self.teacher, self.layers_teacher, x),
                                self._features(self.student, self.layers_student, x))
        self.samples += len(x)
        return self.samples

    def _matrix_and_bounds(self, resamples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, int]:
        acc = self.accumulator
        if isinstance(acc, _FullCKA):
            matrix, draws = acc.estimate(resamples, self.seed)
            if self.samples // 2 < MIN_HALF_SAMPLE:
                # Linear CKA of 2 centred points is 1 whatever the features: halves that small give a zero-width
                # interval, false precision.
                nan = torch.full_like(matrix, math.nan)
                return (matrix, nan, nan.clone(), f"no interval: halves of {self.samples // 2} input(s) are too few "
                        f"for half-sampling (at least {2 * MIN_HALF_SAMPLE} inputs give one)", self.samples)
            return (matrix, *half_sample_bounds(matrix, draws), "half-sampling over inputs", self.samples)
        if isinstance(acc, _StreamingCKA):
            matrix = acc.exact.value()
            sub_matrix, sub_draws = acc.subsample.estimate(resamples, self.seed)
            m = acc.subsample.n
            low, high = m_out_of_n_bounds(matrix, sub_matrix, *half_sample_bounds(sub_matrix, sub_draws), m,
                                          self.samples)
            method = "half-sampling over inputs" if m == self.samples else \
                f"half-sampling on a random {m:,} of the {self.samples:,} inputs, widths × √(m/n)"
            return matrix, low, high, method, self.samples
        cross, self_x, self_y = acc.batch_terms()
        value = acc.value()
        if resamples:
            low, high = jackknife_t_bounds(value, minibatch_leave_one_out(cross, self_x, self_y))
        else:   # no interval asked for, as with the other estimators
            low, high = torch.full_like(value, math.nan), torch.full_like(value, math.nan)
        return value, low, high, f"jackknife over {len(cross)} minibatches, t with {len(cross) - 1} df", len(cross)

    def result(self, resamples: int = CKA_RESAMPLES) -> CKAResult:
        """The CKA matrix of the inputs seen so far, with `resamples` resamples for its intervals (cka_intervals)."""
        matrix, low, high, method, units = self._matrix_and_bounds(resamples)
        return CKAResult(matrix.to(torch.float64), self.layers_teacher, self.layers_student, self.kernel,
                         self.estimator, self.samples, self.threshold, self.reduce, self.bandwidth,
                         self.requested_kernel if self.requested_kernel != self.kernel else "", self.note,
                         low, high, method, units, 0 if self.estimator == "minibatch" else resamples)


def cka_matrix(teacher: nn.Module, student: nn.Module, layers_teacher: Sequence[LayerRef] | None,
               layers_student: Sequence[LayerRef] | None, inputs: Inputs, kernel: str = "linear",
               threshold: float = 1.0, batch_size: int = 500, reduce: str = "flatten", estimator: str = "auto",
               progress: Callable[[int, int], None] | None = None, bandwidth: str = "reference", seed: int = 0,
               resamples: int = CKA_RESAMPLES) -> CKAResult:
    """Teacher-layer × student-layer CKA matrix over `inputs` (normalized images or an ImageSplit), methods.md#cka.

    `layers_*`: names or modules (None: each model's `layer_names`). `kernel`: one of `cka.KERNELS`.
    `reduce`: 'flatten' (default, Kornblith et al.) or 'mean' (global average pooling per channel).
    `progress(step, total)` is called after every batch. `resamples`: the interval's resamples (random halves of the
    inputs; the minibatch estimator's jackknife needs none; 0: no interval).
    """
    require_normalized_images(inputs, "inputs", models=[teacher, student])
    matrix = CKAMatrix(teacher, student, inputs, layers_teacher, layers_student, kernel, threshold, batch_size,
                       reduce, estimator, bandwidth, seed)
    for i in range(matrix.total_steps):
        matrix.step(i)
        if progress is not None:
            progress(i + 1, matrix.total_steps)
    return matrix.result(resamples)


__all__ = ["CKAMatrix", "CKAResult", "ESTIMATORS", "FULL_MAX_SAMPLES", "INTERVAL_SUBSAMPLE", "MINIBATCH_KERNEL",
           "cka_matrix", "feature_size"]
