"""BSS-KD: distillation with boundary-supporting samples (methods.md#bss; Heo et al., AAAI 2019).

    L(n) = CE(S(x_n), c_n) + α · L_KD(x_n) + β · Σ_k p_n^k · L_KD(ẋ_n^k)
    α = 3 (1 − e/E) + 1,   β = max(2 (1 − 4e/(3E)), 0)      for epoch e of E

Every student step: the trainer's forward passes give teacher and student logits on the (augmented) batch; the N
base samples both classify correctly with the largest Σ_k (p_T,k − p_S,k)² are attacked on the teacher toward one
target class k each, drawn ∝ p_n^k; the accepted BSS ẋ get the β-weighted KD term. CE, α·KD and β·BSS go through
`StudentTrainer.train_step` as three weighted terms (the one KD loop). Once β reaches 0 (the last quarter of
training) no attack is run, as in the official code.

Choices, each recorded with the run (options in config.json; schedule and outcome totals in the summary):
- Attack: η = 1, I = 20, step ÷ ||∇L_a||². METHODS' η ≈ 0.3, I ≈ 10 with that step moves L_a only to (1 − η)^t of
  its start on a locally linear model, so nothing crosses (Fashion-MNIST teacher: 0 of 64 base samples accepted,
  η = 1 and 20 steps: 59 of 64). `gradient_norm_power=1, eta=0.3, max_steps=10` is the official code's step.
- k is drawn ∝ p_n^k, so each BSS carries weight 1 (the draw applies p_n^k); the BSS term is averaged over the
  base samples attacked, rejected ones adding 0.
- One epoch = one pass over the training set (or the pool), in batches of `batch_size` (last partial batch
  dropped); E = steps / steps-per-epoch. `schedule=epoch` holds α, β for a whole epoch (integer e, the official
  code); `schedule=step` uses the fractional epoch, smoother when a CPU run lasts only a few epochs.
- The accepted BSS go through the student (train mode) together with their batch, not alone: their count varies
  from step to step, and BatchNorm on a batch of one BSS has one value per channel on a LeNet's 1×1 map (an error)
  and meaningless statistics on any model. With the batch, every count works, 0 and 1 included, and the BSS are
  normalized with the statistics of the images they were made from.
- L_KD is methods.md#knowledge-distillation's T² · KL at `--temperature` for both KD terms; the official code uses
  T = 3 (pass `--temperature 3`) and no T² factor.

Data-free BSS (`--pool`): base samples come from a synthesized pool instead of the training set; c_n is the
teacher's argmax on the (augmented) image (`pool_labels=teacher`, default: every image gets the label the teacher
gives the image the student actually sees) or the class it was synthesized for (`pool_labels=synthesized`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch

from dfkd_core.config import Config
from dfkd_core.distill.bss_loss import bss_alpha, bss_beta, bss_term
from dfkd_core.distill.methods import RealOrPoolMethod, register_method
from dfkd_core.distill.resume import Progress
from dfkd_core.losses import cross_entropy_loss
from dfkd_core.synthesis.bss import (OUTCOMES, AttackSettings, BoundarySupportingBatch,
                                     boundary_supporting_batch)

POOL_LABELS = ("teacher", "synthesized")
SCHEDULES = ("epoch", "step")
SCHEDULE_FORMULAS = {"alpha": "3 (1 - e/E) + 1", "beta": "max(2 (1 - 4e/(3E)), 0)"}


@dataclass
class BSSOptions(Config):
    """BSS-KD's settings (`--option key=value`), saved resolved in the run's config."""

    base_samples: int = 64            # N base samples attacked per batch (official: 64 of a batch of 128)
    eta: float = 1.0                  # attack step factor η (see the module doc for why not 0.3)
    eps: float = 1e-4                 # attack overshoot ε
    max_steps: int = 20               # attack step limit I
    gradient_norm_power: int = 2      # 2: step ÷ ||∇||² (METHODS); 1: ÷ ||∇|| (official code)
    schedule: str = "epoch"           # α, β per whole epoch (official) | per step (fractional epoch)
    pool_labels: str = "teacher"      # c_n on a pool: the teacher's argmax | the synthesized class

    @property
    def attack(self) -> AttackSettings:
        return AttackSettings(self.eta, self.eps, self.max_steps, self.gradient_norm_power)

    def validate(self) -> None:
        self.require_finite()
        if self.base_samples < 1 or self.max_steps < 1 or not self.eta > 0 or self.eps < 0:
            raise ValueError("BSS needs base_samples >= 1, max_steps >= 1, eta > 0 and eps >= 0")
        if self.gradient_norm_power not in (1, 2):
            raise ValueError(f"gradient_norm_power must be 1 or 2, got {self.gradient_norm_power}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got '{self.schedule}'")
        if self.pool_labels not in POOL_LABELS:
            raise ValueError(f"pool_labels must be one of {POOL_LABELS}, got '{self.pool_labels}'")


@dataclass(frozen=True)
class EpochSchedule:
    """α and β of methods.md#bss at each student step; an epoch is `steps_per_epoch` steps, E = steps / that."""

    steps_per_epoch: int
    total_steps: int
    per_step: bool = False

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def epoch(self, step: int) -> float:
        e = step / self.steps_per_epoch
        return e if self.per_step else float(math.floor(e))

    def weights(self, step: int) -> tuple[float, float]:
        """(α, β) at student step `step` (0-based)."""
        e = self.epoch(step)
        return bss_alpha(e, self.epochs), bss_beta(e, self.epochs)


