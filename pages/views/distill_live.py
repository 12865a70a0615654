"""The Distill page's live view of a running `DistillJob`: progress with its plan and time left, the headline
accuracy with where its interval comes from, the image grid, accuracy and KD-loss curves, accuracy per class, and
the result once it ends. Reads the job only (its thread owns it)."""
from __future__ import annotations

import streamlit as st

from dfkd_core.distill import DistillJob
from dfkd_core.distill.inversion_kd import PoolKD
from dfkd_core.launch import LaunchedDistillJob
from dfkd_core.plots import accuracy_curves_figure, image_grid_png, kd_loss_figure
from dfkd_core.plots.distill import per_class_accuracy_figure
from dfkd_core.stats import Interval, wilson_interval
from pages.views.common import POLL_SECONDS, eta_text, live
from pages.views.results_view import show_results
from pages.views.synthesis_view import cached, png_data_uri


def accuracy_note(job: DistillJob, accuracy: float | None) -> str:
    """Where the headline accuracy comes from, with its interval: once the run has its result, the result's own
    number and interval (the Result table's); before, the held-out images' (Wilson), said as all of the test set
    when they are all of it (digits)."""
    final = job.result.get("student_accuracy_ci") if not job.running else None
    if isinstance(final, dict):
        ci = Interval.from_dict(final)
        return (f"Student accuracy on all {ci.units:,} real test images: {ci.format('.2%')} (95%, {ci.method}), as "
                "in the Result table below." + (" While it ran the interval was Wilson's; the final one resamples "
                "the test images, as the ratio to the teacher needs." if "bootstrap" in ci.method else ""))
    held, total = len(getattr(job, "heldout", None) or []), getattr(job, "test_images", 0)
    if accuracy is None or not held:
        return ""
    ci = wilson_interval(round(accuracy * held), held)
    if held >= total:
        return f"Student accuracy on all {held:,} real test images: {ci.format('.1%')} (Wilson 95%)."
    return (f"Student accuracy on {held:,} held-out real test images: {ci.format('.1%')} (Wilson 95%). The run's "
            f"result uses all {total:,} test images, paired with the teacher on the same images.")


def synthesizes(job: DistillJob) -> bool:
    """Whether this run inverts images itself: not with a reused pool, nor for a generator or noise method, where
    'images finished' stays 0 and a curve against it would sit at x = 0."""
    return isinstance(job.method, PoolKD) and not job.config.pool


def render_progress(job: DistillJob) -> None:
    history = list(job.history)
    last = history[-1] if history else {}
    curve = list(job.curve)
    accuracy = curve[-1]["student_accuracy"] if curve else None
    if not job.running and isinstance(job.result.get("student_accuracy"), float):
        accuracy = job.result["student_accuracy"]   # the result's number, on the whole test set
    total = job.method.total_steps()
    done = last["step"] + 1 if "step" in last else 0
    doing = job.method.describe_step(last) if last else "preparing: measuring the teacher on the real test set"
    st.progress(min(1.0, done / max(total, 1)),
                text=f"**{job.status}** · step {done:,} of {total:,}" + (f" · {doing}" if job.running else "")
                     + eta_text(job))
    images = (f", {last.get('images_synthesized', 0):,} images finished" if synthesizes(job)
              else f" on {len(job.pool):,} stored images" if job.config.pool else "")
    st.caption(f"{job.method.describe_plan()}. So far: {last.get('student_steps', 0):,} student steps{images}.")
    if job.status == "failed":
        st.error(job.error)
    teacher = getattr(job, "teacher_accuracy", None)
    cols = st.columns(4)
    cols[0].metric("student accuracy", f"{accuracy:.1%}" if accuracy is not None else "–",
                   help="While it runs, on held-out real test images; once it ends, on the whole test set (see below)")
    cols[1].metric("teacher accuracy", f"{teacher:.1%}" if teacher is not None else "–")
    if synthesizes(job):
        cols[2].metric("images finished", last.get("images_synthesized", 0),
                       help="Synthetic images whose inversion has ended; the grid below also shows the batch in "
                            "progress")
    elif job.config.pool:
        cols[2].metric("images in the pool", f"{len(job.pool):,}", help="The stored images the student learns from")
    else:
        cols[2].metric("student steps", f"{last.get('student_steps', 0):,}")
    kd = next((r["loss_kd"] for r in reversed(history) if "loss_kd" in r), None)  # synthesis rows hold none
    cols[3].metric("KD loss", f"{kd:.3g}" if kd is not None else "–")
    st.caption(accuracy_note(job, accuracy))
    if synthesizes(job) and job.running and (diagnosis := job.method.findings().get("diagnosis")):
        # Said after the first rounds, while Stop can still save the minutes the rest would take.
        st.warning(f"After {len(job.method.round_results)} synthesis round(s): {diagnosis}")
    if isinstance(job, LaunchedDistillJob):
        st.caption(f"Runs in {job.processes} torchrun processes on this machine (log: `{job.log_path()}`): the "
                   "curves follow the run's files; its images are on the Runs page when it ends.")
    snap = job.latest_snapshot
    if snap is not None and snap.images is not None and len(snap.images):
        # The caption below, not st.image's own: a content-width image is as wide as its caption, so a long one
        # stretched a pool of a few 8x8 images across the page.
        st.image(cached("distill_grid", (job.id, snap.step),
                        lambda: png_data_uri(image_grid_png(snap.images, snap.labels, ncols=10, max_rows=4))),
                 output_format="PNG")
        st.caption(f"the images at step {snap.step + 1}: the teacher's prediction and confidence under each "
                   "(green = the class it was made for). A red one still teaches: the student learns the teacher's "
                   "whole output on each image, not the class it was made for.")


def render_curves(job: DistillJob) -> None:
    curve, history = list(job.curve), list(job.history)
    teacher = {"student": getattr(job, "teacher_accuracy", float("nan"))}
    version = (job.id, len(curve), len(history) // 10)
    left, right = st.columns(2) if synthesizes(job) else (None, st.container())
    if left is not None:   # without synthesis every point would sit at 0 images
        left.plotly_chart(cached("distill_acc_images", version, lambda: accuracy_curves_figure(
            {"student": curve}, "images_synthesized", teacher)), key="live_acc_images")
    right.plotly_chart(cached("distill_acc_steps", version, lambda: accuracy_curves_figure(
        {"student": curve}, "student_steps", teacher)), key="live_acc_steps")
    st.plotly_chart(cached("distill_kd", version, lambda: kd_loss_figure(history)), key="live_kd")
    per_class = getattr(job, "per_class", None)
    if per_class and "student" in per_class:
        names = job.dataset.class_names or [str(k) for k in range(job.dataset.num_classes)]
        st.plotly_chart(cached("distill_classes", (job.id, len(curve)),
                               lambda: per_class_accuracy_figure(per_class, names)), key="live_classes")


def render_live(job: DistillJob | None) -> None:
    live(job, render_progress, POLL_SECONDS)
    live(job, render_curves, 2 * POLL_SECONDS)
    if job is not None and not job.running and job.result.get("student_accuracy") is not None:
        st.subheader("Result")
        show_results([job.result], [job.run_record.id if job.run_record else ""])
        st.page_link("pages/runs.py", label=f"Open run {job.run_record.id} on the Runs page",
                     icon=":material/folder_open:", query_params={"run": job.run_record.id})
