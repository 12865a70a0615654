"""How long a distillation will take, before it starts: its planned steps of each kind at the pace an earlier run of
the same teacher took with the same settings that set a step's cost (method, student, batch sizes, teacher echo,
precision, device, processes). `fashion-best` runs 20-40 minutes on 2 CPU cores and 1.5 on a GPU: only this
machine's own runs can say which, so without a comparable earlier run there is no number, and the steps are counted
instead.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from dfkd_core.device import device_kind
from dfkd_core.runs import RunRecord, RunStore
from dfkd_core.time_left import TimeLeft, clock, step_paces, time_for

# The settings a step's cost depends on; the number of steps (images, steps, iterations) does not change its pace.
PACE_SETTINGS = ("method", "batch_size", "teacher_echo", "cpu_bf16", "amp")
PACE_SYNTHESIS_SETTINGS = ("batch_size", "multi_resolution_iterations")
FINISHED = ("done", "cancelled", "interrupted")   # runs whose pace is known
START = {"step": -1, "student_steps": 0}   # the row a job has "finished" before its first step
MIN_STEPS = 10   # an earlier run stopped sooner is mostly its first, slow steps: no pace to go by


@dataclass(frozen=True)
class PlannedTime:
    """`time`: the new run's steps at `source`'s pace (untimed kinds counted); `source`: the earlier run, or None
    when no finished run of this teacher had the same pace settings; `planned`: kind → steps the new run takes;
    `fixed_s`: what `source` spent outside its steps (set-up, the final test and saving), None where it did not
    record it."""

    planned: dict[str, int]
    time: TimeLeft | None
    source: RunRecord | None
    fixed_s: float | None = None

    @property
    def seconds(self) -> float | None:
        """The whole run: its steps and the earlier run's fixed costs."""
        return None if self.time is None else self.time.seconds + (self.fixed_s or 0.0)

    def describe(self) -> str:
        """'about 23:40 on this machine (the pace of distill-…, 2026-12-07 04:31: same teacher and settings)', with
        the kinds of steps that run did not take counted apart; or the plan in steps when nothing earlier compares."""
        steps = counted({kind: n for kind, n in self.planned.items() if n > 0})
        if self.time is None or self.source is None:
            return (f"{steps}; no earlier run of this teacher with these settings to time them by, so no estimate "
                    "yet (the first run's pace estimates the next)")
        pace = f"the pace of {self.source.id}, {self.source.created_str}, same teacher and step settings"
        if self.fixed_s:
            pace = (f"{clock(self.time.seconds)} of steps and {clock(self.fixed_s)} of set-up and final test at "
                    + pace)
        untimed = counted(self.time.untimed)
        if not untimed:
            return f"about {clock(self.seconds)} on this machine ({pace})"
        if self.time.seconds <= 0:
            return f"{steps}; the earlier run ({self.source.id}) took none of these steps, so no estimate yet"
        return f"about {clock(self.seconds)} on this machine ({pace}), plus {untimed} (not timed yet)"


def counted(steps: dict[str, int]) -> str:
    """'40 inversion iterations, 20 trajectory steps and 30 student steps'."""
    parts = [f"{n:,} {kind}" for kind, n in steps.items()]
    return " and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " and " + parts[-1]


def pace_settings(config: dict, student: str | None) -> tuple:
    """What sets a step's cost, from a run's config; `student` resolved ('' in a config means the default)."""
    synthesis = config.get("synthesis") or {}
    return ((student, config.get("processes") or 1, device_kind(config.get("device")))
            + tuple(config.get(k) for k in PACE_SETTINGS)
            + tuple(synthesis.get(k) for k in PACE_SYNTHESIS_SETTINGS))


def newest_timed_run(store: RunStore, kind: str,
                     fits: Callable[[RunRecord, dict], bool]) -> tuple[RunRecord, list[dict]] | None:
    """The newest finished run of `kind` that `fits(record, its config)`, with its logged steps (at least MIN_STEPS
    of them, each with its `elapsed_s`); None when no run fits."""
    for record in store.list(kind=kind):   # newest first
        if record.status not in FINISHED:
            continue
        run = store.get(record.id)
        if not fits(record, run.config()):
            continue
        rows = [row for row in run.metrics() if isinstance(row.get("elapsed_s"), (int, float))]
        if len(rows) >= MIN_STEPS:
            return record, rows
    return None


def planned_time(job, store: RunStore, teacher_id: str, processes: int = 1) -> PlannedTime:
    """`job`: a `DistillJob` built but not started, to run in `processes` processes, timed by this teacher's newest
    finished distillation with `job`'s pace settings."""
    remaining, kind_of = job.method.steps_left_by_kind(START)
    wanted = pace_settings({**job.config.to_dict(), "processes": processes}, job.student_name)
    found = newest_timed_run(store, "distill", lambda record, config: record.teacher == teacher_id
                             and pace_settings(config, record.summary.get("student")) == wanted)
    if found is None:
        return PlannedTime(remaining, None, None)
    record, rows = found
    paces = step_paces(rows, kind_of, statistics.fmean)   # evaluations and snapshots included
    return PlannedTime(remaining, time_for(remaining, paces), record, fixed_seconds(record.summary))


def fixed_seconds(summary: dict) -> float | None:
    """What a finished distillation spent outside its steps (`setup_s` + `finish_s`); None for a run that did not
    record them (older runs, a resumed one's set-up)."""
    parts = [summary.get("setup_s"), summary.get("finish_s")]
    if not all(isinstance(p, (int, float)) for p in parts):
        return None
    return float(sum(parts))


TEACHER_PACE_SETTINGS = ("dataset", "model", "batch_size", "augment")


def planned_teacher_time(store: RunStore, config) -> str:
    """How long training a teacher with `config` (a resolved `TeacherConfig`) takes here: its epochs at the time
    per epoch of the newest finished teacher run of the same dataset, model, batch size, augmentation and device
    (a Fashion-MNIST epoch took 3-10 minutes on 2 cores, a digits one a few seconds); else the epochs counted."""
    epochs = f"{config.epochs:,} epoch" + ("s" if config.epochs != 1 else "")

    def fits(record: RunRecord, saved: dict) -> bool:
        epochs_done = record.summary.get("epochs_done")
        return (isinstance(epochs_done, (int, float)) and epochs_done > 0
                and all(saved.get(k) == getattr(config, k) for k in TEACHER_PACE_SETTINGS)
                and device_kind(saved.get("device")) == device_kind(config.device))
    found = newest_timed_run(store, "teacher", fits)
    if found is None:
        return (f"{epochs}; no earlier {config.model} teacher on {config.dataset} with this batch size and "
                "augmentation to time them by, so no estimate yet")
    record, rows = found
    per_epoch = rows[-1]["elapsed_s"] / record.summary["epochs_done"]
    each = clock(per_epoch) if per_epoch >= 1 else f"{per_epoch:.1f} s"   # digits: '0:00 each' read as no time
    return (f"about {clock(per_epoch * config.epochs)} on this machine ({epochs} at {each} each, the "
            f"pace of {record.id}, {record.created_str})")
