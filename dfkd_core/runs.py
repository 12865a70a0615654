"""Run directories indexed in SQLite: every teacher, synthesis and distillation lands here.

Layout: <home>/runs/<run-id>/{config.json, metrics.jsonl, events.jsonl, summary.json, ...artifacts}
and <home>/index.sqlite with one row per run. <home> is $DFKD_HOME, else ~/.dfkd.
A run whose process died while it was 'running' is shown as 'interrupted', never silently dropped.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT NOT NULL, teacher TEXT, method TEXT, dataset TEXT, summary TEXT, error TEXT,
    pid INTEGER, host TEXT, dir TEXT NOT NULL
)"""


def default_home() -> Path:
    return Path(os.environ.get("DFKD_HOME", "~/.dfkd")).expanduser()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        return self.dir / name

    def _append(self, name: str, record: dict) -> None:
        with self._lock, open(self.dir / name, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def log_metrics(self, metrics: dict) -> None:
        self._append("metrics.jsonl", metrics)

    def log_event(self, event: dict) -> None:
        self._append("events.jsonl", {"time": time.time(), **event})

    def save_json(self, name: str, obj: Any) -> Path:
        p = self.dir / name
        p.write_text(json.dumps(_jsonable(obj), indent=2))
        return p

    def load_json(self, name: str) -> Any:
        return json.loads((self.dir / name).read_text())

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.dir / "metrics.jsonl")

    def events(self) -> list[dict]:
        return _read_jsonl(self.dir / "events.jsonl")

    def config(self) -> dict:
        return self.load_json("config.json") if (self.dir / "config.json").exists() else {}

    def set_status(self, status: str, summary: dict | None = None, error: str | None = None) -> None:
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
    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.runs_dir = self.home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "index.sqlite"
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    # ------------------------------------------------------------------ writing
    def create(self, kind: str, config: dict, *, teacher: str | None = None, method: str | None = None,
               dataset: str | None = None, name: str | None = None) -> Run:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{kind}-{stamp}-{uuid.uuid4().hex[:4]}"
        directory = self.runs_dir / run_id
        directory.mkdir(parents=True)
        run = Run(self, run_id, directory)
        run.save_json("config.json", config)
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO runs (id, kind, name, created, updated, status, teacher, method, dataset, "
                       "summary, pid, host, dir) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (run_id, kind, name, now, now, "running", teacher, method, dataset, "{}", os.getpid(),
                        socket.gethostname(), str(directory)))
        return run

    def _update(self, run_id: str, status: str, summary: dict | None = None, error: str | None = None) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status=?, updated=?, summary=COALESCE(?, summary), error=? WHERE id=?",
                       (status, time.time(), json.dumps(_jsonable(summary)) if summary is not None else None,
                        error, run_id))

    def delete(self, run_id: str) -> None:
        record = self.get_record(run_id)
        if record.status == "running":
            raise RuntimeError(f"run {run_id} is still running; cancel it first")
        shutil.rmtree(record.dir, ignore_errors=True)
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # ------------------------------------------------------------------ reading
    def _mark_interrupted(self, db: sqlite3.Connection) -> None:
        host = socket.gethostname()
        for row in db.execute("SELECT id, pid FROM runs WHERE status='running' AND host=?", (host,)).fetchall():
            if row["pid"] is None or not _pid_alive(row["pid"]):
                db.execute("UPDATE runs SET status='interrupted', error=? WHERE id=?",
                           ("the process running it stopped before it finished; its files are kept", row["id"]))

    def list(self, kind: str | None = None, status: str | None = None) -> list[RunRecord]:
        with self._connect() as db:
            self._mark_interrupted(db)
            query, args = "SELECT * FROM runs WHERE 1=1", []
            if kind:
                query, args = query + " AND kind=?", args + [kind]
            if status:
                query, args = query + " AND status=?", args + [status]
            rows = db.execute(query + " ORDER BY created DESC", args).fetchall()
        return [self._record(r) for r in rows]

    def get_record(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            self._mark_interrupted(db)
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:  # allow unique prefixes, as git does
                rows = db.execute("SELECT * FROM runs WHERE id LIKE ?", (run_id + "%",)).fetchall()
                if len(rows) != 1:
                    raise KeyError(f"no run '{run_id}'" if not rows else f"'{run_id}' matches {len(rows)} runs")
                row = rows[0]
        return self._record(row)

    def get(self, run_id: str) -> Run:
        record = self.get_record(run_id)
        return Run(self, record.id, record.dir)

    def resolve_checkpoint(self, ref: str | Path, filename: str = "model.pt") -> Path:
        """A checkpoint path, or the id of a run holding one."""
        p = Path(ref).expanduser()
        if p.is_file():
            return p
        try:
            record = self.get_record(str(ref))
        except KeyError:
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

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        return RunRecord(row["id"], row["kind"], row["name"], row["created"], row["updated"], row["status"],
                         row["teacher"], row["method"], row["dataset"], json.loads(row["summary"] or "{}"),
                         row["error"], Path(row["dir"]))
