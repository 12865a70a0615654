"""Faults a run must survive: its process killed outright (SIGKILL) mid-synthesis and mid-distillation, from the CLI
and from a job manager like the app's; and uploads that try to leave the run store or exceed the size limit."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfkd_core.runs import RunStore, _read_jsonl, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
PROGRESS_EVERY_S = 0.3


def start(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "DFKD_PROGRESS_EVERY_S": str(PROGRESS_EVERY_S), "OMP_NUM_THREADS": "1"}
    log = open(home.parent / "process.log", "ab")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def only_run_dir(home: Path) -> Path | None:
    runs = [d for d in (home / "runs").glob("*") if d.is_dir() and not d.name.startswith(".")]
    return runs[0] if len(runs) == 1 else None


def kill_when(process: subprocess.Popen, home: Path, ready, timeout: float = 90.0) -> Path:
    """SIGKILL `process` once `ready(run_dir)` holds; returns the run directory."""
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, (home.parent / "process.log").read_text()[-3000:]
        assert time.time() < deadline, "no progress in time: " + (home.parent / "process.log").read_text()[-3000:]
        run_dir = only_run_dir(home)
        if run_dir is not None and ready(run_dir):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    return run_dir


def metrics_rows(run_dir: Path) -> int:
    return len(_read_jsonl(run_dir / "metrics.jsonl"))


def progress_saved(run_dir: Path) -> bool:
    """A synthesis's first progress save is complete (each file appears atomically, the pair one after the other)."""
    return (run_dir / "images.pt").exists() and (run_dir / "grid.png").exists()


def assert_every_file_readable(run_dir: Path) -> dict[str, object]:
    """Each file of the run opens as what its name says (temp files of a cut write are hidden and never read)."""
    opened = {}
    for path in run_dir.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix == ".json":
            opened[path.name] = json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            opened[path.name] = _read_jsonl(path)
        elif path.suffix == ".pt":
            opened[path.name] = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
            opened[path.name] = path.stat().st_size
    return opened


def assert_interrupted_with_its_work(home: Path, run_dir: Path) -> dict[str, object]:
    [record] = RunStore(home).list()   # the next start: the killed run is listed, not lost and not 'running'
    assert record.id == run_dir.name and record.status == "interrupted" and "stopped" in record.error
    files = assert_every_file_readable(run_dir)
    assert files["config.json"] and files["run.json"]["status"] == "interrupted"
    return files


def test_cli_synthesis_killed_keeps_its_latest_images(tmp_path, digits_teacher):
    home = tmp_path / "home"
    process = start(["-m", "dfkd_core.cli", "--home", str(home), "--quiet", "synthesize", "--teacher",
                     digits_teacher.path, "--iterations", "100000", "--batch-size", "20"], home)
    run_dir = kill_when(process, home, lambda d: progress_saved(d) and metrics_rows(d) > 20)
    files = assert_interrupted_with_its_work(home, run_dir)
    assert files["images.pt"]["images"].shape == (20, 1, 8, 8) and "grid.png" in files
    assert len(files["metrics.jsonl"]) > 20


def test_cli_distillation_killed_keeps_its_metrics_and_progress(tmp_path, digits_teacher):
    home = tmp_path / "home"
    process = start(["-m", "dfkd_core.cli", "--home", str(home), "--quiet", "distill", "--teacher",
                     digits_teacher.path, "--method", "deepinversion", "--images", "100000", "--inv-batch-size",
                     "20", "--inv-iterations", "20", "--kd-steps-per-round", "2"], home)
    run_dir = kill_when(process, home, lambda d: (d / "resume.pt").exists() and metrics_rows(d) > 30)
    files = assert_interrupted_with_its_work(home, run_dir)
    assert len(files["metrics.jsonl"]) > 30 and "resume.pt" in files   # DistillJob.save_progress's checkpoint


