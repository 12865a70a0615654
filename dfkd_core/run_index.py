"""The run store's SQLite index (<home>/index.sqlite): a cache of the run directories' run.json files, so listing
runs reads one file, not hundreds.

It never holds anything the directories do not, so no fault of its own loses a run:
- missing: created and filled from the run directories;
- corrupt (garbage bytes, a malformed page): set aside as index.sqlite.corrupt, then rebuilt the same way;
- locked by another process past `lock_timeout_s`: reads come from the run directories, writes only mark it stale
  (index.sqlite.stale), and the next access that gets the lock rebuilds it.
Each of these is logged as a warning (logger `dfkd_core.run_index`), never silent and never fatal.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1   # 1: run directories hold run.json, rows record their process's start time (pid_start)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    status TEXT NOT NULL, teacher TEXT, method TEXT, dataset TEXT, summary TEXT, error TEXT,
    pid INTEGER, host TEXT, dir TEXT NOT NULL, pid_start INTEGER
)"""
COLUMNS = ("id", "kind", "name", "created", "updated", "status", "teacher", "method", "dataset", "summary", "error",
           "pid", "pid_start", "host", "dir")
MISSING = "it was missing"
_INSERT = f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class RunIndex:
    """Rows of runs as dicts (run.json's keys); `read_directories()` gives the same rows from the run directories."""

    lock_timeout_s = 5.0   # how long to wait for another process's transaction before reading the directories

    def __init__(self, path: Path, runs_dir: Path, read_directories: Callable[[], list[dict]]):
        self.path, self.runs_dir = path, runs_dir
        self.stale_marker = path.with_name(path.name + ".stale")
        self._read_directories = read_directories
        self._warned_locked = False
        self._set_aside_because: str | None = None   # why the index file is missing, when this object moved it

    # ------------------------------------------------------------------ verbs
    def rows(self, id_prefix: str = "") -> list[dict]:
        """The rows whose id starts with `id_prefix` (taken literally: no wildcards), newest first; from the index,
        or from the run directories while the index is locked."""
        rows = self._attempt(lambda db: [_row(r) for r in db.execute(
            "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created DESC", (len(id_prefix), id_prefix))])
        if rows is None:
            rows = sorted((r for r in self._read_directories() if r["id"].startswith(id_prefix)),
                          key=lambda r: r["created"], reverse=True)
        return rows

    def put(self, row: dict) -> None:
        self._attempt(lambda db: db.execute(_INSERT, self._values(row)))

    def remove(self, run_id: str) -> None:
        self._attempt(lambda db: db.execute("DELETE FROM runs WHERE id=?", (run_id,)))

    def upgrade(self, write_run_file: Callable[[dict], None]) -> None:
        """An index made before run.json files existed: give each of its runs that file (once), so that from then
        on the directories alone can rebuild it."""
        def upgrade_rows(db: sqlite3.Connection) -> None:
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            for row in db.execute("SELECT * FROM runs").fetchall():
                write_run_file(_row(row))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._attempt(upgrade_rows)

    # ------------------------------------------------------------------ internals
    def _attempt(self, action: Callable[[sqlite3.Connection], T]) -> T | None:
        """`action(db)` in one transaction; None when the index stays locked (it is then marked stale). A corrupt
        index is set aside and the action retried once on a rebuilt one."""
        for _ in range(2):
            try:
                with self._open() as db:
                    return action(db)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                self._mark_stale()
                return None
            except sqlite3.DatabaseError as e:  # not a database, malformed pages
                self._set_aside(e)
        raise RuntimeError(f"the run index {self.path} is corrupt again right after a rebuild; check the disk")

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        missing = not self.path.exists()
        db = sqlite3.connect(self.path, timeout=self.lock_timeout_s)
        db.row_factory = sqlite3.Row
        try:
            with db:  # one transaction: committed after the action, rolled back on an exception
                db.execute(_SCHEMA)
                _add_missing_columns(db)
                if missing:
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                reason = self._rebuild_reason(missing)
                if reason:
                    self._rebuild(db, reason)
                yield db
        finally:
            db.close()

    def _rebuild_reason(self, missing: bool) -> str | None:
        if missing:
            reason, self._set_aside_because = self._set_aside_because or MISSING, None
            return reason
        return "it missed writes while locked" if self.stale_marker.exists() else None

    def _rebuild(self, db: sqlite3.Connection, reason: str) -> None:
        # The marker goes before the directories are read: a write that marks the index stale meanwhile is then
        # kept for the next rebuild instead of being cleared unseen.
        self.stale_marker.unlink(missing_ok=True)
        db.execute("BEGIN IMMEDIATE")
        rows = self._read_directories()
        db.execute("DELETE FROM runs")
        db.executemany(_INSERT, [self._values(row) for row in rows])
        if rows or reason != MISSING:   # a new store's first index is no news
            log.warning("rebuilt the run index %s from the run directories (%d runs) because %s; no run was lost",
                        self.path, len(rows), reason)

    def _mark_stale(self) -> None:
        self.stale_marker.touch()
        if not self._warned_locked:
            self._warned_locked = True
            log.warning("the run index %s is locked by another process; reading the run directories instead "
                        "(it is rebuilt once free)", self.path)

    def _set_aside(self, error: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            pass  # another process set it aside first
        for suffix in ("-journal", "-wal", "-shm"):  # a journal of the old file must not be replayed into the new
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        self._set_aside_because = f"it was unreadable ({error}; kept as {aside.name})"

    def _values(self, row: dict) -> tuple[Any, ...]:
        values = {**row, "summary": json.dumps(row.get("summary") or {}), "dir": str(self.runs_dir / row["id"])}
        return tuple(values.get(column) for column in COLUMNS)


def _row(row: sqlite3.Row) -> dict:
    values = dict(row)
    values["summary"] = json.loads(values["summary"] or "{}")
    values.pop("dir", None)   # the store derives it from the id
    return values


def _add_missing_columns(db: sqlite3.Connection) -> None:
    present = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
    if "pid_start" not in present:   # an index from before schema version 1
        db.execute("ALTER TABLE runs ADD COLUMN pid_start INTEGER")
