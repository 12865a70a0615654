"""AppTest of the Representations (CKA) and Attention (Grad-CAM) pages on a stored digits teacher and real IE-KD /
IE-DML students: background jobs that land in the run store and reopen, overlays with per-image scores, 95%
intervals as error bars, sample counts said before and after a run, and a student of another task refused."""
import base64
import copy
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app_pages import open_app, plotly_figures
from dfkd_core.analysis import layer_names
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.runs import RunStore



@pytest.fixture(scope="module")
def ie_students(digits_teacher, tmp_path_factory):
    """An IE-KD student and an IE-DML pair (a few seconds each), as run directories."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = RunStore(tmp_path_factory.mktemp("ie_students"))
    jobs = {}
    for method, options in (("iekd", {"autoencoder_steps": 40}), ("iedml", {})):
        config = DistillConfig(method=method, steps=80, eval_every=1000, options=options)
        job = DistillJob(copy.deepcopy(digits_teacher), config, run=store.create("distill", config.to_dict()))
        job.run()
        assert job.status == "done", job.error
        jobs[method] = job
    torch.set_num_threads(threads)
    return jobs


def add_run(store: RunStore, kind: str, source_dir: Path, name: str, method: str, summary: dict) -> str:
    run = store.create(kind, {}, method=method, dataset="digits", name=name)
    for f in ("model.pt", "model_b.pt", "images.pt"):
        if (source_dir / f).is_file():
            shutil.copy(source_dir / f, run.path(f))
    run.set_status("done", summary=summary)
    return run.id


@pytest.fixture
def home(tmp_path, monkeypatch, digits_teacher, ie_students):
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    store = RunStore(tmp_path / "home")
    store.teacher_id = add_run(store, "teacher", Path(digits_teacher.path).parent, "bncnn3_w32 on digits",
                               "bncnn3_w32", {"test_accuracy": 0.99})
    store.ie = {m: add_run(store, "distill", j.run_record.dir, f"{m}: student", m,
                           {k: v for k, v in j.result.items() if k != "curve"}) for m, j in ie_students.items()}
    store.peer = str(store.get(store.ie["iedml"]).path("model_b.pt"))
    pool = tmp_path / "pool"
    pool.mkdir()
    info = digits_teacher.dataset
    torch.save({"images": info.normalize(torch.rand(60, 1, 8, 8)), "targets": torch.arange(60) % 10,
                "dataset": info.to_dict()}, pool / "images.pt")
    store.synthesis_id = add_run(store, "synthesis", pool, "deepinversion on digits", "deepinversion", {})
    yield store
    from pages.views.common import get_job_manager
    get_job_manager().shutdown()
    torch.set_num_threads(threads)


def finish_job(at: AppTest, kind: str):
    from pages.views.common import get_job_manager
    job = get_job_manager().get(at.query_params.get("job"))
    assert job is not None and type(job).__name__ == kind
    end = time.time() + 60
    while job.running:
        assert time.time() < end, "analysis timed out"
        time.sleep(0.05)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception, at.exception
    return job


def heatmap_values(trace: dict) -> list[list[float]]:
    """The z of a heatmap trace (plotly sends large arrays base64-encoded)."""
    z = trace["z"]
    if isinstance(z, dict):
        rows, cols = (int(n) for n in z["shape"].split(","))
        return torch.frombuffer(bytearray(base64.b64decode(z["bdata"])), dtype=torch.float64).view(rows, cols).tolist()
    return z


def click(at: AppTest, label: str, sidebar: bool = False) -> None:
    next(b for b in (at.sidebar.button if sidebar else at.button) if b.label == label).click().run()


# ------------------------------------------------------------------ Representations

def test_cka_runs_in_the_background_lands_in_the_store_and_reopens(home, digits_teacher):
    at = open_app("pages/representations.py")
    assert at.title[0].value == "Representations"
    assert "Compute CKA" in at.info[0].value
    student = at.sidebar.selectbox(key="cka_student")
    labels = student.options   # iekd and iedml students, IE-DML's peer B, and an untrained reference last
    assert len(labels) == 4 and sum("peer B" in o for o in labels) == 1 and sum("iekd" in o for o in labels) == 1
    assert labels[-1] == "untrained bncnn3_w16 · reference"
    student.set_value(home.ie["iekd"])
    at.run()
    assert any(c.value.endswith(home.ie["iekd"]) for c in at.sidebar.caption)   # the box shows the id's tail only
    # digits has 360 test images: the slider offers them all as its largest count, not 1,000 cut back
    assert at.sidebar.select_slider(key="cka_samples").value == 360 and not at.sidebar.warning
    assert "median of all $n^2$ squared distances" in at.caption[0].value   # the reference RBF bandwidth
    at.sidebar.select_slider(key="cka_samples").set_value(100).run()
    assert not at.sidebar.warning
    click(at, "Compute CKA", sidebar=True)
    finish_job(at, "CKAAnalysis")
    (analysis,) = home.list("analysis")
    assert analysis.method == "cka" and at.selectbox(key="cka_open").value == analysis.id
    heatmap, intervals = plotly_figures(at)
    assert "95% interval" in heatmap["data"][0]["hovertemplate"]
    assert len(intervals["data"]) == len(layer_names(digits_teacher.model))   # one line per teacher layer
    assert all("error_y" in t for t in intervals["data"]) and "500 resamples" in intervals["layout"]["title"]["text"]
    layers = layer_names(digits_teacher.model)
    assert heatmap["data"][0]["type"] == "heatmap" and heatmap["data"][0]["y"] == layers
    z = heatmap_values(heatmap["data"][0])
    assert len(z) == len(layers) and all(0 <= v <= 1 + 1e-6 for row in z for v in row)
    captions = " ".join(c.value for c in at.caption)
    assert "100 images (real)" in captions and "split layer is **features.10**" in captions

    assert "split layer is **features.10**" in captions and "95% interval" in captions
    # Same depth: each layer pair with its interval, never a bare mean over them.
    assert re.search(r"layer i vs layer i, 95% intervals: features\.\d+ \d\.\d\d\d \[\d\.\d\d\d, \d\.\d\d\d\]", captions)
    assert "mean of the diagonal" not in captions

    fresh = open_app("pages/representations.py")   # another session: the stored matrix, no job needed
    assert fresh.selectbox(key="cka_open").value == analysis.id
    assert heatmap_values(plotly_figures(fresh)[0]["data"][0]) == z


def test_a_students_cka_is_read_against_an_untrained_reference(home):
    """CKA near 1 at the first layers says little alone (an untrained network scores high there too): the page
    offers an untrained reference and, once it is computed, gives its values beside a trained student's."""
    at = open_app("pages/representations.py")
    at.sidebar.select_slider(key="cka_samples").set_value(100)
    at.sidebar.selectbox(key="cka_student").set_value("untrained:bncnn3_w16").run()
    assert "never trained" in " ".join(c.value for c in at.sidebar.caption)
    click(at, "Compute CKA", sidebar=True)
    finish_job(at, "CKAAnalysis")
    (reference,) = home.list("analysis")
    assert "untrained:bncnn3_w16" in reference.name
    assert "Untrained reference" not in " ".join(c.value for c in at.caption)   # the reference itself
    at.sidebar.selectbox(key="cka_student").set_value(home.ie["iekd"]).run()
    click(at, "Compute CKA", sidebar=True)
    finish_job(at, "CKAAnalysis")
    note = next(c.value for c in at.caption if c.value.startswith("Untrained reference"))
    assert reference.id in note and re.search(r"layer i vs layer i features\.\d+ \d\.\d\d\d \[", note)
    assert not [b for b in at.button if b.key == "cka_reference"]   # nothing left to compute


