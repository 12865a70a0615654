"""Model inversion (methods.md#model-inversion): DeepDream → DeepInversion → Adaptive DeepInversion as one configurable
job.

    L(x̂) = α_ce·CE(T(x̂), y) + α_tv·R_TV + α_l2·||x̂||₂ + α_f·R_feature + α_c·R_compete  [+ α_cr·R_cr, CMI]

The three methods differ only in their weights (`PRESETS`). Every weight, the learning rate, jitter and flip can
be changed while the job runs (`job.update(alpha_f=0.5)`), taking effect at the next step.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.config import Config
from dfkd_core.data import DatasetInfo
from dfkd_core.device import autocast, cpu_bf16_default, precision, prepare_model, resolve_device
from dfkd_core.hooks import batchnorm_layers
from dfkd_core.jobs import Job, NonFiniteLossError, check_finite
from dfkd_core.losses import bn_feature_loss
from dfkd_core.runs import atomic_torch_save
from dfkd_core.synthesis.contrastive import ContrastiveMemory, draw_crops
from dfkd_core.synthesis.diagnosis import BatchReading
from dfkd_core.synthesis.engine import TERM_WEIGHTS, WEIGHT_NAMES, InversionObjective, TeacherView
from dfkd_core.synthesis.images import save_grid

METHODS = ("deepdream", "deepinversion", "adi")

# Weights of each method (methods.md#model-inversion). DeepDream: image priors only; DeepInversion adds BN feature
# matching; Adaptive DI adds the competition term against a student.
PRESETS: dict[str, dict[str, float]] = {
    "deepdream": {"alpha_f": 0.0, "alpha_c": 0.0, "alpha_tv": 1e-3, "alpha_l2": 1e-3},
    "deepinversion": {"alpha_f": 1.0, "alpha_c": 0.0, "alpha_tv": 1e-3, "alpha_l2": 1e-3},
    "adi": {"alpha_f": 1.0, "alpha_c": 1.0, "alpha_tv": 1e-3, "alpha_l2": 1e-3},
}

# Augmentations that suit each dataset: a horizontally flipped digit is not a digit.
DATASET_DEFAULTS: dict[str, dict] = {
    "digits": {"jitter": 1, "flip": False},
    # lr 0.25: at 0.1, 200 iterations leave a batch far from the teacher's BN statistics (README, "Better inversions")
    "fashion-mnist": {"jitter": 2, "flip": True, "lr": 0.25},
    "cifar10": {"jitter": 2, "flip": True, "iterations": 1000, "batch_size": 64},
    "imagefolder": {"jitter": 2, "flip": True},
}

LIVE_PARAMETERS = ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c", "first_bn_multiplier", "lr",
                   "jitter", "flip")


@dataclass
class SynthesisConfig(Config):
    method: str = "deepinversion"
    batch_size: int = 100
    iterations: int = 200
    lr: float = 0.1
    alpha_ce: float = 1.0
    alpha_tv: float = 1e-3
    alpha_l2: float = 1e-3
    alpha_f: float = 1.0
    alpha_c: float = 0.0
    first_bn_multiplier: float = 10.0
    compete_temperature: float = 3.0
    alpha_cr: float = 0.0               # CMI's contrastive diversity term (synthesis/contrastive.py); 0 = off
    contrast_temperature: float = 0.2   # CMI's CIFAR-10 setting (cr_T)
    jitter: int = 2
    flip: bool = True
    multi_resolution_iterations: int = 0   # first k iterations at half resolution
    targets: list[int] = field(default_factory=list)   # classes to synthesize, cycled; empty = all classes
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = field(default_factory=cpu_bf16_default)   # bf16 on a CPU with native bf16
    compile: bool = False   # torch.compile the objective: pays for long runs (a pool), costs seconds to start
    snapshot_every: int = 10

    @classmethod
    def preset(cls, method: str, dataset: str | None = None, **overrides) -> "SynthesisConfig":
        """A config with the method's weights and the dataset's augmentations; `overrides` win."""
        from dataclasses import fields

        from dfkd_core.data.datasets import DATASETS
        if method not in PRESETS:
            raise ValueError(f"unknown synthesis method '{method}'; choose one of {list(PRESETS)}")
        if dataset and dataset not in DATASETS:   # 'mnist' would quietly get no dataset defaults
            raise ValueError(f"unknown dataset '{dataset}'; choose one of {sorted(DATASETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"SynthesisConfig has no setting {unknown}; its settings: "
                             f"{sorted(f.name for f in fields(cls))}")
        values = {"method": method, **DATASET_DEFAULTS.get(dataset or "", {}), **PRESETS[method]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def describe_default(cls, key: str) -> str:
        """What a setting is when not given, for help texts: 'deepdream 0, deepinversion 1, adi 1' where the
        method's preset sets it, else the default and the datasets that differ ('0.1; fashion-mnist 0.25')."""
        by_method = {m: p[key] for m, p in PRESETS.items() if key in p}
        if len(set(by_method.values())) > 1:
            return ", ".join(f"{m} {v:g}" for m, v in by_method.items())
        base = getattr(cls(), key)
        differing = {d: v[key] for d, v in DATASET_DEFAULTS.items() if key in v and v[key] != base}
        shown = (lambda v: f"{v:g}") if isinstance(base, float) else str
        return shown(base) + "".join(f"; {d} {shown(v)}" for d, v in differing.items())

    def title(self) -> str:
        """A run name that tells runs apart: the method, the weights that differ between its runs, and the batch,
        e.g. 'DeepInversion α_f=1 α_tv=0.001 lr=0.1 B=100×200'."""
        names = {"deepdream": "DeepDream", "deepinversion": "DeepInversion", "adi": "Adaptive DI"}
        generic = SynthesisConfig.__dataclass_fields__   # α_ce and α_l2 are named where they leave the defaults
        weights = ([("α_f", self.alpha_f), ("α_tv", self.alpha_tv)] + ([("α_c", self.alpha_c)] if self.alpha_c else [])
                   + ([("α_cr", self.alpha_cr)] if self.alpha_cr else [])
                   + [(symbol, value) for symbol, name, value in (("α_ce", "alpha_ce", self.alpha_ce),
                                                                  ("α_l2", "alpha_l2", self.alpha_l2))
                      if value != generic[name].default])
        name = names.get(self.method, self.method)
        if self.method != "deepdream" and not self.alpha_f:   # α_f = 0 is DeepDream's objective whatever the preset
            name += " without BN matching"
        return (f"{name} " + " ".join(f"{k}={v:g}" for k, v in weights)
                + f" lr={self.lr:g} B={self.batch_size}×{self.iterations}"
                + (f" seed {self.seed}" if self.seed else ""))

    def validate(self) -> None:
        """One sentence for the first bad setting; the CLI, the app and the library all call this before a run."""
        self.require_finite()
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}'; choose one of {METHODS}")
        for name in ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c", "first_bn_multiplier", "alpha_cr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1 or self.iterations < 1:
            raise ValueError(f"batch_size and iterations must be >= 1, got {self.batch_size} and {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.compete_temperature > 0:
            raise ValueError(f"compete_temperature must be > 0, got {self.compete_temperature}")
        if not self.contrast_temperature > 0:
            raise ValueError(f"contrast_temperature must be > 0, got {self.contrast_temperature}")
        if self.jitter < 0:
            raise ValueError(f"jitter is a shift of up to ±J pixels, so J must be >= 0, got {self.jitter}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if not 0 <= self.multi_resolution_iterations < self.iterations:
            raise ValueError("multi_resolution_iterations must be in [0, iterations)")
        if any(not isinstance(t, int) or t < 0 for t in self.targets):
            raise ValueError(f"targets are class indices >= 0, got {self.targets}")
        if not any(getattr(self, name) > 0 for name in ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c",
                                                         "alpha_cr")):
            raise ValueError("every loss weight is 0: nothing would move the images, which would stay noise; set "
                             "α_ce above 0 (and α_f for DeepInversion)")


def check_jitter(jitter: int, dataset: DatasetInfo) -> None:
    """The config cannot know the image size; the job can. A shift of ±J wraps round (`torch.roll`), so J ≥ the
    image's side is no augmentation at all, and most likely a typo."""
    size = dataset.image_size
    if jitter >= size:
        raise ValueError(f"jitter {jitter} is a shift of up to ±{jitter} pixels, which wraps a {size}x{size} "
                         f"{dataset.name} image round on itself; use a jitter below {size}")


def engine_description(objective: InversionObjective, device: torch.device, amp: bool, cpu_bf16: bool) -> str:
    """A synthesis run's `engine` line: how the objective runs and the precision of its steps."""
    return f"{objective.describe()}; {precision(device, amp, cpu=cpu_bf16)}"


def make_objective(teacher: nn.Module, student: nn.Module | None, config: SynthesisConfig,
                   device: torch.device | str) -> InversionObjective:
    """The objective `config` asks for; with α_cr > 0 it carries a fresh contrastive memory (head and bank)."""
    contrast = (ContrastiveMemory(teacher, device, config.contrast_temperature) if config.alpha_cr > 0 else None)
    return InversionObjective(teacher, student, config.compete_temperature, config.compile, contrast)


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / max(total, 1)))


