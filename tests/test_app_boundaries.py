"""AppTest of the Boundaries page: explanation, a background MagSim/AngSim comparison that lands in the run store and
reopens in a new session (with intervals, paired differences, faded bars resting on too few pairs, and how many base
samples qualified, said before and after), and the one-image attack panels with the step each attack crossed."""
import copy
import shutil
import time

import pytest
import torch

from app_pages import open_app, plotly_figures
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.runs import RunStore

PAGE = "pages/boundaries.py"


def add_run(store: RunStore, kind: str, checkpoint, name: str, method: str, accuracy: float) -> str:
    run = store.create(kind, {}, method=method, dataset="digits", name=name)
    shutil.copy(checkpoint, run.path("model.pt"))
    run.set_status("done", summary={"test_accuracy" if kind == "teacher" else "student_accuracy": accuracy})
    return run.id


@pytest.fixture(scope="module")
def digits_students(digits_teacher, tmp_path_factory):
    """Two real students (KD and scratch, a few seconds each) saved as checkpoints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = RunStore(tmp_path_factory.mktemp("students"))
    paths = {}
    for method, steps in (("real-kd", 100), ("scratch", 60)):
        config = DistillConfig(method=method, steps=steps, eval_every=1000)
        job = DistillJob(copy.deepcopy(digits_teacher), config, run=store.create("distill", config.to_dict()))
        job.run()
        assert job.status == "done", job.error
        paths[method] = (job.result["checkpoint"], job.result["student_accuracy"])
    torch.set_num_threads(threads)
    return paths


@pytest.fixture
def home(tmp_path, monkeypatch, digits_teacher, digits_students):
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    store = RunStore(tmp_path / "home")
    store.teacher_id = add_run(store, "teacher", digits_teacher.path, "bncnn3_w32 on digits", "bncnn3_w32", 0.99)
    store.student_ids = [add_run(store, "distill", path, f"{method}: student", method, acc)
                         for method, (path, acc) in digits_students.items()]
    yield store
    from pages.views.common import get_job_manager
    get_job_manager().shutdown()
    torch.set_num_threads(threads)


def test_page_explains_the_metric_and_asks_for_students(home):
    at = open_app(PAGE)
    assert at.title[0].value == "Boundaries"
    explanation = " ".join(m.value for m in at.markdown)
    assert r"\mathrm{MagSim}" in explanation and r"\mathrm{AngSim}" in explanation and "p_n^k" in explanation
    assert "Pick one or more students" in at.info[0].value
    if any(b.key == "boundary_students_newest" for b in at.button):   # where a student of this teacher is stored
        next(b for b in at.button if b.key == "boundary_students_newest").click().run()
        assert len(at.sidebar.pills(key="boundary_students").value) == 1
        at.sidebar.pills(key="boundary_students").set_value([]).run()
    pills = at.sidebar.pills(key="boundary_students")
    assert len(pills.options) == len(home.student_ids)   # both stored students offered
    for option, run_id in zip(sorted(pills.options), sorted(home.student_ids)):
        # a full run id in the label pushed the name out of a pill in the narrow sidebar
        assert ": student" in option and run_id not in option, (option, run_id)


def test_student_pills_differ_where_the_sidebar_shows_them(home):
    from pages.views.labels import LABEL_CHARS_SHOWN
    at = open_app(PAGE)
    pills = at.sidebar.pills(key="boundary_students")
    labels = list(pills.options)   # as drawn
    assert len({label[:LABEL_CHARS_SHOWN] for label in labels}) == len(labels) == len(home.student_ids), labels


def test_comparison_runs_as_a_job_lands_in_the_store_and_reopens(home):
    at = open_app(PAGE)
    at.sidebar.pills(key="boundary_students").set_value(home.student_ids)
    at.sidebar.number_input(key="boundary_samples").set_value(2000)
    at.run()
    before = at.sidebar.warning[0].value   # said before the run: the test split cannot give 2,000
    assert before.startswith("2,000 base samples asked: ") and "of the 360 test images qualify" in before
    qualified = int(before.split("asked: ")[1].split(" of the")[0].replace(",", ""))
    next(b for b in at.sidebar.button if b.label == "Compare").click().run()
    from pages.views.common import get_job_manager
    job = get_job_manager().get(at.query_params.get("job"))
    assert job is not None and type(job).__name__ == "BoundaryAnalysis"
    end = time.time() + 60
    while job.running:
        assert time.time() < end, "analysis timed out"
        time.sleep(0.1)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception, at.exception
    (analysis,) = home.list("analysis")
    assert analysis.status == "done" and at.selectbox(key="boundary_open").value == analysis.id

    bars = plotly_figures(at)[0]
    assert [t["name"] for t in bars["data"]] == ["MagSim", "AngSim"] and len(bars["data"][0]["x"]) == 2
    assert all(len(t["error_y"]["array"]) == 2 for t in bars["data"])   # 95% intervals as error bars
    counts = [a["text"] for a in bars["layout"]["annotations"]]
    assert len(counts) == 2 and all(text.startswith("n = ") and "pairs" in text for text in counts)
    table = at.dataframe[0].value
    assert len(table) == 2 and all(int(v.rstrip(" ⚠").replace(",", "")) >= 0 for v in table["pairs used"])
    assert all("[" in v for v in table["accuracy"]) and all("[" in v or v == "undefined" for v in table["MagSim"])
    assert "base samples" in " ".join(c.value for c in at.caption)
    after = " ".join(w.value for w in at.warning)   # said after the run, from the stored result
    assert f"2,000 base samples asked, {qualified} qualified" in after
    few = [r for r in job.table() if r["too_few_pairs"]]
    opacity = bars["data"][0]["marker"]["opacity"]
    assert [o < 1 for o in opacity] == [r["too_few_pairs"] for r in job.table()]
    if few:
        assert "fewer than 100 pairs" in after and "⚠" in " ".join(counts)
    differences = plotly_figures(at)[1]   # two students on the same base samples: their paired difference
    assert [t["name"] for t in differences["data"]] == ["MagSim", "AngSim"] and "error_x" in differences["data"][0]
    assert " − " in at.dataframe[1].value["students"][0]

    fresh = open_app(PAGE)   # another session: the stored comparison is offered and shown, without a job
    assert fresh.selectbox(key="boundary_open").value == analysis.id
    assert plotly_figures(fresh)[0]["layout"]["annotations"] == bars["layout"]["annotations"]

    home.delete(home.student_ids[0])   # a compared student deleted since: the stored numbers stay, attacks explain
    again = open_app(PAGE)
    assert plotly_figures(again)[0]["layout"]["annotations"] == bars["layout"]["annotations"]
    again.multiselect(key="one_images").set_value([7]).run()   # not attacked before, so not in the cache
    assert "Cannot attack these models" in again.error[0].value


def test_numbers_resting_on_too_few_pairs_are_faded_with_a_warning(home):
    at = open_app(PAGE)
    at.sidebar.pills(key="boundary_students").set_value(home.student_ids)
    at.sidebar.number_input(key="boundary_samples").set_value(5)   # at most 5 · 9 = 45 pairs < 100
    at.run()
    next(b for b in at.sidebar.button if b.label == "Compare").click().run()
    from pages.views.common import get_job_manager
    job = get_job_manager().get(at.query_params.get("job"))
    end = time.time() + 60
    while job.running:
        assert time.time() < end, "analysis timed out"
        time.sleep(0.1)
    at.run()
    assert not at.exception, at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "Resting on fewer than 100 pairs" in warning and "Too few to compare students" in warning
    bars, differences = plotly_figures(at)[:2]
    assert bars["data"][0]["marker"]["opacity"] == [0.3, 0.3]
    assert "⚠ only" in bars["layout"]["annotations"][0]["text"]
    assert all(v.endswith(" ⚠") for v in at.dataframe[0].value["pairs used"])
    # Their paired difference rests on the same too few pairs: faded and flagged too, not shown at full strength.
    assert all(t["marker"]["opacity"] == [0.3] for t in differences["data"])
    assert differences["data"][0]["y"][0].startswith("⚠ ")
    assert "too few to compare" in differences["layout"]["title"]["text"]
    assert list(at.dataframe[1].value["enough pairs"]) == ["no ⚠"]

def test_one_image_panels_show_both_attacks_and_where_they_crossed(home):
    at = open_app(PAGE)
    at.sidebar.pills(key="boundary_students").set_value(home.student_ids[:1]).run()
    at.multiselect(key="one_images").set_value([0, 1]).run()
    assert not at.exception, at.exception
    panels, loss = plotly_figures(at)
    titles = " ".join(a["text"] for a in panels["layout"]["annotations"])
    assert titles.count("teacher BSS") == 2 and titles.count("x̄ student") == 2
    assert "crossed at step" in titles or "rejected" in titles
    perturbations = [t for t in panels["data"] if t.get("colorscale") and t.get("zmid") == 0]
    assert len(perturbations) == 4   # two rows × (teacher, student), diverging scale centred on 0
    assert {t["name"] for t in loss["data"] if t.get("name")} >= {"teacher", "student"}
    at.selectbox(key="one_target").set_value(at.selectbox(key="one_target").options[1]).run()   # a fixed class
    assert not at.exception, at.exception


def test_every_knob_links_its_methods_section(home):
    """Issue 17: each setting's help ends with a link to the Methods section it belongs to."""
    at = open_app(PAGE)
    knobs = [*at.sidebar.number_input, *at.sidebar.radio, *at.sidebar.select_slider, at.sidebar.pills(
        key="boundary_students")]
    assert len(knobs) >= 6
    assert all("(/methods#bss)" in (k.help or "") for k in knobs), [k.label for k in knobs if "/methods#" not in
                                                                    (k.help or "")]
