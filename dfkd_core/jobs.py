"""Long work as a job: step by step, emitting events that the CLI, the app and the tests all consume.

A job can run in the caller's thread (`run()`) or in a background thread (`start()`); it can be cancelled
(`cancel()`, effective before the next step) and some of its parameters can be changed while it runs
(`update(...)`, applied at the start of the next step). Whatever happens, `finish()` runs so finished work is
saved, and the attached run directory records the final status. While it runs, `save_progress()` is called between
steps every `progress_every_s` seconds, so a process killed outright (no `finish()`) still leaves recent work.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dfkd_core.device import CPUShare
from dfkd_core.distributed import Distributed, agree_to_stop
from dfkd_core.time_left import TimeLeft, estimate_time_left

EVENT_KINDS = ("started", "step", "snapshot", "updated", "done", "cancelled", "failed")
TERMINAL = ("done", "cancelled", "failed")


@dataclass
class Event:
    kind: str
    job_id: str
    step: int = 0
    total: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None  # display-ready [0, 1] images (snapshot events)
    labels: list[str] | None = None
    message: str = ""
    time: float = field(default_factory=time.time)


def progress_interval_from_env() -> float:
    """$DFKD_PROGRESS_EVERY_S (seconds between progress saves), else 30."""
    raw = os.environ.get("DFKD_PROGRESS_EVERY_S", "30")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"$DFKD_PROGRESS_EVERY_S must be a positive number of seconds, got '{raw}'")
    return seconds


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names it."""


