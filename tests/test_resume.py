"""Resuming a stopped distillation (issue 14, faults): `dfkd distill --resume <run>` continues the same run and ends
exactly where an uninterrupted run with the same seed ends (tolerance 0: every weight of the student is equal)."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfkd_core.cli import main
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.resume import RESUME_FILE, load_resume_state
from dfkd_core.distill.results import TEST_HITS_FILE, compare_students_accuracy
from dfkd_core.models import load_checkpoint

# Small settings that still cross every boundary a plan has: rounds with trajectory KD and KD after each round,
# then the final KD; a generator phase then KD; IE-KD's autoencoder phase then KD; BSS's epochs.
POOL = dict(images=150, synthesis={"iterations": 10, "batch_size": 50}, kd_steps_per_round=3,
            options={"trajectory_kd_from": 6}, steps=20, eval_every=5)   # 3 rounds of 10 + 4 + 3 steps, then 20
SETTINGS = {
    "deepinversion": POOL,
    "adi": {**POOL, "images": 100},
    # CMI's contrastive term: its head, head optimizer and bank of earlier rounds must come back with the run.
    "deepinversion+contrast": {**POOL, "synthesis": {**POOL["synthesis"], "alpha_cr": 0.8}},
    "generator": dict(generator_steps=12, generator_width=16, steps=12, batch_size=32, eval_every=4),
    "noise": dict(steps=16, batch_size=32, eval_every=4),
    "real-kd": dict(steps=16, batch_size=32, eval_every=4, mixup=0.5),
    "bss": dict(steps=12, batch_size=64, eval_every=4, options={"base_samples": 8, "max_steps": 5}),
    "iekd": dict(steps=10, batch_size=32, eval_every=5, options={"autoencoder_steps": 8}),
    "iedml": dict(steps=10, batch_size=32, eval_every=5),
}


def _config(setting: str) -> DistillConfig:
    """The config of a SETTINGS entry; 'method+variant' names a variant of the method."""
    return DistillConfig(method=setting.split("+")[0], **copy.deepcopy(SETTINGS[setting]))


@pytest.fixture(scope="module")
def uninterrupted(digits_teacher):
    """Each method's student after a run that was never stopped."""
    students = {}

    def run(method):
        if method not in students:
            job = DistillJob(copy.deepcopy(digits_teacher), _config(method))
            job.run()
            assert job.status == "done", job.error
            students[method] = job
        return students[method]
    return run


def _stopped_run(teacher, store, method: str, stop_at: int):
    """A run of `method` cancelled after job step `stop_at` (the app's Stop, the CLI's first Ctrl-C)."""
    config = _config(method)
    run = store.create("distill", {**config.to_dict(), "teacher": teacher.path}, method=config.method)
    job = DistillJob(copy.deepcopy(teacher), config, run=run)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == stop_at else None)
    job.run()
    assert job.status == "cancelled" and run.path(RESUME_FILE).exists()
    return run


def _resume(teacher, store, run) -> DistillJob:
    state = load_resume_state(store.get_record(run.id))
    job = DistillJob(copy.deepcopy(teacher), DistillConfig.from_dict(state["config"]), run=run, resume=state)
    job.run()
    assert job.status == "done", job.error
    return job


def _assert_same_student(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x.cpu(), y.cpu()), name


def _assert_each_step_logged_once(run, total: int) -> None:
    assert [m["step"] for m in run.metrics()] == list(range(total))


@pytest.mark.parametrize("method, stop_at", [
    ("deepinversion", 20),    # mid-round 1: the round is repeated from its start
    ("deepinversion", 60),    # in the final KD
    ("adi", 12),              # mid-round 0, the student the inversion competes with unchanged
    ("deepinversion+contrast", 38),   # mid-round 2: the bank then holds rounds 0 and 1
    ("generator", 5), ("generator", 15), ("noise", 7), ("real-kd", 7), ("bss", 6), ("iekd", 4), ("iekd", 12),
    ("iedml", 5),
])
def test_a_stopped_run_resumed_ends_exactly_where_an_uninterrupted_one_does(digits_teacher, store, uninterrupted,
                                                                           method, stop_at):
    reference = uninterrupted(method)
    run = _stopped_run(digits_teacher, store, method, stop_at)
    job = _resume(digits_teacher, store, run)
    _assert_same_student(job.student, reference.student)
    if method == "iedml":
        _assert_same_student(job.method.student_b, reference.method.student_b)
    assert job.result["student_accuracy"] == reference.result["student_accuracy"]
    assert [c["student_accuracy"] for c in job.result["curve"]] == \
        [c["student_accuracy"] for c in reference.result["curve"]]
    _assert_each_step_logged_once(run, reference.total_steps)
    assert not run.path(RESUME_FILE).exists()   # a done run has nothing left to resume


