"""Attention: Grad-CAM of a stored teacher and its students on the same real images, with overlap scores and their
95% intervals over images (methods.md#grad-cam), and the paired difference of every two students on those images."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

import torch  # noqa: E402

from dfkd_core.analysis import TARGETS, compare_attention  # noqa: E402
from dfkd_core.analysis.checks import require_comparable, sample_count_note  # noqa: E402
from dfkd_core.analysis.gradcam import paired_differences  # noqa: E402
from dfkd_core.analysis.jobs import GradCAMAnalysis, GradCAMConfig, load_inputs  # noqa: E402
from dfkd_core.plots.representations import (  # noqa: E402
    gradcam_grid_figure, overlap_difference_figure, overlap_histogram_figure, overlap_interval_figure)
from dfkd_core.stats import Interval  # noqa: E402
from pages.views.analysis_view import (  # noqa: E402
    analysis_job, incomparable, interval_text, model_choices, newest_student_button, sample_slider, short_label,
    show_progress, stored_analyses)
from pages.views.common import (  # noqa: E402
    data_root_setting, fresh_model, get_store, keep_widget_state, open_checkpoint, open_model, real_test_split,
    real_test_split_or_stop, require_job_slot, start_stop_buttons, submit, teacher_or_stop)
from pages.views.labels import describe_run  # noqa: E402
from pages.views.methods_doc import section_link  # noqa: E402
GRAD_CAM = section_link("grad-cam")


TARGET_NAMES = {"true": "true label", "predicted": "each model's prediction", "teacher": "teacher's prediction"}
SHOWN = 100   # test images offered in the picker
LONG_SCORE_NAMES = {"correlation": "correlation r", "iou": "top-region IoU"}   # per-image table headers


@st.cache_data(show_spinner="Grad-CAM of teacher and students…", max_entries=32)
def attention(teacher_ref: str, student_refs: tuple[str, ...], indices: tuple[int, ...], target: str,
              fraction: float, dataset: str, root: str | None) -> dict:
    split = real_test_split(dataset, root)
    idx = torch.tensor(indices)
    students = {short_label(ref): fresh_model(ref, teacher_ref) for ref in student_refs}
    c = compare_attention(fresh_model(teacher_ref), students, split.normalized(idx), split.labels[idx], target,
                          fraction=fraction)
    return {"images": split.info.denormalize(split.normalized(idx)), "maps": c.maps, "predictions": c.predictions,
            "scores": {s: {"correlation": c.correlation[s], "iou": c.iou[s]} for s in c.students},
            "summary": c.summary(intervals=True), "differences": c.paired_differences(), "labels": split.labels[idx]}


def difference_rows(differences: list[dict]) -> list[dict]:
    """One row per two students: r and IoU differences (later − earlier) with their paired 95% intervals."""
    return [{"students": f"{d['student_a']} − {d['student_b']}",
             **{label: interval_text(d[k], Interval.from_dict(d[k]).estimate, "+.3f")
                for k, label in (("correlation", "r difference (95% interval)"),
                                 ("iou", "IoU difference (95% interval)"))},
             "images": Interval.from_dict(d["iou"]).units} for d in differences]


def start(teacher_run: str, student_refs: list[str], config: GradCAMConfig) -> GradCAMAnalysis:
    config.validate()
    teacher = open_checkpoint(teacher_run)
    for ref in student_refs:
        require_comparable(teacher, open_model(ref, teacher_run), f"student '{short_label(ref)}'")
    require_job_slot()
    inputs = load_inputs("real", teacher.dataset, config.samples, config.seed, data_root=config.data_root)
    run = get_store().create("analysis", config.to_dict(), teacher=teacher_run, method="gradcam",
                             dataset=teacher.dataset.name,
                             name=f"Grad-CAM {teacher.name} vs {', '.join(short_label(r) for r in student_refs)}")
    return submit(lambda: GradCAMAnalysis(fresh_model(teacher_run), {short_label(r): fresh_model(r, teacher_run)
                                                                      for r in student_refs},
                                          inputs.images, inputs.labels, config, teacher.dataset, run,
                                          samples_note=inputs.note), run, label="Grad-CAM")


def render_progress(job: GradCAMAnalysis) -> None:
    st.progress(job.step_index / max(job.total_steps, 1), text=f"**{job.status}** · batch {job.step_index}/"
                f"{job.total_steps}")
    if job.status == "failed":
        st.error(job.error)


def chance_note(summary: dict) -> str:
    """What the scores are worth: each map's resolution, and the chance level of r and IoU on mismatched images."""
    if not all("chance_correlation_mean" in s for s in summary.values()):
        return "Scored before chance levels were measured: score the set again to see them."
    sizes = {tuple(s[k]) for s in summary.values() for k in ("teacher_map_size", "map_size")}
    coarse = (" (coarse: a few cells upsampled, so r and IoU move in large steps)"
              if min(h * w for h, w in sizes) <= 16 else "")
    chance = "; ".join(f"{n}: r {s['chance_correlation_mean']:.2f}, IoU {s['chance_iou_mean']:.2f}"
                       for n, s in summary.items())
    return (f"Grad-CAM maps are {', '.join(f'{h}×{w}' for h, w in sorted(sizes))} cells before upsampling{coarse}. "
            f"Chance level, the teacher's map of each image against the student's map of another image: {chance}. "
            "A student looks where its teacher looks only as far as it beats that.")


