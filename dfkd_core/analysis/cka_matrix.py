"""Layer × layer CKA between a teacher and a student on the same inputs (METHODS §7), batch by batch.

Three estimators, chosen by `estimator=` ('auto' picks the first that fits):

- 'full': keeps every layer's features of all n inputs and computes exact CKA per pair from n×n Gram matrices
  (the numbers `linear_cka` / `rbf_cka` / `debiased_linear_cka` give). Memory O(n² + n·p): n ≤ 3,000.
- 'streaming': exact linear CKA from running sums and cross-covariances (`LinearCKAAccumulator`); memory does not
  grow with n but is O(p_t·p_s) per pair: for pooled or narrow features.
- 'minibatch': Nguyen et al. (2021), unbiased HSIC averaged over minibatches (`MinibatchCKA`); memory one b×b Gram
  per layer, so 10,000+ inputs × large flattened maps fit. Estimates debiased CKA for 'linear' and 'debiased'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from dfkd_core.analysis.cka import (KERNELS, LinearCKAAccumulator, MinibatchCKA, _as_matrix, center_gram,
                                    center_gram_unbiased, gram_linear, gram_rbf)
from dfkd_core.analysis.features import (FeatureCapture, Inputs, LayerRef, batch_bounds, batch_of, layer_names,
                                        resolve_layers, trace_layers)
from dfkd_core.device import prepare_input

ESTIMATORS = ("auto", "full", "streaming", "minibatch")
FULL_MAX_SAMPLES = 3000
STREAMING_MAX_ENTRIES = 2 ** 27   # float64 accumulator entries (1 GiB)


@dataclass
class CKAResult:
    """matrix[i, j] = CKA(teacher layer i, student layer j)."""

    matrix: torch.Tensor
    layers_teacher: list[str]
    layers_student: list[str]
    kernel: str
    estimator: str
    samples: int
    threshold: float
    reduce: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["matrix"] = [[None if math.isnan(v) else v for v in row] for row in self.matrix.tolist()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CKAResult":
        matrix = torch.tensor([[float("nan") if v is None else v for v in row] for row in d["matrix"]],
                              dtype=torch.float64)
        return cls(**{**d, "matrix": matrix})

    def value(self, layer_teacher: str, layer_student: str) -> float:
        return float(self.matrix[self.layers_teacher.index(layer_teacher), self.layers_student.index(layer_student)])


class _FullCKA:
    """Exact CKA per layer pair from all inputs' features (the 'full' estimator)."""

    def __init__(self, kernel: str, threshold: float):
        self.kernel, self.threshold = kernel, threshold
        self.xs: list[list[torch.Tensor]] = []
        self.ys: list[list[torch.Tensor]] = []

    def update(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        for store, feats in ((self.xs, xs), (self.ys, ys)):
            if not store:
                store.extend([] for _ in feats)
            for chunks, f in zip(store, feats):
                chunks.append(f)

    def _centered(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        x = _as_matrix(torch.cat(chunks))
        if self.kernel == "rbf":
            return center_gram(gram_rbf(x, self.threshold))
        x = x - x.mean(0)
        return center_gram_unbiased(gram_linear(x)) if self.kernel == "debiased" else center_gram(gram_linear(x))

    def value(self) -> torch.Tensor:
        # One layer's n×n Gram at a time on the teacher side keeps the peak at (1 + student layers) Grams.
        gs = [self._centered(c) for c in self.ys]
        norms_s = torch.stack([torch.linalg.norm(g) for g in gs])
        out = torch.empty(len(self.xs), len(gs), dtype=torch.float64)
        for i, chunks in enumerate(self.xs):
            gx = self._centered(chunks)
            norm_x = torch.linalg.norm(gx)
            for j, g in enumerate(gs):
                den = norm_x * norms_s[j]
                out[i, j] = (gx * g).sum() / den if den > 0 else float("nan")
        return out


def feature_size(shape: tuple[int, ...], reduce: str) -> int:
    """Number of features a layer output of `shape` (without batch) gives under `reduce`."""
    return shape[0] if reduce == "mean" and len(shape) > 1 else math.prod(shape)


class CKAMatrix:
    """Incremental layer × layer CKA: `step(i)` adds batch i, `result()` gives the matrix (a Job drives it).

    Layers default to `layer_names(model)` ('blocks'). Both models run in eval mode without gradients and are left
    in the mode they were found in; hooks are removed after every batch.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, inputs: Inputs,
                 layers_teacher: Sequence[LayerRef] | None = None, layers_student: Sequence[LayerRef] | None = None,
                 kernel: str = "linear", threshold: float = 1.0, batch_size: int = 500, reduce: str = "flatten",
                 estimator: str = "auto"):
        if kernel not in KERNELS:
            raise ValueError(f"unknown CKA kernel '{kernel}'; choose one of {KERNELS}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown CKA estimator '{estimator}'; choose one of {ESTIMATORS}")
        if len(inputs) < 4:
            raise ValueError(f"CKA needs at least 4 inputs, got {len(inputs)}")
        self.teacher, self.student, self.inputs = teacher, student, inputs
        self.kernel, self.threshold, self.reduce = kernel, threshold, reduce
        example = batch_of(inputs, 0, 2)
        self.layers_teacher = [n for n, _ in resolve_layers(teacher, layers_teacher or layer_names(teacher, "blocks",
                                                                                                  example))]
        self.layers_student = [n for n, _ in resolve_layers(student, layers_student or layer_names(student, "blocks",
                                                                                                  example))]
        self.bounds = batch_bounds(len(inputs), batch_size)
        self.estimator = self._choose(estimator, example)
        self.accumulator = {"full": lambda: _FullCKA(kernel, threshold), "streaming": LinearCKAAccumulator,
                            "minibatch": lambda: MinibatchCKA(kernel, threshold)}[self.estimator]()
        self.samples = 0

    def _sizes(self, model: nn.Module, layers: list[str], example: torch.Tensor) -> list[int]:
        device = next(model.parameters()).device
        shapes = {i.name: i.output_shape for i in trace_layers(model, prepare_input(example, device))}
        return [feature_size(shapes[n], self.reduce) for n in layers]

    def _choose(self, estimator: str, example: torch.Tensor) -> str:
        if estimator == "streaming" and self.kernel != "linear":
            raise ValueError("the streaming estimator is exact linear CKA only; use 'full' or 'minibatch' for "
                             f"'{self.kernel}'")
        if estimator != "auto":
            return estimator
        if len(self.inputs) <= FULL_MAX_SAMPLES:
            return "full"
        pt = self._sizes(self.teacher, self.layers_teacher, example)
        ps = self._sizes(self.student, self.layers_student, example)
        entries = sum(p * p for p in pt + ps) + sum(pt) * sum(ps)
        return "streaming" if self.kernel == "linear" and entries <= STREAMING_MAX_ENTRIES else "minibatch"

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
        x = batch_of(self.inputs, *self.bounds[index])
        self.accumulator.update(self._features(self.teacher, self.layers_teacher, x),
                                self._features(self.student, self.layers_student, x))
        self.samples += len(x)
        return self.samples

    def result(self) -> CKAResult:
        return CKAResult(self.accumulator.value().to(torch.float64), self.layers_teacher, self.layers_student,
                         self.kernel, self.estimator, self.samples, self.threshold, self.reduce)


def cka_matrix(teacher: nn.Module, student: nn.Module, layers_teacher: Sequence[LayerRef] | None,
               layers_student: Sequence[LayerRef] | None, inputs: Inputs, kernel: str = "linear",
               threshold: float = 1.0, batch_size: int = 500, reduce: str = "flatten", estimator: str = "auto",
               progress: Callable[[int, int], None] | None = None) -> CKAResult:
    """Teacher-layer × student-layer CKA matrix over `inputs` (normalized images or an ImageSplit), METHODS §7.

    `layers_*`: names or modules (None: each model's `layer_names`). `kernel`: 'linear' | 'rbf' | 'debiased'.
    `reduce`: 'flatten' (default, Kornblith et al.) or 'mean' (global average pooling per channel).
    `progress(step, total)` is called after every batch.
    """
    matrix = CKAMatrix(teacher, student, inputs, layers_teacher, layers_student, kernel, threshold, batch_size,
                       reduce, estimator)
    for i in range(matrix.total_steps):
        matrix.step(i)
        if progress is not None:
            progress(i + 1, matrix.total_steps)
    return matrix.result()


__all__ = ["CKAMatrix", "CKAResult", "ESTIMATORS", "cka_matrix", "feature_size"]
