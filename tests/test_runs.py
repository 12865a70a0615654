import json
import os
import sqlite3
import subprocess
import threading

import pytest
import torch

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
    # Killed before its first progress save: it says nothing but settings and curves are there.
    assert "only its settings and curves are kept, no images or model" in record.error
    saved = store.create("synthesis", {})
    saved.path("images.pt").write_bytes(b"x")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE runs SET pid=? WHERE id=?", (2 ** 22 + 12345, saved.id))
    assert store.get_record(saved.id).error.endswith("its files are kept")


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
    other = store.create("teacher", {})
    with pytest.raises(FileNotFoundError, match=f"'teacher-' matches 2 runs .*{other.id}.*give more of the id"):
        store.resolve_checkpoint("teacher-")


def test_truncated_metrics_line_keeps_earlier_rows(store):
    run = store.create("teacher", {})
    run.log_metrics({"step": 0})
    with open(run.path("metrics.jsonl"), "a") as f:
        f.write('{"step": 1, "lo')
    assert run.metrics() == [{"step": 0}]


def _finished(store, kind="teacher", **kw):
    run = store.create(kind, {}, **kw)
    run.set_status("done", summary={"test_accuracy": 0.9})
    return run


def test_delete_by_prefix_removes_the_row_of_the_full_id_and_the_directory(store):
    run = _finished(store)
    deleted = store.delete(run.id[:-2])
    assert deleted.id == run.id and store.list() == [] and not run.dir.exists()


def test_delete_refuses_an_ambiguous_prefix_and_names_the_candidates(store):
    a, b = _finished(store), _finished(store)
    with pytest.raises(KeyError, match=r"matches 2 runs .*" + a.id[-4:]):
        store.delete("teacher-")
    assert {r.id for r in store.list()} == {a.id, b.id} and a.dir.exists() and b.dir.exists()


@pytest.mark.parametrize("wildcard", ["_", "%", "teacher%", "teacher-_"])
def test_sql_wildcards_in_a_reference_match_only_themselves(store, wildcard):
    _finished(store)
    with pytest.raises(KeyError, match="no run|not a run id"):
        store.get(wildcard)


@pytest.mark.parametrize("reference", ["", "..", "../../etc", "/etc", "teacher/../..", "runs/x", ".hidden"])
def test_references_that_could_name_a_path_are_refused(store, reference):
    _finished(store)
    with pytest.raises(KeyError) as refused:
        store.get(reference)
    assert str(refused.value) == refused.value.args[0] and "run id" in str(refused.value)  # a sentence, unquoted


