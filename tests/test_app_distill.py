"""AppTest of the Distill page (every method offered, weights per method, a tiny digits run started, watched,
stored and reattached, bad input explained) and of the Runs page's comparison of distilled students."""
import copy
import json
import shutil

import pytest
import torch

from dfkd_core.data import dataset_info
from dfkd_core.distill import DISTILL_METHODS, DistillConfig, DistillJob
from dfkd_core.models import create_model, save_checkpoint
from test_app import add_teacher, app, button, elements, home, job_of, teacher_home, wait  # noqa: F401 (fixtures)

PAGE = "pages/distill.py"
TINY = {"images": 40, "iterations": 20, "batch_size_inv": 20, "kd_steps_per_round": 5, "steps": 20,
        "batch_size": 32}


def set_numbers(at, values: dict) -> None:
    for name, value in values.items():
        at.sidebar.number_input(key=f"distill_{name}").set_value(value)
    at.run()


def sidebar_labels(at) -> set[str]:
    return {w.label for w in at.sidebar.number_input} | {w.label for w in at.sidebar.select_slider}


def test_every_method_is_offered_data_free_first_with_its_weights(teacher_home):
    at = app(PAGE)
    assert at.title[0].value == "Distill"
    method = at.sidebar.selectbox(key="distill_method")
    assert set(method.options) == {n if c.data_free else f"{n} (uses real data)" for n, c in DISTILL_METHODS.items()}
    flags = [DISTILL_METHODS[o.split(" ")[0]].data_free for o in method.options]
    assert flags == sorted(flags, reverse=True)  # data-free ones first
    assert method.value == "deepinversion"
    assert at.sidebar.selectbox(key="distill_student").value == "bncnn3_w16"  # the teacher's half-width student
    common = {"KD steps after synthesis", "student batch", "student learning rate", "temperature T", "processes"}
    assert common | {"images N", "inversion iterations", "α_f · BN feature statistics",
                     "trajectory KD from iteration k", "KD steps per round", "mixup share",
                     "cutmix share"} <= sidebar_labels(at)
    assert "α_c · competition" not in sidebar_labels(at)
    method.set_value("adi").run()
    assert "α_c · competition" in sidebar_labels(at)
    at.sidebar.selectbox(key="distill_method").set_value("generator").run()
    labels = sidebar_labels(at)
    assert {"generator steps", "λ_bn · BN moment matching"} | common <= labels and "images N" not in labels
    at.sidebar.selectbox(key="distill_method").set_value("noise").run()
    assert sidebar_labels(at) == common | {"teacher echo K"}
    at.sidebar.selectbox(key="distill_method").set_value("real-kd").run()
    assert "teacher echo K" not in sidebar_labels(at)   # its steps may add CE on their own batch's labels
    assert not button(at, "Start").disabled and button(at, "Stop").disabled


def test_the_recipe_box_sets_every_weight_and_a_moved_weight_then_wins(teacher_home):
    at = app(PAGE)
    recipe = at.sidebar.selectbox(key="distill_recipe")
    assert recipe.value == "digits-quick" and recipe.options[-1].startswith("none")
    steps = at.sidebar.number_input(key="distill_steps")
    assert steps.value == 400   # digits-quick's, not DistillConfig's 2,000
    recipe.set_value("").run()
    assert at.sidebar.number_input(key="distill_steps").value == 2000
    at.sidebar.number_input(key="distill_steps").set_value(123).run()
    at.sidebar.selectbox(key="distill_method").set_value("adi").run()   # same recipe: a moved weight stays
    assert at.sidebar.number_input(key="distill_steps").value == 123
    at.sidebar.selectbox(key="distill_recipe").set_value("digits-quick").run()
    assert at.sidebar.number_input(key="distill_steps").value == 400
    bf16 = at.sidebar.checkbox(key="distill_cpu_bf16")
    assert bf16.label.startswith("bfloat16 on this CPU") and bf16.value is False   # digits-quick asks for float32
    # the main pane names the recipe with its description (which gives its time: fashion-best runs 20-40 minutes)
    assert "Recipe **digits-quick**: sklearn digits 8x8" in " ".join(c.value for c in at.main.caption)
    assert not at.warning


