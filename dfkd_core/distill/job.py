"""`DistillJob`: run any registered distillation method as a job, evaluate on the real test set, save the student.

Every method reports the same things (issue 5): student accuracy on the real test set, teacher accuracy, their
ratio, wall time and images synthesized, plus the curve of student accuracy vs images synthesized.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from dfkd_core.data import ImageSplit, load_split
from dfkd_core.device import prepare_model, resolve_device
from dfkd_core.distill.config import DistillConfig, default_student
from dfkd_core.distill.methods import DISTILL_METHODS, DistillMethod
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.jobs import Job
from dfkd_core.models import Checkpoint, save_checkpoint
from dfkd_core.synthesis.images import save_grid
from dfkd_core.training import evaluate


class DistillJob(Job):
    """Distill `teacher` into a fresh student with `config.method`. Verbs: `run()`, `start()`, `cancel()`.

    A cancelled or failed run still evaluates and saves the student and the synthesized pool it has so far.
    """

    kind = "distill"

    def __init__(self, teacher: Checkpoint, config: DistillConfig, run=None, pool: SyntheticPool | None = None):
        super().__init__(run)
        config.validate()
        if config.method not in DISTILL_METHODS:
            raise ValueError(f"unknown distillation method '{config.method}'; choose one of {list(DISTILL_METHODS)}")
        self.config, self.teacher_checkpoint = config, teacher
        self.teacher: nn.Module = teacher.model
        self.dataset = teacher.dataset
        self.student_name = config.student or default_student(teacher.name)
        if pool is None and config.pool:   # a path in the config is enough (notebooks); callers may pass it loaded
            pool = SyntheticPool.load(config.pool, self.dataset)
        self.pool = pool if pool is not None else SyntheticPool(self.dataset)
        self.device = resolve_device(config.device)
        self.method: DistillMethod = DISTILL_METHODS[config.method](self)
        self.method.check_student()
        self.total_steps = self.method.total_steps()
        self.snapshot_every = config.snapshot_every
        self.images_synthesized = 0
        self.curve: list[dict] = []
        self._splits: dict[str, ImageSplit] = {}

    def real_split(self, split: str) -> ImageSplit:
        """The teacher's real data (test: evaluation only; train: only methods with data_free = False), read where
        the user says (`data_root`, else $DFKD_<NAME>, else the default), never where the teacher was trained."""
        if split not in self._splits:
            self._splits[split] = load_split(self.dataset.name, split, self.config.data_root,
                                             self.dataset.image_size)
        return self._splits[split]

    # ------------------------------------------------------------------ job interface
    def setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.rng = torch.Generator().manual_seed(c.seed)
        test = self.real_split("test")   # fails early, with the install hint, if the dataset is missing
        self.heldout = test.subset(min(c.eval_samples, len(test)), seed=c.seed)
        self.teacher = prepare_model(self.teacher, self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_accuracy = evaluate(self.teacher, test, self.device)["accuracy"]
        self.student = prepare_model(self.method.build_student(), self.device)
        self.trainer = StudentTrainer(self.student, self.teacher, c, self.dataset, self.device,
                                      self.method.student_steps(), parameters=self.method.student_parameters())
        self.method.setup()
        self._plan = self.method.plan()
        self.t0 = time.time()
        self._record_accuracy()

    def step(self, index: int) -> dict:
        metrics = next(self._plan)
        metrics["images_synthesized"] = self.images_synthesized
        metrics["student_steps"] = self.trainer.steps_done
        if metrics.get("phase") == "kd" and (self.trainer.steps_done % self.config.eval_every == 0
                                              or index == self.total_steps - 1):
            metrics["student_accuracy"] = self._record_accuracy()
        return metrics

    def snapshot(self):
        shot = self.method.snapshot()
        if shot is None:
            c, size = self.dataset.in_channels, self.dataset.image_size
            return torch.zeros(0, c, size, size), []
        return shot

    def _record_accuracy(self) -> float:
        accuracy = self.trainer.evaluate(self.heldout)
        self.curve.append({"images_synthesized": self.images_synthesized, "student_steps": self.trainer.steps_done,
                           "student_accuracy": accuracy, "elapsed_s": time.time() - self.t0})
        return accuracy

    def finish(self, status: str) -> dict:
        if not hasattr(self, "trainer"):
            return {}
        c = self.config
        elapsed = time.time() - self.t0
        student_accuracy = evaluate(self.student, self.real_split("test"), self.device)["accuracy"]
        summary = {
            "method": c.method, "data_free": self.method.data_free, "student": self.student_name,
            "teacher": self.teacher_checkpoint.name, "student_accuracy": student_accuracy,
            "teacher_accuracy": self.teacher_accuracy,
            "ratio": student_accuracy / self.teacher_accuracy if self.teacher_accuracy else float("nan"),
            "wall_minutes": elapsed / 60, "images_synthesized": self.images_synthesized, "pool_size": len(self.pool),
            "student_steps": self.trainer.steps_done, "status": status, "curve": self.curve,
            "student_parameters": sum(p.numel() for p in self.student.parameters()),
        }
        if self.run_record is not None:
            directory = self.run_record.dir
            save_checkpoint(directory / "model.pt", self.student, self.dataset,
                            {"test_accuracy": student_accuracy, "teacher_accuracy": self.teacher_accuracy})
            self.student.to(self.device)
            if len(self.pool) and self.images_synthesized:
                self.pool.save(directory / "images.pt")
                save_grid(self.dataset.denormalize(self.pool.images[:100]), directory / "grid.png")
            summary.update(self.method.artifacts(directory))
            summary["checkpoint"] = str(directory / "model.pt")
        return summary
