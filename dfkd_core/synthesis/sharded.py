"""A pool of inverted batches as one job, in one process or spread over the processes `torchrun` starts (issue 15).

    dfkd synthesize --teacher T --batches 8 ...                                  # 8 batches, one after another
    torchrun --nproc_per_node 4 -m dfkd_core.cli synthesize --teacher T --batches 8 ...   # 2 batches per process

Batch k is a `ModelInversion` of its own with seed `seed + k` (batch 0 is what a one-batch run with that seed makes),
so the pool does not depend on how many processes made it. Rank r inverts batches k ≡ r (mod N), N at a time, in
lockstep: each *round* is `iterations` steps on every rank (a rank without a batch in the last round waits), and at
the end of a round every rank sends its finished batch to the leader, which keeps the pool in batch order and writes
the run. Stopping, from any rank, happens at the same step everywhere (`Job.stop_requested`); the batches finished
before it are the run's images.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from dfkd_core.data import DatasetInfo
from dfkd_core.device import resolve_device
from dfkd_core.distributed import Distributed, gather_units
from dfkd_core.jobs import Job
from dfkd_core.runs import atomic_torch_save
from dfkd_core.synthesis.engine import InversionObjective
from dfkd_core.synthesis.images import save_grid
from dfkd_core.synthesis.inversion import ModelInversion, SynthesisConfig, engine_description


class ShardedSynthesis(Job):
    """Invert `batches` batches of `config.batch_size` images. Verbs: `run()`, `start()`, `cancel()`."""

    kind = "synthesis"

    def __init__(self, teacher: nn.Module, dataset: DatasetInfo, config: SynthesisConfig, batches: int,
                 world: Distributed | None = None, student: nn.Module | None = None, run=None):
        super().__init__(run)
        config.validate()
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        self.config, self.dataset, self.batches = config, dataset, batches
        self.teacher, self.student = teacher, student
        self.world = world or Distributed()
        self.rounds = math.ceil(batches / self.world.world)
        self.total_steps = self.rounds * config.iterations
        self.snapshot_every = config.snapshot_every
        # Each batch is checked as its own job would check it (BN layers for α_f, a student for α_c, targets).
        ModelInversion(teacher, dataset, self._unit_config(0), student=student)
        self.finished: dict[int, dict] = {}   # batch index -> images, targets, summary (complete on the leader)
        self.current: ModelInversion | None = None

    def describe(self) -> str:
        per = f"{self.rounds} round{'s' if self.rounds > 1 else ''}"
        where = f" over {self.world.world} processes" if self.world.active else ""
        return f"{self.batches} batches of {self.config.batch_size} images{where} ({per} of {self.config.iterations} " \
               "iterations)"

    def my_batch(self, round_index: int) -> int | None:
        """The batch this rank inverts in a round, or None when the batches ran out (the last round's idle ranks)."""
        k = round_index * self.world.world + self.world.rank
        return k if k < self.batches else None

    def _unit_config(self, k: int) -> SynthesisConfig:
        return self.config.replace(seed=self.config.seed + k, snapshot_every=0)

    # ------------------------------------------------------------------ job interface
    def setup(self) -> None:
        self.t0 = time.time()
        self.objective: InversionObjective | None = None   # one for every batch: one compilation

    def step(self, index: int) -> dict:
        round_index, iteration = divmod(index, self.config.iterations)
        k = self.my_batch(round_index)
        metrics: dict = {"round": round_index, "batch": -1 if k is None else k, "inv_iteration": iteration}
        if k is not None:
            if iteration == 0:
                self.current = ModelInversion(self.teacher, self.dataset, self._unit_config(k), student=self.student,
                                              objective=self.objective)
                self.current.metrics_every_s = 0.0   # read at once: a round ends in a collective anyway
                self.current.setup()
                self.objective, self.teacher = self.current.objective, self.current.teacher
            metrics.update(self.current.step(iteration))
        if iteration == self.config.iterations - 1:
            mine = {}
            if k is not None:
                summary = self.current.finish("done")
                mine[k] = {"images": self.current.images(), "targets": self.current.targets.cpu(),
                           "teacher_accuracy": summary["teacher_accuracy"],
                           "bn_distance_end": summary.get("bn_distance_end")}
            gathered = gather_units(self.world, mine)
            if self.world.leader:
                self.finished.update(gathered)
            self.current = None
        return metrics

    def snapshot(self) -> tuple[torch.Tensor, list[str]]:
        if self.current is not None and hasattr(self.current, "x"):
            return self.current.snapshot()
        images, targets = self.pool()
        return self.dataset.denormalize(images[-self.config.batch_size:]), [str(t) for t in targets.tolist()]

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The finished batches in batch order (the leader's view): images (normalized space) and their classes."""
        shape = (0, self.dataset.in_channels, self.dataset.image_size, self.dataset.image_size)
        if not self.finished:
            return torch.empty(shape), torch.empty(0, dtype=torch.long)
        order = sorted(self.finished)
        return (torch.cat([self.finished[k]["images"] for k in order]),
                torch.cat([self.finished[k]["targets"] for k in order]))

    def save_progress(self) -> None:
        if self.run_record is not None and self.finished:
            self._save(self.run_record.dir)

    def finish(self, status: str) -> dict:
        if not self.world.leader:
            return {}
        elapsed = time.time() - getattr(self, "t0", time.time())
        done = sorted(self.finished)
        images = sum(len(self.finished[k]["images"]) for k in done)
        summary = {"method": self.config.method, "status": status, "batches": self.batches,
                   "batches_done": len(done), "images": images, "processes": self.world.world,
                   "elapsed_s": elapsed, "images_per_second": images / elapsed if images and elapsed > 0 else 0.0,
                   "steps": len(self.history)}
        if done:
            weights = [len(self.finished[k]["images"]) for k in done]
            summary["teacher_accuracy"] = sum(w * self.finished[k]["teacher_accuracy"]
                                              for w, k in zip(weights, done)) / images
            distances = [self.finished[k]["bn_distance_end"] for k in done]
            if all(d is not None for d in distances):
                summary["bn_distance_end"] = sum(distances) / len(distances)   # per batch, as one batch reports it
        if self.objective is not None:
            summary["engine"] = engine_description(self.objective, resolve_device(self.config.device), self.config.amp,
                                                   self.config.cpu_bf16)
        if self.run_record is not None and done:
            self._save(self.run_record.dir)
        return summary

    def _save(self, directory) -> None:
        images, targets = self.pool()
        atomic_torch_save({"images": images, "targets": targets, "dataset": self.dataset.to_dict()},
                          directory / "images.pt")
        save_grid(self.dataset.denormalize(images[:100]), directory / "grid.png")