def test_a_partial_teacher_is_said_to_be_one_before_a_student_is_distilled_from_it(home, digits_teacher):
    run = home.create("teacher", {}, method="bncnn3_w32", dataset="digits", name="stopped teacher")
    shutil.copy(digits_teacher.path, run.path("model.pt"))
    run.set_status("cancelled", summary={"test_accuracy": 0.646})
    at = app(PAGE)
    assert at.sidebar.selectbox(key="distill_teacher").value == run.id
    (warning,) = at.warning
    assert "This teacher is partial" in warning.value and "64.6% · partial (cancelled)" in warning.value


def test_tiny_digits_run_is_watched_stored_and_reattached(teacher_home):
    at = app(PAGE)
    set_numbers(at, TINY)
    time_caption = next(c.value for c in at.caption if c.value.startswith("**Time**"))
    assert "student steps" in time_caption and "no estimate" in time_caption   # no earlier run to time it by
    button(at, "Start").click().run()
    assert not at.error, at.error[0].value
    job = job_of(at)
    assert job is not None and job.kind == "distill"
    assert job.wait(120) == "done", job.error
    at.run()
    assert not at.exception
    record = teacher_home.get_record(job.run_record.id)
    assert record.kind == "distill" and record.status == "done" and record.teacher == teacher_home.teacher_id
    assert (record.dir / "model.pt").is_file() and (record.dir / "images.pt").is_file()
    summary = record.summary
    assert summary["images_synthesized"] == 40 and summary["student"] == "bncnn3_w16"
    assert len(summary["curve"]) >= 3  # eval_every set so the curve has points even on a tiny run
    table = at.dataframe[0].value
    assert table["student acc"][0] == pytest.approx(100 * summary["student_accuracy"])
    assert table["teacher acc"][0] == pytest.approx(100 * summary["teacher_accuracy"])
    assert table["images"][0] == "40 made"
    assert len(elements(at, "plotly_chart")) == 4 and elements(at, "image")  # 2 accuracy curves, KD loss, per class
    total = job.method.total_steps()
    progress = at.get("progress")[0].proto.text   # one status, then the time taken: no "done · ... · done"
    assert progress.startswith(f"**done** · step {total:,} of {total:,} · ") and progress.endswith("elapsed")
    plan = next(c.value for c in at.caption if " steps = " in c.value)   # one step count, its parts explained
    assert plan.startswith(f"{total:,} steps = ") and f"{job.trainer.steps_done:,} student steps" in plan

    # Beside the finished run, the next run's time at its pace (the caption used to go once a run was attached).
    assert any(c.value.startswith("**Time** of a run with these settings: about ") for c in at.caption)
    again = app(PAGE)   # the same settings once more: timed at the finished run's pace, before Start
    set_numbers(again, TINY)
    time_caption = next(c.value for c in again.caption if c.value.startswith("**Time**"))
    assert "on this machine" in time_caption and record.id in time_caption, time_caption

    reloaded = app(PAGE, job=job.id)   # a page reload: same job, its settings in the widgets
    assert job_of(reloaded) is job
    assert reloaded.sidebar.number_input(key="distill_images").value == 40
    assert reloaded.dataframe[0].value["student acc"][0] == pytest.approx(100 * summary["student_accuracy"])

    at.sidebar.selectbox(key="distill_pool").set_value(record.id).run()   # synthesize once, distill again
    assert "images N" not in sidebar_labels(at)
    button(at, "Start").click().run()
    second = job_of(at)
    assert second is not job and second.wait(120) == "done", second.error
    reused = teacher_home.get_record(second.run_record.id).summary
    assert reused["images_synthesized"] == 0 and reused["pool_size"] == 40
    at.run()   # a reused pool: no curve against images made (all at 0), its size where "images finished" was
    assert len(elements(at, "plotly_chart")) == 3   # accuracy vs student steps, KD loss, per class
    assert {m.label: m.value for m in at.metric}["images in the pool"] == "40"
    assert any("student steps on 40 stored images." in c.value for c in at.caption)


