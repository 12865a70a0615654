"""Resuming a stopped distillation (`dfkd distill --resume <run>`): where a plan got, the file that records it, and
which runs can continue.

`DistillJob.save_progress()` writes `resume.pt` (atomically) between steps every `progress_every_s` seconds and when
the run is stopped or fails. It holds everything the job needs to go on exactly as an uninterrupted run would: the
student with its optimizer, schedule and augmentation RNG, the job's RNG, the pool synthesized so far, the method's
own state (a generator, IE-KD's autoencoders, BSS's epoch order) and how far its plan got (`Progress`). A pool
method's inversion round cannot stop midway (its batch is half-made), so while a round runs the file keeps the state
at the round's start, and a resume repeats that round.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dfkd_core.config import Config
from dfkd_core.models import CheckpointError, load_tensors
from dfkd_core.runs import atomic_write_text

RESUME_FILE = "resume.pt"
RESUME_FORMAT = 1
RESUMABLE_STATUSES = ("cancelled", "failed", "interrupted")


@dataclass
class Progress(Config):
    """How far a distillation's plan got; `DistillMethod.plan(start)` continues from here (a new run: zeros)."""

    student_steps: int = 0        # KD optimizer steps the student took (the trainer's count)
    rounds_done: int = 0          # pool methods: synthesis rounds finished, their images in the pool
    generator_steps: int = 0      # generator methods: generator training steps taken
    autoencoder_steps: int = 0    # IE-KD: teacher autoencoder steps taken


class ResumeError(ValueError):
    """A run that `--resume` cannot continue; the message says why."""


def clone_state(state):
    """A deep copy of a state_dict (tensors cloned), so a held state does not move with the live model."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return state


def load_resume_state(record) -> dict:
    """The resume.pt of a distill run record, after checking that the run can continue at all."""
    if record.kind != "distill":
        raise ResumeError(f"run {record.id} is a {record.kind} run; --resume continues a distillation")
    if record.status not in RESUMABLE_STATUSES:
        reason = ("it finished: there is nothing left to run" if record.status == "done" else
                  "it is still running; stop it first" if record.status == "running" else f"it is {record.status}")
        raise ResumeError(f"run {record.id} cannot be resumed: {reason}")
    path = Path(record.dir) / RESUME_FILE
    if not path.exists():
        raise ResumeError(f"run {record.id} has no {RESUME_FILE}: it stopped before its first progress save (or "
                          "was made by an older version), so start it again")
    try:
        state = load_tensors(path, "resume checkpoint")
    except CheckpointError as e:   # our sentence for a damaged or unsafe file
        raise ResumeError(f"{e} Start the run again.") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ResumeError(f"{path} is not a resume checkpoint of this version of dfkd studio; start the run again")
    return state


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep only the metric rows of steps before `step` (the rest is redone by the resumed run); return them."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut off by a kill: everything after it is lost anyway
        if row.get("step", step) < step:
            kept.append(row)
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
    return kept


__all__ = ["Progress", "RESUME_FILE", "ResumeError", "clone_state", "load_resume_state", "truncate_metrics"]
