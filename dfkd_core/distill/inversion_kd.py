"""Distillation on a pool of inverted images (methods.md#model-inversion + #knowledge-distillation): DeepDream,
DeepInversion and Adaptive DeepInversion. A pool is made in rounds of one inverted batch each; the student learns on the
pool so far after each round (ADI's rounds compete with that student), then on the whole pool. With `--pool` the rounds
are skipped and the student learns from stored images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Iterator

from dfkd_core.config import Config
from dfkd_core.distributed import gather_units
from dfkd_core.distill.methods import DistillMethod, register_method
from dfkd_core.distill.resume import Progress, clone_state
from dfkd_core.hooks import batchnorm_layers
from dfkd_core.synthesis.diagnosis import BatchReading
from dfkd_core.synthesis.engine import InversionObjective
from dfkd_core.synthesis.inversion import ModelInversion, SynthesisConfig, check_jitter, make_objective

TRAJECTORY_STEPS = "student steps on half-formed batches"   # trajectory KD's kind of step, for the time left


@dataclass
class PoolOptions(Config):
    """`trajectory_kd_from = k >= 0`: from inversion iteration k of every round on, the batch being optimized is
    also one KD batch for the student. The images along an inversion's path (noise turning into a class) cover the
    input space between classes that the finished pool alone leaves empty, and the teacher's forward pass is the
    only extra cost. -1 = off (plain methods.md#model-inversion + #knowledge-distillation)."""

    trajectory_kd_from: int = -1

    def validate(self) -> None:
        self.require_finite()
        if self.trajectory_kd_from < -1:
            raise ValueError(f"trajectory_kd_from is an inversion iteration (>= 0) or -1 (off), "
                             f"got {self.trajectory_kd_from}")


class PoolKD(DistillMethod):
    """Synthesize `images` by model inversion in rounds of one batch; after each round the student takes
    `kd_steps_per_round` KD steps on the pool so far; then `steps` more on the whole pool.

    With `--pool`, synthesis is skipped and the student learns from the stored images.
    """

    preset = "deepinversion"
    Options = PoolOptions
    synthesizes_pool = True
    other_steps_name = "inversion iterations"
    compete = False  # ADI: each round's batch competes against the current student (R_compete)

    def __init__(self, job):
        super().__init__(job)
        try:
            self.synthesis = SynthesisConfig.preset(self.preset, job.dataset.name, **self.config.synthesis)
        except TypeError:
            known = [f.name for f in fields(SynthesisConfig)]
            raise ValueError(f"unknown inversion setting(s) in {sorted(self.config.synthesis)}; "
                             f"SynthesisConfig has {known}") from None
        if not self.compete:
            self.synthesis.alpha_c = 0.0
        self.synthesis.validate()
        check_jitter(self.synthesis.jitter, job.dataset)   # a round would refuse it after the run exists
        if self.synthesis.alpha_f > 0 and not batchnorm_layers(job.teacher):
            raise ValueError(f"'{self.name}' matches BatchNorm statistics (α_f > 0) but this teacher has no "
                             "BatchNorm layers; use --method deepdream or noise, or set α_f = 0")
        if 0 <= self.options.trajectory_kd_from < self.synthesis.multi_resolution_iterations:
            raise ValueError("trajectory_kd_from must be at or after the half-resolution iterations "
                             f"({self.synthesis.multi_resolution_iterations}): the student learns at full size")
        per_round = self.synthesis.batch_size
        if not self.config.pool and self.config.images < 1:
            raise ValueError(f"'{self.name}' synthesizes its pool: images must be >= 1 (or pass --pool to reuse "
                             "a stored one)")
        self.rounds = 0 if self.config.pool else math.ceil(self.config.images / per_round)
        self._objective: InversionObjective | None = None
        world = job.world
        if world.active and self.rounds and (self.compete or self.config.kd_steps_per_round
                                             or self.options.trajectory_kd_from >= 0):
            raise ValueError(f"in a {world.world}-process run the rounds are synthesized {world.world} at a time, so "
                             "the student can only learn once the pool is made: set kd_steps_per_round 0 and "
                             "trajectory_kd_from -1 (recipe fashion-best does); ADI, whose rounds compete with the "
                             "student of the round before, runs in one process")
        # Rounds are made `world` at a time, rank r making round g·world + r of group g (see distributed.py).
        self.groups = math.ceil(self.rounds / world.world)
        self.round_results: list[dict] = []   # this process's rounds: how the teacher reads each finished batch

    def findings(self) -> dict:
        """How many of the rounds' images the teacher gives their target class (mean over this process's rounds of
        this run; a resumed run counts the rounds it made), and where that is under half, why (synthesis/diagnosis)."""
        if not self.round_results:
            return {}
        rounds = self.round_results
        mean = {k: sum(r[k] for r in rounds) / len(rounds)
                for k in ("teacher_accuracy", "mean_confidence", "flat_fraction", "pinned_fraction")}
        found = {"pool_teacher_agreement": mean["teacher_accuracy"]}
        # The teacher's own accuracy is the distillation's to report (`teacher_note`), not the pool's.
        note = BatchReading.of_step({**rounds[-1], **mean}).note("the synthesized images")
        if note:
            found["diagnosis"] = note
        return found

    def objective(self) -> InversionObjective:
        """One inversion objective for every round, so a compiled one (`synthesis.compile`) compiles once per
        batch shape, not once per round."""
        if self._objective is None:
            j = self.job
            self._objective = make_objective(j.teacher, j.student if self.compete else None, self.synthesis,
                                             j.device)
        return self._objective

    def state_dict(self) -> dict:
        """The contrastive memory (α_cr > 0): a resumed pool pushes its next rounds away from the same bank."""
        contrast = self.objective().contrast if self.rounds else None
        return {"contrast": clone_state(contrast.state_dict())} if contrast is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "contrast" in state and self.rounds:
            self.objective().contrast.load_state_dict(state["contrast"])

    def trajectory_steps_per_round(self) -> int:
        start = self.options.trajectory_kd_from
        return 0 if start < 0 else max(0, self.synthesis.iterations - start)

    def student_steps(self) -> int:
        per_round = self.config.kd_steps_per_round + self.trajectory_steps_per_round()
        return self.rounds * per_round + self.config.steps

    def total_steps(self) -> int:
        return self.groups * self.synthesis.iterations + self.student_steps()

    def steps_left_by_kind(self, last: dict) -> tuple[dict[str, int], Callable[[dict, dict], str]]:
        """A trajectory KD step trains on a whole half-formed batch (200 images on Fashion-MNIST, against 128 from
        the pool), so it is timed apart from the pool's student steps. One follows each inversion iteration from
        `trajectory_kd_from` on, so what is left of them follows from the inversion iterations left."""
        remaining, base_kind = super().steps_left_by_kind(last)
        iterations, start = self.synthesis.iterations, self.options.trajectory_kd_from
        trajectory_left = 0
        if start >= 0 and iterations:
            per_round = max(0, iterations - start)
            whole_rounds, this_round = divmod(remaining[self.other_steps_name], iterations)
            trajectory_left = whole_rounds * per_round + min(this_round, per_round)
            if last.get("phase") == "synthesis" and last.get("inv_iteration", -1) >= start:
                trajectory_left += 1   # this iteration's own trajectory step comes next
        remaining = {self.other_steps_name: remaining[self.other_steps_name],
                     TRAJECTORY_STEPS: trajectory_left, "student steps": remaining["student steps"] - trajectory_left}

        def kind_of(previous: dict, row: dict) -> str:
            kind = base_kind(previous, row)
            return TRAJECTORY_STEPS if kind == "student steps" and "inv_iteration" in row else kind
        return remaining, kind_of

    def _round_config(self, r: int) -> SynthesisConfig:
        remaining = self.config.images - r * self.synthesis.batch_size
        return self.synthesis.replace(seed=self.synthesis.seed + self.config.seed * 1000 + r,
                                      batch_size=min(self.synthesis.batch_size, remaining),
                                      device=str(self.job.device), snapshot_every=0, amp=self.config.amp,
                                      cpu_bf16=self.config.cpu_bf16)

    def plan(self, start: Progress) -> Iterator[dict]:
        j, c, world = self.job, self.config, self.job.world
        for g in range(start.rounds_done // world.world, self.groups):
            # A round's batch is half-made until its last iteration: progress saves during the round keep the state
            # at its start, and a resume repeats the round.
            j.hold_progress()
            r = g * world.world + world.rank
            made = {}
            if r < self.rounds:
                inversion = ModelInversion(j.teacher, j.dataset, self._round_config(r),
                                           student=j.student if self.compete else None, objective=self.objective())
                self.inversion = inversion
                inversion.setup()
                m = {}
                for i in range(inversion.total_steps):
                    m = inversion.step(i)
                    yield {"phase": "synthesis", "round": r, "inv_iteration": i,
                           **{f"inv_{k}": v for k, v in m.items() if not isinstance(v, list)}}
                    if 0 <= self.options.trajectory_kd_from <= i:
                        yield {**self._trajectory_kd_step(inversion), "round": r, "inv_iteration": i}
                finished = inversion.finish("done")
                self.round_results.append({**m, **{k: finished[k] for k in (
                    "teacher_accuracy", "mean_confidence", "flat_fraction", "pinned_fraction")}})
                made[r] = (inversion.images(), inversion.targets.cpu())
                self.inversion = None
            else:   # the last group has fewer rounds than processes: this one waits for the others
                for i in range(self.synthesis.iterations):
                    yield {"phase": "synthesis", "round": -1, "inv_iteration": i}
            for round_index, (images, targets) in sorted(gather_units(world, made).items()):
                j.pool.append(images, targets)
                j.images_synthesized += len(images)
                self.latest = (images, targets)
            for _ in range(c.kd_steps_per_round):
                yield self.kd_step(j.pool.sample(j.batch_size, j.rng)[0])
            self.done.rounds_done = min((g + 1) * world.world, self.rounds)
            j.release_progress()
        if self.latest is None and len(j.pool):
            self.latest = (j.pool.images[:64], j.pool.targets[:64])
        for _ in range(self.student_steps() - j.trainer.steps_done):
            yield self.kd_step(j.pool.sample(j.batch_size, j.rng)[0])

    def describe_progress(self, progress: Progress) -> str:
        rounds = f", {progress.rounds_done} of {self.rounds} synthesis rounds done" if self.rounds else ""
        return super().describe_progress(progress) + rounds

    def describe_plan(self) -> str:
        if not self.rounds:
            return f"{self.total_steps():,} steps = {self.config.steps:,} student steps on the reused pool"
        trajectory, per_round = self.trajectory_steps_per_round(), self.config.kd_steps_per_round
        parts = [f"{self.config.steps:,} on the finished pool"]
        if per_round:
            parts.append(f"{self.rounds * per_round:,} after each round")
        if trajectory:
            parts.append(f"{self.rounds * trajectory:,} on half-formed batches")
        rounds = (f"{self.rounds} round{'s' if self.rounds != 1 else ''}" if not self.job.world.active else
                  f"{self.groups} groups of {self.job.world.world} rounds at once ({self.rounds} rounds)")
        return (f"{self.total_steps():,} steps = {rounds} × {self.synthesis.iterations} inversion "
                f"iterations + {self.student_steps():,} student steps ({', '.join(parts)})")

    def describe_step(self, metrics: dict) -> str:
        if metrics.get("round") == -1:
            return "waiting for the other processes' last rounds"
        if "round" not in metrics:
            return "the student learns by KD on the finished pool" if self.rounds else "KD on the reused pool"
        text = (f"synthesizing round {metrics['round'] + 1} of {self.rounds}, inversion iteration "
                f"{metrics['inv_iteration'] + 1} of {self.synthesis.iterations}")
        if self.trajectory_steps_per_round() and metrics["inv_iteration"] >= self.options.trajectory_kd_from:
            text += "; the student learns from each half-formed batch"
        return text

    def _trajectory_kd_step(self, inversion: ModelInversion) -> dict:
        """A KD step on the batch mid-inversion. ADI's inversion holds the student frozen as its critic: thaw it
        for the step, then hand it back frozen and in eval mode."""
        frozen = getattr(inversion, "_student_grad", None)
        student = self.job.student
        if frozen is not None:
            for p, flag in zip(student.parameters(), frozen):
                p.requires_grad_(flag)
        metrics = self.kd_step(inversion.x.detach().float())
        if frozen is not None:
            for p in student.parameters():
                p.requires_grad_(False)
            student.eval()
        return metrics

    def snapshot(self):
        inversion = getattr(self, "inversion", None)
        if inversion is not None and hasattr(inversion, "x"):
            images, labels = inversion.snapshot()
            return images[:64], labels[:64]
        return super().snapshot()


@register_method
class DeepDreamKD(PoolKD):
    name, preset = "deepdream", "deepdream"
    description = "KD on images inverted with image priors only (α_f = 0)"


@register_method
class DeepInversionKD(PoolKD):
    name, preset, needs_batchnorm = "deepinversion", "deepinversion", True
    description = "KD on images inverted with BatchNorm feature matching (α_f > 0)"


@register_method
class AdaptiveDeepInversionKD(PoolKD):
    name, preset, compete, needs_batchnorm = "adi", "adi", True, True
    description = "alternate inversion competing with the current student (α_c > 0) and KD on the growing pool"
