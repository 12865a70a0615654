"""Runs: every stored run (teachers, syntheses, distillations), one opened in full or two side by side."""
import streamlit as st
import torch

from dfkd_core.data import DatasetInfo
from dfkd_core.models import CheckpointError
from dfkd_core.plots import class_columns, image_grid_figure, loss_curves_figure, run_comparison_figure
from dfkd_core.plots.synthesis import TERM_NAMES
from dfkd_core.runs import RunRecord
from pages.views.common import describe_run, get_store, keep_widget_state, open_checkpoint, require_navigation

require_navigation()

KEY_METRICS = ("test_accuracy", "student_accuracy", "teacher_accuracy", "mean_confidence", "bn_distance_end",
               "ratio", "steps", "elapsed_s")


def run_table(records: list[RunRecord]) -> list[dict]:
    """One row per run; the key metrics any run has, in a fixed column order; the error last, never hidden."""
    shown = [k for k in KEY_METRICS if any(isinstance(r.summary.get(k), (int, float)) for r in records)]
    return [{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status, "created": r.created_str,
             "dataset": r.dataset, "method": r.method, "teacher": r.teacher,
             **{k: r.summary.get(k) if isinstance(r.summary.get(k), (int, float)) else None for k in shown},
             "error": r.error} for r in records]


def curve_keys(history: list[dict]) -> tuple[list[str], list[str]]:
    """(loss keys, accuracy/confidence keys) present in a run's metrics; the METHODS §1 terms in their order."""
    numeric = {k for row in history for k, v in row.items() if isinstance(v, (int, float))}
    losses = [k for k in TERM_NAMES if k in numeric] + sorted(k for k in numeric
                                                              if k.startswith("loss") and k not in TERM_NAMES)
    return losses, sorted(k for k in numeric if "accuracy" in k or "confidence" in k)


def history_of(record: RunRecord) -> tuple[list[dict], list[dict]]:
    run = get_store().get(record.id)
    updates = [{"step": e["step"], **e["updated"]} for e in run.events() if "updated" in e]
    return run.metrics(), updates


def labels_for(record: RunRecord, images: torch.Tensor, targets: list[int], names: list[str]) -> list[str]:
    """'target → teacher prediction confidence' when the run's teacher is still stored, else the target."""
    try:
        teacher = open_checkpoint(record.teacher).model if record.teacher else None
    except (FileNotFoundError, CheckpointError):  # teacher deleted since: show what the file itself knows
        teacher = None
    if teacher is None:
        return [names[t] for t in targets]
    with torch.no_grad():
        probs = teacher(images).softmax(1)
    return [f"{names[t]} → {names[p]} {c:.2f}" for t, p, c in
            zip(targets, probs.argmax(1).tolist(), probs.max(1).values.tolist())]


def show_images(record: RunRecord, key: str) -> None:
    images_pt, grid_png = record.dir / "images.pt", record.dir / "grid.png"
    if images_pt.is_file():
        saved = torch.load(images_pt, map_location="cpu", weights_only=True)
        info = DatasetInfo.from_dict(saved["dataset"])
        names = info.class_names or [str(k) for k in range(info.num_classes)]
        images, targets = saved["images"][:50], saved["targets"][:50].tolist()
        ncols, titles = class_columns(targets, names)
        st.plotly_chart(image_grid_figure(info.denormalize(images), labels_for(record, images, targets, names),
                                          ncols=ncols, column_titles=titles), key=f"grid_{key}",
                        config={"displayModeBar": False})
    elif grid_png.is_file():
        st.image(str(grid_png))


def show_run(record: RunRecord, key: str, compact: bool = False) -> None:
    st.subheader(record.name or record.id)
    st.caption(f"{record.id} · {record.kind} · **{record.status}** · {record.created_str}")
    if record.error:
        (st.warning if record.status == "cancelled" else st.error)(f"{record.status}: {record.error}")
    show_images(record, key)
    history, updates = history_of(record)
    if history and not compact:
        losses, accuracies = curve_keys(history)
        st.plotly_chart(loss_curves_figure(history, updates, keys=losses, accuracy_keys=accuracies),
                        key=f"curves_{key}")
    with st.expander("Config and summary"):
        st.json(get_store().get(record.id).config(), expanded=False)
        st.json(record.summary, expanded=False)
    files = [(name, mime) for name, mime in (("grid.png", "image/png"), ("images.pt", "application/octet-stream"),
                                             ("model.pt", "application/octet-stream")) if (record.dir / name).is_file()]
    for col, (name, mime) in zip(st.columns(max(3, len(files))), files):
        col.download_button(f"⬇ {name}", (record.dir / name).read_bytes(), file_name=f"{record.id}-{name}",
                            mime=mime, key=f"dl_{name}_{key}", on_click="ignore")


st.title("Runs")
keep_widget_state("runs_kind", "runs_open", "runs_compare")
store = get_store()
everything = store.list()
kinds = ["all"] + sorted({r.kind for r in everything})
kind = st.segmented_control("Kind", kinds, default="all", key="runs_kind") or "all"
records = [r for r in everything if kind == "all" or r.kind == kind]
if not records:
    st.info("No runs yet. Train a teacher or start a synthesis and it will be listed here.")
    st.stop()
st.dataframe(run_table(records), hide_index=True)
by_id = {r.id: r for r in records}
for key in ("runs_open", "runs_compare"):
    if st.session_state.get(key) not in (None, *by_id):
        del st.session_state[key]  # deleted in the meantime
cols = st.columns(2)
opened = cols[0].selectbox("Open", list(by_id), format_func=lambda i: describe_run(by_id[i]), key="runs_open")
other = cols[1].selectbox("Compare with", [i for i in by_id if i != opened], index=None, key="runs_compare",
                          format_func=lambda i: describe_run(by_id[i]), placeholder="another run (optional)")
if other is None:
    show_run(by_id[opened], "one")
else:
    left, right = st.columns(2)
    with left:
        show_run(by_id[opened], "left", compact=True)
    with right:
        show_run(by_id[other], "right", compact=True)
    histories = {i: history_of(by_id[i]) for i in (opened, other)}
    shared = set.intersection(*(set(sum(curve_keys(h), [])) for h, _ in histories.values()))
    keys = [k for k in sum(curve_keys(histories[opened][0]), []) if k in shared]
    if keys:
        st.plotly_chart(run_comparison_figure({i: h for i, (h, _) in histories.items()}, keys,
                                              {i: u for i, (_, u) in histories.items()}), key="comparison")

with st.expander("Delete the opened run"):
    record = by_id[opened]
    sure = st.checkbox(f"Yes, delete {record.id} and its files", key=f"sure_{record.id}")
    if st.button("Delete", disabled=not sure or record.status == "running", type="primary"):
        store.delete(record.id)
        st.toast(f"Deleted {record.id}")
        st.rerun()
    if record.status == "running":
        st.caption("A running run cannot be deleted: stop it first.")
