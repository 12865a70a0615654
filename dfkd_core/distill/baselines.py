"""The reference points of every distillation table: what a data-free method must beat and what it approaches.

    noise      KD on N(0, 1) inputs — the lower bound
    real-kd    KD on the real training set — the upper bound, for comparison only (not data-free)
    scratch    cross-entropy on the real labels, no teacher — the student alone
"""
from __future__ import annotations

from typing import Iterator

import torch

from dfkd_core.distill.methods import DistillMethod, register_method
from dfkd_core.distill.resume import Progress


@register_method
class NoiseKD(DistillMethod):
    name, description = "noise", "KD on N(0, 1) inputs: the lower bound every data-free method must beat"

    def plan(self, start: Progress) -> Iterator[dict]:
        j, c = self.job, self.config
        shape = (j.batch_size, j.dataset.in_channels, j.dataset.image_size, j.dataset.image_size)
        for _ in range(c.steps - start.student_steps):
            x = torch.randn(shape, generator=j.rng)
            j.images_synthesized += len(x) * j.world.world
            self.latest = (x, torch.full((len(x),), -1))
            yield self.kd_step(x, augment=False)


@register_method
class RealDataKD(DistillMethod):
    name, data_free = "real-kd", False
    echoes_teacher = False   # each step may add CE on its own batch's real labels
    description = "KD on the real training set: the upper bound (not data-free; for comparison only)"

    def setup(self) -> None:
        self.train_split = self.job.real_split("train")

    def plan(self, start: Progress) -> Iterator[dict]:
        c, split = self.config, self.train_split
        for _ in range(c.steps - start.student_steps):
            idx = torch.randint(0, len(split), (self.job.batch_size,), generator=self.job.rng)
            x = split.normalized(idx)
            self.latest = (x, split.labels[idx])
            yield self.kd_step(x, labels=split.labels[idx])


@register_method
class ScratchTraining(RealDataKD):
    name, data_free = "scratch", False
    description = "cross-entropy on the real labels only, no teacher: the 'student alone' reference"

    def kd_step(self, x: torch.Tensor, **kw) -> dict:
        return {"phase": "kd", **self.job.trainer.train_step(x, weights={"kd": 0.0, "ce": 1.0}, force_ce=True,
                                                                 **kw)}
