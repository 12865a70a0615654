"""`fast`: an amortized inverter in the spirit of Fast-Datafree (Fang et al., AAAI 2022, "Up to 100× Faster
Data-free Knowledge Distillation"), issue 18.

DeepInversion optimizes every batch from noise for hundreds of iterations. Here a *meta-generator* G(z | y) is learnt
across batches so that a new batch needs only a few steps: each round copies G, draws new latents z, and takes
`g_steps` Adam steps on the copy's weights and on z against

    L = oh · CE(T(x̂), y) + bn · R_feature(blended statistics) + adv · (−KL(p_T ‖ p_S) where S agrees with T)

with x̂ = G_copy(z | y) jittered and flipped like an inversion batch. The copy's gradient of every step is also
the meta-generator's (first-order MAML), and G takes one step per round with learning rate `lr_g · g_steps`. R_feature
compares each layer's batch statistics blended with a memory of the earlier batches' (momentum `bn_momentum`), so the
pool as a whole matches the teacher's BatchNorm statistics. The disagreement term (from round `warmup_rounds` on)
pushes new batches to where the current student is still wrong about the teacher, like ADI's competition. The lowest-
loss batch of each round joins the pool; the student takes `kd_steps_per_round` KD steps on the pool after each round
(from the warm-up on) and `steps` more at the end, as the pool methods do.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch

from dfkd_core.config import Config
from dfkd_core.distill.methods import DistillMethod, register_method
from dfkd_core.distill.resume import Progress, clone_state
from dfkd_core.distill.student import FLIP_SAFE, random_flip, random_shift
from dfkd_core.hooks import BNStatisticsRecorder, batchnorm_layers
from dfkd_core.jobs import check_finite
from dfkd_core.losses import bn_feature_loss, blend_statistics, cross_entropy_loss, disagreement_loss
from dfkd_core.synthesis.generator import ConditionalGenerator


@dataclass
class FastOptions(Config):
    g_steps: int = 5              # steps on each round's copy of the generator (Fast-Datafree: 2, 5 or 10)
    synthesis_batch: int = 200    # images per round
    lr_g: float = 5e-3            # Adam on the copy's weights; the meta-generator steps with lr_g · g_steps
    lr_z: float = 0.015           # Adam on the round's latents
    oh: float = 1.0               # weight of CE(T(x̂), y)
    bn: float = 1.0               # weight of R_feature (first BN layer ×10, as in model inversion)
    adv: float = 1.0              # weight of the disagreement term, from round `warmup_rounds` on
    bn_momentum: float = 0.9      # memory of earlier batches' BN statistics in R_feature (0: each batch alone)
    warmup_rounds: int = 5        # rounds that only train the meta-generator: no KD, no disagreement term
    pretrain_steps: int = 0       # plain generator steps (Adam, generator_lr) before the first round

    def validate(self) -> None:
        self.require_finite()
        for name in ("g_steps", "synthesis_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_g", "lr_z"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("oh", "bn", "adv", "warmup_rounds", "pretrain_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.bn_momentum < 1:
            raise ValueError(f"bn_momentum is a share of memory in [0, 1), got {self.bn_momentum}")


@register_method
class FastMetaKD(DistillMethod):
    name = "fast"
    needs_batchnorm = True
    description = ("a generator meta-learnt across batches makes each new batch in a few steps (Fast-Datafree); "
                   "KD on the growing pool")
    Options = FastOptions
    multi_process = False
    other_steps_name = "generator steps"

    def __init__(self, job):
        super().__init__(job)
        if not batchnorm_layers(job.teacher):
            raise ValueError("'fast' matches BatchNorm statistics but this teacher has no BatchNorm layers; use "
                             "--method deepdream or noise")
        if self.config.images < 1:
            raise ValueError("'fast' synthesizes its pool: images must be >= 1")
        o = self.options
        self.rounds = math.ceil(self.config.images / o.synthesis_batch)
        if o.warmup_rounds >= self.rounds:
            raise ValueError(f"warmup_rounds ({o.warmup_rounds}) must be below the rounds ({self.rounds} = images "
                             f"{self.config.images} / synthesis_batch {o.synthesis_batch})")

    def student_steps(self) -> int:
        return (self.rounds - self.options.warmup_rounds) * self.config.kd_steps_per_round + self.config.steps

    def total_steps(self) -> int:
        return self.options.pretrain_steps + self.rounds * self.options.g_steps + self.student_steps()

    def describe_plan(self) -> str:
        o = self.options
        return (f"{self.total_steps():,} steps = {self.rounds} rounds × {o.g_steps} generator steps + "
                f"{self.student_steps():,} student steps ({self.config.kd_steps_per_round} after each round from "
                f"round {o.warmup_rounds + 1}, {self.config.steps:,} on the finished pool)")

    def describe_step(self, metrics: dict) -> str:
        if metrics.get("phase") == "generator":
            return f"the meta-generator's start: step {metrics['generator_step'] + 1} of {self.options.pretrain_steps}"
        if metrics.get("phase") == "synthesis":
            return (f"round {metrics['round'] + 1} of {self.rounds}: generator step {metrics['g_step'] + 1} of "
                    f"{self.options.g_steps}")
        return "the student learns by KD on the pool"

    def describe_progress(self, progress: Progress) -> str:
        return super().describe_progress(progress) + f", {progress.rounds_done} of {self.rounds} rounds done"

    def setup(self) -> None:
        c, j = self.config, self.job
        self.generator = ConditionalGenerator(c.latent_dim, j.dataset, width=c.generator_width).to(j.device)
        self.meta_optimizer = torch.optim.Adam(self.generator.parameters(),
                                               lr=self.options.lr_g * self.options.g_steps, betas=(0.5, 0.999))
        self.recorder = BNStatisticsRecorder(j.teacher, fused=True)
        self.memory: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.flip = j.dataset.name in FLIP_SAFE
        self.max_shift = max(1, j.dataset.image_size // 14)

    def plan(self, start: Progress) -> Iterator[dict]:
        c, j, o = self.config, self.job, self.options
        if o.pretrain_steps and start.generator_steps < o.pretrain_steps:
            yield from self._pretrain(start.generator_steps)
        for r in range(start.rounds_done, self.rounds):
            j.hold_progress()   # a round is half-made until its last step: a resume repeats it
            yield from self._round(r)
            if r >= o.warmup_rounds:
                for _ in range(c.kd_steps_per_round):
                    yield self.kd_step(j.pool.sample(j.batch_size, j.rng)[0])
            self.done.rounds_done = r + 1
            j.release_progress()
        for _ in range(self.student_steps() - j.trainer.steps_done):
            yield self.kd_step(j.pool.sample(j.batch_size, j.rng)[0])

    def _pretrain(self, done: int) -> Iterator[dict]:
        """The meta-generator's start: plain generator steps on the same objective (no disagreement), so the rounds
        adapt a generator that already makes the teacher's classes instead of one that makes noise."""
        c, j, o = self.config, self.job, self.options
        optimizer = torch.optim.Adam(self.generator.parameters(), lr=c.generator_lr, betas=(0.5, 0.999))
        for step in range(done, o.pretrain_steps):
            z = torch.randn(o.synthesis_batch, c.latent_dim, generator=j.rng).to(j.device)
            y = (torch.arange(o.synthesis_batch) % j.dataset.num_classes).to(j.device)
            total, terms, logits, _ = self._objective(self.generator(z, y), y, None)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            self.done.generator_steps = step + 1
            yield {"phase": "generator", "generator_step": step, "fast_loss_total": float(total.detach()),
                   **{f"fast_loss_{k}": float(v.detach()) for k, v in terms.items()},
                   "fast_teacher_accuracy": (logits.argmax(1) == y).float().mean().item()}

    def _objective(self, x: torch.Tensor, y: torch.Tensor, student) -> tuple:
        """(total, terms, teacher logits, BN statistics) of a generated batch, jittered and flipped as the teacher
        sees it; `student` adds the disagreement term."""
        j, o = self.job, self.options
        seen = random_shift(x, self.max_shift, j.trainer.generator)
        if self.flip:
            seen = random_flip(seen, j.trainer.generator)
        with self.recorder:
            logits = j.teacher(seen).float()
            stats = self.recorder.statistics()
        bn, per_layer = bn_feature_loss(blend_statistics(stats, self.memory, o.bn_momentum))
        terms = {"ce": cross_entropy_loss(logits, y), "bn_feature": bn}
        total = o.oh * terms["ce"] + o.bn * bn
        if student is not None:
            terms["disagreement"] = disagreement_loss(student(seen).float(), logits)
            total = total + o.adv * terms["disagreement"]
        check_finite({**{f"fast_{k}": v for k, v in terms.items()}, "fast_total": total}, j.step_index)
        terms["bn_distance"] = per_layer.detach().sum()
        return total, terms, logits, stats

    def _round(self, r: int) -> Iterator[dict]:
        c, j, o = self.config, self.job, self.options
        remaining = c.images - r * o.synthesis_batch
        batch = min(o.synthesis_batch, remaining)
        fast = copy.deepcopy(self.generator)
        z = torch.randn(batch, c.latent_dim, generator=j.rng).to(j.device).requires_grad_(True)
        y = (torch.arange(batch) % j.dataset.num_classes)[torch.randperm(batch, generator=j.rng)].to(j.device)
        optimizer = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": o.lr_z}], lr=o.lr_g,
                                     betas=(0.5, 0.999))
        self.meta_optimizer.zero_grad(set_to_none=True)
        adversarial = o.adv > 0 and r >= o.warmup_rounds
        student = j.student
        trainable = [p.requires_grad for p in student.parameters()]
        for p in student.parameters():   # a critic here: its own steps are the KD steps
            p.requires_grad_(False)
        student.eval()
        best, best_loss, last_stats = None, math.inf, None
        try:
            for step in range(o.g_steps):
                x = fast(z, y)
                total, terms, logits, stats = self._objective(x, y, student if adversarial else None)
                value = float(total.detach())
                if value < best_loss:
                    best, best_loss = x.detach(), value
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                # First-order MAML: each step's gradient of the copy is also the meta-generator's.
                for meta, copied in zip(self.generator.parameters(), fast.parameters()):
                    if copied.grad is not None:
                        meta.grad = copied.grad.clone() if meta.grad is None else meta.grad + copied.grad
                optimizer.step()
                last_stats = [(s.batch_mean.detach(), s.batch_var.detach()) for s in stats]
                agree = (logits.argmax(1) == y).float().mean().item()
                yield {"phase": "synthesis", "round": r, "g_step": step, "fast_loss_total": value,
                       **{f"fast_loss_{k}": float(v.detach()) for k, v in terms.items()},
                       "fast_teacher_accuracy": agree}
        finally:
            for p, flag in zip(student.parameters(), trainable):
                p.requires_grad_(flag)
        self.meta_optimizer.step()
        m = o.bn_momentum
        self.memory = last_stats if self.memory is None else [
            (m * mean + (1 - m) * new_mean, m * var + (1 - m) * new_var)
            for (mean, var), (new_mean, new_var) in zip(self.memory, last_stats)]
        images, targets = best.float().cpu(), y.cpu()
        j.pool.append(images, targets)
        j.images_synthesized += len(images)
        self.latest = (images, targets)

    def state_dict(self) -> dict:
        return clone_state({"generator": self.generator.state_dict(), "meta_optimizer":
                            self.meta_optimizer.state_dict(), "memory": self.memory})

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.memory = state["memory"]
