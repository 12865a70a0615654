import threading

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
    assert kinds == ["started", "step", "step", "step", "done"] and job.result == {"value": 3}


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
    with pytest.raises(NonFiniteLossError, match="'tv' is nan at step 3"):
        check_finite({"ok": 1.0, "tv": torch.tensor(float("nan"))}, 3)
