"""How a model-inversion step is computed (issue 18): the objective of methods.md#model-inversion as one callable of
tensors.

A plain DeepInversion loop (NVlabs' `deepinversion.py`) hooks every BatchNorm layer, rolls and flips the batch with
offsets drawn in Python, and reads its losses back as Python floats every iteration. The engine computes the same
objective with three differences, none of which changes the images beyond float rounding:

- BatchNorm statistics come from `BNStatisticsRecorder(fused=True)`: each frozen layer returns its output and its
  input's (μ, σ²) from one autograd node with a one-pass backward (see `hooks.BatchNormWithStatistics`).
- Jitter and flip are one gather whose offsets are a tensor (`shift_and_flip`), so a compiled objective does not
  recompile for each of the (2J + 1)² · 2 augmentations and a GPU step needs no host value.
- The step's metrics are one vector on the device (`InversionObjective.metric_names`), read when the job publishes
  them: every step on the CPU (a read costs nothing there), about ten times a second on a GPU.
- What the teacher saw (`TeacherView`: its class probabilities and each BN layer's batch statistics) comes back with
  the loss, so the live view's snapshot needs no teacher pass of its own (one was a third of a step's cost, and the
  app on Fashion-MNIST snapshots every step).

With `compile=True` the objective runs under `torch.compile` (its forward and backward become a few fused kernels
around the convolutions); one objective, and so one compilation, serves every round of a pool.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn as nn

from dfkd_core.device import memory_layout
from dfkd_core.hooks import BNStatisticsRecorder
from dfkd_core.losses import (bn_feature_loss, cross_entropy_loss, js_competition_loss, l2_prior_loss,
                              total_variation_loss)
from dfkd_core.synthesis.contrastive import ContrastiveMemory, resized_crop

# The live weights, in the order of the weight vector the objective takes.
WEIGHT_NAMES = ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c", "first_bn_multiplier", "alpha_cr")
# The weight of each loss term, by the name `term_names` gives the term.
TERM_WEIGHTS = {"ce": "alpha_ce", "tv": "alpha_tv", "l2": "alpha_l2", "bn_feature": "alpha_f", "compete": "alpha_c",
                "contrast": "alpha_cr"}


class TeacherView(NamedTuple):
    """One step's teacher pass, detached, for the live view: class probabilities on the step's augmented batch and,
    with BN, each BatchNorm layer's batch mean and variance as R_feature compared them (the teacher's layer order)."""
    probs: torch.Tensor
    batch_means: list[torch.Tensor]
    batch_vars: list[torch.Tensor]


def shift_and_flip(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`torch.roll(x, (dy, dx), dims=(2, 3))`, then a horizontal flip if `flip` is 1 — the same pixels — with
    `offsets = [dy, dx, flip]` a tensor on x's device, as two index selections."""
    height, width = x.shape[-2:]
    rows = torch.remainder(torch.arange(height, device=x.device) - offsets[0], height)
    cols = torch.remainder(torch.arange(width, device=x.device) - offsets[1], width)
    cols = torch.where(offsets[2] > 0, cols.flip(0), cols)
    return x.index_select(2, rows).index_select(3, cols)


