"""Streamlit AppTest for every page: widgets present, a run started and its state reflected, bad input explained."""
import ast
import shutil
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app_pages import APP, open_app as app
from dfkd_core.data import dataset_info
from dfkd_core.models import CheckpointError, create_model, save_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis import LIVE_PARAMETERS, PRESETS


def add_teacher(store: RunStore, checkpoint_path, name="bncnn3_w32 on digits", accuracy=0.99) -> str:
    run = store.create("teacher", {}, method=name.split()[0], dataset="digits", name=name)
    shutil.copy(checkpoint_path, run.path("model.pt"))
    run.set_status("done", summary={"test_accuracy": accuracy})
    return run.id


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    yield RunStore(tmp_path / "home")
    from pages.views.common import get_job_manager
    get_job_manager().shutdown()
    torch.set_num_threads(threads)  # the app sets one thread per job; give other tests theirs back


@pytest.fixture
def teacher_home(home, digits_teacher):
    home.teacher_id = add_teacher(home, digits_teacher.path)
    return home


def job_of(at: AppTest):
    from pages.views.common import get_job_manager
    return get_job_manager().get(at.query_params.get("job"))


def wait(predicate, timeout=60.0):
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def elements(at: AppTest, kind: str) -> list:
    return [e for e in at.main if e.type == kind]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_layout_every_page_file_is_in_pages_and_listed_under_its_own_name():
    """The app is app.py + pages/ (the project's fixed layout). Every pages/*.py is a page of the navigation
    (pages/views/navigation.py) at the URL of its file name, and hands over to app.py when Streamlit's legacy
    pages/ lookup runs it bare (the first script run after a server start; tests/test_browser.py checks a first
    visit to every URL in a real browser on a fresh server)."""
    from pages.views.navigation import DEFAULT_PAGE, PAGES
    root = Path(APP).parent
    files = sorted(f.stem for f in (root / "pages").glob("*.py") if f.name != "__init__.py")
    names = [name for name, _, _ in PAGES]
    assert files and len(set(names)) == len(names) and sorted(names) == files
    assert DEFAULT_PAGE in files
    for name in files:
        assert "hand_over_to_app()" in (root / "pages" / f"{name}.py").read_text(), f"pages/{name}.py"


HEAVY_MODULES = ("torch", "torchvision", "dfkd_core", "pages.views", "plotly", "captum", "numpy", "PIL", "pandas")


def _imports(statements) -> list[str]:
    names = []
    for node in statements:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_every_page_hands_over_before_its_heavy_imports():
    """On a fresh server the first visit to a deep link runs the page file bare; a page that imports PyTorch before
    it hands over to app.py leaves the visitor a blank page for seconds instead of the start-up spinner (the browser
    test visits a sample of pages on fresh servers; this holds every page, and the module it hands over with, to it)."""
    root = Path(APP).parent
    navigation = ast.parse((root / "pages" / "views" / "navigation.py").read_text())
    assert not [m for m in _imports(navigation.body) if m.startswith(HEAVY_MODULES)]
    for page in sorted((root / "pages").glob("*.py")):
        if page.name == "__init__.py":
            continue
        body = ast.parse(page.read_text()).body
        hand_over = next(i for i, node in enumerate(body)
                         if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                         and getattr(node.value.func, "id", "") == "hand_over_to_app")
        early = [m for m in _imports(body[:hand_over]) if m.startswith(HEAVY_MODULES) and m != "pages.views.navigation"]
        assert not early, f"{page.name} imports {early} before hand_over_to_app()"


# ------------------------------------------------------------------ Synthesize