def test_one_click_computes_the_untrained_reference_of_an_opened_comparison(home):
    """A lecturer opened a student's CKA: the floor to read it against is one button away, with its settings."""
    at = open_app("pages/representations.py")
    at.sidebar.select_slider(key="cka_samples").set_value(100)
    at.sidebar.selectbox(key="cka_student").set_value(home.ie["iekd"]).run()
    click(at, "Compute CKA", sidebar=True)
    finish_job(at, "CKAAnalysis")
    said = " ".join(c.value for c in at.caption)
    assert "**untrained bncnn3_w16** (initialised, never trained)" in said and "…" not in said
    next(b for b in at.button if b.key == "cka_reference").click().run()
    assert not at.exception and not at.error
    finish_job(at, "CKAAnalysis")
    analyses = home.list("analysis")
    reference = next(r for r in analyses if "untrained:bncnn3_w16" in r.name)
    trained = next(r for r in analyses if r is not reference)
    reference_config, trained_config = (home.get(r.id).config() for r in (reference, trained))
    assert {k: v for k, v in reference_config.items() if k not in ("student", "layers_student")} == \
        {k: v for k, v in trained_config.items() if k not in ("student", "layers_student")}
    at.selectbox(key="cka_open").set_value(trained.id).run()
    note = next(c.value for c in at.caption if c.value.startswith("Untrained reference"))
    assert reference.id in note