class InversionObjective:
    """L(x̂) = Σ_k α_k·term_k (methods.md#model-inversion) on one augmented batch, and the step's metrics as one vector.

    Call it inside `with objective.recorder:` (a compiled function cannot install the fused BatchNorm forwards
    itself). Terms whose weight is 0 add nothing to the total, as if they were not computed.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module | None = None, compete_temperature: float = 3.0,
                 compile: bool = False, contrast: ContrastiveMemory | None = None):
        """`contrast`: adds CMI's R_cr (weight α_cr) with this head and bank (see contrastive.py)."""
        self.teacher, self.student, self.compete_temperature = teacher, student, compete_temperature
        self.recorder = BNStatisticsRecorder(teacher, fused=True)
        self.has_bn = bool(self.recorder.layers)
        self.contrast = contrast
        self.fallback: str | None = None   # why a requested compilation is not used
        if compile and contrast is not None:
            # The bank grows every round, so a compiled objective would recompile each round for little gain.
            compile, self.fallback = False, "eager: the contrastive term (α_cr > 0) is not compiled"
            warnings.warn(f"the inversion objective runs eagerly, {self.fallback}", RuntimeWarning)
        self.compiled = compile
        self._compiled_objective = torch.compile(self._objective, dynamic=False) if compile else None

    def describe(self) -> str:
        """What runs, in words (a run's summary keeps it): where the BN statistics come from, eager or compiled."""
        layers = self.recorder.layers
        fusable = self.recorder.fusable_layers()
        if not layers:
            statistics = "no BatchNorm layers"
        elif len(fusable) == len(layers):
            statistics = f"BN statistics fused into all {len(layers)} BatchNorm layers"
        else:
            hooked = [n for n, _ in layers if n not in fusable]
            statistics = (f"BN statistics fused into {len(fusable)} of {len(layers)} BatchNorm layers, hooks on "
                          f"{hooked[:3]} (in training mode or trainable)")
        if self.contrast is not None:
            statistics += f"; CMI contrastive term over {len(self.contrast.layers)} BN layers' inputs"
        how = "torch.compile" if self.compiled else (self.fallback or "eager")
        layout = memory_layout(self.teacher)
        if layout is not None:   # the layout changes float rounding, so a run says which it used
            how += f", {layout}"
        return f"{statistics}; {how}"

    def term_names(self, compete: bool) -> list[str]:
        return (["ce", "tv", "l2"] + (["bn_feature"] if self.has_bn else []) + (["compete"] if compete else [])
                + (["contrast"] if self.contrast is not None else []))

    def metric_names(self, compete: bool) -> list[str]:
        """Names of the metric vector's entries; with BN, the last ones are the per-layer distances."""
        names = [f"loss_{k}" for k in self.term_names(compete)] + ["loss_total", "teacher_accuracy",
                                                                   "mean_confidence"]
        return names + (["bn_distance"] if self.has_bn else [])

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 compete: bool = False, crops: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, TeacherView]:
        """(total loss, metric vector, what the teacher saw) for the batch `x` shifted and flipped by `offsets`;
        `weights` is the vector of `WEIGHT_NAMES`. `compete` adds R_compete (needs the student); `crops`, the step's
        local views (`contrastive.draw_crops`), is needed when the objective has a contrastive memory."""
        compete = compete and self.student is not None
        if self.contrast is not None and crops is None:
            raise ValueError("this objective has a contrastive term: pass the step's crops")
        if self.compiled:   # never with a contrastive term (see __init__)
            try:
                return self._compiled_objective(x, offsets, targets, weights, compete)
            except Exception as e:  # no C++ compiler, an op inductor cannot take...: run eagerly, and say so
                self.compiled = False
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                self.fallback = f"eager: torch.compile failed ({type(e).__name__}: {reason})"
                warnings.warn(f"the inversion objective runs eagerly, {self.fallback}", RuntimeWarning)
        return self._objective(x, offsets, targets, weights, compete, crops)

    def _objective(self, x: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                   compete: bool, crops: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, TeacherView]:
        batch, x = x, shift_and_flip(x, offsets)
        if self.contrast is not None:
            logits, global_features = self.contrast.features(self.teacher, x)
            logits = logits.float()
        else:
            logits = self.teacher(x).float()
        terms = [cross_entropy_loss(logits, targets), total_variation_loss(x), l2_prior_loss(x)]
        term_weights = [weights[0], weights[1], weights[2]]
        per_layer, statistics = None, []
        if self.has_bn:
            statistics = self.recorder.statistics()
            bn, per_layer = bn_feature_loss(statistics, weights[5])
            terms.append(bn)
            term_weights.append(weights[3])
        if compete:
            terms.append(js_competition_loss(logits, self.student(x).float(), self.compete_temperature))
            term_weights.append(weights[4])
        if self.contrast is not None:   # after R_feature: this forward records the local view's BN statistics
            _, local_features = self.contrast.features(self.teacher, resized_crop(batch, crops))
            terms.append(self.contrast.loss(local_features, global_features))
            term_weights.append(weights[6])
        values, w = torch.stack(terms), torch.stack(term_weights)
        total = torch.where(w > 0, w * values, torch.zeros_like(values)).sum()
        probs = logits.detach().softmax(1)
        metrics = [values.detach(), total.detach().view(1),
                   (probs.argmax(1) == targets).float().mean().view(1), probs.max(1).values.mean().view(1)]
        if per_layer is not None:
            metrics += [per_layer.detach().sum().view(1), per_layer.detach()]
        view = TeacherView(probs, [s.batch_mean.detach() for s in statistics],
                           [s.batch_var.detach() for s in statistics])
        return total, torch.cat(metrics), view