def test_synthesize_has_every_knob_with_its_equation_and_presets_set_weights(teacher_home):
    from pages.views.synthesis_view import KNOBS, knob_key
    at = app()
    assert at.title[0].value == "Synthesize"
    labels = {w.label for w in at.sidebar.select_slider} | {w.label for w in at.sidebar.toggle}
    assert {k.label for k in KNOBS} <= labels
    captions = " ".join(c.value for c in at.sidebar.caption)
    for knob in KNOBS:
        assert knob.explanation in captions
    assert {k.name for k in KNOBS if k.live} - {"pace"} == set(LIVE_PARAMETERS)
    radio = at.sidebar.radio(key="preset")
    assert radio.value == "deepinversion" and list(radio.options) == ["DeepDream", "DeepInversion", "Adaptive DI"]
    for method in ("deepdream", "adi", "deepinversion"):
        radio.set_value(method).run()
        for name, value in PRESETS[method].items():
            assert at.session_state[knob_key(name)] == value, (method, name)
    assert at.session_state[knob_key("flip")] is False and at.session_state[knob_key("jitter")] == 1  # digits
    assert not button(at, "Start").disabled and button(at, "Stop").disabled
    # a digits run at full pace is over in seconds: the page says how to get time to steer it
    iterations, pace = at.session_state[knob_key("iterations")], at.session_state[knob_key("pace")]
    said = f"{iterations:,} iterations take at least {iterations / pace:.0f} s: lower the pace"
    assert any(said in c.value for c in at.sidebar.caption)
    at.sidebar.select_slider(key=knob_key("pace")).set_value(5).run()   # follows the knob
    slow_enough = iterations / 5 >= 30   # 200 iterations at 5 steps/s: 40 s, time enough, nothing to say
    assert any("iterations take at least" in c.value for c in at.sidebar.caption) is not slow_enough
    at.sidebar.select_slider(key=knob_key("pace")).set_value(pace).run()
    assert not any("Moved from" in c.value for c in at.sidebar.caption)
    at.sidebar.select_slider(key=knob_key("alpha_f")).set_value(0.0).run()   # the radio still says DeepInversion
    at.sidebar.toggle(key=knob_key("flip")).set_value(True).run()
    moved = next(c.value for c in at.sidebar.caption if "Moved from" in c.value)
    assert "Moved from the DeepInversion preset: α_f 1 → 0, random horizontal flip off → on." in moved
    button(at, "Restore the preset's weights").click().run()
    assert at.session_state[knob_key("alpha_f")] == 1.0 and at.session_state[knob_key("flip")] is False
    assert not any("Moved from" in c.value for c in at.sidebar.caption)


def test_start_steer_stop_and_reload_reattaches(teacher_home):
    from pages.views.synthesis_view import knob_key
    at = app()
    at.sidebar.select_slider(key=knob_key("iterations")).set_value(2000)
    at.sidebar.select_slider(key=knob_key("pace")).set_value(20)
    at.sidebar.select_slider(key=knob_key("alpha_cr")).set_value(0.3)
    button(at, "Start").click().run()
    job = job_of(at)
    assert job is not None and job.running and at.session_state["synced_job"] == job.id
    assert job.config.alpha_cr == 0.3 and job.objective.contrast is not None   # the knob reaches the run
    wait(lambda: job.latest_snapshot is not None and len(job.history) >= 3)
    at.run()
    assert button(at, "Start").disabled and not button(at, "Stop").disabled
    from pages.views.navigation import STALE_CSS   # live views stay opaque while they redraw (browser-checked)
    assert [h for h in at.get("html") if STALE_CSS in h.proto.body]
    assert at.sidebar.select_slider(key=knob_key("batch_size")).disabled  # fixed per run
    assert at.sidebar.select_slider(key=knob_key("alpha_cr")).disabled  # its head and bank are made at the start
    assert not at.sidebar.select_slider(key=knob_key("alpha_f")).disabled  # live
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["accuracy"].endswith("%") and len(elements(at, "image")) == 1
    assert elements(at, "plotly_chart")
    assert at.get("progress")[0].proto.text.startswith("**running** · step")

    at.sidebar.select_slider(key=knob_key("alpha_f")).set_value(0.1).run()
    wait(lambda: job.updates)
    assert job.updates[0]["alpha_f"] == 0.1
    step = job.updates[0]["step"]
    wait(lambda: len(job.history) > step)
    assert job.history[step]["alpha_f"] == 0.1 and job.history[step - 1]["alpha_f"] == 1.0

    reloaded = app(job=job.id)  # a new session on the same URL: a page reload
    assert job_of(reloaded) is job and reloaded.session_state[knob_key("alpha_f")] == 0.1
    assert reloaded.session_state[knob_key("iterations")] == 2000

    steps_before = len(job.history)
    button(reloaded, "Stop").click().run()
    assert job.wait(10) == "cancelled" and len(job.history) - steps_before <= 2  # one in flight + at most one
    reloaded.run()
    assert not button(reloaded, "Start").disabled
    assert teacher_home.get_record(job.run_record.id).status == "cancelled"
    # Its name gives the settings it started with; wherever it is listed it says they changed on the way.
    from pages.views.labels import describe_run
    record = teacher_home.get_record(job.run_record.id)
    assert record.summary["live_updates"] == [{"step": step, "alpha_f": 0.1}]
    assert f"changed live: α_f=0.1 at step {step + 1}" in describe_run(record)
    runs = app("pages/runs.py", run=record.id)   # its own column in the list, every change where it is opened
    row = runs.dataframe[0].value.set_index("id").loc[record.id]
    assert row["changed live"] == f"α_f=0.1 at step {step + 1}" and "changed live" not in row["name"]
    assert any(f"Settings changed while it ran: α_f=0.1 at step {step + 1}." in i.value for i in runs.info)