def test_stop_keeps_the_student_so_far(teacher_home):
    at = app(PAGE)
    at.sidebar.selectbox(key="distill_method").set_value("noise").run()
    set_numbers(at, {"steps": 100000, "batch_size": 16})
    button(at, "Start").click().run()
    job = job_of(at)
    wait(lambda: len(job.history) >= 5)
    at.run()
    assert button(at, "Start").disabled and at.sidebar.selectbox(key="distill_method").disabled
    button(at, "Stop").click().run()
    assert job.wait(30) == "cancelled"
    at.run()
    record = teacher_home.get_record(job.run_record.id)
    assert record.status == "cancelled" and (record.dir / "model.pt").is_file()
    assert at.dataframe[0].value["student acc"][0] == pytest.approx(100 * record.summary["student_accuracy"])


def test_bad_input_is_explained(home, tmp_path):
    path = save_checkpoint(tmp_path / "plain.pt", create_model("plaincnn3_w32", 10, 1, 8), dataset_info("digits"))
    add_teacher(home, path, name="plaincnn3_w32 on digits")
    at = app(PAGE)
    # DeepInversion was offered first and refused after Start; the methods that need BN statistics are not offered.
    methods = at.sidebar.selectbox(key="distill_method")
    assert methods.value == "deepdream" and not {"deepinversion", "adi", "generator", "fast"} & set(methods.options)
    assert any("no BatchNorm layers" in c.value and "deepinversion" in c.value for c in at.sidebar.caption)
    at.sidebar.selectbox(key="distill_student").set_value("lenet5_half").run()
    at.sidebar.selectbox(key="distill_method").set_value("noise").run()
    button(at, "Start").click().run()   # a student that cannot take 8x8 images
    assert not at.exception and "lenet5_half" in at.error[0].value and "16x16" in at.error[0].value
    assert home.list(kind="distill") == []  # nothing half-made left in the run store


# ------------------------------------------------------------------ Runs: compare students

def test_runs_page_compares_distilled_students(teacher_home, digits_teacher):
    torch.set_num_threads(1)   # tiny models on a shared 2-core machine: one thread is several times faster
    ids = []
    for method, extra in (("noise", {}), ("deepinversion", {"images": 20, "kd_steps_per_round": 5,
                                                             "synthesis": {"iterations": 10, "batch_size": 20}})):
        config = DistillConfig(method=method, steps=20, batch_size=32, eval_every=5, **extra)
        run = teacher_home.create("distill", config.to_dict(), teacher=teacher_home.teacher_id, method=method,
                                  dataset="digits", name=f"{method} student")
        job = DistillJob(copy.deepcopy(digits_teacher), config, run=run)
        job.run()
        assert job.status == "done", job.error
        ids.append(run.id)
    runs = app("pages/runs.py", run=ids[0])
    assert runs.selectbox(key="runs_open").value == ids[0]   # ?run= opens that run
    assert set(runs.multiselect(key="runs_students").value) == set(ids)
    table = next(t.value for t in runs.dataframe if "student acc" in t.value.columns and len(t.value) == 2)
    assert list(table["method"]) == ["noise", "deepinversion"] or list(table["method"]) == ["deepinversion", "noise"]
    for rid in ids:
        summary = teacher_home.get_record(rid).summary
        row = table[table["run"] == rid].iloc[0]
        assert row["student acc"] == pytest.approx(100 * summary["student_accuracy"])
        assert row["ratio"] == pytest.approx(summary["student_accuracy"] / summary["teacher_accuracy"])
    listed = runs.dataframe[0].value.set_index("id")   # the run list: a distillation's minutes and student steps
    for rid in ids:
        summary = teacher_home.get_record(rid).summary
        assert listed.loc[rid, "minutes"] == pytest.approx(summary["wall_minutes"])
        assert listed.loc[rid, "steps"] == summary["student_steps"]
    charts = {c.proto.id: c for c in elements(runs, "plotly_chart")}
    overlaid = [json.loads(c.proto.spec) for c in charts.values()]
    two_lines = [f for f in overlaid if sum(t.get("mode") == "lines+markers" for t in f["data"]) == 2]
    assert len(two_lines) == 2  # vs images synthesized and vs student steps
    for rid in ids:   # each accuracy beside its 95% interval, in the table and as an error bar
        row = table[table["run"] == rid].iloc[0]
        low, high = (float(v.rstrip("%")) for v in row["student 95% CI"].split(" – "))
        assert low <= row["student acc"] <= high and low < high
    bars = [t for f in overlaid for t in f["data"] if t.get("type") == "bar"]
    assert any(len(b["x"]) == 2 and len(b["error_y"]["array"]) == 2 for b in bars)
    paired = next(t.value for t in runs.dataframe if "verdict" in t.value.columns)
    assert len(paired) == 1 and paired.iloc[0]["difference"].endswith("]")   # on the same test images
    runs.multiselect(key="runs_students").set_value([]).run()
    runs.selectbox(key="runs_compare").set_value(ids[1]).run()   # "Compare with" on two students: accuracies
    pair = [json.loads(c.proto.spec) for c in elements(runs, "plotly_chart")]
    assert any(t.get("type") == "bar" and len(t["x"]) == 2 for f in pair for t in f["data"])
    runs.multiselect(key="runs_students").set_value([ids[1]]).run()
    assert not runs.exception


