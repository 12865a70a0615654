"""Distillation methods: where the student's images come from. Each is a small class found by name (torchdistill
style) whose `plan(start)` yields one metrics dict per step from `start` on (a new run: the beginning; a resumed
run: where it stopped, see `resume.py`); `DistillJob` runs the plan step by step.

    deepdream            synthesize a pool with image priors only, then KD        (methods.md#model-inversion, α_f = 0)
    deepinversion        synthesize a pool with BN feature matching, then KD      (methods.md#model-inversion)
    adi                  alternate: synthesize a batch competing with the current student, KD on the growing pool
    generator            one conditional generator G(z|y) trained against the teacher, KD on fresh samples
                                                                                  (methods.md#generator)
    generator-ensemble   one generator per class, same otherwise                  (methods.md#generator)

The pool methods (deepdream, deepinversion, adi) are in inversion_kd.py, the generator methods in generator_kd.py;
the baselines every data-free method is measured against (noise, real-kd, scratch) in baselines.py, IE-KD / IE-DML
in iekd.py, BSS-KD in bss.py, Fast-Datafree in fast.py.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn as nn

from dfkd_core.config import Config
from dfkd_core.distill.pool import PoolError
from dfkd_core.distill.resume import Progress
from dfkd_core.models import check_from_scratch, create_model

if TYPE_CHECKING:
    from dfkd_core.distill.job import DistillJob

DISTILL_METHODS: dict[str, type["DistillMethod"]] = {}


def register_method(cls: type["DistillMethod"]) -> type["DistillMethod"]:
    """Class decorator: make a DistillMethod available by its `name` to DistillJob, the CLI and the app."""
    DISTILL_METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """The registered distillation method names (`--method`)."""
    return list(DISTILL_METHODS)


def _labels(images: torch.Tensor, targets: torch.Tensor, teacher: nn.Module, class_names: list[str]
            ) -> list[str]:
    with torch.no_grad():
        probs = teacher(images).float().softmax(1).cpu()
    conf, pred = probs.max(1)
    names = class_names or [str(i) for i in range(probs.shape[1])]
    return [f"{names[t] if t >= 0 else '?'} → {names[p]} {c:.2f}"
            for t, p, c in zip(targets.tolist(), pred.tolist(), conf.tolist())]


@dataclass
class NoOptions(Config):
    """Methods without settings of their own."""

    def validate(self) -> None:
        self.require_finite()


class DistillMethod:
    """Base class. `job` gives access to the teacher, the student trainer, the pool and the real splits.

    A method with settings of its own declares them as a `Config` dataclass in `Options` (with a `validate()` that
    refuses NaN/inf first); `config.options` (a dict, saved with the run) is checked against it and parsed into
    `self.options`.
    """

    name = ""
    data_free = True          # False for methods that read the real training set (shown in every report)
    needs_batchnorm = False   # True where the default settings match the teacher's BN statistics (pickers hide it)
    synthesizes_pool = False  # True for the pool methods, the only ones the inversion settings (`synthesis`) apply to
    multi_process = True      # runs under torchrun (DDP); False: one process only, said before a run exists
    echoes_teacher = True     # its steps are plain KD on a batch, so `teacher_echo` may reuse the teacher's labels
    other_steps_name = "other steps"   # what its steps that are not student steps are, for the time left
    description = ""
    Options: type[Config] = NoOptions

    def __init__(self, job: "DistillJob"):
        self.job, self.config = job, job.config
        try:
            self.options = self.Options.from_dict(dict(self.config.options))
        except (TypeError, ValueError) as e:
            known = [f.name for f in fields(self.Options)]
            raise ValueError(f"method '{self.name}' does not take options {sorted(self.config.options)}: {e}. "
                             f"Its options: {known or 'none'}") from None
        self.options.validate()
        if self.config.synthesis and not self.synthesizes_pool:
            raise ValueError(f"method '{self.name}' synthesizes no pool, so the inversion settings "
                             f"{sorted(self.config.synthesis)} do not apply; drop them or use deepdream, "
                             "deepinversion or adi")
        if self.config.teacher_echo > 1 and not self.echoes_teacher:
            raise ValueError(f"method '{self.name}' trains each student step on its own batch's labels or features, "
                             f"so teacher_echo {self.config.teacher_echo} (reusing the teacher's labels of earlier "
                             "batches) does not apply: set it to 1")
        self.latest: tuple[torch.Tensor, torch.Tensor] | None = None   # last images made, for snapshots
        self._shot: tuple[tuple, tuple] | None = None   # (the `latest` it shows, the snapshot)
        self.done = Progress()   # how far the plan got; the job sets the start and reads it for a progress save

    def build_student(self) -> nn.Module:
        info = self.job.dataset
        return create_model(self.job.student_name, info.num_classes, info.in_channels, info.image_size)

    def check_student(self) -> None:
        """Build the student once and pass two images through it, so that a model that cannot take this dataset's
        images (LeNet needs at least 16x16) is refused before any run exists."""
        info, name = self.job.dataset, self.job.student_name
        check_from_scratch(name, "student model")
        try:
            model = self.build_student().eval()
            with torch.no_grad():
                model(torch.zeros(2, info.in_channels, info.image_size, info.image_size))
        except Exception as e:  # any registered model may not fit these inputs; say which and why
            raise ValueError(f"student '{name}' cannot take {info.in_channels}×{info.image_size}×"
                             f"{info.image_size} {info.name} images: {str(e).splitlines()[0][:200]}") from None

    def student_parameters(self):
        """What the student's optimizer updates; a method adds its own trainable modules (IE-KD's encoders)."""
        return self.job.student.parameters()

    def student_steps(self) -> int:
        """How many optimizer steps the student takes in total (the learning-rate schedule spans them)."""
        return self.config.steps

    def total_steps(self) -> int:
        return self.student_steps()

    def steps_left_by_kind(self, last: dict) -> tuple[dict[str, int], Callable[[dict, dict], str]]:
        """After the step that produced `last`: kind → steps still to take, and `kind_of(previous, row)`, the kind a
        logged step was (for `DistillJob.time_left`, which times each kind apart)."""
        student_left = self.student_steps() - last["student_steps"]
        other_left = self.total_steps() - (last["step"] + 1) - student_left

        def kind_of(previous: dict, row: dict) -> str:
            return "student steps" if row["student_steps"] > previous["student_steps"] else self.other_steps_name
        return {self.other_steps_name: other_left, "student steps": student_left}, kind_of

    def setup(self) -> None: ...

    def plan(self, start: Progress) -> Iterator[dict]:
        """One metrics dict per job step, from `start` on; the plan counts what it finishes in `self.done` before
        yielding, so a progress save between steps records exactly how far it got. The student's step count is
        the trainer's (`job.trainer.steps_done`), already at `start.student_steps`."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The method's own state beyond the student's (a generator, autoencoders, an epoch order), for a resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` after `setup()`."""

    def describe_progress(self, progress: Progress) -> str:
        return f"student step {progress.student_steps:,} of {self.student_steps():,}"

    def describe_plan(self) -> str:
        """What the job's steps are made of, so that one step count explains every other number shown."""
        return f"{self.total_steps():,} steps = {self.student_steps():,} student steps"

    def describe_step(self, metrics: dict) -> str:
        """What the job is doing at the step that produced `metrics` (the live view's phase label)."""
        return "the student learns by KD"

    def kd_step(self, x: torch.Tensor, **kw) -> dict:
        return {"phase": "kd", **self.job.trainer.train_step(x, **kw)}

    def snapshot(self) -> tuple[torch.Tensor, list[str]] | None:
        if self.latest is None:
            return None
        if self._shot is not None and self._shot[0] is self.latest:
            return self._shot[1]   # a pool's KD shows the same latest round for thousands of steps: label it once
        images, targets = self.latest
        images = images[:64].to(self.job.device)
        shot = (self.job.dataset.denormalize(images).cpu(),
                _labels(images, targets[:64], self.job.teacher, self.job.dataset.class_names))
        self._shot = (self.latest, shot)
        return shot

    def test_hits(self) -> dict[str, torch.Tensor]:
        """Per-image hits on the real test set of the other models this method trains (IE-DML's peer 'student_b'),
        reported and stored like the student's."""
        return {}

    def artifacts(self, directory) -> dict:
        """Save what this method made beyond the student (generators...); return summary entries."""
        return {}

    def findings(self) -> dict:
        """Summary entries on how the method's own images came out (e.g. how many the teacher gives their class)."""
        return {}


class RealOrPoolMethod(DistillMethod):
    """A method that reads labelled real training images, or a synthesized pool in their place (`--pool`: the run is
    then data-free). Its Options have `pool_labels` (teacher | synthesized: which class an image counts as) and a
    `validate()`."""

    data_free = False
    multi_process = False   # their epochs, attacks and extra modules are written for one process
    echoes_teacher = False  # their steps add terms computed from each batch's own features

    def __init__(self, job):
        super().__init__(job)
        self.data_free = len(job.pool) > 0
        if self.data_free and self.options.pool_labels == "synthesized" and bool((job.pool.targets < 0).any()):
            raise PoolError("pool_labels=synthesized needs the class of every pool image; this pool has unknown "
                            "classes (use pool_labels=teacher)")
