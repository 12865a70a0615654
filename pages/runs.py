"""Runs: every stored run (teachers, syntheses, distillations), one opened in full or two side by side, and
distilled students compared (the report every method shares: student vs teacher accuracy, ratio, time, images)."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from dfkd_core.plots import run_comparison_figure  # noqa: E402
from dfkd_core.runs import RunStillRunningError, UnknownRunError  # noqa: E402
from pages.views.common import get_store, keep_widget_state  # noqa: E402
from pages.views.labels import describe_run  # noqa: E402
from pages.views.runs_view import (  # noqa: E402
    RUN_TABLE_COLUMNS, curve_keys, distill_runs, history_of, run_table, running_run_controls, show_run,
    show_student_comparison)

MAX_COMPARED = 6  # distilled students compared by default

st.title("Runs")
keep_widget_state("runs_kind", "runs_open", "runs_compare", "runs_students")
store = get_store()
everything = store.list()
kinds = ["all"] + sorted({r.kind for r in everything})
if "runs_kind" not in st.session_state:   # a default beside a kept value drew Streamlit's warning
    st.session_state["runs_kind"] = "all"
kind = st.segmented_control("Kind", kinds, key="runs_kind") or "all"
records = [r for r in everything if kind == "all" or r.kind == kind]
if not records:
    st.info("No runs yet. Train a teacher or start a synthesis and it will be listed here.")
    st.stop()
st.dataframe(run_table(records), hide_index=True, column_config=RUN_TABLE_COLUMNS)
by_id = {r.id: r for r in records}
if st.query_params.get("run") in by_id:  # link from another page (e.g. Distill's result): ?run=<run id>
    st.session_state["runs_open"] = st.query_params.pop("run")
# A run deleted in the meantime: name the replacement outright. Deleting the key let the browser's box keep showing
# the deleted run while the page showed the newest one.
if st.session_state.get("runs_open") not in by_id:
    st.session_state["runs_open"] = next(iter(by_id))
if st.session_state.get("runs_compare") not in (None, *by_id):
    st.session_state["runs_compare"] = None
cols = st.columns(2)
opened = cols[0].selectbox("Open", list(by_id), format_func=lambda i: describe_run(by_id[i]), key="runs_open")
other = cols[1].selectbox("Compare with", [i for i in by_id if i != opened], index=None, key="runs_compare",
                          format_func=lambda i: describe_run(by_id[i]), placeholder="another run (optional)")
if by_id[opened].status == "running":
    running_run_controls(by_id[opened])
if other is None:
    show_run(by_id[opened], "one")
else:
    left, right = st.columns(2)
    with left:
        show_run(by_id[opened], "left", compact=True)
    with right:
        show_run(by_id[other], "right", compact=True)
    pair = [by_id[opened], by_id[other]]
    if len(distill_runs(pair)) == 2:   # two students: what matters is how well each learned, not their synthesis
        show_student_comparison(pair, key="pair")
    elif by_id[opened].kind != by_id[other].kind:   # a synthesis's total and a distillation's are other losses
        st.caption(f"A {by_id[opened].kind} run beside a {by_id[other].kind} run: their curves measure different "
                   "things, so they are shown apart above, not on one axis.")
    else:
        histories = {i: history_of(by_id[i]) for i in (opened, other)}
        shared = set.intersection(*(set(sum(curve_keys(h), [])) for h, _ in histories.values()))
        keys = [k for k in sum(curve_keys(histories[opened][0]), []) if k in shared]
        if keys:
            st.plotly_chart(run_comparison_figure({i: h for i, (h, _) in histories.items()}, keys,
                                                  {i: u for i, (_, u) in histories.items()}), key="comparison")

students = {r.id: r for r in distill_runs(records)}
if students:
    st.subheader("Compare distilled students")
    if "runs_students" not in st.session_state:   # first visit: the newest few, so the comparison shows at once
        st.session_state["runs_students"] = list(students)[:MAX_COMPARED]
    elif not set(st.session_state["runs_students"]) <= set(students):   # some deleted meanwhile
        st.session_state["runs_students"] = [i for i in st.session_state["runs_students"] if i in students]
    chosen = st.multiselect("Distillation runs", list(students), key="runs_students",
                            format_func=lambda i: describe_run(students[i]), placeholder="pick runs to compare")
    if chosen:
        show_student_comparison([students[i] for i in chosen])

with st.expander("Delete the opened run"):
    record = by_id[opened]
    sure = st.checkbox(f"Yes, delete {record.id} and its files", key=f"sure_{record.id}")
    if st.button("Delete", disabled=not sure or record.status == "running", type="primary"):
        try:  # another tab may have deleted it, or restarted it, since this page was drawn
            store.delete(record.id)
        except (UnknownRunError, RunStillRunningError) as e:
            st.error(str(e))
        else:
            st.toast(f"Deleted {record.id}")
            st.rerun()
    if record.status == "running":
        st.caption("A running run cannot be deleted: stop it first.")
