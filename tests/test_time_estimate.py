"""A distillation's time before it starts: its planned steps at the pace of an earlier run with the same settings."""
import copy
import statistics

import pytest

from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.estimate import planned_time
from dfkd_core.runs import RunStore
from dfkd_core.time_left import step_paces, time_for


def test_step_paces_are_each_kinds_median_and_time_for_counts_untimed_kinds():
    rows = [{"elapsed_s": t, "kind": k} for t, k in [(0, "a"), (1, "a"), (4, "b"), (5, "a"), (7, "b"), (9, "b")]]
    paces = step_paces(rows, lambda previous, row: row["kind"])
    # a: 1-0, 5-4 → median 1.0; b: 4-1, 7-5, 9-7 → 3, 2, 2 → median 2.0
    assert paces == {"a": 1.0, "b": 2.0}
    planned = time_for({"a": 10, "b": 5, "c": 7, "d": 0}, paces)
    assert planned.seconds == pytest.approx(10 * 1.0 + 5 * 2.0) and planned.untimed == {"c": 7}
    means = step_paces(rows, lambda previous, row: row["kind"], statistics.fmean)   # a finished run's pace
    assert means == {"a": pytest.approx(1.0), "b": pytest.approx(7 / 3)}


def test_a_new_run_is_timed_by_the_newest_finished_run_of_its_teacher_with_the_same_step_settings(
        digits_teacher, store):
    config = DistillConfig(method="noise", student="bncnn3_w16", steps=30, batch_size=32, eval_every=1000)
    run = store.create("distill", config.to_dict(), teacher="teacher-x", method="noise", dataset="digits")
    earlier = DistillJob(copy.deepcopy(digits_teacher), config, run=run)
    earlier.run()
    assert earlier.status == "done"
    rows = run.metrics()
    paces = step_paces(rows, lambda previous, row: "student steps", statistics.fmean)

    longer = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="noise", student="bncnn3_w16", steps=900,
                                                                     batch_size=32, seed=3))
    plan = planned_time(longer, store, "teacher-x")
    assert plan.source is not None and plan.source.id == run.id
    assert plan.planned == {"other steps": 0, "student steps": 900}
    assert plan.time.seconds == pytest.approx(900 * paces["student steps"])
    assert "on this machine" in plan.describe() and run.id in plan.describe()
    # The earlier run's set-up and final test come on top of the steps: they do not scale with them.
    summary = run.record().summary
    assert summary["setup_s"] > 0 and summary["finish_s"] > 0
    assert plan.fixed_s == pytest.approx(summary["setup_s"] + summary["finish_s"])
    assert plan.seconds == pytest.approx(plan.time.seconds + plan.fixed_s)
    assert "of set-up and final test" in plan.describe()

    other_batch = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="noise", student="bncnn3_w16",
                                                                          steps=900, batch_size=64))
    other_teacher = planned_time(longer, store, "teacher-y")
    for plan in (planned_time(other_batch, store, "teacher-x"), other_teacher):
        assert plan.source is None and plan.time is None
        assert "900 student steps" in plan.describe() and "no estimate" in plan.describe()


def test_a_run_that_did_not_record_its_fixed_costs_is_timed_by_its_steps_alone():
    from dfkd_core.distill.estimate import PlannedTime, fixed_seconds
    from dfkd_core.time_left import TimeLeft
    assert fixed_seconds({"setup_s": 2.0, "finish_s": 1.5}) == 3.5
    assert fixed_seconds({"finish_s": 1.5}) is None and fixed_seconds({"setup_s": None, "finish_s": 1.0}) is None
    source = type("Record", (), {"id": "distill-a", "created_str": "2026-12-07 10:00"})()
    older = PlannedTime({"student steps": 10}, TimeLeft(30.0, {}), source)
    assert older.seconds == 30.0 and older.describe().startswith("about 0:30 on this machine (the pace of distill-a")
    newer = PlannedTime({"student steps": 10}, TimeLeft(30.0, {}), source, fixed_s=12.0)
    assert newer.describe().startswith("about 0:42 on this machine (0:30 of steps and 0:12 of set-up and final test")


def test_the_cli_prints_the_same_plan_before_a_run_of_a_stored_teacher(tmp_path, capsys, digits_teacher):
    from dfkd_core.cli import main
    from tests.browser_app import add_teacher_run
    home = tmp_path / "home"
    teacher = add_teacher_run(home, digits_teacher.path, "digits teacher")
    args = ["--home", str(home), "distill", "--teacher", teacher, "--method", "noise", "--steps", "20"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "time: 20 student steps; no earlier run" in first.err
    assert "plan: 20 steps = 20 student steps" in first.err, first.err
    assert main(args[:-1] + ["100"]) == 0
    second = capsys.readouterr().err
    earlier = min(RunStore(home).list(kind="distill"), key=lambda r: r.created)
    assert "time: about " in second and f"the pace of {earlier.id}" in second, second


def test_the_app_s_auto_device_and_the_cli_s_resolved_one_time_each_other():
    import torch
    from dfkd_core.distill.estimate import pace_settings
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert pace_settings({"device": "auto"}, "s") == pace_settings({"device": here}, "s")
    assert pace_settings({"device": "auto", "batch_size": 64}, "s") != pace_settings({"batch_size": 128}, "s")


def test_a_teacher_is_timed_per_epoch_by_the_newest_like_run(store):
    from dfkd_core.distill.estimate import planned_teacher_time
    from dfkd_core.training import TeacherConfig
    config = TeacherConfig(dataset="digits", epochs=4).resolved()
    run = store.create("teacher", TeacherConfig(dataset="digits", epochs=2).resolved().to_dict(), dataset="digits")
    for step in range(12):
        run.log_metrics({"step": step, "elapsed_s": float(step)})
    run.set_status("done", summary={"epochs_done": 2.0})
    # 11 s over 2 epochs: 5.5 s an epoch, 22 s for 4
    assert planned_teacher_time(store, config).startswith("about 0:22 on this machine (4 epochs at 0:06 each")
    fast = store.create("teacher", TeacherConfig(dataset="digits", epochs=30).resolved().to_dict(), dataset="digits")
    for step in range(12):
        fast.log_metrics({"step": step, "elapsed_s": step * 0.5})
    fast.set_status("done", summary={"epochs_done": 30.0})   # 0.18 s an epoch: '0:00 each' read as no time at all
    assert "(4 epochs at 0.2 s each" in planned_teacher_time(store, config)
    other = TeacherConfig(dataset="digits", epochs=4, augment="crop").resolved()
    assert "no estimate yet" in planned_teacher_time(store, other)