def check_finite(terms: dict[str, torch.Tensor | float], step: int, weighted: bool = True) -> None:
    """`weighted`: the terms have weights a user sets (a teacher's cross-entropy has none to lower)."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if v != v or v in (float("inf"), float("-inf")):
            raise NonFiniteLossError(f"loss term '{name}' is {v} at step {step}; lower the learning rate"
                                     + (f" or the weight of '{name}'" if weighted else ""))


class Job:
    """Base class. Subclasses set `total_steps` and implement `setup`, `step`, `finish` (and `snapshot`)."""

    kind = "job"
    live_parameters: tuple[str, ...] = ()  # names `update()` accepts while running
    snapshot_every = 0
    # Seconds between `save_progress()` calls: often enough that a killed run loses little, rarely enough that
    # writing its files costs nothing noticeable (a digits batch: ~5 ms). None: $DFKD_PROGRESS_EVERY_S, else 30.
    progress_every_s: float | None = None
    # Seconds between reads of the metrics a step leaves on its device (`read_metrics`): a GPU step that read its
    # losses back at once would wait for the GPU every step, and the live app shows ~10 updates a second anyway.
    # 0: every step. A snapshot, the last step and a cancel always read what is pending first.
    metrics_every_s: float | None = 0.0

    def __init__(self, run=None):
        self.id = uuid.uuid4().hex[:12]
        self.run_record = run
        self.status = "pending"
        self.error: str | None = None
        self.result: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []   # step metrics, for live plots
        self.updates: list[dict[str, Any]] = []   # {"step": i, **changes}: where live plots mark a change
        self.latest_snapshot: Event | None = None
        self.step_index = 0
        self.total_steps = 0
        self.started_at: float | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._thread: threading.Thread | None = None
        # The processes this job runs in (torchrun): one by default. With more, they step in lockstep and stop at
        # the same step (`stop_requested`); only the leader has a run record.
        self.world = Distributed()

    # ------------------------------------------------------------------ subclass interface
    def setup(self) -> None: ...

    def step(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def snapshot(self) -> tuple[torch.Tensor, list[str] | None]:
        raise NotImplementedError

    def apply_updates(self, updates: dict[str, Any]) -> None:
        for k, v in updates.items():
            setattr(self.config, k, v)

    def read_metrics(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The metrics of the steps since the last read as plain values (one device read for all of them); raising
        fails the job. By default steps return plain values already."""
        return pending

    def save_progress(self) -> None:
        """Save the work so far to the run directory (atomically), for a process that may be killed before
        `finish()`. Called from the job's thread between steps, never during one."""

    def finish(self, status: str) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ public verbs
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` for every Event the job emits, in the job's thread (keep it quick)."""
        self._listeners.append(listener)

    def cancel(self) -> None:
        """Ask the job to stop after the step in progress; what it made so far is kept."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def stop_requested(self) -> bool:
        """Whether to stop before the next step. A job in several processes asks them all (one collective), so a
        cancel in any of them stops every one at the same step instead of leaving the others in a collective."""
        return agree_to_stop(self.world, self._cancel.is_set())

    def update(self, **changes: Any) -> None:
        """Change live parameters; they take effect at the start of the next step."""
        unknown = set(changes) - set(self.live_parameters)
        if unknown:
            raise ValueError(f"{type(self).__name__} cannot change {sorted(unknown)} while running; "
                             f"live parameters: {list(self.live_parameters)}")
        with self._lock:
            self._pending.update(changes)

    def start(self) -> "Job":
        """Run the job in a background thread; returns at once (`wait` joins it)."""
        self._thread = threading.Thread(target=self.run, name=f"{self.kind}-{self.id}", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job ends (or `timeout` seconds pass); returns its status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    @property
    def running(self) -> bool:
        return self.status in ("pending", "running")

    def time_left(self) -> TimeLeft | None:
        """The remaining time at this job's pace so far, each kind of step timed apart (None before its second
        step)."""
        rows = list(self.history)
        if len(rows) < 2:
            return None
        return estimate_time_left(rows, *self.steps_left_by_kind(rows))

    def steps_left_by_kind(self, rows: list[dict]) -> tuple[dict[str, int], Callable[[dict, dict], str]]:
        """Kind → steps still to take after `rows`, and the kind each logged step was: one kind here; a job whose
        steps differ in cost says which is which (`DistillJob`)."""
        return {"steps": self.total_steps - len(rows)}, lambda previous, row: "steps"

    def run(self) -> dict[str, Any]:
        """Run to completion in this thread. Never raises for a failed job: see `status` and `error`. While it runs,
        its thread uses its share of the CPU threads (`CPUShare`: fewer while other dfkd jobs run)."""
        with CPUShare(self.id) as self.cpu_share:
            return self._run()

    def _run(self) -> dict[str, Any]:
        self.status, self.started_at = "running", time.time()
        final = "done"
        pending: list[tuple[int, dict[str, Any]]] = []   # (index, metrics) of steps not read yet
        try:
            self.setup()
            self._emit("started", message=f"{self.kind} started")
            progress_every_s = self.progress_every_s or progress_interval_from_env()
            progress_saved_at = read_at = time.monotonic()
            for i in range(self.total_steps):
                if self.stop_requested():
                    final = "cancelled"
                    break
                self.step_index = i
                self._apply_pending()
                self.cpu_share.refresh()
                metrics = self.step(i)
                metrics.setdefault("step", i)
                metrics.setdefault("elapsed_s", time.time() - self.started_at)
                pending.append((i, metrics))
                last = i + 1 == self.total_steps
                snapshot_due = self.snapshot_every and ((i + 1) % self.snapshot_every == 0 or i == 0)
                if (snapshot_due or last or self._cancel.is_set()
                        or time.monotonic() - read_at >= (self.metrics_every_s or 0.0)):
                    self._publish(pending)
                    pending, read_at = [], time.monotonic()
                # The last step, and one a cancel follows (also one asked for while this step was announced), are
                # what the run ends with: the live view shows them.
                if self.snapshot_every and (snapshot_due or last or self._cancel.is_set()):
                    self._emit_snapshot(i)
                if i + 1 < self.total_steps and time.monotonic() - progress_saved_at >= progress_every_s:
                    self.save_progress()   # (after the last step `finish()` saves)
                    progress_saved_at = time.monotonic()
            if final == "done" and self._cancel.is_set():
                final = "cancelled"
        except KeyboardInterrupt:
            final, self.error = "cancelled", "interrupted by Ctrl-C"
        except Exception as e:  # the job reports; a background thread has nobody to raise to
            final, self.error = "failed", f"{type(e).__name__}: {e}"
            if isinstance(e, NonFiniteLossError) and self.run_record is not None:
                self.error += (" (the finished part of the run was kept)" if self.history else
                               " (no step had finished: the run has no images)")
            self._traceback = traceback.format_exc()
        if pending:   # steps finished before a Ctrl-C or a failure are reported like any other
            try:
                self._publish(pending)
            except Exception as e:
                if final != "failed":
                    final, self.error = "failed", f"{type(e).__name__}: {e}"
        try:
            self.result = self.finish(final) or {}
        except Exception as e:
            if final != "failed":
                final, self.error = "failed", f"while saving results: {type(e).__name__}: {e}"
        on_cpu = getattr(getattr(self, "device", None), "type", "cpu") == "cpu"   # a GPU job's sums are the GPU's
        if getattr(self, "cpu_share", None) is not None and self.cpu_share.used and on_cpu:
            self.result["cpu_threads"] = sorted(self.cpu_share.used)
            if note := self.cpu_share.reproducibility_note():
                self.result["reproducibility_note"] = note
        if self.updates:   # the run's settings are where it started; its summary says they changed on the way
            self.result["live_updates"] = [dict(u) for u in self.updates]
        with self._lock:   # asked for after the last step began: never applied, and said so
            late, self._pending = self._pending, {}
        if late:
            self.result["late_updates"] = dict(late)
        try:
            # The store first: a page that sees the job end (`running` False) reruns once and must find the run
            # finished there (a stopped teacher missed its own page's picker).
            if self.run_record is not None:
                self.run_record.set_status(final, summary=self.result, error=self.error)
        finally:
            self.status = final
        self._emit(final, step=self.step_index, metrics=self.result, message=self.error or final)
        return self.result

    # ------------------------------------------------------------------ internals
    def _publish(self, pending: list[tuple[int, dict[str, Any]]]) -> None:
        """Read the pending steps' metrics, then record and announce each step in order."""
        read = self.read_metrics([metrics for _, metrics in pending])
        for (i, _), metrics in zip(pending, read):
            self.history.append(metrics)
            if self.run_record is not None:
                self.run_record.log_metrics(metrics)
            self._emit("step", step=i, metrics=metrics)

    def _apply_pending(self) -> None:
        with self._lock:
            updates, self._pending = self._pending, {}
        if updates:
            self.apply_updates(updates)
            self.updates.append({"step": self.step_index, **updates})
            if self.run_record is not None:
                self.run_record.log_event({"step": self.step_index, "updated": updates})
            self._emit("updated", step=self.step_index, metrics=dict(updates),
                       message=", ".join(f"{k}={v}" for k, v in updates.items()))

    def _emit_snapshot(self, i: int) -> None:
        images, labels = self.snapshot()
        event = self._make("snapshot", step=i, images=images, labels=labels)
        self.latest_snapshot = event
        self._dispatch(event)

    def _make(self, kind: str, **kw) -> Event:
        return Event(kind=kind, job_id=self.id, total=self.total_steps, **kw)

    def _emit(self, kind: str, **kw) -> None:
        self._dispatch(self._make(kind, **kw))

    def _dispatch(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)
