"""Synthesize's live comparison of two settings, and the one-image inspection (Synthesize and Runs pages)."""
import json

from test_app import app, button, elements, home, teacher_home, wait  # noqa: F401 (fixtures)

from pages.views.synthesis_view import knob_key


def test_one_click_compares_deepdream_and_deepinversion_from_the_same_noise(teacher_home):
    at = app()
    at.sidebar.select_slider(key=knob_key("iterations")).set_value(50)
    at.sidebar.select_slider(key=knob_key("pace")).set_value(0).run()
    assert at.selectbox(key="compare_a").value == "deepdream" and at.selectbox(key="compare_b").value == "deepinversion"
    button(at, "Compare").click().run()
    assert not at.error, at.error[0].value
    from pages.views.common import get_job_manager
    ids = at.query_params["compare"][0].split(",") if isinstance(at.query_params["compare"], list) \
        else at.query_params["compare"].split(",")
    jobs = [get_job_manager().get(i) for i in ids]
    assert [j.config.alpha_f for j in jobs] == [0.0, 1.0]
    assert jobs[0].config.seed == jobs[1].config.seed and jobs[0].config.batch_size == jobs[1].config.batch_size
    for job in jobs:
        assert job.wait(120) == "done", job.error
    at.run()
    assert not at.exception
    assert len(elements(at, "image")) == 2   # the two grids, side by side
    charts = [json.loads(c.proto.spec) for c in elements(at, "plotly_chart")]
    grouped = [f for f in charts if f["layout"].get("barmode") == "group"]
    assert grouped and len(grouped[0]["data"]) == 2   # BN distance per layer, one bar series per run
    # Each run has one colour in both charts side by side (the bars once had A orange, the curves A blue).
    bars = {t["name"]: t["marker"]["color"] for t in grouped[0]["data"]}
    lines = {t["name"]: t["line"]["color"] for f in charts if f is not grouped[0] for t in f["data"]
             if t.get("type") == "scatter" and t.get("name") in bars}
    assert set(lines) == set(bars) and lines == bars, (bars, lines)
    said = " ".join(c.value for c in at.caption)
    assert "only α_f differs" in said and "/methods#model-inversion" in said
    names = sorted(r.name for r in teacher_home.list(kind="synthesis"))
    assert names[0].endswith("(compare A)") and names[1].endswith("(compare B)")
    final = {j.config.method: j.history[-1]["bn_distance"] for j in jobs}
    assert final["deepinversion"] < final["deepdream"]   # what the caption tells the user to look at

    at.sidebar.select_slider(key=knob_key("iterations")).set_value(2000).run()   # a single run after the pair
    button(at, "Start").click().run()
    from test_app import job_of
    single = job_of(at)
    try:
        assert single.running and len(elements(at, "image")) <= 1   # the finished pair makes way for the live run
        shown = at.toggle(key="show_last_pair")
        assert shown.label == "Show the last comparison (DeepDream vs DeepInversion) here" and not shown.value
    finally:
        get_job_manager().cancel(single.id)
        single.wait(30)
    at.run()   # ended: the pair does not come back above the run that followed it by itself
    assert len(elements(at, "image")) <= 1
    at.toggle(key="show_last_pair").set_value(True).run()   # a lecturer going back to the slide they explained
    assert not at.exception and len(elements(at, "image")) >= 2


def test_a_finished_run_offers_one_image_for_inspection(teacher_home):
    at = app()
    at.sidebar.select_slider(key=knob_key("iterations")).set_value(50)
    at.sidebar.select_slider(key=knob_key("pace")).set_value(0).run()
    button(at, "Start").click().run()
    from pages.views.common import get_job_manager
    job = get_job_manager().get(at.query_params["job"] if isinstance(at.query_params["job"], str)
                                else at.query_params["job"][0])
    assert job.wait(120) == "done", job.error
    at.run()
    assert any(s.value == "Inspect one image" for s in at.subheader)
    at.number_input(key="synth_inspect_index").set_value(7).run()
    assert not at.exception
    charts = [json.loads(c.proto.spec) for c in elements(at, "plotly_chart")]
    titles = [str(f["layout"].get("title", {}).get("text", "")) for f in charts]
    assert any("teacher's probabilities" in t for t in titles) and any("share of each BN layer" in t for t in titles)
    # Drawn a third of the page wide: title lines short enough not to be cut off.
    lines = [line for t in titles if "probabilities" in t or "share of each" in t for line in t.split("<br>")]
    assert max(map(len, lines)) <= 40, lines
    assert any("among all 1,437 training images" in c.value for c in at.caption)   # digits: every image searched
    # Under each neighbour, which number is which, number first so a cut name never hides it: 'cos 0.83 3'.
    assert any('"cos 0.' in json.dumps(f, ensure_ascii=False) for f in charts)


def test_runs_compares_every_two_students_not_only_each_with_the_first(tmp_path):
    """Three students: A − B, and C − B with an interval were shown, but not C − A, which the reader had to work out
    from two numbers without an interval."""
    from types import SimpleNamespace

    import torch

    from dfkd_core.distill.results import save_test_hits
    from pages.views.runs_view import paired_difference_rows
    labels = torch.arange(100) % 10
    records = []
    for name, right in (("b", 50), ("a", 70), ("c", 90)):
        directory = tmp_path / name
        directory.mkdir()
        save_test_hits(directory, {"student": torch.arange(100) < right}, labels, "digits")
        records.append(SimpleNamespace(id=name, dir=directory))
    names = {r.id: r.id for r in records}
    rows = paired_difference_rows(records, names)
    assert [(r["student"], r["minus"]) for r in rows] == [("a", "b"), ("c", "b"), ("c", "a")]
    assert rows[2]["difference"].startswith("+20.00 points") and rows[2]["verdict"] == "better"
