"""Run directories indexed in SQLite: every teacher, synthesis and distillation lands here.

Layout: <home>/runs/<run-id>/{run.json, config.json, metrics.jsonl, events.jsonl, summary.json, ...artifacts}
and <home>/index.sqlite with one row per run. <home> is $DFKD_HOME, else ~/.dfkd.

The run directories are the truth, the index a cache: `run.json` holds everything the run's row holds and is
rewritten (atomically) on every status change, so a missing, corrupt or locked index loses nothing — it is rebuilt
from the directories (see `dfkd_core.run_index`). Every file a run writes appears atomically (`atomic_open`), so a
killed process never leaves a half-written file under a real name; append-only logs tolerate a cut last line.
A run whose process died while it was 'running' is shown as 'interrupted', never silently dropped.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from dfkd_core.run_index import RunIndex

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
INTERRUPTED_ERROR = "the process running it stopped before it finished; its files are kept"
# Its results (images, a model) are first saved after some seconds (`Job.progress_every_s`): a run stopped before
# has only its config and curves, and says so.
INTERRUPTED_EARLY = ("the process running it stopped before it finished, before its first progress save: only its "
                     "settings and curves are kept, no images or model")
SAVED_RESULTS = ("images.pt", "model.pt", "resume.pt", "results.json")
# What `create` makes (kind-stamp-hex); a reference to a run (an id or a prefix of one) may only use these
# characters, so no reference can name a path outside the run store ('/', '..', an absolute path).
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_home() -> Path:
    # `DFKD_HOME= dfkd ...` (set but empty) means the default, not the current directory
    return Path(os.environ.get("DFKD_HOME") or "~/.dfkd").expanduser()


class UnknownRunError(KeyError):
    """No run, or more than one, answers to a run reference; the message says which."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0])


class RunStillRunningError(RuntimeError):
    """A running run cannot be deleted."""


# ---------------------------------------------------------------------- atomic files

@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears under `path` only once completely written: written to a temporary file beside it,
    flushed to disk, then renamed over `path` (`os.replace` is atomic), so a reader — or the next start after a
    kill — sees the old file or the new one, never half of one. On an exception nothing is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


# ---------------------------------------------------------------------- the process that runs a run

def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); None without /proc or pid.

    With the pid it identifies a process for good: a pid alone is reused by the system after its process ends."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "pid (comm)" start at field 3


def process_alive(pid: int | None, start_ticks: int | None) -> bool:
    """Whether the process that recorded (pid, start_ticks) still runs: the pid exists and, where its start time was
    recorded, it is the same process, not a later one that got the same pid."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return start_ticks is None or process_start_ticks(pid) == start_ticks


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else str(obj)
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


@dataclass
class RunRecord:
    id: str
    kind: str
    name: str | None
    created: float
    updated: float
    status: str
    teacher: str | None
    method: str | None
    dataset: str | None
    summary: dict
    error: str | None
    dir: Path

    @property
    def created_str(self) -> str:
        return datetime.fromtimestamp(self.created).strftime("%Y-%m-%d %H:%M")


class Run:
    """One run's directory; methods are safe to call from a job's background thread."""

    def __init__(self, store: "RunStore", run_id: str, directory: Path):
        self.store, self.id, self.dir = store, run_id, directory
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """A file of this run: its directory / name (model.pt, images.pt, config.json...)."""
        return self.dir / name

    def _append(self, name: str, record: dict) -> None:
        with self._lock, open(self.dir / name, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def log_metrics(self, metrics: dict) -> None:
        self._append("metrics.jsonl", metrics)

    def log_event(self, event: dict) -> None:
        self._append("events.jsonl", {"time": time.time(), **event})

    def save_json(self, name: str, obj: Any) -> Path:
        return atomic_write_text(self.dir / name, json.dumps(_jsonable(obj), indent=2))

    def load_json(self, name: str) -> Any:
        return json.loads((self.dir / name).read_text())

    def metrics(self) -> list[dict]:
        """Every step's metrics as logged, in order (metrics.jsonl)."""
        return _read_jsonl(self.dir / "metrics.jsonl")

    def events(self) -> list[dict]:
        return _read_jsonl(self.dir / "events.jsonl")

    def config(self) -> dict:
        """The settings the run started with (config.json); {} for a run without one."""
        return self.load_json("config.json") if (self.dir / "config.json").exists() else {}

    def set_status(self, status: str, summary: dict | None = None, error: str | None = None) -> None:
        """Record how the run stands (running, done, cancelled, failed...), with its summary and error if any."""
        if summary is not None:
            self.save_json("summary.json", summary)
        self.store._update(self.id, status=status, summary=summary, error=error)

    def record(self) -> RunRecord:
        return self.store.get_record(self.id)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut off by a crash: keep everything before it
    return rows