def test_a_row_pointing_outside_the_store_cannot_make_delete_remove_it(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    run = _finished(store)
    with sqlite3.connect(store.db_path) as db:  # a tampered (or moved) index row
        db.execute("UPDATE runs SET dir=? WHERE id=?", (str(outside), run.id))
    store.delete(run.id)
    assert (outside / "precious.txt").read_text() == "keep me" and not run.dir.exists()


def test_cli_delete_unknown_or_ambiguous_says_so_and_fails(store, capsys):
    from dfkd_core.cli import main
    a, b = _finished(store), _finished(store)
    assert main(["--home", str(store.home), "delete", "no-such-run"]) == 1
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert main(["--home", str(store.home), "delete", "teacher"]) == 1
    assert "matches 2 runs" in capsys.readouterr().err
    assert main(["--home", str(store.home), "delete", a.id[:-1]]) == 0
    assert a.id in capsys.readouterr().out
    assert [r.id for r in RunStore(store.home).list()] == [b.id]


def test_run_directory_holds_what_its_row_holds(store):
    run = store.create("synthesis", {"lr": 0.1}, teacher="t1", method="deepinversion", dataset="digits", name="n")
    run.set_status("failed", summary={"steps": 3}, error="boom")
    saved = json.loads(run.path("run.json").read_text())
    record = store.get_record(run.id)
    for field in ("kind", "name", "teacher", "method", "dataset", "created", "status", "summary", "error"):
        assert saved[field] == getattr(record, field), field


def _three_runs(store):
    runs = [_finished(store, "teacher", name="t"), store.create("synthesis", {}, method="deepinversion")]
    runs[1].set_status("cancelled", summary={"steps": 7}, error="stopped")
    runs.append(store.create("distill", {}))
    return {r.id: store.get_record(r.id) for r in runs}


def _same_records(store, before):
    after = {r.id: r for r in RunStore(store.home).list()}
    assert after.keys() == before.keys()
    for run_id, record in before.items():
        assert after[run_id].__dict__ == record.__dict__


def test_deleted_index_is_rebuilt_from_the_run_directories(store):
    before = _three_runs(store)
    store.db_path.unlink()
    _same_records(store, before)


def test_corrupt_index_is_set_aside_and_rebuilt(store):
    before = _three_runs(store)
    store.db_path.write_bytes(os.urandom(4096))
    _same_records(store, before)
    assert store.db_path.with_name("index.sqlite.corrupt").exists()


def test_locked_index_reads_the_directories_and_keeps_writes_for_the_rebuild(store, monkeypatch):
    from dfkd_core.run_index import RunIndex
    monkeypatch.setattr(RunIndex, "lock_timeout_s", 0.05)
    before = _three_runs(store)
    holder = sqlite3.connect(store.db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        _same_records(store, before)              # read while locked
        late = _finished(store, "teacher", name="made while locked")
        assert late.id in {r.id for r in store.list()}
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with sqlite3.connect(store.db_path) as db:   # the index itself catches up at the next access
        RunStore(store.home).list()
        assert db.execute("SELECT status FROM runs WHERE id=?", (late.id,)).fetchone() == ("done",)
    assert len(store.list()) == 4


def test_index_of_an_older_version_gives_its_runs_a_run_file(store):
    run = _finished(store, name="old")
    run.path("run.json").unlink()
    with sqlite3.connect(store.db_path) as db:
        db.execute("PRAGMA user_version = 0")
    RunStore(store.home)
    assert json.loads(run.path("run.json").read_text())["name"] == "old"


def test_a_reused_pid_does_not_keep_a_dead_run_running(store):
    """The run's process died and the system gave its pid to another process: still interrupted."""
    run = store.create("synthesis", {})
    other = subprocess.Popen(["sleep", "30"])
    try:
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE runs SET pid=? WHERE id=?", (other.pid, run.id))
        assert store.get_record(run.id).status == "interrupted"
        assert json.loads(run.path("run.json").read_text())["status"] == "interrupted"
    finally:
        other.kill()
        other.wait()


def _read_while_writing(write, read, writes: int = 20) -> list:
    """`read()` results (or the exception type) gathered in a thread while `write()` runs `writes` times."""
    stop, seen = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                seen.append(read())
            except Exception as e:   # what a reader of a half-written file gets
                seen.append(type(e).__name__)
    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(writes):
        write()
    stop.set()
    thread.join()
    return seen


def test_readers_never_see_a_half_written_json_file(store):
    run = store.create("synthesis", {})
    summary = {"curve": list(range(100_000))}
    run.save_json("summary.json", summary)
    seen = _read_while_writing(lambda: run.save_json("summary.json", summary),
                               lambda: len(run.load_json("summary.json")["curve"]), writes=10)
    assert seen and set(seen) == {100_000}


def test_readers_never_see_a_half_written_grid(store):
    from PIL import Image

    from dfkd_core.synthesis.images import save_grid
    path, images = store.runs_dir / "grid.png", torch.rand(400, 3, 32, 32)
    save_grid(images, path)

    def read():
        with Image.open(path) as image:
            image.load()
            return image.size
    seen = _read_while_writing(lambda: save_grid(images, path), read, writes=5)
    assert seen and len(set(seen)) == 1 and isinstance(seen[0], tuple)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(store):
    from dfkd_core.runs import atomic_open
    path = store.runs_dir / "images.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and [p.name for p in store.runs_dir.iterdir()] == ["images.pt"]


def test_a_reopened_run_is_live_for_other_processes_and_cannot_be_reopened_twice(store):
    """`dfkd distill --resume` reopens a stopped run: its dead process's pid must not make another process's
    listing call it interrupted again while it runs, and a second resume of the same run is refused."""
    run = store.create("distill", {})
    with sqlite3.connect(store.db_path) as db:   # the process that ran it died
        db.execute("UPDATE runs SET pid=? WHERE id=?", (2 ** 22 + 12345, run.id))
    assert store.get_record(run.id).status == "interrupted"
    store.reopen(run.id)
    assert RunStore(store.home).get_record(run.id).status == "running"   # another process's view
    with pytest.raises(RuntimeError, match="running in another process"):
        store.reopen(run.id)


def test_empty_dfkd_home_means_the_default_not_the_current_directory(monkeypatch, tmp_path):
    from dfkd_core.runs import default_home
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DFKD_HOME", "")
    assert default_home() == tmp_path / ".dfkd"
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "elsewhere"))
    assert default_home() == tmp_path / "elsewhere"
