"""A running job's time left, each kind of step timed apart (dfkd_core/time_left.py)."""
import copy
import statistics

import pytest

from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.time_left import TimeLeft, clock, estimate_time_left


def _kind(previous, row):
    return "student steps" if row["student_steps"] > previous["student_steps"] else "inversion iterations"


def test_each_kind_of_step_is_timed_apart_and_an_untimed_kind_is_named():
    # Three inversion iterations 0.3 s apart (the first row only starts the clock: the set-up before it is no step's),
    # then two student steps 0.1 s apart.
    rows = [{"elapsed_s": 5.0, "student_steps": 0}, {"elapsed_s": 5.3, "student_steps": 0},
            {"elapsed_s": 5.6, "student_steps": 0}, {"elapsed_s": 5.7, "student_steps": 1},
            {"elapsed_s": 5.8, "student_steps": 2}]
    left = estimate_time_left(rows, {"inversion iterations": 10, "student steps": 100}, _kind)
    assert left.seconds == pytest.approx(10 * 0.3 + 100 * 0.1)
    assert left.untimed == {}
    # While only inversion iterations have run, the student steps' pace is unknown: named, not guessed. One average
    # over all steps would have put them at the inversion's 0.3 s each.
    early = estimate_time_left(rows[:3], {"inversion iterations": 10, "student steps": 100}, _kind)
    assert early.seconds == pytest.approx(3.0)
    assert early.untimed == {"student steps": 100}
    assert early.describe() == "about 0:03 left, then 100 student steps (not timed yet)"
    assert TimeLeft(0.0, {"student steps": 2800}).describe() == "2,800 student steps to go (not timed yet)"
    assert TimeLeft(3725.0, {}).describe() == "about 1:02:05 left"
    # the last inversion iteration under way: not "about 0:00 left", which read as nearly done
    assert TimeLeft(0.3, {"student steps": 400}).describe() == ("under a second left, then 400 student steps (not "
                                                                "timed yet)")
    assert estimate_time_left(rows, {"inversion iterations": 0, "student steps": 0}, _kind) == TimeLeft(0.0, {})
    assert clock(42.4) == "0:42"


def test_a_distillation_counts_what_is_left_of_each_kind_from_its_plan(digits_teacher):
    """2 rounds x 6 inversion iterations, then 10 student steps on the pool: part-way through the second round, the
    time left covers 3 more inversion iterations at the inversion's pace and names the 10 student steps."""
    config = DistillConfig(method="deepinversion", images=40, synthesis={"iterations": 6, "batch_size": 20},
                           kd_steps_per_round=0, steps=10, eval_every=10 ** 6)
    job = DistillJob(copy.deepcopy(digits_teacher), config)
    job.run()
    assert job.status == "done", job.error
    full = list(job.history)
    assert job.time_left() == TimeLeft(0.0, {})
    job.history = full[:9]   # as the job's history stood after its 9th step
    left = job.time_left()
    pace = statistics.median(full[i + 1]["elapsed_s"] - full[i]["elapsed_s"] for i in range(8))
    assert left.untimed == {"student steps": 10}
    assert left.seconds == pytest.approx(3 * pace)
    job.history = full[:15]   # three student steps in
    left = job.time_left()
    student_pace = statistics.median(full[i + 1]["elapsed_s"] - full[i]["elapsed_s"] for i in (11, 12, 13))
    assert left.untimed == {} and left.seconds == pytest.approx(7 * student_pace)


def test_trajectory_kd_steps_are_timed_apart_from_the_pools_student_steps(digits_teacher):
    """Trajectory KD trains on the whole half-formed batch (here 20 images) while a pool step takes `batch_size`;
    part-way through synthesis, what is left of the trajectory steps follows the inversion iterations left."""
    config = DistillConfig(method="deepinversion", images=40, synthesis={"iterations": 6, "batch_size": 20},
                           kd_steps_per_round=0, steps=10, eval_every=10 ** 6, options={"trajectory_kd_from": 2})
    job = DistillJob(copy.deepcopy(digits_teacher), config)
    job.run()
    assert job.status == "done", job.error
    full = list(job.history)
    # round 0: iterations 0, 1, then (iteration, trajectory step) × 4: 10 rows; then round 1's first 2 iterations
    job.history = full[:12]
    remaining, kind_of = job.method.steps_left_by_kind(full[11])
    # round 1 has iterations 2..5 to go, each followed by its trajectory step; the pool's 10 steps come after
    assert remaining == {"inversion iterations": 4, "student steps on half-formed batches": 4, "student steps": 10}
    assert [kind_of(a, b) for a, b in zip(full[1:4], full[2:5])] == [
        "inversion iterations", "student steps on half-formed batches", "inversion iterations"]
    left = job.time_left()
    assert left.untimed == {"student steps": 10}   # no pool step timed yet: named, not priced as a trajectory step
    trajectory = statistics.median(full[i + 1]["elapsed_s"] - full[i]["elapsed_s"] for i in (2, 4, 6, 8))
    inversion = statistics.median(full[i + 1]["elapsed_s"] - full[i]["elapsed_s"] for i in (0, 1, 3, 5, 7, 9, 10))
    assert left.seconds == pytest.approx(4 * inversion + 4 * trajectory)