def test_two_sessions_run_separate_jobs(teacher_home):
    from pages.views.synthesis_view import knob_key
    tabs = [app(), app()]
    for tab in tabs:
        tab.sidebar.select_slider(key=knob_key("iterations")).set_value(2000)
        button(tab, "Start").click().run()
    a, b = (job_of(t) for t in tabs)
    assert a is not b and a.running and b.running
    tabs[0].sidebar.select_slider(key=knob_key("alpha_tv")).set_value(0.1).run()
    wait(lambda: a.updates)
    tabs[1].run()
    assert not b.updates and tabs[1].session_state[knob_key("alpha_tv")] == 1e-3
    assert button(tabs[1], "Stop").click().run() and b.wait(10) == "cancelled" and a.running


def test_a_tab_that_lost_its_job_is_offered_it_and_the_runs_page_can_stop_it(teacher_home):
    """A reload before the URL named the job, or a new tab, left a running job nobody could watch or stop (Runs
    refused to delete it while it ran, and had no Stop)."""
    from pages.views.synthesis_view import knob_key
    first = app()
    first.sidebar.select_slider(key=knob_key("iterations")).set_value(2000)
    first.sidebar.select_slider(key=knob_key("pace")).set_value(20)
    button(first, "Start").click().run()
    job = job_of(first)
    lost = app()   # the same page without ?job=
    assert job_of(lost) is None and button(lost, "Stop").disabled
    assert any("Running from another tab" in i.value for i in lost.info)
    button(lost, "Watch here").click().run()
    assert job_of(lost) is job and not button(lost, "Stop").disabled
    assert not any("Running from another tab" in i.value for i in lost.info)   # its own job now

    runs = app("pages/runs.py", run=job.run_record.id)
    assert any("Running in this app" in i.value for i in runs.info)
    next(b for b in runs.button if b.label == "Stop").click().run()
    assert job.wait(10) == "cancelled"
    runs.run()
    assert not any("Running in this app" in i.value for i in runs.info)


def test_job_limit_is_explained(teacher_home, monkeypatch):
    from pages.views.common import get_job_manager
    from pages.views.synthesis_view import knob_key
    monkeypatch.setattr(get_job_manager(), "max_running", 1)
    first, second = app(), app()
    first.sidebar.select_slider(key=knob_key("iterations")).set_value(2000)
    button(first, "Start").click().run()
    button(second, "Start").click().run()
    assert job_of(second) is None and "already running" in second.error[0].value


def test_a_start_that_loses_the_last_job_slot_leaves_a_failed_run_not_a_running_one(home, monkeypatch):
    """Between a page's require_job_slot() and its submit another tab may take the last slot: the run just created
    must then say failed (with the reason), not 'running' with no job behind it, which could not be deleted."""
    from dfkd_core.job_manager import JobLimitError
    from dfkd_core.jobs import Job
    from pages.views.common import get_job_manager, submit
    run = home.create("analysis", {}, method="cka", dataset="digits")
    monkeypatch.setattr(get_job_manager(), "max_running", 0)
    with pytest.raises(JobLimitError):
        submit(Job(run), run, label="CKA")
    record = home.get_record(run.id)
    assert record.status == "failed" and "already running" in record.error
    home.delete(run.id)


