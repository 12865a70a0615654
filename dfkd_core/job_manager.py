"""A process-wide, thread-safe registry of background jobs, for servers that serve several users (the app).

Why it exists: Streamlit runs each browser tab's script in its own short-lived thread, but a synthesis must outlive
any one script run (a page reload has to find it again). The manager owns the job threads; a page keeps only the
job's id (in the URL, `?job=<id>`), so two tabs never share a job unless one opens the other's URL on purpose.

Concurrency limit (decided for a 2-core CPU machine, see `default_max_running`): at most one running job per core,
capped at 4, each job getting `cpu_count // max_running` torch threads. On 2 cores that is 2 jobs with 1 thread
each: a third job would not add throughput, only slow every job (and the UI, which shares the cores) down.
Measured on a busy 2-core machine, Fashion-MNIST inversions (batch 100) made 1.9 / 2.4 / 1.8 steps/s in total
with 1 / 2 / 3 jobs running at once. The limit can be set with $DFKD_MAX_JOBS; `submit` refuses past it with a
`JobLimitError` naming what runs.

Two helpers ride along as job listeners (they run in the job's own thread, between steps):
- `Pacer`: at most N steps per second. A digits inversion makes ~100 steps/s on one core, too fast to watch or
  steer; pacing makes it a lecture-speed animation. The sleep is cut short by `cancel()`.
- `SnapshotCadence`: adapts `job.snapshot_every` to the measured step time so image snapshots arrive about every
  `interval_s` seconds whatever the dataset (every step on Fashion-MNIST, every few on digits).
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from dfkd_core.jobs import Event, Job


class JobLimitError(RuntimeError):
    """Too many jobs are already running; the message lists them."""


def default_max_running() -> int:
    """$DFKD_MAX_JOBS, else one job per CPU core, capped at 4."""
    env = os.environ.get("DFKD_MAX_JOBS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


class Pacer:
    """Job listener: sleeps after each step so the job makes at most `steps_per_second` steps per second.

    `steps_per_second` may be changed at any time (None or 0 = unlimited); a cancelled job stops sleeping at once.
    """

    _slice_s = 0.01

    def __init__(self, job: Job, steps_per_second: float | None = None):
        self.job, self.steps_per_second = job, steps_per_second
        self._last: float | None = None

    def __call__(self, event: Event) -> None:
        if event.kind != "step":
            return
        rate = self.steps_per_second
        if rate and self._last is not None:
            deadline = self._last + 1.0 / rate
            while not self.job.cancel_requested and time.monotonic() < deadline:
                time.sleep(min(self._slice_s, max(0.0, deadline - time.monotonic())))
        self._last = time.monotonic()


class SnapshotCadence:
    """Job listener: keeps image snapshots about `interval_s` apart by adapting `job.snapshot_every`."""

    def __init__(self, job: Job, interval_s: float = 0.15):
        self.job, self.interval_s = job, interval_s
        self._last: float | None = None
        self._period: float | None = None  # smoothed seconds per step

    def __call__(self, event: Event) -> None:
        if event.kind != "step":
            return
        now = time.monotonic()
        if self._last is not None:
            dt = now - self._last
            self._period = dt if self._period is None else 0.8 * self._period + 0.2 * dt
            self.job.snapshot_every = max(1, round(self.interval_s / max(self._period, 1e-6)))
        self._last = now


@dataclass
class ManagedJob:
    job: Job
    key: str | None
    label: str
    submitted: float = field(default_factory=time.time)
    pacer: Pacer | None = None


class JobManager:
    """Submit, find, list and cancel background jobs. Safe to share between threads (one per process)."""

    def __init__(self, max_running: int | None = None, keep_finished: int = 32,
                 threads_per_job: int | None = None):
        self.max_running = max_running or default_max_running()
        self.keep_finished = keep_finished
        self.threads_per_job = threads_per_job or max(1, (os.cpu_count() or 1) // self.max_running)
        self._jobs: OrderedDict[str, ManagedJob] = OrderedDict()
        self._lock = threading.RLock()

    def configure_torch_threads(self) -> None:
        """Give every job `threads_per_job` intra-op threads (torch's setting is process-wide)."""
        torch.set_num_threads(self.threads_per_job)

    # ------------------------------------------------------------------ verbs
    def submit(self, job: Job, *, key: str | None = None, label: str = "", steps_per_second: float | None = None,
               snapshot_interval_s: float | None = None) -> Job:
        """Start `job` in its own thread and register it under `job.id`; `JobLimitError` past the limit.

        `key` tags the job so `find(key)` returns it (e.g. the starter teacher), see also `ensure`.
        """
        with self._lock:
            running = self.active()
            if len(running) >= self.max_running:
                names = ", ".join(f"{self._jobs[j.id].label} ({j.id})" for j in running)
                raise JobLimitError(f"{len(running)} jobs are already running, the limit on this machine "
                                    f"(set $DFKD_MAX_JOBS to change it): {names}. Stop one or wait for it.")
            entry = ManagedJob(job, key, label or job.kind)
            if snapshot_interval_s and job.snapshot_every:  # only jobs that make snapshots at all
                job.subscribe(SnapshotCadence(job, snapshot_interval_s))
            entry.pacer = Pacer(job, steps_per_second)
            job.subscribe(entry.pacer)
            self._jobs[job.id] = entry
            self._evict()
            job.start()
            return job

    def ensure(self, key: str, make_job: Callable[[], Job], **submit_options) -> Job:
        """The running job tagged `key`, or a new one from `make_job()` (called only then, under the lock, so two
        tabs opening the app at once start one job, not two)."""
        with self._lock:
            existing = self.find(key)
            if existing is not None and existing.running:
                return existing
            return self.submit(make_job(), key=key, **submit_options)

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            entry = self._jobs.get(job_id or "")
            return entry.job if entry else None

    def find(self, key: str) -> Job | None:
        """The most recently submitted job with this key."""
        with self._lock:
            for entry in reversed(self._jobs.values()):
                if entry.key == key:
                    return entry.job
        return None

    def label(self, job_id: str) -> str:
        with self._lock:
            entry = self._jobs.get(job_id)
            return entry.label if entry else ""

    def active(self) -> list[Job]:
        with self._lock:
            return [e.job for e in self._jobs.values() if e.job.running]

    def running_untagged(self) -> list[Job]:
        """Running jobs submitted without a key: the ones users start (a keyed job, such as the starter teacher,
        is looked after by its own code)."""
        with self._lock:
            return [e.job for e in self._jobs.values() if e.job.running and e.key is None]

    def of_run(self, run_id: str) -> Job | None:
        """The running job writing run `run_id`, if this process has one."""
        with self._lock:
            return next((e.job for e in self._jobs.values() if e.job.running and e.job.run_record is not None
                         and e.job.run_record.id == run_id), None)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop before its next step; False if no such job is known."""
        job = self.get(job_id)
        if job is None:
            return False
        if job.running and job.run_record is not None:  # so "stopped within one step" can be checked later
            job.run_record.log_event({"step": len(job.history), "cancel_requested": True})
        job.cancel()
        return True

    def set_pace(self, job_id: str, steps_per_second: float | None) -> None:
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None and entry.pacer is not None:
                entry.pacer.steps_per_second = steps_per_second

    def pace(self, job_id: str) -> float | None:
        with self._lock:
            entry = self._jobs.get(job_id)
            return entry.pacer.steps_per_second if entry and entry.pacer else None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every running job and wait for it (tests, server exit)."""
        jobs = self.active()
        for job in jobs:
            job.cancel()
        for job in jobs:
            job.wait(timeout)

    # ------------------------------------------------------------------ internals
    def _evict(self) -> None:
        # Finished jobs stay reachable (a reload after the end still shows the result) up to `keep_finished`;
        # their files are in the run store anyway.
        finished = [jid for jid, e in self._jobs.items() if not e.job.running]
        for jid in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[jid]