class EpochBatches:
    """Indices of endless epochs over n items: a fresh permutation each epoch, cut into n // batch_size batches
    (the last partial batch dropped so every epoch has the same steps; one batch of all n when n < batch_size).

    Its state is the RNG state at the current epoch's start and the batches taken since, so a resumed run draws the
    same batches."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_start = self.generator.get_state()
        self.order = torch.randperm(self.n, generator=self.generator)
        self.taken = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self.taken == self.n // self.batch_size:
            self._new_epoch()
        start = self.taken * self.batch_size
        self.taken += 1
        return self.order[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch_start": self.epoch_start, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["epoch_start"])
        self._new_epoch()
        self.taken = state["taken"]


@register_method
class BoundarySupportingSampleKD(RealOrPoolMethod):
    """BSS-KD (methods.md#bss) on the real training set, or on a synthesized pool with `--pool` (data-free BSS)."""

    name, data_free = "bss", False
    description = ("BSS-KD: CE + α·KD + β·KD on boundary-supporting samples, adversarial samples just across the "
                   "teacher's decision boundary (real data; --pool: data-free BSS)")
    Options = BSSOptions

    def __init__(self, job):
        super().__init__(job)
        if self.config.mixup > 0 or self.config.cutmix > 0:
            raise ValueError("BSS-KD needs the class c_n of every image (CE and base-sample selection); mixup and "
                             "cutmix blend images of two classes, so use --mixup 0 --cutmix 0")
        if self.config.alpha_ce > 0:
            raise ValueError("BSS-KD weighs CE by 1 and KD by its α schedule (methods.md#bss); --alpha-ce does not "
                             "apply")
        # The run's config records every setting, defaults included, so the run replays from config.json alone.
        self.config.options = self.options.to_dict()
        self.totals: Counter = Counter()

    # ------------------------------------------------------------------ inputs
    def setup(self) -> None:
        j, c = self.job, self.config
        if self.data_free:
            self.labels, self.fixed_labels = j.pool.targets, self.options.pool_labels == "synthesized"
        else:
            self.train_split = j.real_split("train")
            self.labels, self.fixed_labels = self.train_split.labels, True
        n = len(self.labels)
        self.schedule = EpochSchedule(max(1, n // min(c.batch_size, n)), max(1, c.steps),
                                      per_step=self.options.schedule == "step")
        self.batches = EpochBatches(n, c.batch_size, torch.Generator().manual_seed(c.seed))
        self.target_generator = torch.Generator().manual_seed(c.seed + 2)
        self.pixel_bounds = j.dataset.pixel_bounds(j.device)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = next(self.batches)
        x = self.job.pool.images[idx] if self.data_free else self.train_split.normalized(idx)
        return x, self.labels[idx] if self.fixed_labels else None

    # ------------------------------------------------------------------ the BSS term
    def find_bss(self, x: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                 student_logits: torch.Tensor) -> BoundarySupportingBatch:
        """Base samples, one target each, and the teacher attack (in float32: L_a < 0 decides acceptance)."""
        with torch.autocast(x.device.type, enabled=False):
            return boundary_supporting_batch(self.job.teacher, x.float(), labels, teacher_logits, student_logits,
                                             self.options.base_samples, self.options.attack, self.pixel_bounds,
                                             self.target_generator)

    def bss_kd_term(self, found: BoundarySupportingBatch, x: torch.Tensor) -> torch.Tensor:
        """Σ_n Σ_k p_n^k · L_KD(ẋ_n^k) / N (methods.md#bss); the student sees the BSS in train mode, as officially,
        but in one forward pass with the batch `x` they were made from (see the module doc: any count works)."""
        student = self.job.student
        if not len(found.samples):
            return next(student.parameters()).new_zeros(())
        with torch.no_grad():
            teacher_logits = self.job.teacher(found.samples).float()
        student_logits = student(torch.cat([x, found.samples.to(x.dtype)]))[len(x):].float()
        return bss_term(student_logits, teacher_logits, found.weights, found.n_base_samples, self.config.temperature)

    def terms(self, x: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor | None, beta: float, out: dict) -> dict[str, torch.Tensor]:
        """CE on c_n and, while β > 0, the BSS term; the trainer adds α · KD itself."""
        labels = labels.to(student_logits.device) if labels is not None else teacher_logits.argmax(1)
        terms = {"ce": cross_entropy_loss(student_logits, labels)}
        if beta > 0:
            found = self.find_bss(x, labels, teacher_logits, student_logits)
            terms["bss"] = self.bss_kd_term(found, x)
            out["found"] = found
        return terms

    # ------------------------------------------------------------------ the plan
    def plan(self, start: Progress) -> Iterator[dict]:
        for step in range(start.student_steps, self.config.steps):
            alpha, beta = self.schedule.weights(step)
            x, labels = self.batch()
            out: dict = {}
            metrics = self.kd_step(x, weights={"ce": 1.0, "kd": alpha, "bss": beta},
                                   extra_terms=partial(self.terms, labels=labels, beta=beta, out=out))
            yield {**metrics, "epoch": self.schedule.epoch(step), "alpha": alpha, "beta": beta,
                   **self.record(out.get("found"), x, labels)}

    def record(self, found: BoundarySupportingBatch | None, x: torch.Tensor, labels: torch.Tensor | None
               ) -> dict:
        """This step's attack outcomes (zeros once β = 0), added to the run totals; the snapshot shows the BSS."""
        counts = found.counts if found is not None else dict.fromkeys(OUTCOMES, 0)
        n_base = found.n_base_samples if found is not None else 0
        self.totals.update({**counts, "base_samples": n_base, "attacked_steps": int(found is not None)})
        if found is not None and len(found.samples):
            self.latest = (found.samples.detach().cpu(), found.target_class.cpu())
        else:
            self.latest = (x, labels if labels is not None else torch.full((len(x),), -1))
        return {"bss_base_samples": n_base, **{f"bss_{k}": v for k, v in counts.items()}}

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict(), "target_generator": self.target_generator.get_state(),
                "totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.target_generator.set_state(state["target_generator"])
        self.totals = Counter(state["totals"])

    # ------------------------------------------------------------------ results
    def describe(self) -> dict:
        """Outcome totals, the schedule and the attack, for the run's summary."""
        if not hasattr(self, "schedule"):
            return {}
        base = self.totals["base_samples"]
        return {"bss_outcomes": {k: self.totals[k] for k in OUTCOMES}, "bss_base_samples": base,
                "bss_acceptance": self.totals["accepted"] / base if base else math.nan,
                "bss_attacked_steps": self.totals["attacked_steps"],
                "bss_schedule": {**SCHEDULE_FORMULAS, "steps_per_epoch": self.schedule.steps_per_epoch,
                                 "epochs": self.schedule.epochs, "per": self.options.schedule},
                "bss_attack": self.options.attack.to_dict(), "bss_inputs": "pool" if self.data_free else "train"}

    def artifacts(self, directory) -> dict:
        return self.describe()