def test_a_job_that_refuses_its_settings_leaves_a_failed_run_with_the_reason(home):
    """The run is created before its job; a constructor that refuses the settings must not leave it 'running'."""
    from pages.views.common import submit
    run = home.create("teacher", {}, method="bncnn3_w32", dataset="digits")

    def refuses():
        raise ValueError("unknown model 'nope'")
    with pytest.raises(ValueError, match="nope"):
        submit(refuses, run, label="teacher")
    record = home.get_record(run.id)
    assert record.status == "failed" and "unknown model 'nope'" in record.error
    home.delete(run.id)


def test_first_launch_trains_the_starter_teacher(home):
    at = app()
    assert at.get("progress")[0].proto.text.startswith("First launch")
    from pages.views.common import STARTER_KEY, get_job_manager
    starter = get_job_manager().find(STARTER_KEY)
    assert starter.wait(300) == "done", starter.error
    at.run()
    assert "starter" in at.sidebar.selectbox(key="synth_teacher").format_func(
        at.sidebar.selectbox(key="synth_teacher").value)
    assert not button(at, "Start").disabled and at.sidebar.radio(key="preset").value == "deepinversion"
    assert app().sidebar.selectbox(key="synth_teacher").value == at.sidebar.selectbox(key="synth_teacher").value
    assert len(home.list(kind="teacher")) == 1  # a second visit does not train another


def test_teacher_without_batchnorm_offers_only_deepdream(home, tmp_path):
    info = dataset_info("digits")
    path = save_checkpoint(tmp_path / "plain.pt", create_model("plaincnn3_w32", 10, 1, 8), info)
    add_teacher(home, path, name="plaincnn3_w32 on digits")
    at = app()
    assert list(at.sidebar.radio(key="preset").options) == ["DeepDream"]
    assert any("no BatchNorm" in w.value for w in at.sidebar.warning)
    from pages.views.synthesis_view import knob_key
    assert at.sidebar.select_slider(key=knob_key("alpha_f")).disabled
    assert at.session_state[knob_key("alpha_f")] == 0.0
    assert at.sidebar.select_slider(key=knob_key("alpha_cr")).disabled   # R_cr reads BN layers' inputs


# ------------------------------------------------------------------ Teacher

def test_teacher_page_shows_accuracy_bn_layers_and_examples(teacher_home, digits_teacher):
    at = app("pages/teacher.py")
    assert at.title[0].value == "Teacher"
    assert at.selectbox(key="teacher_dataset").value == "digits"
    assert at.selectbox(key="teacher_pick_digits").value == teacher_home.teacher_id
    metrics = {m.label: m.value for m in at.metric}
    from dfkd_core.data import load_split
    from dfkd_core.training import evaluate
    expected = evaluate(digits_teacher.model, load_split("digits", "test"))["accuracy"]
    assert metrics["test accuracy (real data)"] == f"{expected:.2%}" and metrics["BatchNorm layers"] == "3"
    assert any(f"Test accuracy {expected:.2%} [" in c.value and "360 real test images" in c.value
               for c in at.caption)   # with its 95% interval
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 3
    assert elements(at, "plotly_chart")  # real test images with predictions
    assert {"Train", "Stop"} <= {b.label for b in at.button}
    architectures = next(s for s in at.selectbox if s.label == "Architecture").options
    assert any(o.startswith("bncnn3_w32") for o in architectures)
    assert not any(o.startswith("pruned") for o in architectures)   # made by `dfkd prune`, not trainable from scratch


def test_teacher_page_trains_a_teacher_with_progress(teacher_home):
    at = app("pages/teacher.py")
    at.number_input[0].set_value(1).run()
    time_caption = next(c.value for c in at.caption if c.value.startswith("**Time**"))
    assert "1 epoch; no earlier bncnn3_w32 teacher on digits" in time_caption   # nothing to time it by yet
    button(at, "Train").click().run()
    job = job_of(at)
    assert job is not None and job.kind == "teacher"
    assert job.wait(120) == "done", job.error
    at.run()
    time_caption = next(c.value for c in at.caption if c.value.startswith("**Time**"))   # the next one: timed
    assert "on this machine (1 epoch at " in time_caption and job.run_record.id in time_caption, time_caption
    assert at.selectbox(key="teacher_pick_digits").value == job.run_record.id
    assert any(m.label == "test accuracy (real data)" for m in at.metric)
    assert any("Trained and stored" in m.value for m in at.success)   # said, not just a collapsed expander