JOB_MANAGER_SCRIPT = """
import sys, time
from dfkd_core.job_manager import JobManager
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis import ModelInversion, SynthesisConfig
store, teacher = RunStore(sys.argv[1]), load_checkpoint(sys.argv[2])
config = SynthesisConfig.preset("deepinversion", "digits", batch_size=20, iterations=100000)
run = store.create("synthesis", config.to_dict(), method="deepinversion", dataset="digits")
JobManager().submit(ModelInversion(teacher.model, teacher.dataset, config, run=run), steps_per_second=50)
time.sleep(600)
"""


def test_job_manager_process_killed_mid_job_leaves_an_interrupted_run(tmp_path, digits_teacher):
    """The app's way of running jobs (background threads of a JobManager), in a process killed like a server."""
    home = tmp_path / "home"
    process = start(["-c", textwrap.dedent(JOB_MANAGER_SCRIPT), str(home), digits_teacher.path], home)
    run_dir = kill_when(process, home, progress_saved)
    files = assert_interrupted_with_its_work(home, run_dir)
    assert files["images.pt"]["images"].shape == (20, 1, 8, 8)


# ---------------------------------------------------------------------- uploads

@pytest.fixture
def app_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


@pytest.mark.parametrize("name", ["../../../escaped.pt", "/tmp/escaped.pt", "..\\..\\escaped.pt", "a/../../x.pt"])
def test_uploaded_file_name_cannot_place_a_file_outside_the_run_store(app_home, tmp_path, digits_teacher, name):
    from pages.views.common import import_checkpoint
    before = set(tmp_path.rglob("*"))
    record = import_checkpoint(Path(digits_teacher.path).read_bytes(), name)
    added = set(tmp_path.rglob("*")) - before
    assert added and all(app_home.home in p.parents for p in added)
    assert (record.dir / "model.pt").read_bytes() == Path(digits_teacher.path).read_bytes()
    assert "/" not in record.name and "\\" not in record.name and ".." not in record.summary["uploaded"]


def test_oversize_upload_is_refused_before_anything_is_written(app_home, monkeypatch):
    import pages.views.common as common
    monkeypatch.setattr(common, "MAX_CHECKPOINT_MB", 1)
    written = []
    monkeypatch.setattr(common, "atomic_write_bytes", lambda *a: written.append(a), raising=False)
    monkeypatch.setattr(Path, "write_bytes", lambda *a: written.append(a))
    with pytest.raises(common.CheckpointError, match="up to 1 MB"):
        common.import_checkpoint(b"0" * (2**20 + 1), "big.pt")
    assert written == [] and app_home.list() == []


def test_upload_limit_matches_the_servers(app_home):
    from pages.views.common import MAX_CHECKPOINT_MB
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {MAX_CHECKPOINT_MB}" in config


def test_deleting_a_run_another_tab_deleted_meanwhile_is_explained(app_home, digits_teacher, monkeypatch):
    """Runs page: the opened run is deleted by another tab (or `dfkd delete`) between this page's listing and its
    Delete: a sentence, not a traceback."""
    from streamlit.testing.v1 import AppTest
    teacher = app_home.create("teacher", {}, method="bncnn3_w32", dataset="digits")   # no first-launch training
    atomic_write_bytes(teacher.path("model.pt"), Path(digits_teacher.path).read_bytes())
    teacher.set_status("done")
    run = app_home.create("synthesis", {}, method="deepinversion", dataset="digits")
    run.set_status("cancelled")
    page = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    page.run()
    page.switch_page("pages/runs.py").run()
    page.selectbox(key="runs_open").set_value(run.id).run()
    page.checkbox(key=f"sure_{run.id}").check().run()
    delete = RunStore.delete

    def deleted_by_another_tab_first(store, reference):
        delete(store, reference)
        return delete(store, reference)
    monkeypatch.setattr(RunStore, "delete", deleted_by_another_tab_first)
    next(b for b in page.button if b.label == "Delete").click().run()
    assert not page.exception and f"no run '{run.id}'" in page.error[0].value
