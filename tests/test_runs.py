import os
import sqlite3

import pytest

from dfkd_core.runs import RunStore


def test_create_log_finish_list(store):
    run = store.create("synthesis", {"lr": 0.1}, teacher="t1", method="deepinversion", dataset="digits")
    run.log_metrics({"step": 0, "loss": 1.5})
    run.log_metrics({"step": 1, "loss": float("nan")})
    run.set_status("done", summary={"teacher_accuracy": 0.97})
    [record] = store.list()
    assert record.status == "done" and record.summary["teacher_accuracy"] == 0.97
    assert run.config() == {"lr": 0.1}
    assert [m["step"] for m in run.metrics()] == [0, 1]
    assert store.get(run.id[:20]).id == run.id  # unique prefix


def test_run_of_dead_process_is_marked_interrupted_and_kept(store):
    run = store.create("synthesis", {})
    with sqlite3.connect(store.db_path) as db:  # pretend a process that no longer exists started it
        db.execute("UPDATE runs SET pid=? WHERE id=?", (2 ** 22 + 12345, run.id))
    record = store.get_record(run.id)
    assert record.status == "interrupted" and "stopped" in record.error
    assert run.dir.exists()


def test_live_run_stays_running(store):
    run = store.create("synthesis", {})
    assert store.get_record(run.id).status == "running" and os.getpid()


def test_delete_refuses_running_then_removes(store):
    run = store.create("teacher", {})
    with pytest.raises(RuntimeError, match="still running"):
        store.delete(run.id)
    run.set_status("cancelled")
    store.delete(run.id)
    assert store.list() == [] and not run.dir.exists()


def test_resolve_checkpoint_explains(store):
    run = store.create("teacher", {})
    with pytest.raises(FileNotFoundError, match="has no model.pt"):
        store.resolve_checkpoint(run.id)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a run id"):
        store.resolve_checkpoint("no-such-run")


def test_truncated_metrics_line_keeps_earlier_rows(store):
    run = store.create("teacher", {})
    run.log_metrics({"step": 0})
    with open(run.path("metrics.jsonl"), "a") as f:
        f.write('{"step": 1, "lo')
    assert run.metrics() == [{"step": 0}]