def test_a_teacher_stopped_on_the_page_is_shown_there_beside_a_finished_one(teacher_home):
    """Stopping a training where a finished teacher exists: the page showed the old teacher and hid why (the
    "Stopped" note sat in a collapsed expander). Elsewhere the finished teacher stays the default."""
    at = app("pages/teacher.py")
    at.number_input[0].set_value(200)
    button(at, "Train").click().run()
    job = job_of(at)
    wait(lambda: len(job.history) >= 3)
    button(at, "Stop").click().run()
    assert job.wait(60) == "cancelled"
    at.run()
    assert at.selectbox(key="teacher_pick_digits").value == job.run_record.id != teacher_home.teacher_id
    assert at.expander[0].proto.expanded
    assert any("Stopped: the teacher so far is saved" in i.value for i in at.info)
    # Measured on the page, the stopped teacher's accuracy is kept with its run (pickers showed no number).
    stopped = teacher_home.get_record(job.run_record.id)
    assert stopped.status == "cancelled" and 0 <= stopped.summary["test_accuracy"] <= 1
    distill = app("pages/distill.py")   # another page: the finished teacher first, the stopped one offered
    picker = distill.sidebar.selectbox(key="distill_teacher")
    assert picker.value == teacher_home.teacher_id and any(o.endswith(" · partial") for o in picker.options)


def test_names_that_differ_only_at_the_end_are_told_apart_where_a_narrow_box_shows_them():
    from pages.views.labels import distinct_names
    seeds = [f"robustness teacher bncnn6_w32 fashion-mnist seed {s} (3 epochs)" for s in (0, 1)]
    assert distinct_names([*seeds, "bncnn3_w32 on digits"]) == ["…seed 0 (3 epochs)", "…seed 1 (3 epochs)",
                                                               "bncnn3_w32 on digits"]
    # Short names, names that differ early, and exact copies (told apart by their ids) stay whole.
    short = ["bncnn3_w32 on digits", "bncnn3_w32 on fashion", "bncnn3_w32 on digits", "bncnn3_w32 on digits (starter)"]
    assert distinct_names(short) == short
    early = ["deepinversion student of the seed-0 teacher", "adi student of the seed-0 teacher, longer run"]
    assert distinct_names(early) == early
    assert distinct_names([seeds[0], seeds[0]]) == [seeds[0], seeds[0]]


def test_compact_labels_differ_where_a_narrow_box_shows_them_and_stay_whole_where_they_already_do():
    from pages.views.labels import LABEL_CHARS_SHOWN, fit_labels
    long = "deepinversion: bncnn6_w32 → bncnn6_w16 · pool 800 images · 400 student steps"
    labels = fit_labels({"a": (long, " · 78.0%", "7764"), "b": (long, " · 78.0%", "00ea"),
                         "c": (long, " · 80.9%", "b997"), "d": ("bncnn3_w32 on digits (starter)", " · 99.4%", "3848")})
    assert labels == {"a": "deepinversion:… · 78.0% · 7764", "b": "deepinversion:… · 78.0% · 00ea",
                      "c": "deepinversion: bncnn6_… · 80.9%", "d": "bncnn3_w32 on digits (starter) · 99.4%"}
    assert len({label[:LABEL_CHARS_SHOWN] for label in labels.values()}) == 4   # apart where the box shows them


def test_the_teacher_picker_shows_what_tells_teachers_apart_and_the_chosen_one_in_full(home, digits_teacher):
    ids = [add_teacher(home, digits_teacher.path, f"robustness teacher bncnn3_w32 digits seed {seed} (20 epochs)",
                       accuracy=0.95 + seed / 100) for seed in range(2)]
    at = app("pages/distill.py")
    picker = at.sidebar.selectbox(key="distill_teacher")
    shown = {run_id: picker.format_func(run_id) for run_id in ids}
    assert shown == {ids[0]: "…seed 0 (20 epochs) · 95.0%", ids[1]: "…seed 1 (20 epochs) · 96.0%"}
    full = f"robustness teacher bncnn3_w32 digits seed 1 (20 epochs) · 96.0% · {ids[1]}"
    assert picker.value == ids[1] and full in [c.value for c in at.sidebar.caption]


