"""The generator methods (methods.md#generator): a generator trained against the frozen teacher, then KD on fresh
samples.

    generator            one conditional generator G(z|y)
    generator-ensemble   one generator per class, trained together on mixed batches
"""
from __future__ import annotations

from typing import Iterator

import torch

from dfkd_core.distill.methods import DistillMethod, register_method
from dfkd_core.distill.resume import Progress, clone_state
from dfkd_core.distributed import data_parallel
from dfkd_core.hooks import BNStatisticsRecorder, batchnorm_layers
from dfkd_core.jobs import check_finite
from dfkd_core.runs import atomic_torch_save
from dfkd_core.synthesis.generator import build_generator, generator_loss, sample_latents


class GeneratorKD(DistillMethod):
    """Train the generator against the frozen teacher (L_G of methods.md#generator), then KD on fresh samples every
    step."""

    mode = "single"
    needs_batchnorm = True   # λ_bn > 0 by default; with λ_bn = 0 it runs on any teacher
    other_steps_name = "generator steps"

    def __init__(self, job):
        super().__init__(job)
        if self.config.lambda_bn > 0 and not batchnorm_layers(job.teacher):
            raise ValueError("the generator's moment matching (λ_bn > 0) needs a teacher with BatchNorm layers; "
                             "set --lambda-bn 0 or use a BN teacher")

    def total_steps(self) -> int:
        return self.config.generator_steps + self.config.steps

    def describe_plan(self) -> str:
        return (f"{self.total_steps():,} steps = {self.config.generator_steps:,} generator steps + "
                f"{self.config.steps:,} student steps on fresh samples")

    def describe_step(self, metrics: dict) -> str:
        if metrics.get("phase") == "generator":
            return "training the generator against the teacher (the student waits)"
        return "the student learns by KD on fresh generator samples"

    def setup(self) -> None:
        c, j = self.config, self.job
        self.generator = build_generator(self.mode, c.latent_dim, j.dataset, c.generator_width).to(j.device)
        # Several processes: each draws its own latents, and the generator's gradients are averaged over them.
        self.training_generator = data_parallel(self.generator, j.world)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=c.generator_lr, betas=(0.5, 0.999))
        self.recorder = BNStatisticsRecorder(j.teacher)

    def sample(self, batch_size: int, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        z, y = sample_latents(self.generator, batch_size, self.job.dataset.num_classes, self.job.device, self.job.rng)
        return (self.training_generator if training else self.generator)(z, y), y

    def plan(self, start: Progress) -> Iterator[dict]:
        c, j = self.config, self.job
        self.generator.train()
        for _ in range(c.generator_steps - start.generator_steps):
            x, y = self.sample(j.batch_size, training=True)
            total, terms, logits = generator_loss(j.teacher, x, y, self.recorder, c.lambda_tv, c.lambda_l2,
                                                  c.lambda_bn)
            check_finite({f"generator_{k}": v for k, v in terms.items()}, j.step_index)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.latest = (x.detach().cpu(), y.cpu())
            self.done.generator_steps += 1
            yield {"phase": "generator", "gen_loss_total": float(total.detach()),
                   **{f"gen_loss_{k}": float(v.detach()) for k, v in terms.items()},
                   "gen_teacher_accuracy": (logits.argmax(1) == y).float().mean().item()}
        for _ in range(c.steps - j.trainer.steps_done):
            with torch.no_grad():
                x, y = self.sample(j.batch_size)
            j.images_synthesized += len(x) * j.world.world
            self.latest = (x.cpu(), y.cpu())
            yield self.kd_step(x)

    def state_dict(self) -> dict:
        return clone_state({"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])

    def describe_progress(self, progress: Progress) -> str:
        return (f"generator step {progress.generator_steps:,} of {self.config.generator_steps:,}, "
                + super().describe_progress(progress))

    def artifacts(self, directory) -> dict:
        if not hasattr(self, "generator"):
            return {}
        atomic_torch_save({"mode": self.mode, "latent_dim": self.config.latent_dim,
                           "width": self.config.generator_width,
                           "state_dict": {k: v.cpu() for k, v in self.generator.state_dict().items()}},
                          directory / "generator.pt")
        members = len(getattr(self.generator, "members", [])) or 1
        return {"generators": members}


@register_method
class SingleGeneratorKD(GeneratorKD):
    name, mode = "generator", "single"
    description = "one conditional generator G(z|y) with BN moment matching; KD on fresh samples"


@register_method
class EnsembleGeneratorKD(GeneratorKD):
    name, mode = "generator-ensemble", "ensemble"
    description = "one generator per class, trained together on mixed batches; KD on fresh samples"
