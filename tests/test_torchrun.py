"""Synthesis and distillation under torchrun: 2 CPU processes (gloo) on digits, as a user starts them (issue 15).

(a) the pool made by 2 processes is the one-process pool of the same seeds; (b) a student trained with DDP on 2
processes keeps its replicas identical and learns as well as one process within noise; (c) a rank killed mid-run,
or a Ctrl-C of the launcher, ends the job on every rank with the finished batches kept and the run marked.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dfkd_core.cli import main
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.results import load_test_hits
from dfkd_core.runs import RunStore

from test_distributed import _free_port

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--batch-size", "40", "--iterations", "15", "--batches", "3", "--seed", "5"]


def torchrun(args: list[str], home: Path, nproc: int = 2, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DFKD_CPU_SHARE": "0", "DFKD_PROGRESS_EVERY_S": "0.3"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dfkd_core.cli", "--home", str(home), "--quiet", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def finished(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out.decode(errors="replace")


def test_two_processes_make_the_one_process_pool(tmp_path, digits_teacher, monkeypatch):
    monkeypatch.setenv("DFKD_CPU_SHARE", "0")
    torch.set_num_threads(1)
    home = tmp_path / "home"
    code, out = finished(torchrun(["synthesize", "--teacher", str(digits_teacher.path), *SYNTH], home), 180)
    assert code == 0, out[-3000:]
    [shared] = RunStore(home).list(kind="synthesis")
    assert shared.status == "done" and shared.summary["processes"] == 2 and shared.summary["batches_done"] == 3
    assert out.count("[done]") == 1   # one writer: the leader reports, the other rank is silent

    assert main(["--home", str(tmp_path / "alone"), "--quiet", "synthesize", "--teacher", str(digits_teacher.path),
                 *SYNTH]) == 0
    [alone] = RunStore(tmp_path / "alone").list(kind="synthesis")
    two, one = (torch.load(r.dir / "images.pt", weights_only=True) for r in (shared, alone))
    assert two["images"].shape == (120, 1, 8, 8)
    assert torch.equal(two["images"], one["images"]) and torch.equal(two["targets"], one["targets"])
    # Batch 0 is what a one-batch run with the same seed makes: --batches only adds batches after it.
    assert main(["--home", str(tmp_path / "single"), "--quiet", "synthesize", "--teacher", str(digits_teacher.path),
                 "--batch-size", "40", "--iterations", "15", "--seed", "5"]) == 0
    [single] = RunStore(tmp_path / "single").list(kind="synthesis")
    assert torch.equal(torch.load(single.dir / "images.pt", weights_only=True)["images"], one["images"][:40])


def _distill_rank(rank: int, world: int, port: int, teacher_path: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="localhost",
                      MASTER_PORT=str(port), DFKD_CPU_SHARE="0")
    torch.set_num_threads(1)
    from dfkd_core.distributed import init_from_environment, shutdown
    from dfkd_core.models import load_checkpoint
    me = init_from_environment("cpu")
    try:
        job = DistillJob(load_checkpoint(teacher_path), _ddp_config(), world=me)
        job.run()
        results[rank] = {"status": job.status, "error": job.error, "accuracy": job.result.get("student_accuracy"),
                         "parameters": torch.cat([p.detach().flatten() for p in job.student.parameters()]),
                         "pool": job.pool.images, "batch": job.batch_size}
    finally:
        shutdown(me)


def _ddp_config() -> DistillConfig:
    return DistillConfig(method="deepinversion", images=200, synthesis={"batch_size": 100, "iterations": 40},
                         kd_steps_per_round=0, steps=300, batch_size=64, eval_every=100, device="cpu")


def test_a_ddp_student_stays_one_model_and_learns_like_one_process(digits_teacher):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_distill_rank, args=(2, _free_port(), str(digits_teacher.path), results), nprocs=2, join=True)
        results = dict(results)
    assert results[0]["status"] == results[1]["status"] == "done", (results[0]["error"], results[1]["error"])
    assert results[0]["batch"] == results[1]["batch"] == 32   # each rank its half of the batch of 64
    # DDP averages the gradients: both replicas end as one model, and both ranks hold the whole pool.
    assert torch.equal(results[0]["parameters"], results[1]["parameters"])
    assert torch.equal(results[0]["pool"], results[1]["pool"]) and len(results[0]["pool"]) == 200
    assert results[1]["accuracy"] is None   # only the leader evaluates

    alone = DistillJob(digits_teacher, _ddp_config())
    alone.run()
    assert torch.equal(alone.pool.images, results[0]["pool"])   # the same images; only the minibatches differ
    assert not torch.equal(torch.cat([p.detach().flatten() for p in alone.student.parameters()]),
                           results[0]["parameters"])
    # Within noise: 360 test images give a binomial 95% half-width of about 3 points at this accuracy.
    assert abs(results[0]["accuracy"] - alone.result["student_accuracy"]) < 0.06, \
        (results[0]["accuracy"], alone.result["student_accuracy"])
    assert results[0]["accuracy"] > 0.5   # far above chance (0.1) after 300 steps on 200 images


def test_torchrun_distillation_from_the_cli_writes_one_run(tmp_path, digits_teacher):
    home = tmp_path / "home"
    code, out = finished(torchrun(["distill", "--teacher", str(digits_teacher.path), "--method", "noise",
                                   "--steps", "60", "--eval-every", "30", "--batch-size", "64"], home), 180)
    # Both ends: a rank that fails as the run closes (seen once, SIGABRT in rank 1 on a loaded machine) prints its
    # reason before the summary, torchrun's report after it.
    assert code == 0, "\n".join(line for line in out.splitlines() if "Error" in line or "abort" in line.lower()
                                 or "terminate" in line)[-3000:] + "\n...\n" + out[-2000:]
    [run] = RunStore(home).list(kind="distill")
    assert run.status == "done" and run.summary["processes"] == 2 and run.summary["student_steps"] == 60
    assert run.summary["images_synthesized"] == 60 * 64   # both ranks' noise, 32 each per step
    assert load_test_hits(run)["hits"]["student"].numel() == 360


def test_what_cannot_run_on_several_processes_is_refused_before_a_run(tmp_path, digits_teacher):
    home = tmp_path / "home"
    code, out = finished(torchrun(["distill", "--teacher", str(digits_teacher.path), "--method", "bss",
                                   "--steps", "10"], home), 120)
    assert code != 0 and "runs in one process only" in out, out[-2000:]
    assert RunStore(home).list() == []


def test_adi_is_refused_in_a_job_of_several_processes(digits_teacher):
    """The same refusal from the method itself, where the job is built (before the CLI creates a run, as above):
    ADI's rounds compete with the student of the round before, which a round made on another rank cannot see."""
    from dfkd_core.distributed import Distributed
    with pytest.raises(ValueError, match="runs in one process"):
        DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="adi", steps=10, device="cpu"),
                   world=Distributed(0, 2))


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
        assert time.time() < deadline, "no progress in time"
        time.sleep(0.1)