def test_the_teacher_page_opens_on_a_teacher_picked_elsewhere_and_on_its_dataset(teacher_home, tmp_path,
                                                                                 monkeypatch):
    """The Teacher page opened on digits, whatever teacher another page had picked; a dataset changed on the
    Teacher page makes its teacher the one the other pages open on."""
    monkeypatch.setenv("DFKD_FASHION_MNIST", str(tmp_path / "no fashion here"))   # the page says so, quickly
    run = teacher_home.create("teacher", {}, method="bncnn3_w16", dataset="fashion-mnist", name="a fashion teacher")
    save_checkpoint(run.path("model.pt"), create_model("bncnn3_w16", image_size=28), dataset_info("fashion-mnist"))
    run.set_status("done", summary={"test_accuracy": 0.9})
    at = app("pages/distill.py")
    at.sidebar.selectbox(key="distill_teacher").set_value(run.id).run()
    at.switch_page("pages/teacher.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="teacher_dataset").value == "fashion-mnist"
    assert at.selectbox(key="teacher_pick_fashion-mnist").value == run.id
    at.selectbox(key="teacher_dataset").set_value("digits").run()
    assert at.selectbox(key="teacher_dataset").value == "digits"   # the user's choice holds on the next run
    at.run()
    assert at.selectbox(key="teacher_dataset").value == "digits"
    at.switch_page("pages/distill.py").run()
    assert at.sidebar.selectbox(key="distill_teacher").value == teacher_home.teacher_id


from pages.views.common import KEPT_WIDGETS  # noqa: E402


def test_the_teacher_pages_data_folder_reaches_the_other_pages(teacher_home, tmp_path, monkeypatch):
    """A user's own data folder typed on the Teacher page was forgotten on Synthesize (Streamlit drops a widget's
    value on pages that do not draw it), so its nearest-real-image panel said the folder was missing."""
    # no real Fashion-MNIST: a split read here would stay in the page cache for the tests after this one
    monkeypatch.setenv("DFKD_FASHION_MNIST", str(tmp_path / "nowhere"))
    run = teacher_home.create("teacher", {}, method="bncnn3_w16", dataset="fashion-mnist", name="a fashion teacher")
    save_checkpoint(run.path("model.pt"), create_model("bncnn3_w16", image_size=28), dataset_info("fashion-mnist"))
    run.set_status("done", summary={"test_accuracy": 0.9})
    at = app("pages/teacher.py")
    at.selectbox(key="teacher_dataset").set_value("fashion-mnist").run()
    folder = tmp_path / "my fashion folder"
    at.text_input(key="data_root_fashion-mnist").set_value(str(folder)).run()
    at.switch_page("pages/synthesize.py").run()
    assert not at.exception, at.exception
    # In the browser the box's own value was gone on this page (AppTest keeps it): read with the kept copy alone.
    state = {KEPT_WIDGETS: at.session_state[KEPT_WIDGETS]}
    from pages.views import common
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.st, "session_state", state)
        assert common.data_root_setting("fashion-mnist") == str(folder)
        assert common.data_root_setting("cifar10") is None


def test_a_stopped_teacher_is_offered_marked_partial(home, digits_teacher):
    run = home.create("teacher", {}, method="bncnn3_w32", dataset="digits", name="bncnn3_w32 on digits")
    shutil.copy(digits_teacher.path, run.path("model.pt"))
    run.set_status("cancelled", summary={"partial": True})
    at = app("pages/teacher.py")
    picker = at.selectbox(key="teacher_pick_digits")
    assert picker.value == run.id and picker.format_func(run.id).endswith(" · partial")
    assert any(f"partial (cancelled) · {run.id}" in c.value for c in at.caption)   # in full under the box
    assert {m.label: m.value for m in at.metric}["test accuracy (real data)"].endswith("%")   # measured here