def test_page_defaults_are_the_recipe_of_the_teachers_dataset_down_to_the_inversion_lr():
    """The Distill page starts from the same settings as `dfkd distill --recipe` (README tables), including the
    inversion learning rate, which has no widget default of its own: fashion DI at 0.25, ADI as measured at 0.1,
    and DeepDream's weaker TV prior. Where the robust recipe covers a method it is the default (issue 19)."""
    from dfkd_core.distill.recipes import RECIPES
    from pages.views.distill_view import NO_RECIPE, defaults
    for method, recipe_name in (("deepinversion", "fashion-best"), ("adi", "fashion-10min")):
        recipe = RECIPES[recipe_name]["methods"][method]
        values = defaults(method, "fashion-mnist")
        assert values["inv_lr"] == recipe["synthesis"]["lr"] and values["images"] == recipe["images"]
        assert values["iterations"] == recipe["synthesis"]["iterations"] and values["steps"] == recipe["steps"]
        assert values["mixup"] == recipe.get("mixup", 0.0)
        assert values["temperature"] == recipe.get("temperature", 4.0)
    assert defaults("deepinversion", "fashion-mnist", "fashion-10min")["images"] == 1200
    assert defaults("deepinversion", "fashion-mnist", NO_RECIPE)["steps"] == 2000   # DistillConfig's own
    assert defaults("deepinversion", "fashion-mnist")["inv_lr"] != defaults("adi", "fashion-mnist")["inv_lr"]
    assert defaults("deepinversion", "digits")["inv_lr"] == 0.1
    dream = RECIPES["fashion-10min"]["methods"]["deepdream"]["synthesis"]
    assert defaults("deepdream", "fashion-mnist")["alpha_tv"] == dream["alpha_tv"] != defaults("deepdream", "digits")[
        "alpha_tv"]


def test_every_recipe_value_is_one_the_page_can_show_bf16_included():
    """A widget with fixed options snaps a value to its nearest option: a recipe value outside them would start
    another run than the recipe's. The recipe's cpu_bf16 reaches the page's bf16 box and the config it builds."""
    from dfkd_core.distill.recipes import RECIPES
    from pages.views.distill_view import WEIGHTS, defaults
    for name, spec in RECIPES.items():
        for method, overrides in spec["methods"].items():
            values = defaults(method, spec["dataset"], name)
            for w in WEIGHTS:
                if w.options:
                    assert values[w.name] in w.options, (name, method, w.name, values[w.name])
            assert values["cpu_bf16"] == overrides.get("cpu_bf16", False), (name, method)
    assert defaults("deepinversion", "fashion-mnist", "fashion-5min")["cpu_bf16"] is True


