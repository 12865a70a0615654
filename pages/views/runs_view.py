"""The Runs page's parts: the run table, one run opened in full (images, curves, config, downloads) and the
comparison of distilled students (the report every distillation method shares, with overlaid accuracy curves).
`pages/runs.py` lays them out."""
from __future__ import annotations

import streamlit as st
import torch

from dfkd_core.data import DatasetInfo
from dfkd_core.models import CheckpointError
from dfkd_core.plots import (accuracy_curves_figure, class_columns, image_grid_figure, kd_loss_figure,
                             loss_curves_figure, student_accuracy_figure)
from dfkd_core.plots.synthesis import TERM_NAMES
from dfkd_core.runs import RunRecord
from pages.views.common import JOB_PARAM, get_job_manager, get_store, live, open_checkpoint
from pages.views.labels import live_change_text, live_edits, partial_text
from dfkd_core.distill.results import compare_students_accuracy
from pages.views.results_view import show_results
from pages.views.inspect_view import inspect_batch

# The key metrics any run may have: column → (its summary keys, the first one present wins; format; what it
# measures). Accuracies in points ("%.2f%%" on 100 × the value) so every row shows two decimals; time in minutes.
KEY_METRICS = {
    "test acc": (("test_accuracy",), "%.2f%%", "a teacher's accuracy on the real test images"),
    "student acc": (("student_accuracy",), "%.2f%%", "a distilled student's accuracy on the real test images"),
    "teacher acc": (("teacher_accuracy",), "%.2f%%", "distillation: the teacher on the same real test images"),
    "given its class": (("batch_agreement", "pool_teacher_agreement"), "%.2f%%",
                        "synthesized images the teacher gives their target class (a synthesis's batch, a "
                        "distillation's pool): not an accuracy on real data"),
    "confidence": (("mean_confidence",), "%.3f", "synthesis: the teacher's mean top-class probability on its images"),
    "BN distance": (("bn_distance_end",), "%.4g", "synthesis: the images' BatchNorm-statistics distance to the "
                    "teacher's running statistics at the end (lower is closer)"),
    "ratio": (("ratio",), "%.3f", "student accuracy ÷ teacher accuracy"),
    "steps": (("student_steps", "steps"), "%d", "steps the run took (a distillation: its student's steps)"),
    "minutes": (("wall_minutes", "elapsed_s"), "%.2f", "wall time of the run"),
}


def _metric(record: RunRecord, column: str) -> float | None:
    keys, fmt, _ = KEY_METRICS[column]
    summary = record.summary
    if record.kind == "synthesis":   # its teacher_accuracy is of its own batch, which one column called two things
        summary = {**{k: v for k, v in summary.items() if k != "teacher_accuracy"},
                   "batch_agreement": summary.get("teacher_accuracy")}
    for key in keys:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return 100 * value if fmt.endswith("%%") else value / 60 if key == "elapsed_s" else value
    return None


def run_table(records: list[RunRecord]) -> list[dict]:
    """One row per run; the key metrics any run has, in a fixed column order, right after what the run is (after
    the ids and the teacher they sat past the right edge of a 1280-px screen); the id and the error last."""
    shown = [k for k in KEY_METRICS if any(_metric(r, k) is not None for r in records)]
    edited = any(live_edits(r) for r in records)
    return [{"name": r.name or "", "kind": r.kind, "status": r.status, **{k: _metric(r, k) for k in shown},
             **({"changed live": live_edits(r)} if edited else {}),
             "created": r.created_str, "dataset": r.dataset or "", "method": r.method or "", "teacher": r.teacher or "",
             "id": r.id, "error": r.error or ""} for r in records]


RUN_TABLE_COLUMNS = {**{column: st.column_config.NumberColumn(format=fmt, help=meaning)
                        for column, (_, fmt, meaning) in KEY_METRICS.items()},
                     "changed live": st.column_config.TextColumn(width="large", help="settings moved while the run "
                                                                 "ran (the last change; the name gives the start)")}


# The page a running run's job can be watched on (it offers the job by its id in the URL), by kind or method.
WATCH_PAGES = {"teacher": "pages/teacher.py", "synthesis": "pages/synthesize.py", "distill": "pages/distill.py",
               "boundary": "pages/boundaries.py", "cka": "pages/representations.py", "gradcam": "pages/attention.py"}


def running_run_controls(record: RunRecord) -> None:
    """A run still running: Stop, and a link to watch it, when this app runs it; else where it runs."""
    manager = get_job_manager()
    job = manager.of_run(record.id)
    if job is None:
        st.info(f"{record.id} is running in another process (a `dfkd` command, or another app server): stop it "
                "there. A run left 'running' by a process that died is marked interrupted when the app restarts.")
        return
    def controls(j) -> None:   # redrawn while it runs; when it ends (stopped here or not) the page reruns
        text, stop = st.columns([5, 1], vertical_alignment="center")
        steps = f": step {j.step_index:,} of {j.total_steps:,}" if j.total_steps else ""
        text.info(f"Running in this app{steps}." if j.running else f"Ending: {j.status}.")
        stop.button("Stop", key=f"stop_{record.id}", on_click=manager.cancel, args=(j.id,), type="primary",
                    disabled=not j.running, help="Stop it before its next step; what it has made so far is kept, "
                                                 "marked partial")

    live(job, controls, every=0.5)
    page = WATCH_PAGES.get(record.kind, WATCH_PAGES.get(record.method or ""))
    if page is not None:
        st.page_link(page, label="Watch it live on its page", icon=":material/visibility:",
                     query_params={JOB_PARAM: job.id})