def test_missing_fashion_mnist_gives_the_install_hint(teacher_home, monkeypatch, tmp_path):
    from dfkd_core.data import datasets
    monkeypatch.setenv("DFKD_FASHION_MNIST", str(tmp_path / "nowhere"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT_ROOT", str(tmp_path / "not installed"))
    at = app("pages/teacher.py")
    at.selectbox(key="teacher_dataset").set_value("fashion-mnist").run()
    button(at, "Train").click().run()
    assert not at.exception
    assert "apt-get install dataset-fashion-mnist" in at.error[0].value
    assert [r for r in teacher_home.list() if r.dataset == "fashion-mnist"] == []  # no failed run for it
    # A stored Fashion-MNIST teacher is still shown (synthesis needs no data); only its test accuracy is missing.
    info = dataset_info("fashion-mnist")
    path = save_checkpoint(tmp_path / "f.pt", create_model("bncnn6_w16", 10, 1, 28), info)
    run = teacher_home.create("teacher", {}, method="bncnn6_w16", dataset="fashion-mnist", name="fashion")
    shutil.copy(path, run.path("model.pt"))
    run.set_status("done")
    at.run()
    assert not at.exception and "apt-get install dataset-fashion-mnist" in at.warning[0].value
    assert {m.label: m.value for m in at.metric}["test accuracy (real data)"] == "–"


def test_checkpoint_upload_is_validated(home, digits_teacher, tmp_path):
    from pages.views.common import MAX_CHECKPOINT_MB, import_checkpoint
    with pytest.raises(CheckpointError, match="notes.pt is not a readable checkpoint"):
        import_checkpoint(b"hello", "notes.pt")
    buffer = tmp_path / "bare.pt"
    torch.save(create_model("bncnn3_w32", 10, 1, 8).state_dict(), buffer)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        import_checkpoint(buffer.read_bytes(), "bare.pt")
    with pytest.raises(CheckpointError, match=f"up to {MAX_CHECKPOINT_MB} MB"):
        import_checkpoint(b"0" * (MAX_CHECKPOINT_MB * 2**20 + 1), "huge.pt")
    assert home.list() == []
    record = import_checkpoint(Path(digits_teacher.path).read_bytes(), "mine.pt")
    assert record.status == "done" and record.dataset == "digits" and "uploaded mine.pt" in record.name
    assert (record.dir / "model.pt").is_file()


# ------------------------------------------------------------------ Runs

def test_runs_page_lists_opens_compares_and_deletes(teacher_home, digits_teacher):
    from pages.views.synthesis_view import knob_key
    at = app()
    at.sidebar.select_slider(key=knob_key("iterations")).set_value(50)
    at.sidebar.select_slider(key=knob_key("pace")).set_value(0)
    button(at, "Start").click().run()
    assert job_of(at).wait(60) == "done"
    broken = teacher_home.create("synthesis", {"alpha_tv": 1.0}, method="deepinversion", dataset="digits")
    broken.set_status("failed", error="loss term 'tv' is nan at step 3")

    runs = app("pages/runs.py")
    table = runs.dataframe[0].value
    assert len(table) == 3 and set(table["status"]) == {"done", "failed"}
    teacher_row = table[table["id"] == teacher_home.teacher_id].iloc[0]   # accuracies in points, time in minutes
    teacher_summary = teacher_home.get_record(teacher_home.teacher_id).summary
    assert teacher_row["test acc"] == pytest.approx(100 * teacher_summary["test_accuracy"])
    synthesis_summary = teacher_home.get_record(job_of(at).run_record.id).summary
    synthesis_row = table[table["id"] == job_of(at).run_record.id].iloc[0]
    assert synthesis_row["minutes"] == pytest.approx(synthesis_summary["elapsed_s"] / 60)
    assert "elapsed_s" not in table.columns and "test_accuracy" not in table.columns
    assert "nan at step 3" in " ".join(str(e) for e in table["error"])
    runs.selectbox(key="runs_open").set_value(broken.id).run()
    assert "nan at step 3" in runs.error[0].value  # failed runs are shown with their error
    synthesis = job_of(at).run_record.id
    runs.selectbox(key="runs_open").set_value(synthesis).run()
    assert elements(runs, "plotly_chart")
    downloads = {e.proto.label for e in elements(runs, "download_button")}
    assert {"⬇ grid.png", "⬇ images.pt"} <= downloads
    runs.selectbox(key="runs_compare").set_value(teacher_home.teacher_id).run()
    assert not runs.exception and elements(runs, "plotly_chart")
    # A synthesis beside a teacher: their losses are other quantities, never drawn on one axis.
    assert any("shown apart above, not on one axis" in c.value for c in runs.caption)

    runs.selectbox(key="runs_compare").set_value(None)
    runs.selectbox(key="runs_open").set_value(broken.id).run()
    runs.checkbox(key=f"sure_{broken.id}").check().run()
    button(runs, "Delete").click().run()
    assert broken.id not in {r.id for r in teacher_home.list()} and not broken.dir.exists()


# ------------------------------------------------------------------ Methods

def test_methods_page_renders_every_section_of_the_shipped_methods_doc(teacher_home):
    from pages.views.methods_doc import METHODS_DOC, section_link, sections
    at = app("pages/methods.py")
    assert at.title[0].value == "Methods"
    shown = " ".join(m.value for m in at.markdown)
    for anchor, title, _ in sections()[1:]:
        assert f'<a id="{anchor}"></a>' in shown and title in shown
        assert f"[{title}](#{anchor})" in " ".join(m.value for m in at.sidebar.markdown)
    main = " ".join(m.value for m in at.main.markdown)
    assert "Notation:" in main and "Every method the tool runs" not in main   # the caption says it already
    assert "](#model-inversion)" not in main   # the contents are in the sidebar, once
    text = METHODS_DOC.read_text()
    assert "METHODS §" not in text   # the product cites its own document, not the spec's
    # No control characters: "\text" written through a Python string once became a tab + "ext" in two formulas.
    assert not [c for c in text if ord(c) < 32 and c != "\n"]   # (splitlines() splits at a form feed: no check)
    assert section_link("cka") == "[Methods: CKA](/methods#cka)"


def test_a_teacher_at_chance_is_flagged_on_every_page_that_uses_it(home, tmp_path):
    """An 8.3% teacher (below chance) gave garbage images and a 'ratio 1.33' student with no hint anywhere."""
    info = dataset_info("digits")
    path = save_checkpoint(tmp_path / "weak.pt", create_model("bncnn3_w32", 10, 1, 8), info, {"test_accuracy": 0.083})
    add_teacher(home, path, accuracy=0.083)
    for page in ("pages/synthesize.py", "pages/distill.py"):
        at = app(page)
        assert any("scores 8.3% on real test images, near chance (10% for 10 classes)" in w.value
                   for w in at.warning), page


def test_switching_from_a_fashion_teacher_to_a_digits_one_resets_the_learning_rate(teacher_home, tmp_path):
    """lr 0.25 is Fashion-MNIST's own; digits has none, so it stayed on the knobs for the digits teacher, unsaid."""
    from pages.views.synthesis_view import knob_key
    fashion = dataset_info("fashion-mnist")
    path = save_checkpoint(tmp_path / "f.pt", create_model("bncnn6_w16", 10, 1, 28), fashion, {"test_accuracy": 0.9})
    run = teacher_home.create("teacher", {}, method="bncnn6_w16", dataset="fashion-mnist", name="bncnn6_w16 on fashion")
    shutil.copy(path, run.path("model.pt"))
    run.set_status("done", summary={"test_accuracy": 0.9})
    at = app("pages/synthesize.py", teacher=run.id)
    assert at.session_state[knob_key("lr")] == 0.25
    at.sidebar.selectbox(key="synth_teacher").set_value(teacher_home.teacher_id).run()
    assert at.session_state[knob_key("lr")] == 0.1 and at.session_state[knob_key("jitter")] == 1
    assert not any("Moved from" in c.value for c in at.sidebar.caption)


def test_runs_table_keeps_a_synthesis_batch_apart_from_a_teachers_accuracy(home):
    """'teacher acc' read 8.33% on a distillation (real test images) and 100% on a synthesis (its own batch)."""
    from pages.views.runs_view import run_table
    synthesis = home.create("synthesis", {}, dataset="digits")
    synthesis.set_status("done", summary={"teacher_accuracy": 1.0})
    distill = home.create("distill", {}, dataset="digits")
    distill.set_status("done", summary={"teacher_accuracy": 0.0833, "pool_teacher_agreement": 0.5})
    rows = {row["kind"]: row for row in run_table(home.list())}
    assert rows["synthesis"]["teacher acc"] is None and rows["synthesis"]["given its class"] == 100.0
    assert rows["distill"]["teacher acc"] == pytest.approx(8.33) and rows["distill"]["given its class"] == 50.0