def test_a_machine_without_bf16_starts_fashion_5min_with_its_float32_settings_and_says_so(monkeypatch):
    """The page starts from what `dfkd distill --recipe` runs on this machine: without native bf16, fashion-5min's
    float32 settings (teacher echo 2, 3,800 steps), with the reason under the recipe box; with bf16, the recipe."""
    import dfkd_core.device as device
    from pages.views.distill_view import defaults, recipe_values
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_computes_bf16", lambda: False)
    values = defaults("deepinversion", "fashion-mnist", "fashion-5min")
    assert (values["teacher_echo"], values["steps"], values["cpu_bf16"]) == (2, 3800, True)
    assert recipe_values("fashion-5min", "deepinversion")[1] == {"teacher_echo": 2, "steps": 3800}
    monkeypatch.setattr(device, "cpu_computes_bf16", lambda: True)
    values = defaults("deepinversion", "fashion-mnist", "fashion-5min")
    assert (values["teacher_echo"], values["steps"]) == (1, 2800)
    assert recipe_values("fashion-5min", "deepinversion")[1] == {}


def test_a_deep_link_to_distill_on_an_empty_store_offers_the_starter_teacher(home):
    at = app("pages/distill.py")
    assert at.title[0].value == "Distill"
    assert at.get("progress")[0].proto.text.startswith("First launch")   # the main area is not blank
    from pages.views.common import STARTER_KEY, get_job_manager
    assert get_job_manager().find(STARTER_KEY).wait(300) == "done"
    at.run()
    assert "starter" in at.sidebar.selectbox(key="distill_teacher").format_func(
        at.sidebar.selectbox(key="distill_teacher").value)


def test_the_live_view_shows_accuracy_per_class_teacher_beside_student(teacher_home):
    at = app(PAGE)
    set_numbers(at, TINY)
    button(at, "Start").click().run()
    job = job_of(at)
    assert job.wait(120) == "done", job.error
    at.run()
    assert len(job.per_class["teacher"]) == len(job.per_class["student"]) == 10
    charts = [json.loads(c.proto.spec) for c in elements(at, "plotly_chart")]
    per_class = [f for f in charts if "per class" in str(f["layout"].get("title", {}).get("text", ""))]
    assert per_class and [t["name"] for t in per_class[0]["data"]] == ["teacher", "student"]
    # The headline, once ended, is the result's number with the Result table's interval (it once gave a Wilson
    # interval on the same images beside the table's bootstrap one).
    headline = [c.value for c in at.caption if "real test images:" in c.value]
    assert headline and "as in the Result table" in headline[0]
    assert f"{job.result['student_accuracy']:.2%} [" in headline[0]
    low, high = (float(v.rstrip("%")) for v in at.dataframe[-1].value["student 95% CI"][0].split(" – "))
    assert f"[{low:.2f}%, {high:.2f}%]" in headline[0]
    for trace, model in zip(per_class[0]["data"], ("teacher", "student")):   # every bar carries its interval
        intervals = job.per_class[model]
        assert trace["error_y"]["array"] == pytest.approx([i.high - i.estimate for i in intervals])
        assert all(i.low <= i.estimate <= i.high and i.high > i.low for i in intervals if i.units)


def test_a_two_process_run_starts_from_the_page_and_is_shown_like_any_other(teacher_home):
    """processes = 2: torchrun runs the job; the page follows its run (steps, accuracy curve, result)."""
    at = app(PAGE)
    set_numbers(at, {**TINY, "kd_steps_per_round": 0, "trajectory_kd_from": -1, "processes": 2})
    button(at, "Start").click().run()
    assert not at.error, at.error[0].value
    job = job_of(at)
    assert job is not None and job.processes == 2
    assert job.wait(180) == "done", (job.error, job.log_path().read_text()[-2000:])
    at.run()
    assert not at.exception
    record = teacher_home.get_record(job.run_record.id)
    assert record.status == "done" and record.summary["processes"] == 2 and "2 processes" in record.name
    assert len(job.history) == job.method.total_steps() and job.curve   # every step of the leader, mirrored
    assert at.dataframe[0].value["student acc"][0] == pytest.approx(100 * record.summary["student_accuracy"])
    assert any("torchrun processes" in c.value for c in at.caption)