def test_resume_from_an_older_progress_save_after_a_kill(digits_teacher, store, uninterrupted, tmp_path):
    """SIGKILL leaves only the last periodic save: steps after it are redone, their logged rows replaced."""
    reference = uninterrupted("deepinversion")
    config = _config("deepinversion")
    run = store.create("distill", {**config.to_dict(), "teacher": digits_teacher.path}, method="deepinversion")
    job = DistillJob(copy.deepcopy(digits_teacher), config, run=run)

    def periodic_save_then_kill(event):
        if event.kind == "step" and event.step == 44:      # round 2 has not started: a live save
            job.save_progress()
            shutil.copy(run.path(RESUME_FILE), tmp_path / "periodic.pt")
        if event.kind == "step" and event.step == 58:
            job.cancel()
    job.subscribe(periodic_save_then_kill)
    job.run()
    shutil.copy(tmp_path / "periodic.pt", run.path(RESUME_FILE))   # what the killed process had saved
    assert len(run.metrics()) == 59
    resumed = _resume(digits_teacher, store, run)
    _assert_same_student(resumed.student, reference.student)
    _assert_each_step_logged_once(run, reference.total_steps)


def test_cli_run_killed_outright_resumes_from_its_last_periodic_save(digits_teacher, tmp_path, capsys):
    """A real SIGKILL of `dfkd distill` (progress saved every 0.05 s by the job loop), then `--resume`: the run, now
    'interrupted', continues from the save and ends with the student an uninterrupted run makes."""
    home = tmp_path / "home"
    flags = ["--method", "deepinversion", "--images", "500", "--inv-batch-size", "50", "--inv-iterations", "10",
             "--kd-steps-per-round", "3", "--steps", "20", "--eval-every", "50"]
    env = {**os.environ, "DFKD_PROGRESS_EVERY_S": "0.05", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dfkd_core.cli", "--home", str(home), "--quiet", "distill",
                                "--teacher", digits_teacher.path, *flags], cwd=Path(__file__).resolve().parents[1],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(home.glob("runs/distill-*/metrics.jsonl")) or \
            len(next(home.glob("runs/distill-*/metrics.jsonl")).read_text().splitlines()) < 40:
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    (run_dir,) = home.glob("runs/distill-*")
    assert (run_dir / RESUME_FILE).exists()
    assert main(["--home", str(home), "distill", "--resume", run_dir.name]) == 0
    assert f"resuming run {run_dir.name} (interrupted) at student step" in capsys.readouterr().out
    config = DistillConfig(method="deepinversion", images=500, synthesis={"iterations": 10, "batch_size": 50},
                           kd_steps_per_round=3, steps=20, eval_every=50)
    reference = DistillJob(copy.deepcopy(digits_teacher), config)
    reference.run()
    _assert_same_student(load_checkpoint(run_dir / "model.pt").model, reference.student)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == \
        list(range(reference.total_steps))


def test_cli_resume_continues_the_same_run_and_says_where(digits_teacher, store, uninterrupted, capsys,
                                                          monkeypatch):
    from dfkd_core.distill import cli as distill_cli

    reference = uninterrupted("deepinversion")
    run = _stopped_run(digits_teacher, store, "deepinversion", 60)
    status_while_running = []
    run_distillation = distill_cli.run_distillation
    monkeypatch.setattr(distill_cli, "run_distillation", lambda job, quiet: (
        status_while_running.append(store.get_record(run.id).status), run_distillation(job, quiet))[1])
    assert main(["--home", str(store.home), "distill", "--resume", run.id[:-1]]) == 0
    out = capsys.readouterr().out
    assert f"resuming run {run.id} (cancelled) at student step 31 of 41, 3 of 3 synthesis rounds done" in out
    assert f"run {run.id} [done]" in out and "[95% CI]" in out
    printed = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    assert printed["student_accuracy_ci"]["units"] == 360 and printed["ratio_ci"]["level"] == 0.95
    record = store.get_record(run.id)
    assert status_while_running == ["running"]
    assert record.status == "done" and record.dir == run.dir and len(store.list()) == 1
    _assert_same_student(load_checkpoint(run.path("model.pt")).model, reference.student)
    assert json.loads(run.path("summary.json").read_text())["student_steps"] == 41


