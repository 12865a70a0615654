"""Applications: what synthesized images are for besides distillation (methods.md#applications) — data-free pruning,
quantization calibration and continual learning, each a background job whose results land in the run store."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from dfkd_core.data import dataset_info  # noqa: E402
from pages.views.applications_view import (  # noqa: E402
    EXPLANATIONS, KINDS, NEW_POOL, continual_widgets, key, pool_choices, pruning_widgets, quantization_widgets,
    render_live, render_results, start_compression, start_continual, stored_runs, synthesis_widgets)
from pages.views.common import (  # noqa: E402
    attached_job, get_store, keep_widget_state, open_checkpoint, start_stop_buttons, teacher_or_stop)
from pages.views.labels import describe_run  # noqa: E402
from pages.views.methods_doc import section_link  # noqa: E402

st.title("Applications")
keep_widget_state(key("kind"), key("teacher"), key("pool"), key("open"))
kind = st.radio("Application", list(KINDS), format_func=KINDS.get, horizontal=True, key=key("kind"))
st.caption(EXPLANATIONS[kind] + " " + section_link("applications"))
job = attached_job(kind)
running = job is not None and job.running

with st.sidebar:
    st.subheader(KINDS[kind])
    if kind == "continual":
        values = continual_widgets(running)
        dataset = values["dataset"]
        values.update(synthesis_widgets(dataset, running))
        start = lambda: start_continual(values)  # noqa: E731
    else:
        teacher_run = teacher_or_stop(key("teacher"), disabled=running,
                                      missing="No teacher in the run store yet: train or upload one on the Teacher "
                                              "page.")
        dataset = open_checkpoint(teacher_run).dataset.name
        pools = pool_choices(dataset)
        if st.session_state.get(key("pool")) not in pools:
            st.session_state[key("pool")] = NEW_POOL
        pool_run = st.selectbox("Synthesized images", list(pools), format_func=pools.get, key=key("pool"),
                                disabled=running, help="Reuse a stored pool (its images.pt) or synthesize new ones")
        values = {} if pool_run else synthesis_widgets(dataset, running)
        values.update(pruning_widgets(running) if kind == "prune" else quantization_widgets(running))
        start = lambda: start_compression(kind, teacher_run, pool_run or None, values)  # noqa: E731
    start_stop_buttons(job, start, stop_help="Stops before the next step; the rows measured so far are kept",
                       slots=st.columns(2))
render_live(job)

stored = stored_runs(kind, dataset)
if job is not None and not job.running and job.run_record is not None and job.run_record.id in stored:
    if st.session_state.get(key("opened_job")) != job.id:   # show the run just finished, once
        st.session_state[key("open")], st.session_state[key("opened_job")] = job.run_record.id, job.id
if not stored:
    if job is None or not job.running:   # while one runs, its live view above is the page
        st.info(f"Press **Start** to run {KINDS[kind].lower()} on {dataset}; its results are kept in the run store.")
    st.stop()
if st.session_state.get(key("open")) not in stored:
    st.session_state[key("open")] = next(iter(stored))
opened = st.selectbox("Results", list(stored), key=key("open"),
                      format_func=lambda i: f"{describe_run(stored[i])} · {stored[i].status}")
class_names = dataset_info(dataset).class_names if kind == "continual" else []   # continual's per-class chart
render_results(get_store().get(opened).load_json("results.json"), class_names)