def curve_keys(history: list[dict]) -> tuple[list[str], list[str]]:
    """(loss keys, accuracy/confidence keys) present in a run's metrics; the methods.md#model-inversion terms in their
    order."""
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
                        config={"displayModeBar": False}, width="content")
    elif grid_png.is_file():
        st.image(str(grid_png))


def show_run(record: RunRecord, key: str, compact: bool = False) -> None:
    st.subheader(record.name or record.id)
    st.caption(f"{record.id} · {record.kind} · **{record.status}** · {record.created_str}")
    if record.error:
        (st.warning if record.status == "cancelled" else st.error)(f"{record.status}: {record.error}")
    if edits := record.summary.get("live_updates"):
        st.info("Settings changed while it ran: " + "; ".join(live_change_text(e) for e in edits) + ". Its name "
                "and config give the settings it started with; the changes add up, each setting keeping its last "
                "value to the end.")
    inspectable = record.kind == "synthesis" and not compact and (record.dir / "images.pt").is_file()
    # A toggle, not an expander: the diagnosis is computed only when asked; its clickable grid replaces the plain one.
    if inspectable and st.toggle("Inspect one image: the teacher's probabilities, its share of the BN mismatch, its "
                                 "nearest real images", key=f"inspect_on_{key}"):
        inspect_stored(record, key)
    else:
        show_images(record, key)
    history, updates = history_of(record)
    if record.kind == "distill" and record.summary.get("curve") and not compact:
        show_student_comparison([record], key=key)
        st.plotly_chart(kd_loss_figure(history), key=f"kd_{key}")
    elif history and not compact:
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


def inspect_stored(record: RunRecord, key: str) -> None:
    try:
        open_checkpoint(record.teacher)
    except (FileNotFoundError, CheckpointError, KeyError, TypeError) as e:   # its teacher was deleted since
        st.info(f"The teacher of this run is no longer in the run store, so its images cannot be inspected: {e}")
        return
    saved = torch.load(record.dir / "images.pt", map_location="cpu", weights_only=True)
    inspect_batch(saved["images"].float(), saved["targets"].tolist(), record.teacher,
                  DatasetInfo.from_dict(saved["dataset"]), f"inspect_{key}")


def distill_runs(records: list[RunRecord]) -> list[RunRecord]:
    """Distillation runs that reported a student (finished, or stopped and evaluated)."""
    return [r for r in records if r.kind == "distill" and isinstance(r.summary.get("student_accuracy"), (int, float))]


def show_student_comparison(records: list[RunRecord], key: str = "students") -> None:
    """Method, student, student/teacher accuracy, ratio, minutes and images per run, and the student-accuracy
    curves overlaid against images synthesized and against student steps."""
    show_results([r.summary for r in records], [r.id + partial_text(r) for r in records])
    labels = {r.id: f"{r.summary.get('method', r.method)} → {r.summary.get('student', '?')} · {r.id[-4:]}"
              for r in records}
    st.plotly_chart(student_accuracy_figure({labels[r.id]: r.summary for r in records}), key=f"{key}_final")
    if len(records) > 1:
        show_paired_differences(records, labels)
    curves = {labels[r.id]: r.summary.get("curve") or [] for r in records}
    teachers = {labels[r.id]: r.summary.get("teacher_accuracy") for r in records}
    left, right = st.columns(2)
    left.plotly_chart(accuracy_curves_figure(curves, "images_synthesized", teachers), key=f"{key}_images")
    right.plotly_chart(accuracy_curves_figure(curves, "student_steps", teachers), key=f"{key}_steps")
    if any(not r.summary.get("data_free", True) for r in records):
        st.caption("Runs marked data_free = false read the real training set (baselines, not data-free).")


def show_paired_differences(records: list[RunRecord], labels: dict[str, str]) -> None:
    """Every two students on the same test images (each later one minus each earlier one): the difference with its
    paired interval, which resolves gaps that two separate intervals cannot. Against the first student only, the
    gap between two others was left to the reader's arithmetic, without an interval."""
    st.markdown("**Paired differences** on the same test images (95% interval, images resampled together for "
                "both students):")
    st.dataframe(paired_difference_rows(records, labels), hide_index=True)
    st.caption("The intervals cover which test images were drawn, not how the students were trained: two seeds of "
               "one digits recipe differed by −5.0 points [−8.3, −1.7]. A difference says which of these two students "
               "is better; that one recipe beats another takes several seeds each (`benchmarks/robustness.py`).")


def paired_difference_rows(records: list[RunRecord], labels: dict[str, str]) -> list[dict]:
    rows = []
    for position, reference in enumerate(records):
        rows += _differences_to(records[position + 1:], reference, labels)
    return rows


def _differences_to(records: list[RunRecord], reference: RunRecord, labels: dict[str, str]) -> list[dict]:
    rows = []
    for record in records:
        try:
            diff = compare_students_accuracy(record.dir, reference.dir)
        except (FileNotFoundError, ValueError) as e:   # an older run without per-image hits, another test set
            rows.append({"student": labels[record.id], "minus": labels[reference.id], "difference": str(e)})
            continue
        verdict = ("better" if diff.low > 0 else "worse" if diff.high < 0 else "not resolved") if diff.defined \
            else "no interval"
        rows.append({"student": labels[record.id], "minus": labels[reference.id],
                     "difference": f"{diff.estimate * 100:+.2f} points [{diff.low * 100:+.2f}, {diff.high * 100:+.2f}]",
                     "verdict": verdict})
    return rows
