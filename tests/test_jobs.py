import threading
import time

import pytest
import torch

from dfkd_core.jobs import Job, NonFiniteLossError, check_finite


class Counter(Job):
    kind = "counter"
    live_parameters = ("increment",)

    def __init__(self, steps=5, fail_at=None, run=None):
        super().__init__(run)
        self.total_steps, self.fail_at = steps, fail_at
        self.increment, self.value, self.finished_with = 1, 0, None
        self.gate = threading.Event()

    def apply_updates(self, updates):
        self.increment = updates["increment"]

    def step(self, i):
        if i == self.fail_at:
            raise RuntimeError("boom")
        self.value += self.increment
        return {"value": self.value}

    def finish(self, status):
        self.finished_with = status
        return {"value": self.value}


def test_events_in_order_and_result():
    job, kinds = Counter(3), []
    job.subscribe(lambda e: kinds.append(e.kind))
    job.run()
    assert kinds == ["started", "step", "step", "step", "done"]
    assert job.result == {"value": 3, "cpu_threads": [torch.get_num_threads()]}   # what its sums were computed with


def test_update_applies_at_next_step_and_unknown_parameter_refused():
    job = Counter(4)
    job.subscribe(lambda e: job.update(increment=10) if e.kind == "step" and e.step == 1 else None)
    job.run()
    assert [h["value"] for h in job.history] == [1, 2, 12, 22]
    assert job.updates == [{"step": 2, "increment": 10}]  # the first step that used the new value
    with pytest.raises(ValueError, match="cannot change"):
        job.update(steps=3)


def test_cancel_finishes_and_keeps_work(store):
    run = store.create("counter", {})
    job = Counter(100, run=run)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 4 else None)
    job.run()
    assert job.status == "cancelled" and job.finished_with == "cancelled" and job.value == 5
    assert store.get_record(run.id).status == "cancelled"


def test_a_job_seen_ended_has_its_run_stored_as_ended(store):
    """A page reruns once when it sees its job end and lists the stored runs then: the store must already say how
    the run ended (a stopped teacher was missing from its own page's picker until the next rerun)."""
    run = store.create("counter", {})
    job = Counter(200, run=run)
    record_status = run.set_status

    def slow_set_status(*args, **kwargs):
        time.sleep(0.3)   # a slow disk between the job's end and the store's update
        record_status(*args, **kwargs)

    run.set_status = slow_set_status
    job.start()
    while job.status == "pending" or not job.history:
        time.sleep(0.001)
    job.cancel()
    while job.running:
        time.sleep(0.001)
    assert store.get_record(run.id).status == job.status == "cancelled"


def test_failure_is_reported_not_raised(store):
    run = store.create("counter", {})
    job = Counter(5, fail_at=2, run=run)
    job.run()
    assert job.status == "failed" and "boom" in job.error and job.finished_with == "failed"
    assert store.get_record(run.id).error and store.get_record(run.id).status == "failed"


def test_background_thread_run():
    job = Counter(50).start()
    assert job.wait(10) == "done" and job.value == 50


def test_check_finite_names_the_term():
    check_finite({"ok": torch.tensor(1.0)}, 0)
    with pytest.raises(NonFiniteLossError, match="'tv' is nan at step 3; lower the learning rate or the weight of"):
        check_finite({"ok": 1.0, "tv": torch.tensor(float("nan"))}, 3)
    with pytest.raises(NonFiniteLossError, match="'cross_entropy' is inf at step 0; lower the learning rate$"):
        check_finite({"cross_entropy": float("inf")}, 0, weighted=False)   # a teacher's loss has no weight


def test_a_teacher_trained_without_a_store_says_nothing_of_a_kept_run():
    from dfkd_core.training import TeacherConfig, train_teacher
    job = train_teacher(TeacherConfig(dataset="digits", epochs=1, lr=1e8))
    assert job.status == "failed" and "lower the learning rate" in job.error
    assert "weight of" not in job.error and "kept" not in job.error


class SlowSteps(Counter):
    """Steps of `step_s` seconds; records when progress saves happen relative to steps."""

    def __init__(self, steps, step_s, run=None):
        super().__init__(steps, run=run)
        self.step_s, self.in_step, self.saves = step_s, False, []

    def step(self, i):
        self.in_step = True
        time.sleep(self.step_s)
        self.in_step = False
        return super().step(i)

    def save_progress(self):
        assert not self.in_step, "progress saved in the middle of a step"
        self.saves.append((time.monotonic(), len(self.history)))