def test_first_ctrl_c_stops_after_the_step_and_the_run_resumes_exactly(digits_teacher, store, uninterrupted):
    from dfkd_core.distributed import signals_request_cancel

    reference = uninterrupted("generator")
    config = _config("generator")
    run = store.create("distill", {**config.to_dict(), "teacher": digits_teacher.path}, method="generator")
    job = DistillJob(copy.deepcopy(digits_teacher), config, run=run)
    job.subscribe(lambda e: os.kill(os.getpid(), signal.SIGINT) if e.kind == "step" and e.step == 9 else None)
    before = signal.getsignal(signal.SIGINT)
    with signals_request_cancel(job):
        job.run()
    assert job.status == "cancelled" and job.error is None and len(job.history) == 10
    assert signal.getsignal(signal.SIGINT) is before
    _assert_same_student(_resume(digits_teacher, store, run).student, reference.student)


def test_resume_refuses_what_it_cannot_continue(digits_teacher, store):
    home = ["--home", str(store.home), "distill"]
    done = DistillJob(copy.deepcopy(digits_teacher), _config("noise"),
                      run=store.create("distill", _config("noise").to_dict(), method="noise"))
    done.run()
    with pytest.raises(SystemExit, match="finished: there is nothing left to run"):
        main([*home, "--resume", done.run_record.id])
    teacher_run = store.create("teacher", {}, method="bncnn3_w32")
    with pytest.raises(SystemExit, match="is a teacher run; --resume continues a distillation"):
        main([*home, "--resume", teacher_run.id])
    stopped = _stopped_run(digits_teacher, store, "noise", 3)
    with pytest.raises(SystemExit, match="drop --method, --steps"):
        main([*home, "--resume", stopped.id, "--steps", "5", "--method", "noise"])
    stopped.path(RESUME_FILE).unlink()
    with pytest.raises(SystemExit, match="has no resume.pt"):
        main([*home, "--resume", stopped.id])
    stopped.path(RESUME_FILE).write_bytes(b"half a file")
    with pytest.raises(SystemExit, match="not a readable resume checkpoint"):
        main([*home, "--resume", stopped.id])
    with pytest.raises(SystemExit, match="no run 'no-such-run'"):
        main([*home, "--resume", "no-such-run"])
    with pytest.raises(SystemExit, match="--teacher is required"):
        main([*home, "--method", "noise"])
    assert store.get_record(stopped.id).status == "cancelled"   # a refused resume changes nothing


def test_accuracies_carry_intervals_and_two_students_compare_paired(digits_teacher, store):
    runs = []
    for method in ("noise", "real-kd"):
        job = DistillJob(copy.deepcopy(digits_teacher), _config(method),
                         run=store.create("distill", _config(method).to_dict(), method=method))
        job.run()
        r = job.result
        for key in ("student_accuracy", "teacher_accuracy", "ratio"):
            ci = r[f"{key}_ci"]
            assert ci["low"] <= r[key] == ci["estimate"] <= ci["high"] and ci["units"] == r["test_images"] == 360
        assert r["ratio"] == pytest.approx(r["student_accuracy"] / r["teacher_accuracy"])
        hits = torch.load(job.run_record.path(TEST_HITS_FILE), weights_only=True)["hits"]
        assert hits["student"].dtype == torch.bool and hits["student"].float().mean() == r["student_accuracy"]
        runs.append(job)
    noise, real = runs
    difference = compare_students_accuracy(real.run_record, noise.run_record)
    assert difference.estimate == pytest.approx(real.result["student_accuracy"] - noise.result["student_accuracy"])
    assert difference.low <= difference.estimate <= difference.high and difference.units == 360
    same = compare_students_accuracy(noise.run_record, noise.run_record)
    assert same.low == same.high == 0
    teacher_gap = compare_students_accuracy(noise.run_record, noise.run_record, model_a="teacher")
    assert teacher_gap.estimate == pytest.approx(noise.result["teacher_accuracy"] - noise.result["student_accuracy"])
    with pytest.raises(ValueError, match="no model 'student_b'"):
        compare_students_accuracy(noise.run_record, real.run_record, model_b="student_b")


def test_a_stopped_cli_distillation_says_how_to_resume_it(digits_teacher, store, capsys):
    from dfkd_core.distill.cli import run_distillation
    config = _config("noise")
    run = store.create("distill", {**config.to_dict(), "teacher": digits_teacher.path}, method="noise")
    job = DistillJob(copy.deepcopy(digits_teacher), config, run=run)
    job.subscribe(lambda e: os.kill(os.getpid(), signal.SIGINT) if e.kind == "step" and e.step == 2 else None)
    run_distillation(job, quiet=True)
    assert job.status == "cancelled"
    assert f"`dfkd distill --resume {run.id}` continues the run" in capsys.readouterr().err