class RunStore:
    """Run directories under <home>/runs and their index; safe to share between threads and processes (each call
    opens its own index connection; every file is written atomically)."""

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.runs_dir = self.home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "index.sqlite"
        self.index = RunIndex(self.db_path, self.runs_dir, self._run_files)
        self.index.upgrade(self._write_missing_run_file)

    # ------------------------------------------------------------------ writing
    def create(self, kind: str, config: dict, *, teacher: str | None = None, method: str | None = None,
               dataset: str | None = None, name: str | None = None) -> Run:
        """A new run, status 'running', with `config` saved as its config.json; `teacher` (a run id), `method`,
        `dataset` and `name` are what `dfkd runs`, the Runs page and the pickers show and filter by."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{kind}-{stamp}-{uuid.uuid4().hex[:4]}"
        now, pid = time.time(), os.getpid()
        row = {"id": run_id, "kind": kind, "name": name, "created": now, "updated": now, "status": "running",
               "teacher": teacher, "method": method, "dataset": dataset, "summary": {}, "error": None,
               "pid": pid, "pid_start": process_start_ticks(pid), "host": socket.gethostname()}
        # Filled under a hidden name, then renamed into place: a run directory always holds its run.json.
        staging = self.runs_dir / f".new-{run_id}"
        staging.mkdir(parents=True)
        atomic_write_text(staging / "config.json", json.dumps(_jsonable(config), indent=2))
        atomic_write_text(staging / RUN_FILE, json.dumps(_jsonable(row), indent=2))
        directory = self.runs_dir / run_id
        os.replace(staging, directory)
        self.index.put(row)
        return Run(self, run_id, directory)

    def _update(self, run_id: str, status: str, summary: dict | None = None, error: str | None = None) -> None:
        row = self._read_run_file(self.runs_dir / run_id)
        row.update(status=status, updated=time.time(), error=error)
        if summary is not None:
            row["summary"] = _jsonable(summary)
        atomic_write_text(self.runs_dir / run_id / RUN_FILE, json.dumps(_jsonable(row), indent=2))
        self.index.put(row)

    def reopen(self, reference: str) -> Run:
        """A stopped run runs again in this process (`dfkd distill --resume`): status 'running' under this pid, so a
        listing from another process sees a live run, not an interrupted one, and a second resume is refused."""
        record = self.get_record(reference)
        if record.status == "running":
            raise RunStillRunningError(f"run {record.id} is running in another process; stop it first")
        row = self._read_run_file(self.runs_dir / record.id)
        pid = os.getpid()
        row.update(status="running", updated=time.time(), error=None, pid=pid, pid_start=process_start_ticks(pid),
                   host=socket.gethostname())
        atomic_write_text(self.runs_dir / record.id / RUN_FILE, json.dumps(_jsonable(row), indent=2))
        self.index.put(row)
        return Run(self, record.id, self.runs_dir / record.id)

    def hand_over(self, reference: str) -> Run:
        """A run created by one process is written by another from now on (the app creates a run, torchrun's
        leader runs it): it stays 'running', under this pid, so its liveness is this process's."""
        record = self.get_record(reference)
        row = self._read_run_file(self.runs_dir / record.id)
        pid = os.getpid()
        row.update(updated=time.time(), pid=pid, pid_start=process_start_ticks(pid), host=socket.gethostname())
        atomic_write_text(self.runs_dir / record.id / RUN_FILE, json.dumps(_jsonable(row), indent=2))
        self.index.put(row)
        return Run(self, record.id, self.runs_dir / record.id)

    def delete(self, reference: str) -> RunRecord:
        """Delete the one run `reference` names (its id or a unique prefix): its index row and its directory.

        The directory is first renamed out of the store's view, so a crash midway never leaves a listed run without
        files, nor files that come back as a run."""
        record = self.get_record(reference)
        if record.status == "running":
            raise RunStillRunningError(f"run {record.id} is still running; stop it first")
        trash = self.runs_dir / f".deleted-{record.id}-{uuid.uuid4().hex[:4]}"
        os.replace(record.dir, trash)
        self.index.remove(record.id)
        shutil.rmtree(trash)
        return record

    # ------------------------------------------------------------------ reading
    def list(self, kind: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Every run, newest first; `kind` (teacher, synthesis, distill, analysis...) and `status` filter."""
        records = [self._record(row) for row in self._rows()]
        return [r for r in records if (not kind or r.kind == kind) and (not status or r.status == status)]

    def get_record(self, reference: str) -> RunRecord:
        """The run whose id is `reference`, or the only one whose id starts with it (a unique prefix, as git allows).

        `UnknownRunError` (a KeyError) when none or several match; the message lists the candidates."""
        prefix = _checked_reference(reference)
        matches = self._rows(prefix)
        exact = [row for row in matches if row["id"] == prefix]
        if exact or len(matches) == 1:
            return self._record((exact or matches)[0])
        if not matches:
            raise UnknownRunError(f"no run '{reference}' in {self.home} (`dfkd runs` lists them)")
        shown = ", ".join(row["id"] for row in matches[:10]) + (", ..." if len(matches) > 10 else "")
        raise UnknownRunError(f"'{reference}' matches {len(matches)} runs ({shown}); give more of the id")

    def get(self, reference: str) -> Run:
        """The run a full id or unique id prefix names, to read or write its files (`get_record`: its facts)."""
        record = self.get_record(reference)
        return Run(self, record.id, record.dir)

    def resolve_checkpoint(self, ref: str | Path, filename: str = "model.pt") -> Path:
        """A checkpoint path, or the id of a run holding one."""
        p = Path(ref).expanduser()
        if p.is_file():
            return p
        try:
            record = self.get_record(str(ref))
        except UnknownRunError as e:
            if " matches " in str(e):   # a prefix of several runs: say which, as `dfkd delete` does
                raise FileNotFoundError(str(e)) from None
            raise FileNotFoundError(f"'{ref}' is neither a checkpoint file nor a run id in {self.home}") from None
        path = record.dir / filename
        if not path.exists():
            raise FileNotFoundError(f"run {record.id} ({record.kind}, {record.status}) has no {filename}")
        return path

    def run_id_of(self, path: str | Path | None) -> str | None:
        """The id of the run a file belongs to (its directory name), or the path itself if outside the store."""
        if path is None:
            return None
        p = Path(path).resolve()
        return p.parent.name if p.parent.parent == self.runs_dir.resolve() else str(path)

    # ------------------------------------------------------------------ internals
    def _rows(self, id_prefix: str = "") -> list[dict]:
        """The rows of runs whose id starts with `id_prefix`, newest first (from the index, or the directories while
        it is locked); runs whose process died are marked interrupted first."""
        rows = []
        for row in self.index.rows(id_prefix):
            if (self.runs_dir / row["id"]).is_dir():
                rows.append(row)
            else:  # removed by hand: listing it would show a run without files
                self.index.remove(row["id"])
                log.warning("run %s: its directory is gone from %s; dropped from the index", row["id"], self.runs_dir)
        for row in rows:
            if row["status"] == "running" and row.get("host") == socket.gethostname() \
                    and not process_alive(row.get("pid"), row.get("pid_start")):
                saved = any((self.runs_dir / row["id"] / name).is_file() for name in SAVED_RESULTS)
                error = INTERRUPTED_ERROR if saved else INTERRUPTED_EARLY
                self._update(row["id"], "interrupted", error=error)
                row.update(status="interrupted", error=error)
        return rows

    def _run_files(self) -> list[dict]:
        """The rows the run directories hold, for rebuilding the index (hidden names are runs being made or
        deleted)."""
        return [self._read_run_file(d) for d in sorted(self.runs_dir.iterdir())
                if d.is_dir() and not d.name.startswith(".")]

    def _write_missing_run_file(self, row: dict) -> None:
        directory = self.runs_dir / row["id"]
        if directory.is_dir() and not (directory / RUN_FILE).exists():
            atomic_write_text(directory / RUN_FILE, json.dumps(_jsonable(row), indent=2))

    def _read_run_file(self, directory: Path) -> dict:
        try:
            return json.loads((directory / RUN_FILE).read_text())
        except FileNotFoundError:
            return _row_without_run_file(directory)

    def _record(self, row: dict) -> RunRecord:
        # The directory follows from the id, never from a stored path: a moved store still works, and no row can
        # point outside it.
        return RunRecord(row["id"], row["kind"], row.get("name"), row["created"], row.get("updated", row["created"]),
                         row["status"], row.get("teacher"), row.get("method"), row.get("dataset"),
                         row.get("summary") or {}, row.get("error"), self.runs_dir / row["id"])


def _checked_reference(reference: str) -> str:
    if not reference:
        raise UnknownRunError("an empty run id would match every run; give a run id or the start of one")
    if not _REFERENCE.fullmatch(reference) or ".." in reference:
        raise UnknownRunError(f"'{reference}' is not a run id: run ids are letters, digits, '-', '_' and '.', "
                              "as `dfkd runs` lists them")
    return reference


def _row_without_run_file(directory: Path) -> dict:
    """A run made before run.json existed (its index lost): what its directory still tells."""
    summary_path = directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    created = directory.stat().st_mtime
    return {"id": directory.name, "kind": directory.name.split("-")[0], "name": None, "created": created,
            "updated": created, "status": summary.get("status", "done") if summary else "interrupted",
            "teacher": None, "method": summary.get("method"), "dataset": summary.get("dataset"),
            "summary": summary, "error": "recovered from its directory (no run.json): teacher and name unknown",
            "pid": None, "pid_start": None, "host": None}
