"""A distillation on several local processes (torchrun), started and watched from this process like any other job.

The app (or a notebook) builds the `DistillJob` as usual, with the planned number of processes, and hands it to
`LaunchedDistillJob`: the job's run is created here, then

    python -m torch.distributed.run --standalone --nproc_per_node N -m dfkd_core.cli distill --attach-run <run id>

runs it: every rank reads the settings from the run's config.json, rank 0 takes the run over and writes it. This
process follows the run's files: each new line of metrics.jsonl becomes a step of this job (its history, curve and
events, so live pages draw it as they draw a job of their own), and run.json gives the end. Stop sends the launcher
SIGINT, which torchrun passes to every rank: they stop at the same step and the leader saves what was finished.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dfkd_core.distill.job import DistillJob
from dfkd_core.distributed import Distributed
from dfkd_core.runs import RunStore

POLL_S = 0.25
LAUNCHER_LOG = "launcher.log"


def planned_world(processes: int) -> Distributed:
    """The world a launched job will have, to plan with here (its steps, its per-process batch, what it refuses);
    no process group is joined."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    return Distributed(rank=0, world=processes)


class LaunchedDistillJob(DistillJob):
    """`DistillJob` whose work runs in `processes` torchrun processes; this object mirrors its run.

    Build it like a DistillJob plus `processes` and the `store` the run lives in; set `run_record` (a run created
    with the job's config) before `run()`/`start()`.
    """

    def __init__(self, teacher, config, processes: int, store: RunStore, pool=None):
        super().__init__(teacher, config, pool=pool, world=planned_world(processes))
        self.processes, self.store = processes, store
        self.process: subprocess.Popen | None = None
        self._offset = 0   # bytes of metrics.jsonl already read
        self._tail = b""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.processes}",
                "-m", "dfkd_core.cli", "--home", str(self.store.home), "--quiet", "distill",
                "--attach-run", self.run_record.id]

    def run(self) -> dict:
        if self.run_record is None:
            raise ValueError("a launched job needs its run (run_record) before it starts")
        self.status, self.started_at = "running", time.time()
        self.t0 = time.time()
        log = open(self.run_record.path(LAUNCHER_LOG), "ab")
        try:
            # A session of its own: a Ctrl-C of the app's terminal is the app's, Stop is the job's.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        except OSError as e:
            log.close()
            return self._end("failed", f"could not start torchrun: {e}")
        self._emit("started", message=f"distillation started in {self.processes} processes")
        interrupted = False
        while self.process.poll() is None:
            if self.cancel_requested and not interrupted:
                self.process.send_signal(signal.SIGINT)   # torchrun passes it to every rank
                interrupted = True
            self._follow()
            time.sleep(POLL_S)
        log.close()
        self._follow()
        record = self.store.get_record(self.run_record.id)
        if record.status == "running":   # the leader died before it could say how the run ended
            tail = self.run_record.path(LAUNCHER_LOG).read_text(errors="replace").strip().splitlines()[-3:]
            error = f"torchrun exited with code {self.process.returncode}: {' / '.join(tail)[:400]}"
            self.run_record.set_status("failed", summary=record.summary, error=error)
            record = self.store.get_record(self.run_record.id)
        self.result = dict(record.summary)
        if isinstance(self.result.get("teacher_accuracy"), float):
            self.teacher_accuracy = self.result["teacher_accuracy"]
        return self._end(record.status, record.error)

    def _end(self, status: str, error: str | None) -> dict:
        self.status, self.error = status, error
        self._emit(status, step=self.step_index, metrics=self.result, message=error or status)
        return self.result

    def _follow(self) -> None:
        """Read the complete lines the leader appended to metrics.jsonl since the last call."""
        path = self.run_record.path("metrics.jsonl")
        if not path.exists():
            return
        with open(path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._tail + data
        *lines, self._tail = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            metrics = json.loads(line)
            self.history.append(metrics)
            self.step_index = metrics.get("step", self.step_index)
            if "student_accuracy" in metrics:
                self.curve.append({k: metrics.get(k) for k in ("images_synthesized", "student_steps",
                                                               "student_accuracy", "elapsed_s")})
            self._emit("step", step=self.step_index, metrics=metrics)

    def log_path(self) -> Path | None:
        return self.run_record.path(LAUNCHER_LOG) if self.run_record is not None else None