def test_the_untrained_reference_is_the_same_network_every_run(home):
    # The same untrained network in every run: fixed seed, whatever the global RNG did meanwhile.
    from dfkd_core.models.reference import untrained_reference
    from pages.views.common import open_checkpoint
    teacher = open_checkpoint(home.teacher_id)
    torch.manual_seed(123)
    a = untrained_reference("untrained:bncnn3_w16", teacher)
    torch.manual_seed(456)
    b = untrained_reference("untrained:bncnn3_w16", teacher)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_cka_of_an_ie_dml_peer_on_synthesized_images_with_the_rbf_kernel(home):
    at = open_app("pages/representations.py")
    at.sidebar.selectbox(key="cka_student").set_value(home.peer)
    at.sidebar.radio(key="cka_kernel").set_value("rbf")
    at.sidebar.selectbox(key="cka_inputs").set_value(home.synthesis_id).run()
    # the pool has 60 images: all 60 and nothing more (no count to cut back with a warning), said rather than a
    # slider of one value
    assert not [s for s in at.sidebar.select_slider if s.key == "cka_samples"] and not at.sidebar.warning
    assert "How many: 60 images, all there are" in [c.value for c in at.sidebar.caption]
    click(at, "Compute CKA", sidebar=True)
    job = finish_job(at, "CKAAnalysis")
    assert job.cka.kernel == "rbf" and job.cka.samples == 60 and job.cka.bandwidth == "reference"
    assert job.config.inputs == home.synthesis_id and job.config.student == home.peer
    assert "60 images" in " ".join(c.value for c in at.caption) and not at.warning


# ------------------------------------------------------------------ Attention

def test_attention_shows_teacher_and_students_side_by_side_with_scores(home):
    at = open_app("pages/attention.py")
    assert at.title[0].value == "Attention" and "Pick one or more students" in at.info[0].value
    assert not at.subheader   # no heading over nothing before any set is scored
    newest = next(b for b in at.button if b.key == "att_students_newest")   # one click for a demo
    assert newest.label.startswith("Pick the newest student: ")
    newest.click().run()
    assert not at.exception and len(at.sidebar.multiselect(key="att_students").value) == 1
    at.sidebar.multiselect(key="att_students").set_value([home.ie["iekd"], home.peer]).run()
    assert not at.exception, at.exception
    grid = plotly_figures(at)[0]
    assert sum(t["type"] == "image" for t in grid["data"]) == 6 * 4   # 6 images × (input, teacher, 2 students)
    titles = [a["text"] for a in grid["layout"]["annotations"]]
    assert sum("r=" in t and "IoU=" in t for t in titles) == 6 * 2
    assert len(at.metric) == 2 and all("/" in m.value for m in at.metric)
    assert "95% intervals over the images shown" in " ".join(c.value for c in at.caption)
    # digits' bncnn3 ends in 2x2 maps: said, with the chance level the scores must beat
    assert "Grad-CAM maps are 2×2 cells before upsampling (coarse" in " ".join(c.value for c in at.caption)
    assert "Chance level" in " ".join(c.value for c in at.caption)
    table = at.dataframe[0].value   # one row per image and student: as narrow for three students as for one
    assert len(table) == 6 * 2 and list(table.columns) == ["image", "student", "correlation r", "top-region IoU"]
    assert ((table.iloc[:, 2:] >= -1) & (table.iloc[:, 2:] <= 1)).all().all()
    at.multiselect(key="att_images").set_value([3, 50]).run()
    at.sidebar.radio(key="att_target").set_value("teacher").run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 2 * 2