def test_progress_is_saved_between_steps_at_most_every_interval():
    job = SlowSteps(40, 0.01)
    job.progress_every_s = 0.1
    job.run()
    times = [t for t, _ in job.saves]
    assert 2 <= len(job.saves) <= 4, job.saves   # ~0.4 s of steps
    assert all(b - a >= 0.1 for a, b in zip(times, times[1:]))
    assert all(0 < steps < 40 for _, steps in job.saves)


def test_default_progress_interval_saves_nothing_in_a_short_job(monkeypatch):
    from dfkd_core.jobs import progress_interval_from_env
    monkeypatch.delenv("DFKD_PROGRESS_EVERY_S", raising=False)
    job = SlowSteps(5, 0)
    assert job.progress_every_s is None and progress_interval_from_env() == 30
    job.run()
    assert job.saves == []


def test_progress_interval_from_environment_is_checked(monkeypatch):
    from dfkd_core.jobs import progress_interval_from_env
    monkeypatch.setenv("DFKD_PROGRESS_EVERY_S", "0.5")
    assert progress_interval_from_env() == 0.5
    for bad in ("nan", "-1", "soon"):
        monkeypatch.setenv("DFKD_PROGRESS_EVERY_S", bad)
        with pytest.raises(ValueError, match="positive number of seconds"):
            progress_interval_from_env()
    job = SlowSteps(3, 0)   # a job fails with the sentence; nothing else (imports, other commands) does
    job.run()
    assert job.status == "failed" and "DFKD_PROGRESS_EVERY_S must be a positive number" in job.error


def test_inversion_progress_save_keeps_the_latest_images_atomically(digits_teacher, store):
    from dfkd_core.synthesis import ModelInversion, SynthesisConfig
    config = SynthesisConfig.preset("deepinversion", "digits", batch_size=10, iterations=6)
    run = store.create("synthesis", {})
    job = ModelInversion(digits_teacher.model, digits_teacher.dataset, config, run=run)
    saved = []
    job.subscribe(lambda e: saved.append(torch.load(run.path("images.pt"), weights_only=True)["images"])
                  if e.kind == "step" and run.path("images.pt").exists() else None)
    job.progress_every_s = 1e-9   # every step
    job.run()
    assert len(saved) == 5 and not torch.equal(saved[0], saved[-1])   # images.pt followed the batch
    assert run.path("grid.png").is_file() and not list(run.dir.glob(".*.tmp"))


class ThreadsSeen(Job):
    """Records the torch threads its own thread has at every step; steps wait on `gate` after `wait_after`."""

    def __init__(self, steps, wait_after=None):
        super().__init__()
        self.total_steps, self.wait_after = steps, wait_after
        self.seen, self.gate, self.waiting = [], threading.Event(), threading.Event()

    def step(self, i):
        self.seen.append(torch.get_num_threads())
        if i == self.wait_after:
            self.waiting.set()
            self.gate.wait(10)
        return {}


def test_running_jobs_share_the_cpu_threads(tmp_path, monkeypatch):
    """Alone a job uses its process's threads; while a second job runs (here in another thread; in another process
    it is the same file in the same directory) each uses half of them; when the other ends, all again."""
    from dfkd_core.device import CPUShare
    monkeypatch.setenv("DFKD_RUNNING_DIR", str(tmp_path))
    monkeypatch.setattr(CPUShare, "refresh_every_s", 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        first = ThreadsSeen(4, wait_after=1)
        first.start()
        assert first.waiting.wait(10)
        second = ThreadsSeen(1).start()   # starts while the first waits in its second step
        assert second.wait(10) == "done"
        first.gate.set()
        assert first.wait(10) == "done"
    finally:
        torch.set_num_threads(threads)
    assert first.seen[:2] == [4, 4] and second.seen == [2] and first.seen[2:] == [4, 4]
    assert list(tmp_path.iterdir()) == []   # both files removed
    # What each computed with is in its result; the one that shared says a rerun alone may differ.
    assert first.result["cpu_threads"] == [4] and "reproducibility_note" not in first.result
    assert second.result["cpu_threads"] == [2]
    assert "computed with 2 of 4 torch threads while other dfkd jobs ran" in second.result["reproducibility_note"]


def test_files_of_ended_processes_do_not_count(tmp_path):
    from dfkd_core.device import CPUShare
    (tmp_path / "999999999-123-abc").touch()   # no such process
    share = CPUShare("job", tmp_path)
    with share:
        assert share.running() == 1
    assert list(tmp_path.iterdir()) == []