def test_a_method_that_needs_one_process_says_so_and_offers_no_choice(teacher_home):
    at = app(PAGE)
    at.sidebar.selectbox(key="distill_method").set_value("bss").run()
    assert not [w for w in at.sidebar.number_input if w.key == "distill_processes"]
    assert any("Runs in one process" in c.value for c in at.sidebar.caption)
    at.sidebar.selectbox(key="distill_method").set_value("deepinversion").run()
    set_numbers(at, {**TINY, "processes": 2})   # KD after each round needs one process: refused with the reason
    button(at, "Start").click().run()
    assert at.error and "the student can only learn once the pool is made" in at.error[0].value


def test_the_results_row_fits_and_says_where_the_images_came_from_and_a_precision_fallback():
    from pages.views.results_view import FELL_BACK, result_row
    ci = {"estimate": 0.8874, "low": 0.8806, "high": 0.894, "units": 10000, "level": 0.95, "resamples": 1000,
          "method": "percentile bootstrap"}
    reused = {"student_accuracy": 0.8874, "student_accuracy_ci": ci, "images_synthesized": 0, "pool_size": 800,
              "kd_precision": "float32 (bf16 asked for, but this CPU has no native bf16)"}
    row = result_row(reused, "distill-x")
    assert row["student 95% CI"] == "88.06% – 89.40%" and row["images"] == "800 reused"
    assert row["student acc"] == pytest.approx(88.74)   # in points: shown "88.74%" by the column's "%.2f%%"
    assert row["KD in"] == "float32" + FELL_BACK
    made = result_row({"images_synthesized": 1200, "pool_size": 1200, "kd_precision": "bfloat16 autocast"})
    assert made["images"] == "1,200 made" and made["KD in"] == "bf16" and made["ratio 95% CI"] == "–"


def test_the_running_headline_says_which_test_images_its_interval_is_over():
    from types import SimpleNamespace
    from pages.views.distill_live import accuracy_note
    digits = SimpleNamespace(running=True, result={}, heldout=[0] * 360, test_images=360)
    assert accuracy_note(digits, 0.95) == "Student accuracy on all 360 real test images: 95.0% [92.2%, 96.8%] " \
                                          "(Wilson 95%)."
    fashion = SimpleNamespace(running=True, result={}, heldout=[0] * 2000, test_images=10000)
    note = accuracy_note(fashion, 0.8)
    assert note.startswith("Student accuracy on 2,000 held-out real test images: 80.0% [") and "all 10,000" in note


def test_pools_of_one_preset_are_told_apart_and_a_collapsed_one_is_flagged(teacher_home):
    from dfkd_core.synthesis import SynthesisConfig
    name = SynthesisConfig.preset("deepinversion", dataset="digits").title()
    ids = []
    for status, summary in (("done", {"images": 100, "teacher_accuracy": 1.0}),
                            ("cancelled", {"images": 60, "teacher_accuracy": 0.11,
                                           "live_updates": [{"step": 40, "alpha_f": 0.0}]})):
        run = teacher_home.create("synthesis", {}, teacher=teacher_home.teacher_id, method="deepinversion",
                                  dataset="digits", name=name)
        torch.save({"images": torch.zeros(summary["images"], 1, 8, 8),
                    "targets": torch.zeros(summary["images"], dtype=torch.long)}, run.path("images.pt"))
        run.set_status(status, summary={"method": "deepinversion", **summary})
        ids.append(run.id)
    at = app(PAGE)
    box = at.sidebar.selectbox(key="distill_pool")
    sound, collapsed = (box.format_func(i) for i in ids)   # what tells them apart first: the box cuts the end
    assert sound.startswith("100 images · synthesis · ") and "partial" not in sound
    assert collapsed.startswith("60 images · synthesis · partial · changed live · ")
    box.set_value(ids[1]).run()
    assert "calls 11% of them their target class" in " ".join(c.value for c in at.sidebar.caption)
    warning = " ".join(w.value for w in at.sidebar.warning)
    assert "stopped (cancelled)" in warning and "changed while it ran" in warning and "only 11%" in warning
    box.set_value(ids[0]).run()
    assert not at.sidebar.warning
