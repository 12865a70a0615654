import copy
import threading
import time

import pytest

from dfkd_core.job_manager import JobLimitError, JobManager, Pacer, SnapshotCadence, default_max_running
from dfkd_core.jobs import Job
from dfkd_core.synthesis import ModelInversion, SynthesisConfig


class CountingJob(Job):
    """Steps that take `step_s` seconds each; `gate` (if given) holds every step until it is set."""

    kind = "counting"
    live_parameters = ("factor",)

    def __init__(self, steps=1000, step_s=0.005, gate: threading.Event | None = None):
        super().__init__()
        self.total_steps, self.step_s, self.gate = steps, step_s, gate
        self.config = type("Cfg", (), {"factor": 1})()

    def step(self, index):
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.step_s)
        return {"value": index * self.config.factor}


@pytest.fixture
def manager():
    m = JobManager(max_running=2)
    yield m
    m.shutdown()


def _wait_for(predicate, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_submit_get_list_cancel(manager):
    job = manager.submit(CountingJob(), label="count")
    assert manager.get(job.id) is job and manager.label(job.id) == "count"
    assert manager.active() == [job]
    assert _wait_for(lambda: len(job.history) >= 3)
    assert manager.cancel(job.id) is True
    assert job.wait(5) == "cancelled"
    assert manager.active() == [] and manager.get(job.id) is job  # finished jobs stay reachable for reattaching
    assert manager.get("nope") is None and manager.get(None) is None and manager.cancel("nope") is False


def test_limit_refuses_with_names_and_frees_slot_after_cancel(manager):
    a, b = manager.submit(CountingJob(), label="first"), manager.submit(CountingJob(), label="second")
    with pytest.raises(JobLimitError, match=r"2 jobs are already running.*first.*second"):
        manager.submit(CountingJob())
    manager.cancel(a.id)
    a.wait(5)
    c = manager.submit(CountingJob())
    assert {j.id for j in manager.active()} == {b.id, c.id}


def test_default_limit_follows_env_and_cores(monkeypatch):
    monkeypatch.setenv("DFKD_MAX_JOBS", "3")
    assert default_max_running() == 3
    monkeypatch.delenv("DFKD_MAX_JOBS")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_max_running() == 2 and JobManager().threads_per_job == 1
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_max_running() == 4 and JobManager().threads_per_job == 16


def test_two_jobs_updated_independently(manager):
    """Two tabs each hold their own job id: an update sent to one job never reaches the other."""
    gate = threading.Event()
    a, b = manager.submit(CountingJob(steps=6, gate=gate)), manager.submit(CountingJob(steps=6, gate=gate))
    manager.get(a.id).update(factor=10)
    gate.set()
    a.wait(5), b.wait(5)
    assert a.updates and a.updates[0]["factor"] == 10 and not b.updates
    assert [h["value"] for h in b.history] == list(range(6))
    assert a.history[-1]["value"] == 50


def test_ensure_starts_one_job_for_concurrent_callers(manager):
    made = []

    def make():
        made.append(CountingJob(steps=200))
        return made[-1]

    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.ensure("starter", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(r is made[0] for r in results) and manager.find("starter") is made[0]
    manager.cancel(made[0].id)
    made[0].wait(5)
    assert manager.ensure("starter", make) is made[1]  # a finished job with the key is replaced by a new one


def test_finished_jobs_are_evicted_oldest_first():
    m = JobManager(max_running=1, keep_finished=2)
    jobs = []
    for _ in range(4):
        jobs.append(m.submit(CountingJob(steps=1, step_s=0)))
        jobs[-1].wait(5)
    m.submit(CountingJob(steps=1, step_s=0)).wait(5)
    assert m.get(jobs[0].id) is None and m.get(jobs[1].id) is None and m.get(jobs[3].id) is jobs[3]


def test_pacer_limits_steps_per_second_and_yields_to_cancel(manager):
    job = manager.submit(CountingJob(steps=1000, step_s=0), steps_per_second=50)
    time.sleep(0.5)
    steps = len(job.history)
    assert 15 <= steps <= 30, steps  # ~25 at 50 steps/s; unpaced it would be thousands
    manager.set_pace(job.id, 5)
    assert manager.pace(job.id) == 5
    time.sleep(0.25)  # now inside a 0.2 s sleep between steps
    t0 = time.time()
    manager.cancel(job.id)
    assert job.wait(5) == "cancelled" and time.time() - t0 < 0.1


def test_snapshot_cadence_adapts_to_step_time():
    job = CountingJob()
    job.snapshot_every = 10
    cadence = SnapshotCadence(job, interval_s=0.1)
    from dfkd_core.jobs import Event
    for i in range(6):
        cadence(Event("step", job.id, step=i))
        time.sleep(0.02)
    assert 3 <= job.snapshot_every <= 7  # 0.1 s / ~0.02 s per step


def test_pacer_ignores_other_events():
    job = CountingJob()
    pacer = Pacer(job, steps_per_second=1)
    from dfkd_core.jobs import Event
    t0 = time.time()
    for kind in ("started", "snapshot", "updated", "done"):
        pacer(Event(kind, job.id))
    assert time.time() - t0 < 0.05


def _inversion(teacher, **kw):
    config = SynthesisConfig.preset("deepinversion", "digits", **{"batch_size": 20, "iterations": 25, **kw})
    return ModelInversion(copy.deepcopy(teacher.model), teacher.dataset, config)


def test_concurrent_inversions_do_not_touch_each_other(digits_teacher, manager):
    """Jobs on copies of one teacher run side by side and give exactly what each gives alone (BN hooks are per
    model object, so sharing one would mix the two batches' statistics)."""
    alone = _inversion(digits_teacher, seed=3)
    alone.run()
    a = manager.submit(_inversion(digits_teacher, seed=3), snapshot_interval_s=0.01)
    b = manager.submit(_inversion(digits_teacher, seed=4, alpha_tv=0.1), snapshot_interval_s=0.01)
    assert a.wait(60) == "done" and b.wait(60) == "done"
    assert [h["loss_total"] for h in a.history] == pytest.approx([h["loss_total"] for h in alone.history],
                                                                 rel=1e-4)
    assert b.history[-1]["alpha_tv"] == 0.1 and a.latest_snapshot is not None
    assert len(a.latest_bn_statistics) == 3 and a.latest_bn_statistics[0]["batch_mean"].shape == (32,)


def test_cancel_of_inversion_takes_effect_within_one_step(digits_teacher, manager, store):
    run = store.create("synthesis", {})
    job = _inversion(digits_teacher, iterations=5000)
    job.run_record = run
    manager.submit(job)
    assert _wait_for(lambda: len(job.history) >= 5)
    manager.cancel(job.id)
    assert job.wait(10) == "cancelled"
    requested = next(e for e in run.events() if e.get("cancel_requested"))
    assert len(run.metrics()) - requested["step"] <= 1  # at most the step that was already running
