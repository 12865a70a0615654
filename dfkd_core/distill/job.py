"""`DistillJob`: run any registered distillation method as a job, evaluate on the real test set, save the student.

Every method reports the same things (issue 5): student accuracy on the real test set, teacher accuracy, their
ratio — each with its 95% bootstrap interval over the test images (issue 14) — wall time and images synthesized,
plus the curve of student accuracy vs images synthesized. A stopped run continues with `resume=` (see resume.py).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from dfkd_core.data import ImageSplit, load_split
from dfkd_core.device import prepare_model, resolve_device
from dfkd_core.distributed import Distributed
from dfkd_core.distill.config import DistillConfig, default_student_of
from dfkd_core.distill.methods import DISTILL_METHODS, DistillMethod
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.distill.resume import RESUME_FILE, RESUME_FORMAT, Progress, clone_state, truncate_metrics
from dfkd_core.distill.results import accuracy_summary, per_class_intervals, save_test_hits
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.jobs import Job
from dfkd_core.models import Checkpoint, save_checkpoint
from dfkd_core.runs import atomic_torch_save
from dfkd_core.synthesis.diagnosis import weak_teacher_note
from dfkd_core.synthesis.images import save_grid
from dfkd_core.training import evaluate


class DistillJob(Job):
    """Distill `teacher` into a fresh student with `config.method`. Verbs: `run()`, `start()`, `cancel()`.

    A cancelled or failed run still evaluates and saves the student and the synthesized pool it has so far, and
    keeps a `resume.pt` from which `DistillJob(..., resume=state)` (`dfkd distill --resume`) continues it.
    """

    kind = "distill"

    def __init__(self, teacher: Checkpoint, config: DistillConfig, run=None, pool: SyntheticPool | None = None,
                 resume: dict | None = None, world: Distributed | None = None):
        """`world`: the processes of a torchrun job (see distributed.py); each takes its share of every batch and
        the student's gradients are averaged over them (DistributedDataParallel). Only the leader evaluates and
        writes the run."""
        if not hasattr(teacher, "model") or not hasattr(teacher, "dataset"):
            raise TypeError(f"DistillJob takes the teacher's Checkpoint (dfkd_core.models.load_checkpoint(path)), "
                            f"which records its dataset; got a {type(teacher).__name__}")
        super().__init__(run)
        config.validate()
        if config.method not in DISTILL_METHODS:
            raise ValueError(f"unknown distillation method '{config.method}'; choose one of {list(DISTILL_METHODS)}")
        self.world = world or Distributed()
        if self.world.active:
            if not DISTILL_METHODS[config.method].multi_process:
                raise ValueError(f"method '{config.method}' runs in one process only; start it without torchrun")
            if resume is not None:
                raise ValueError("a run resumes in one process: `dfkd distill --resume <run>` without torchrun")
        self.batch_size = self.world.split_batch(config.batch_size)   # this process's share of a student batch
        self.config, self.teacher_checkpoint = config, teacher
        self.teacher: nn.Module = teacher.model
        self.dataset = teacher.dataset
        self.student_name = config.student or default_student_of(teacher)
        if pool is None and resume is not None and resume["pool"] is not None:
            pool = SyntheticPool(self.dataset, resume["pool"]["images"], resume["pool"]["targets"])
        if pool is None and config.pool:   # a path in the config is enough (notebooks); callers may pass it loaded
            pool = SyntheticPool.load(config.pool, self.dataset)
        self.pool = pool if pool is not None else SyntheticPool(self.dataset)
        self.device = resolve_device(config.device)
        self.method: DistillMethod = DISTILL_METHODS[config.method](self)
        self.method.check_student()
        self.resume_state = resume        # dropped once restored in setup()
        self.resumed = resume is not None
        self.start_progress = Progress.from_dict(resume["progress"]) if resume is not None else Progress()
        self.steps_before = resume["step"] if resume is not None else 0   # job steps a resumed run already took
        self.steps_taken = self.steps_before
        self.total_steps = self.method.total_steps() - self.steps_before
        self.snapshot_every = config.snapshot_every
        self.images_synthesized = 0
        self.curve: list[dict] = []
        self.elapsed_before = 0.0
        self._splits: dict[str, ImageSplit] = {}
        self._held: dict | None = None    # the progress state a save writes while the plan cannot stop (a round)
        self._in_step = False             # a Ctrl-C or an error mid-step leaves no consistent state to save

    def title(self) -> str:
        """A run name that tells runs apart: method, teacher → student, the data the student learns from, its steps
        and the settings most often varied, e.g. 'deepinversion: bncnn3_w32 → bncnn3_w16 · 400 images · 400 student
        steps · mixup 0.5'."""
        c = self.config
        parts = [f"{c.method}: {self.teacher_checkpoint.name} → {self.student_name}"]
        if c.pool:
            parts.append(f"pool {len(self.pool):,} images")
        elif c.method in ("deepdream", "deepinversion", "adi"):
            parts.append(f"{c.images:,} image{'s' if c.images != 1 else ''}")
        elif c.method.startswith("generator"):
            parts.append(f"{c.generator_steps:,} generator steps")
        parts.append(f"{self.method.student_steps():,} student steps")   # the count the progress bar shows
        parts += [f"{name} {getattr(c, name):g}" for name in ("mixup", "cutmix", "alpha_ce") if getattr(c, name)]
        if c.seed:
            parts.append(f"seed {c.seed}")
        return " · ".join(parts)

    def real_split(self, split: str) -> ImageSplit:
        """The teacher's real data (test: evaluation only; train: only methods with data_free = False), read where
        the user says (`data_root`, else $DFKD_<NAME>, else the default), never where the teacher was trained."""
        if split not in self._splits:
            self._splits[split] = load_split(self.dataset.name, split, self.config.data_root,
                                             self.dataset.image_size)
        return self._splits[split]

    def describe_start(self) -> str:
        """Where this job starts: 'student step 1,200 of 2,000, 6 of 6 synthesis rounds done'."""
        return self.method.describe_progress(self.start_progress)

    # ------------------------------------------------------------------ job interface
    def setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.rng = torch.Generator().manual_seed(self.world.seed(c.seed))   # each rank its own minibatches
        test = self.real_split("test")   # fails early, with the install hint, if the dataset is missing
        self.heldout = test.subset(min(c.eval_samples, len(test)), seed=c.seed)
        self.test_images = len(test)
        self.teacher = prepare_model(self.teacher, self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.per_class = {}
        if self.world.leader:   # the other ranks only train: the leader measures and reports
            self.teacher_hits = evaluate(self.teacher, test, self.device)["correct"]
            self.teacher_accuracy = int(self.teacher_hits.sum()) / max(len(test), 1)
            # Per class on the held-out images, beside the student's (read by the live view; replaced whole, never
            # mutated): where the student falls behind is usually a few confusable classes, not all of them.
            held_hits = evaluate(self.teacher, self.heldout, self.device)["correct"]
            self.per_class = {"teacher": per_class_intervals(held_hits, self.heldout.labels,
                                                             self.dataset.num_classes)}
        self.student = prepare_model(self.method.build_student(), self.device)
        self.trainer = StudentTrainer(self.student, self.teacher, c, self.dataset, self.device,
                                      self.method.student_steps(), parameters=self.method.student_parameters(),
                                      world=self.world)
        self.method.setup()
        if self.resumed:
            self._restore(self.resume_state)
            self.resume_state = None
        self.method.done = self.start_progress.replace()
        self._plan = self.method.plan(self.start_progress)
        self.t0 = time.time()
        if not self.resumed and self.world.leader:   # a resumed run's curve already has this point
            self._record_accuracy()

    def step(self, index: int) -> dict:
        self._in_step = True
        metrics = next(self._plan)
        self._in_step = False
        self.steps_taken = self.steps_before + index + 1
        metrics["step"] = self.steps_before + index
        metrics["elapsed_s"] = self._elapsed()
        metrics["images_synthesized"] = self.images_synthesized
        metrics["student_steps"] = self.trainer.steps_done
        if self.world.leader and metrics.get("phase") == "kd" and (
                self.trainer.steps_done % self.config.eval_every == 0 or index == self.total_steps - 1):
            metrics["student_accuracy"] = self._record_accuracy()
        return metrics

    def steps_left_by_kind(self, rows: list[dict]) -> tuple[dict[str, int], Callable[[dict, dict], str]]:
        """Student steps and the method's other steps (inversion iterations, generator steps...) apart: on a CPU an
        inversion iteration of 200 images costs about twice a student step of 128."""
        return self.method.steps_left_by_kind(rows[-1])

    def snapshot(self):
        shot = self.method.snapshot()
        if shot is None:
            c, size = self.dataset.in_channels, self.dataset.image_size
            return torch.zeros(0, c, size, size), []
        return shot

    def _elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def _record_accuracy(self) -> float:
        hits = evaluate(self.student, self.heldout, self.device)["correct"]
        accuracy = int(hits.sum()) / max(len(hits), 1)
        self.per_class = {**self.per_class,
                          "student": per_class_intervals(hits, self.heldout.labels, self.dataset.num_classes)}
        self.curve.append({"images_synthesized": self.images_synthesized, "student_steps": self.trainer.steps_done,
                           "student_accuracy": accuracy, "elapsed_s": self._elapsed()})
        return accuracy

    # ------------------------------------------------------------------ progress (resume.py)
    def progress_state(self) -> dict:
        """Everything `resume=` needs to continue from here as an uninterrupted run would (copied: the run goes on)."""
        synthesized = self.images_synthesized > 0
        return {
            "format": RESUME_FORMAT, "config": self.config.to_dict(), "teacher": self.teacher_checkpoint.path,
            "step": self.steps_taken,
            "progress": self.method.done.replace(student_steps=self.trainer.steps_done).to_dict(),
            "trainer": self.trainer.state_dict(), "job_rng": self.rng.get_state(),
            "torch_rng": torch.get_rng_state(), "method": self.method.state_dict(),
            # The pool only grows by new tensors (torch.cat), so holding this one is a snapshot, not a live view.
            "pool": {"images": self.pool.images, "targets": self.pool.targets} if synthesized else None,
            "images_synthesized": self.images_synthesized, "curve": clone_state(self.curve),
            "elapsed_s": self._elapsed(),
        }

    def hold_progress(self) -> None:
        """From now until `release_progress()`, progress saves write the state as it is now (a plan about to start
        something it cannot stop midway calls this)."""
        self._held = self.progress_state()

    def release_progress(self) -> None:
        self._held = None

    def save_progress(self) -> None:
        """Write resume.pt atomically: the held state during a round, else the state now. Mid-step (a Ctrl-C or an
        error inside a step) there is no consistent state to write, and the last save stands."""
        if self.run_record is None or not hasattr(self, "_plan") or (self._in_step and self._held is None):
            return
        atomic_torch_save(self._held or self.progress_state(), self.run_record.dir / RESUME_FILE)

    def _restore(self, state: dict) -> None:
        """Put the trainer, RNGs, method and bookkeeping back where `state` was saved; keep the run's metric rows of
        the steps before it (later ones are redone)."""
        self.trainer.load_state_dict(state["trainer"])
        self.rng.set_state(state["job_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.method.load_state_dict(state["method"])
        self.images_synthesized, self.curve = state["images_synthesized"], list(state["curve"])
        self.elapsed_before = state["elapsed_s"]
        if self.run_record is not None:
            self.history = truncate_metrics(self.run_record.path("metrics.jsonl"), state["step"])

    # ------------------------------------------------------------------ results
    def finish(self, status: str) -> dict:
        if not hasattr(self, "trainer") or not self.world.leader:
            return {}
        finish_started = time.time()
        if status != "done":
            self.save_progress()   # Stop, Ctrl-C or a failure: `dfkd distill --resume` continues from here
        elif self.run_record is not None:
            self.run_record.path(RESUME_FILE).unlink(missing_ok=True)
        test = self.real_split("test")
        hits = {"student": evaluate(self.student, test, self.device)["correct"], "teacher": self.teacher_hits,
                **self.method.test_hits()}
        summary = {"method": self.config.method, "data_free": self.method.data_free, "student": self.student_name,
                   "teacher": self.teacher_checkpoint.name, **accuracy_summary(hits), "test_images": len(test),
                   "wall_minutes": self._elapsed() / 60, "images_synthesized": self.images_synthesized,
                   "pool_size": len(self.pool), "student_steps": self.trainer.steps_done, "status": status,
                   "curve": self.curve, "student_parameters": sum(p.numel() for p in self.student.parameters()),
                   "processes": self.world.world, "kd_precision": self.trainer.precision}
        if self.run_record is not None:
            directory = self.run_record.dir
            save_checkpoint(directory / "model.pt", self.student, self.dataset,
                            {"test_accuracy": summary["student_accuracy"], "teacher_accuracy": self.teacher_accuracy})
            self.student.to(self.device)
            save_test_hits(directory, hits, test.labels, self.dataset.name)
            if len(self.pool) and self.images_synthesized:
                self.pool.save(directory / "images.pt")
                save_grid(self.dataset.denormalize(self.pool.images[:100]), directory / "grid.png")
            summary.update(self.method.artifacts(directory))
            summary["checkpoint"] = str(directory / "model.pt")
        summary.update(self.method.findings())
        if teacher_note := weak_teacher_note(self.teacher_accuracy, self.dataset.num_classes):
            summary["teacher_note"] = teacher_note + "; the ratio then says nothing about the method"
        if getattr(self.pool, "note", ""):
            summary["pool_note"] = self.pool.note
        # Outside the steps, which is what a run timed by this one's pace (`estimate.planned_time`) adds to them:
        # on digits they are a third of a short run.
        t0 = getattr(self, "t0", None)
        summary["setup_s"] = t0 - self.started_at if t0 and self.started_at and not self.resumed else None
        summary["finish_s"] = time.time() - finish_started
        return summary