def show_scored_sets(dataset, heading: str | None = None) -> None:
    """The stored Grad-CAM sets of this dataset, the app's and the CLI's (`dfkd gradcam`), with their intervals;
    `heading` above them, only if there are any."""
    stored = stored_analyses("gradcam", "gradcam.json", dataset.name)
    if not stored:
        return
    if heading:
        st.subheader(heading)
    if st.session_state.get("att_open") not in stored:
        st.session_state["att_open"] = next(iter(stored))
    opened = st.selectbox("Scored set", list(stored), key="att_open",
                          format_func=lambda i: f"{describe_run(stored[i])} · {stored[i].status}")
    saved = get_store().get(opened).load_json("gradcam.json")
    if saved.get("samples_note"):
        st.warning(f"{saved['samples_note']}.")
    st.dataframe([{"student": n, "mean r (95% interval)": interval_text(s.get("correlation_interval"),
                                                                         s["correlation_mean"]),
                   "mean IoU (95% interval)": interval_text(s.get("iou_interval"), s["iou_mean"]),
                   "r above chance": interval_text(s.get("correlation_above_chance"), spec="+.2f"),
                   "IoU above chance": interval_text(s.get("iou_above_chance"), spec="+.2f"),
                   "images": s["images"], "undefined r / IoU": f"{s['correlation_undefined']} / {s['iou_undefined']}"}
                  for n, s in saved["students"].items()], hide_index=True)
    st.caption(chance_note(saved["students"]))
    if all("correlation_interval" in s for s in saved["students"].values()):
        st.plotly_chart(overlap_interval_figure(saved["students"]), key="overlap_intervals")
    # every two students on the same images: a paired interval (a run scored before they were stored: from its
    # per-image scores)
    differences = saved.get("differences")
    if differences is None and len(saved["per_image"]) > 1:
        differences = paired_differences(saved["per_image"])
    if differences:
        st.plotly_chart(overlap_difference_figure(differences), key="overlap_differences")
        st.dataframe(difference_rows(differences), hide_index=True)
    left, right = st.columns(2)
    for col, metric in ((left, "correlation"), (right, "iou")):
        col.plotly_chart(overlap_histogram_figure({n: torch.tensor([float(x) for x in v[metric]], dtype=torch.float64)
                                                   for n, v in saved["per_image"].items()}, metric),
                         key=f"hist_{metric}")


st.title("Attention")
st.caption("Where do teacher and student look? Grad-CAM $\\mathrm{ReLU}(\\sum_c \\alpha_c A_c)$ at each model's "
           "last spatial block, overlaid on the same real test images; per image, the Pearson correlation $r$ of "
           "the two maps and the IoU of their top regions; means with 95% bootstrap intervals over the images. "
           "IE-KD students are expected to keep the teacher's attention ([Methods: IE-KD](/methods#ie-kd)).")
keep_widget_state("att_teacher", "att_students", "att_target", "att_fraction", "att_images", "att_samples",
                  "att_open")
job = analysis_job(GradCAMAnalysis, open_key="att_open")
running = job is not None and job.running