class ModelInversion(Job):
    """Invert a teacher into a batch of images. Verbs: `run()`, `start()`, `step()`, `update()`, `cancel()`."""

    kind = "synthesis"
    live_parameters = LIVE_PARAMETERS
    metrics_every_s: float | None = None   # None: every step on the CPU, every 0.1 s on a GPU (see `setup`)

    def __init__(self, teacher: nn.Module, dataset: DatasetInfo, config: SynthesisConfig,
                 student: nn.Module | None = None, run=None, objective: InversionObjective | None = None,
                 teacher_test_accuracy: float | None = None):
        """`objective`: one made earlier for this teacher and student (a pool's rounds share one, and with it one
        compilation); by default the job makes its own. `teacher_test_accuracy` (its checkpoint's): a teacher near
        chance is the first thing the result's diagnosis names."""
        if not isinstance(teacher, nn.Module):   # a Checkpoint: DistillJob takes one, this job its parts
            raise TypeError(f"ModelInversion takes the teacher module and its DatasetInfo, got a "
                            f"{type(teacher).__name__}; pass checkpoint.model, checkpoint.dataset")
        super().__init__(run)
        config.validate()
        check_jitter(config.jitter, dataset)
        self.config, self.dataset = config, dataset
        self.teacher, self.student = teacher, student
        self.teacher_test_accuracy = teacher_test_accuracy
        self.has_bn = bool(batchnorm_layers(teacher))
        if config.alpha_f > 0 and not self.has_bn:
            raise ValueError("this teacher has no BatchNorm layers, so DeepInversion's feature loss (α_f > 0) "
                             "has no statistics to match; use method 'deepdream' (α_f = 0) or a BN teacher")
        if config.alpha_c > 0 and student is None:
            raise ValueError("the competition term (α_c > 0, Adaptive DI) needs a student to compete against")
        if config.alpha_cr > 0 and not self.has_bn:
            raise ValueError("the contrastive term (α_cr > 0) describes each image by the inputs of the teacher's "
                             "BatchNorm layers; this teacher has none, so set α_cr = 0")
        if objective is not None and (config.alpha_cr > 0) != (objective.contrast is not None):
            raise ValueError("a shared inversion objective must have a contrastive memory exactly when α_cr > 0")
        bad = [k for k in config.targets if not 0 <= k < dataset.num_classes]
        if bad:
            raise ValueError(f"target classes {bad} outside 0..{dataset.num_classes - 1}")
        self.snapshot_every = config.snapshot_every
        self.total_steps = config.iterations
        self.latest_bn_statistics: list[dict] = []  # per BN layer, at the latest snapshot (see `snapshot`)
        self._seen: tuple[torch.Tensor, TeacherView] | None = None   # the latest step's batch and teacher pass
        self.objective = objective

    # ------------------------------------------------------------------ job interface
    def update(self, **changes) -> None:
        """A live change is checked like a new config (a NaN weight from a slider or a script is refused now,
        with the same sentence, instead of silently dropping its term at the next step)."""
        if set(changes) <= set(self.live_parameters):   # else the base class names what cannot change
            self.config.replace(**changes).validate()
            if "jitter" in changes:
                check_jitter(changes["jitter"], self.dataset)
        super().update(**changes)

    def apply_updates(self, updates: dict) -> None:
        super().apply_updates(updates)
        self.weights = self._weight_vector()

    def setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        self._rng = random.Random(c.seed)
        self.device = resolve_device(c.device)
        self.teacher = prepare_model(self.teacher, self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if self.student is not None:
            self.student = prepare_model(self.student, self.device).eval()
            # The student is only a critic here; its own trainer (ADI loop) owns its gradients.
            self._student_grad = [p.requires_grad for p in self.student.parameters()]
            for p in self.student.parameters():
                p.requires_grad_(False)
        classes = c.targets or list(range(self.dataset.num_classes))
        self.targets = torch.tensor([classes[i % len(classes)] for i in range(c.batch_size)], device=self.device)
        self.low, self.high = self.dataset.pixel_bounds(self.device)
        size = self.dataset.image_size
        start_size = size // 2 if c.multi_resolution_iterations else size
        self._check_teacher_accepts(start_size)
        # A generator of its own: the global RNG is shared by every thread, so two jobs started together (two
        # browser tabs) would otherwise reseed each other and lose reproducibility.
        generator = torch.Generator(device=self.device).manual_seed(c.seed)
        init = torch.randn(c.batch_size, self.dataset.in_channels, start_size, start_size, device=self.device,
                           generator=generator)
        if self.objective is None:
            self.objective = make_objective(self.teacher, self.student, c, self.device)
        self._crop_generator = torch.Generator().manual_seed(c.seed)
        self.recorder = self.objective.recorder
        self.weights = self._weight_vector()
        if self.metrics_every_s is None:   # a read waits for the GPU; on the CPU it costs nothing
            self.metrics_every_s = 0.1 if self.device.type == "cuda" else 0.0
        self._new_parameter(init)
        self._last_finite = self.x.detach().clone()
        self.initial = self.measure()
        self.t0 = time.time()

    def step(self, index: int) -> dict:
        c = self.config
        if c.multi_resolution_iterations and index == c.multi_resolution_iterations:
            full = self.dataset.image_size
            self._new_parameter(F.interpolate(self.x.detach(), size=(full, full), mode="bilinear",
                                              align_corners=False))
        lr = cosine_lr(c.lr, index, c.iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        compete = c.alpha_c > 0 and self.student is not None
        contrast = self.objective.contrast
        crops = draw_crops(len(self.x), self._crop_generator, flip=c.flip) if contrast is not None else None
        with self.recorder, autocast(self.device, c.amp, cpu=c.cpu_bf16):
            total, vector, view = self.objective(self.x, self._draw_offsets(), self.targets, self.weights, compete,
                                                 crops)
        # The batch this step's teacher pass saw (before its jitter), kept for a snapshot: the update below changes
        # x in place. A copy costs a fraction of a millisecond; a teacher pass of its own cost a third of a step.
        self._seen = (self.x.detach().clone(), view)
        metrics = {"lr": lr, "resolution": self.x.shape[-1], **{k: float(getattr(c, k)) for k in WEIGHT_NAMES},
                   "step": index, "_vector": vector.detach(), "_compete": compete}
        if not self.metrics_every_s:
            metrics = self._read(metrics)   # a non-finite loss stops the job before it reaches the images
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if contrast is not None:
            contrast.step_head()
        with torch.no_grad():
            self.x.clamp_(min=self.low, max=self.high)
        return metrics

    def read_metrics(self, pending: list[dict]) -> list[dict]:
        """The metrics of the steps since the last read, from one device read. A non-finite loss among them fails
        the job with the batch as it was at the previous read (the last one known to be finite)."""
        unread = [m for m in pending if "_vector" in m]
        if unread:
            host = torch.cat([m["_vector"] for m in unread]).cpu()
            offset = 0
            for m in unread:
                size = m["_vector"].numel()
                m["_vector"], offset = host[offset:offset + size], offset + size
        try:
            pending = [self._read(m) if "_vector" in m else m for m in pending]
        except FloatingPointError:
            self.x = self._last_finite.clone().requires_grad_(True)
            raise
        if unread:
            self._last_finite = self.x.detach().clone()
        return pending

    def snapshot(self) -> tuple[torch.Tensor, list[str]]:
        """The batch as the latest step's teacher pass saw it, with that pass's predictions (on the step's shifted
        and flipped view, as the loss saw them) and BN statistics (what R_feature compared at that step): no teacher
        pass of its own. Before the first step, one plain pass on the batch as it is."""
        seen, view = self._seen or (self.x.detach(), self._fresh_view())
        images = self.dataset.denormalize(seen).float().cpu()
        probs = view.probs.float().cpu()
        if self.has_bn:
            # Read by the app's per-layer chart from any thread: replaced whole, never mutated.
            self.latest_bn_statistics = [
                {"layer": name, "batch_mean": mean.float().cpu(), "batch_var": var.float().cpu(),
                 "running_mean": layer.running_mean.float().cpu(), "running_var": layer.running_var.float().cpu()}
                for (name, layer), mean, var in zip(self.recorder.layers, view.batch_means, view.batch_vars)]
        conf, pred = probs.max(1)
        names = self.dataset.class_names or [str(i) for i in range(self.dataset.num_classes)]
        labels = [f"{names[t]} → {names[p]} {c:.2f}" for t, p, c in zip(self.targets.tolist(), pred.tolist(),
                                                                         conf.tolist())]
        return images, labels

    def finish(self, status: str) -> dict:
        if self.student is not None and hasattr(self, "_student_grad"):
            for p, flag in zip(self.student.parameters(), self._student_grad):
                p.requires_grad_(flag)
        if not hasattr(self, "x"):
            return {}
        elapsed = time.time() - self.t0
        if status == "done" and self.objective.contrast is not None:   # later rounds are pushed away from these
            with self.recorder:
                self.objective.contrast.remember(self.teacher, self._full_size(self.x.detach()),
                                                 self._crop_generator, flip=self.config.flip)
        final = self.measure()
        done_steps = len(self.history)
        summary = {
            "method": self.config.method, "status": status, "steps": done_steps, "images": self.config.batch_size,
            "teacher_accuracy": final["teacher_accuracy"], "mean_confidence": final["mean_confidence"],
            "bn_distance_start": self.initial.get("bn_distance"), "bn_distance_end": final.get("bn_distance"),
            "bn_per_layer_end": final.get("bn_per_layer"), "elapsed_s": elapsed,
            # Before the first step: the teacher prepared and measured once; the first job of a process also loads
            # its kernels here (~5 s on 2 cores), which images_per_second, a rate of the steps, leaves out.
            "setup_s": self.t0 - self.started_at if self.started_at else None,
            "images_per_second": self.config.batch_size / elapsed if done_steps and elapsed > 0 else 0.0,
            "engine": engine_description(self.objective, self.device, self.config.amp, self.config.cpu_bf16),
        }
        summary.update(flat_fraction=final["flat_fraction"], pinned_fraction=final["pinned_fraction"])
        last = {**vars(self.config), **(self.history[-1] if self.history else {}), **final}
        note = BatchReading.of_step(last, teacher_test_accuracy=self.teacher_test_accuracy,
                                    num_classes=self.dataset.num_classes).note("the synthesized images") \
            if done_steps else ""
        if note:
            summary["diagnosis"] = note
        if self.run_record is not None:
            self.save(self.run_record.dir)
        return summary

    def save_progress(self) -> None:
        """The batch as it is now (images.pt, grid.png): a process killed mid-run keeps its latest images."""
        if self.run_record is not None:
            self.save(self.run_record.dir)

    # ------------------------------------------------------------------ results
    def images(self) -> torch.Tensor:
        """The synthesized batch in the teacher's normalized input space (B, C, H, W), on CPU."""
        return self.x.detach().float().cpu()

    def save(self, directory) -> None:
        from pathlib import Path
        directory = Path(directory)
        atomic_torch_save({"images": self.images(), "targets": self.targets.cpu(), "dataset": self.dataset.to_dict()},
                          directory / "images.pt")
        save_grid(self.dataset.denormalize(self.images()), directory / "grid.png")

    @torch.no_grad()
    def measure(self) -> dict:
        """Teacher accuracy, confidence and BN distance of the current (un-augmented) batch."""
        x = self._full_size(self.x.detach())
        with self.recorder:
            probs = self.teacher(x).float().softmax(1)
            out = {"teacher_accuracy": (probs.argmax(1) == self.targets).float().mean().item(),
                   "mean_confidence": probs.max(1).values.mean().item(), **self._pixel_reading(x)}
            if self.has_bn:
                _, per_layer = bn_feature_loss(self.recorder.statistics(), self.config.first_bn_multiplier)
                out["bn_distance"] = float(per_layer.sum())
                out["bn_per_layer"] = [round(float(v), 5) for v in per_layer]
        return out

    def _pixel_reading(self, x: torch.Tensor) -> dict:
        """Share of images that are flat (spread under 2% of the pixel range) and of pixels pinned at the range's
        ends (within 1% of it): what too strong priors and too large steps leave (synthesis/diagnosis)."""
        low, high = (b.to(x.device) for b in self.dataset.pixel_bounds())
        span = high - low
        flat = x.float().flatten(1).std(1) < 0.02 * float(span.mean())
        pinned = ((x - low) < 0.01 * span) | ((high - x) < 0.01 * span)
        return {"flat_fraction": flat.float().mean().item(), "pinned_fraction": pinned.float().mean().item()}

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _fresh_view(self) -> TeacherView:
        with self.recorder:
            probs = self.teacher(self.x.detach()).float().softmax(1)
            statistics = self.recorder.statistics() if self.has_bn else []
        return TeacherView(probs, [s.batch_mean for s in statistics], [s.batch_var for s in statistics])

    def _full_size(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dataset.image_size:
            x = F.interpolate(x, size=(self.dataset.image_size,) * 2, mode="bilinear", align_corners=False)
        return x

    def _new_parameter(self, init: torch.Tensor) -> None:
        self.x = init.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.x], lr=self.config.lr, betas=(0.5, 0.9), eps=1e-8)

    def _draw_offsets(self) -> torch.Tensor:
        """This step's jitter (dy, dx) and flip as a tensor on the device, drawn from the job's own
        `random.Random` in the order the engine has always drawn them (dx, dy, then the coin only when flip is on):
        a seed gives the same images as before."""
        c = self.config
        dx = dy = flip = 0
        if c.jitter > 0:
            dx, dy = self._rng.randint(-c.jitter, c.jitter), self._rng.randint(-c.jitter, c.jitter)
        if c.flip and self._rng.random() < 0.5:
            flip = 1
        offsets = torch.tensor([dy, dx, flip])
        if self.device.type == "cuda":   # pinned, so the copy does not wait for the GPU
            return offsets.pin_memory().to(self.device, non_blocking=True)
        return offsets

    def _weight_vector(self) -> torch.Tensor:
        """The live weights as the objective's tensor argument: changing one changes a value, not the code."""
        return torch.tensor([float(getattr(self.config, k)) for k in WEIGHT_NAMES], device=self.device)

    def _read(self, metrics: dict) -> dict:
        """One step's metrics with its metric vector (already on the host, or read now) turned into named
        values; a non-finite loss term raises `NonFiniteLossError` naming it."""
        metrics = dict(metrics)
        values, compete = metrics.pop("_vector").tolist(), metrics.pop("_compete")
        names = self.objective.metric_names(compete)
        read = dict(zip(names, values))
        if self.objective.has_bn:
            read["bn_per_layer"] = [round(v, 5) for v in values[len(names):]]
        terms = {k: read[f"loss_{k}"] for k in self.objective.term_names(compete)}
        check_finite(terms, metrics["step"])
        if not math.isfinite(read["loss_total"]):   # every term finite: a weight times its term overflowed
            weighted = {k: getattr(self.config, TERM_WEIGHTS[k]) * v for k, v in terms.items() if k in TERM_WEIGHTS}
            worst = max(weighted, key=lambda k: abs(weighted[k]))
            weight = TERM_WEIGHTS[worst]
            raise NonFiniteLossError(
                f"the weighted loss is {read['loss_total']} at step {metrics['step']}: {weight} = "
                f"{getattr(self.config, weight):g} times its term ({terms[worst]:.3g}) overflows float32; lower {weight}")
        return {**read, **metrics}

    def _check_teacher_accepts(self, size: int) -> None:
        probe = torch.zeros(2, self.dataset.in_channels, size, size, device=self.device)
        try:
            with torch.no_grad():
                out = self.teacher(probe)
        except RuntimeError as e:
            raise ValueError(f"the teacher cannot take {size}x{size} inputs"
                             f"{' (multi-resolution starts at half size)' if size != self.dataset.image_size else ''}"
                             f": {e}") from e
        if out.shape[-1] != self.dataset.num_classes:
            raise ValueError(f"teacher outputs {out.shape[-1]} classes but the dataset has "
                             f"{self.dataset.num_classes}")