def _running_synthesis(home: Path) -> Path | None:
    runs = [d for d in (home / "runs").glob("synthesis-*") if d.is_dir()]
    return runs[0] if runs and (runs[0] / "images.pt").exists() else None


def _rank_pids(launcher: subprocess.Popen) -> list[int]:
    """The worker processes torchrun started (children of its agent), in start order."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return [int(pid) for pid in children]


LONG = ["--batch-size", "40", "--iterations", "200", "--batches", "40", "--seed", "1"]


def test_a_killed_rank_ends_every_rank_and_the_run_keeps_its_finished_batches(tmp_path, digits_teacher):
    home = tmp_path / "home"
    launcher = torchrun(["synthesize", "--teacher", str(digits_teacher.path), *LONG], home)
    _wait_for(lambda: _running_synthesis(home) is not None, launcher)
    pids = _rank_pids(launcher)
    assert len(pids) == 2
    killed_at = time.time()
    os.kill(pids[1], signal.SIGKILL)   # the rank that is not the leader
    code, out = finished(launcher, 60)
    assert code != 0 and time.time() - killed_at < 45, out[-3000:]   # no hung group
    [run] = RunStore(home).list()
    assert run.status == "failed" and "another process of this 2-process job stopped" in run.error, run.error
    saved = torch.load(run.dir / "images.pt", weights_only=True)
    assert len(saved["images"]) >= 80 and len(saved["images"]) % 80 == 0   # whole rounds of 2 batches of 40
    assert run.summary["batches_done"] * 40 == len(saved["images"])


def test_ctrl_c_of_the_launcher_cancels_every_rank_at_one_step(tmp_path, digits_teacher):
    home = tmp_path / "home"
    launcher = torchrun(["synthesize", "--teacher", str(digits_teacher.path), *LONG], home)
    _wait_for(lambda: _running_synthesis(home) is not None, launcher)
    launcher.send_signal(signal.SIGINT)   # what a Ctrl-C in its terminal sends the launcher
    finished(launcher, 60)
    [run] = RunStore(home).list()
    assert run.status == "cancelled", (run.status, run.error)
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 < run.summary["batches_done"] < 40 and len(rows) == run.summary["steps"]
    assert len(torch.load(run.dir / "images.pt", weights_only=True)["images"]) == run.summary["batches_done"] * 40