with st.sidebar:
    teacher_run = teacher_or_stop("att_teacher")
    dataset = open_checkpoint(teacher_run).dataset
    choices, compact = model_choices(dataset.name, exclude=teacher_run, teacher=open_checkpoint(teacher_run))
    students = st.multiselect("Students", list(choices), format_func=compact.get, key="att_students",
                              max_selections=4, placeholder="distilled students, side by side")
    for ref in students:
        st.caption(choices[ref])
    target = st.radio("Class explained", TARGETS, format_func=TARGET_NAMES.get, key="att_target",
                      help="Each model's Grad-CAM is taken for this class. " + GRAD_CAM)
    fraction = st.select_slider("Top region for the IoU", [0.1, 0.2, 0.3, 0.5], 0.2, key="att_fraction",
                                format_func=lambda f: f"{f:.0%}",
                                help="IoU of the two maps' top regions of this share of the pixels. " + GRAD_CAM)
if not students:
    st.info("Pick one or more students in the sidebar (any stored model of the same dataset).")
    newest_student_button(choices, teacher_run, dataset.name, "att_students")
    show_scored_sets(dataset, "Overlap on many images")   # sets scored earlier, or from the CLI, need no student
    st.stop()
refused = incomparable(open_checkpoint(teacher_run), {ref: open_model(ref, teacher_run) for ref in students}, choices)
if refused:
    st.error(refused)
    st.stop()
data_root = data_root_setting(dataset.name)
split = real_test_split_or_stop(dataset)
names = dataset.class_names or [str(k) for k in range(dataset.num_classes)]
chosen = st.multiselect("Test images", range(min(SHOWN, len(split))), default=list(range(6)), key="att_images",
                        max_selections=12, format_func=lambda i: f"#{i} · {names[int(split.labels[i])]}")
if chosen:
    shot = attention(teacher_run, tuple(students), tuple(chosen), target, fraction, dataset.name, data_root)
    captions = [f"#{i} {names[int(y)]} · T→{names[int(p)]}" for i, y, p in
                zip(chosen, shot["labels"], shot["predictions"]["teacher"])]
    st.plotly_chart(gradcam_grid_figure(shot["images"], shot["maps"], shot["scores"], captions),
                    key="gradcam_grid")
    cols = st.columns(len(shot["summary"]))
    for col, (name, s) in zip(cols, shot["summary"].items()):
        col.metric(f"{name}: mean r / IoU", f"{s['correlation_mean']:.2f} / {s['iou_mean']:.2f}",
                   help=f"95% intervals over these {len(chosen)} images: r {interval_text(s['correlation_interval'])}, "
                        f"IoU {interval_text(s['iou_interval'])}")
    st.caption("95% intervals over the images shown: " + "; ".join(
        f"{name}: r {interval_text(s['correlation_interval'], spec='.2f')}, IoU "
        f"{interval_text(s['iou_interval'], spec='.2f')}" for name, s in shot["summary"].items()))
    st.caption(chance_note(shot["summary"]))
    if shot["differences"]:
        st.caption("Paired differences on these images (95% paired interval): " + "; ".join(
            f"{d['student_a']} − {d['student_b']}: r {interval_text(d['correlation'], spec='+.2f')}, IoU "
            f"{interval_text(d['iou'], spec='+.2f')}" for d in shot["differences"]))
    # One row per image and student: a column per student and score ran off the page with three students.
    st.dataframe([{"image": f"#{i} {names[int(y)]}", "student": n,
                   **{LONG_SCORE_NAMES.get(k, k): round(float(v[k][j]), 3) for k in v}}
                  for j, (i, y) in enumerate(zip(chosen, shot["labels"])) for n, v in shot["scores"].items()],
                 hide_index=True)

st.subheader("Overlap on many images")
cols = st.columns([2, 1, 1])
samples = sample_slider("Real test images", [100, 250, 500, 1000], 500, len(split), key="att_samples", slot=cols[0],
                        disabled=running, help="Images the overlap scores and their intervals rest on. " + GRAD_CAM)
shortfall = sample_count_note(samples, len(split), f"the {dataset.name} test split")
if shortfall:
    st.warning(f"{shortfall}.")
config = GradCAMConfig(teacher=teacher_run, students=students, target=target, fraction=fraction, samples=samples,
                       data_root=data_root)
start_stop_buttons(job, lambda: start(teacher_run, students, config), label="Score them", slots=cols[1:])
show_progress(job, render_progress)
show_scored_sets(dataset)