def test_attention_scores_many_images_in_the_background(home):
    at = open_app("pages/attention.py")
    at.sidebar.multiselect(key="att_students").set_value([home.ie["iedml"]]).run()
    at.multiselect(key="att_images").set_value([0]).run()
    # digits has 360 test images: offered as the largest count, not 500 cut back with a warning
    assert at.select_slider(key="att_samples").value == 360 and not at.warning
    at.select_slider(key="att_samples").set_value(100).run()
    click(at, "Score them")
    job = finish_job(at, "GradCAMAnalysis")
    assert job.result["samples"] == 100
    (analysis,) = home.list("analysis")
    assert analysis.method == "gradcam" and at.selectbox(key="att_open").value == analysis.id
    intervals, histograms = plotly_figures(at)[1], plotly_figures(at)[2:]
    assert [f["layout"]["xaxis"]["title"]["text"] for f in histograms] == [
        "Pearson correlation with teacher map", "top-region IoU with teacher map"]
    assert [t["name"] for t in intervals["data"]] == ["mean r", "mean IoU"] and "error_y" in intervals["data"][0]
    summary = at.dataframe[1].value
    assert len(summary) == 1 and summary["images"][0] == 100 and "[" in summary["mean r (95% interval)"][0]
    assert "[" in summary["r above chance"][0] and "[" in summary["IoU above chance"][0]
    # a scored set is shown with no student picked too (the page stopped at "Pick one or more students", so a set
    # scored from the CLI could not be seen)
    fresh = open_app("pages/attention.py")
    assert "Pick one or more students" in fresh.info[0].value and not fresh.exception
    assert fresh.selectbox(key="att_open").value == analysis.id and len(fresh.dataframe) == 1
    assert [h.value for h in fresh.subheader] == ["Overlap on many images"]


def test_attention_shows_the_paired_difference_of_two_students_on_the_same_images(home):
    at = open_app("pages/attention.py")
    at.sidebar.multiselect(key="att_students").set_value([home.ie["iekd"], home.ie["iedml"]]).run()
    assert not at.exception, at.exception
    shown = " ".join(c.value for c in at.caption)
    assert "Paired differences on these images (95% paired interval)" in shown and " − iekd" in shown
    at.select_slider(key="att_samples").set_value(100).run()
    click(at, "Score them")
    finish_job(at, "GradCAMAnalysis")
    (analysis,) = home.list("analysis")
    run = home.get(analysis.id)
    saved = run.load_json("gradcam.json")
    (d,) = saved["differences"]   # the second student minus the first, on the same 100 images
    later, earlier = list(saved["students"])[1], list(saved["students"])[0]
    assert (d["student_a"], d["student_b"]) == (later, earlier) and d["iou"]["units"] == 100

    def shown_differences():
        (fig,) = [f for f in plotly_figures(at)
                  if f["layout"].get("title", {}).get("text", "").startswith("Paired differences")]
        table = next(df.value for df in at.dataframe if "students" in df.value.columns)
        return fig, table

    fig, table = shown_differences()
    assert [t["name"] for t in fig["data"]] == ["r", "IoU"] and "error_x" in fig["data"][1]
    assert fig["data"][1]["y"] == [f"{later} − {earlier}"]
    assert fig["data"][1]["x"][0] == pytest.approx(d["iou"]["estimate"])
    assert table["students"][0] == f"{later} − {earlier}" and table["images"][0] == 100
    assert table["IoU difference (95% interval)"][0].count("[") == 1
    # a run stored before differences were: computed from its per-image scores, the same numbers
    run.save_json("gradcam.json", {k: v for k, v in saved.items() if k != "differences"})
    at.run()
    assert not at.exception, at.exception
    fig, _ = shown_differences()
    assert fig["data"][1]["x"][0] == pytest.approx(d["iou"]["estimate"])


# ------------------------------------------------------------------ a pair that cannot be compared

def test_a_student_made_for_another_input_shape_is_refused_before_any_run(home, tmp_path):
    from dfkd_core.data import dataset_info
    from dfkd_core.models import create_model, save_checkpoint

    other = tmp_path / "other"
    save_checkpoint(other / "model.pt", create_model("bncnn3_w16", 10, 1, 16), dataset_info("digits"))
    wrong = add_run(home, "distill", other, "16×16 digits student", "real-kd", {"student_accuracy": 0.5})
    at = open_app("pages/representations.py")
    at.sidebar.selectbox(key="cka_student").set_value(wrong).run()
    assert "cannot be compared with the teacher" in at.sidebar.error[0].value
    click(at, "Compute CKA", sidebar=True)
    assert "image size 16 (teacher: 8)" in at.error[-1].value and not home.list("analysis")
    att = open_app("pages/attention.py")
    att.sidebar.multiselect(key="att_students").set_value([wrong]).run()
    assert "image size 16 (teacher: 8)" in att.error[0].value and not plotly_figures(att)


def test_attention_draws_the_untrained_reference_beside_a_student(home):
    at = open_app("pages/attention.py")
    assert at.sidebar.multiselect(key="att_students").options[-1] == "untrained bncnn3_w16 · reference"
    at.sidebar.multiselect(key="att_students").set_value([home.ie["iekd"], "untrained:bncnn3_w16"]).run()
    assert not at.exception, at.exception
    assert any(m.label.startswith("untrained:bncnn3_w16") for m in at.metric)
