"""Compare live: two syntheses of the same teacher from the same noise and seed, side by side (DeepDream vs
DeepInversion in one click, or any two presets or the knobs' own settings). Each is an ordinary synthesis job and run;
this view starts the pair, keeps it attached to the tab (`?compare=<id>,<id>`, so a reload reattaches), and draws both
grids, their BN distance per layer, and their curves, with a caption of what to look at."""
from __future__ import annotations

import streamlit as st

from dfkd_core.job_manager import JobLimitError
from dfkd_core.plots import image_grid_png, run_comparison_figure
from dfkd_core.plots.inspect import bn_layer_comparison_figure
from dfkd_core.synthesis import PRESETS, ModelInversion, SynthesisConfig
from pages.views.common import START_ERRORS, get_job_manager, live
from pages.views.methods_doc import section_link
from pages.views.synthesis_view import (PRESET_NAMES, cached, png_data_uri, start_inversion,
                                          student_options)

COMPARE_PARAM = "compare"
KNOBS = "knobs"
CHOICES = {**PRESET_NAMES, KNOBS: "the knobs as set"}
SHOWN = 20   # images per grid: two grids side by side


def config_for(choice: str, knobs: SynthesisConfig) -> SynthesisConfig:
    """The knobs' batch, schedule, augmentation and seed with a preset's weights (or the knobs' own weights)."""
    if choice == KNOBS:
        return knobs
    return knobs.replace(method=choice, **PRESETS[choice])


def start_pair(teacher_run: str, knobs: SynthesisConfig, choices: tuple[str, str], pace: float
               ) -> list[ModelInversion]:
    """Start both syntheses (two job slots needed, checked first so that no half pair is left running)."""
    manager = get_job_manager()
    free = manager.max_running - len(manager.active())
    if free < 2:
        raise JobLimitError(f"a comparison runs two jobs and {free} job slot(s) are free on this machine; stop a "
                            "running job first")
    configs = [config_for(c, knobs) for c in choices]
    for config in configs:
        config.validate()
    students = student_options(teacher_run)
    jobs = []
    for side, config in zip("AB", configs):
        student = students[0] if config.alpha_c > 0 and students else None
        jobs.append(start_inversion(teacher_run, config, student, pace, origin=f"compare {side}"))
    attach_pair(jobs, choices)
    return jobs


def attach_pair(jobs: list[ModelInversion], choices: tuple[str, str]) -> None:
    st.query_params[COMPARE_PARAM] = ",".join(j.id for j in jobs)
    st.session_state["compare_pair"] = ([j.id for j in jobs], list(choices))


def attached_pair() -> tuple[list[ModelInversion], list[str]] | None:
    """This tab's comparison: from the URL (a reload), else from the session."""
    stored = st.session_state.get("compare_pair")
    ids = st.query_params.get(COMPARE_PARAM, "").split(",") if COMPARE_PARAM in st.query_params else \
        (stored[0] if stored else [])
    jobs = [get_job_manager().get(i) for i in ids if i]
    if len(jobs) != 2 or any(j is None for j in jobs):
        return None
    choices = stored[1] if stored and stored[0] == ids else [j.config.method for j in jobs]
    return jobs, choices


def what_to_look_at(choices: list[str], jobs: list[ModelInversion]) -> str:
    if set(choices) == {"deepdream", "deepinversion"}:
        return ("Same teacher, same noise, same seed; only α_f differs. Both batches soon fool the teacher (accuracy "
                "near 100%), but only DeepInversion's BN distances fall, layer by layer: it makes the batch "
                "reproduce the statistics of the data the teacher was trained on. On images large enough to see "
                "(Fashion-MNIST's 28×28) its images start to look like that data while DeepDream's keep a noise-like "
                "texture; at digits' 8×8 both look like blocks, and the difference is in the BN distances. "
                + section_link("model-inversion"))
    a, b = (j.config.to_dict() for j in jobs)
    differ = [k for k in ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "first_bn_multiplier", "alpha_c", "lr",
                          "jitter", "flip") if a[k] != b[k]]
    said = ", ".join(f"{k} {a[k]:g} vs {b[k]:g}" if not isinstance(a[k], bool) else f"{k} {a[k]} vs {b[k]}"
                     for k in differ)
    return ("Same teacher, same noise, same seed: every difference between the two comes from "
            + (said if said else "nothing (the two settings are equal)") + ". Compare the BN distance per layer "
            "below and the teacher's accuracy on each batch. " + section_link("model-inversion"))


def _side(job: ModelInversion, title: str) -> None:
    history = list(job.history)
    last = history[-1] if history else {}
    st.markdown(f"**{title}** · {job.status} · step {len(history)}/{job.total_steps}")
    snap = job.latest_snapshot
    if snap is not None and snap.images is not None:
        st.image(cached(f"compare_grid_{job.id}", (job.id, snap.step),
                        lambda: png_data_uri(image_grid_png(snap.images[:SHOWN], snap.labels[:SHOWN], ncols=10,
                                                           max_rows=2))),
                 output_format="PNG")
    accuracy = f"{last['teacher_accuracy']:.0%}" if "teacher_accuracy" in last else "–"
    distance = f"{last['bn_distance']:.3g}" if "bn_distance" in last else "–"
    st.caption(f"teacher accuracy on the batch {accuracy} · BN distance {distance}")


def render_pair(jobs: list[ModelInversion], choices: list[str]) -> None:
    titles = [f"{side}: {CHOICES.get(c, c)}" for side, c in zip("AB", choices)]

    def view(_job) -> None:
        for column, job, title in zip(st.columns(2), jobs, titles):
            with column:
                _side(job, title)
        per_layer = {}
        for job, title in zip(jobs, titles):
            stats = job.latest_bn_statistics
            last = next((h for h in reversed(job.history) if "bn_per_layer" in h), None)
            if stats and last:
                per_layer[title] = dict(zip([s["layer"] for s in stats], last["bn_per_layer"]))
        if per_layer:
            version = tuple(len(j.history) // 5 for j in jobs)
            st.plotly_chart(cached("compare_bn", version, lambda: bn_layer_comparison_figure(per_layer)),
                            key="compare_bn_chart", config={"displayModeBar": False})   # it hid the title
        histories = {title: list(job.history) for job, title in zip(jobs, titles)}
        keys = [k for k in ("bn_distance", "teacher_accuracy") if all(any(k in h for h in v)
                                                                      for v in histories.values())]
        if keys:
            version = tuple(len(v) // 5 for v in histories.values())
            st.plotly_chart(cached("compare_curves", version, lambda: run_comparison_figure(histories, keys)),
                            key="compare_curves_chart")

    st.caption(what_to_look_at(choices, jobs))
    # One fragment polls for both jobs: it keeps refreshing while either of them runs.
    live(jobs[0] if jobs[0].running or not jobs[1].running else jobs[1], view)


def compare_panel(teacher_run: str, bn: bool, knobs, pace: float, running: bool, single=None) -> None:
    """The controls: A and B (DeepDream vs DeepInversion by default: one click), Compare, Stop both; then the pair.
    `knobs()` builds the knobs' config at the click (a callback runs before the page redraws its widgets).
    `single`: the page's own job; one started after the pair takes its place (the pair is on the Runs page)."""
    pair = attached_pair()
    busy = pair is not None and any(j.running for j in pair[0])
    options = list(CHOICES) if bn else ["deepdream", KNOBS]
    st.session_state.setdefault("compare_a", options[0])
    st.session_state.setdefault("compare_b", "deepinversion" if bn else KNOBS)

    def on_compare() -> None:
        try:
            start_pair(teacher_run, knobs(), (st.session_state["compare_a"], st.session_state["compare_b"]),
                       st.session_state.get("compare_pace", pace))
        except START_ERRORS as e:
            st.session_state["compare_error"] = str(e)

    def on_stop() -> None:
        for job in attached_pair()[0]:
            get_job_manager().cancel(job.id)

    with st.expander("Compare live: two syntheses side by side, same teacher, noise and seed", expanded=True):
        a, b, start, stop = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
        a.selectbox("A", options, key="compare_a", format_func=CHOICES.get, disabled=busy)
        b.selectbox("B", options, key="compare_b", format_func=CHOICES.get, disabled=busy)
        start.button("Compare", on_click=on_compare, disabled=busy or running, width="stretch",
                     help="Starts A and B as two synthesis runs with the batch, iterations, pace and seed of the "
                          "knobs")
        stop.button("Stop both", on_click=on_stop, disabled=not busy, width="stretch")
        if "compare_error" in st.session_state:
            st.error(st.session_state.pop("compare_error"))
        newer = (pair is not None and single is not None
                 and (single.started_at or float("inf")) > max(j.started_at or 0 for j in pair[0]))
        if newer and not busy:   # a finished pair pushed the run after it ~1,000 px down: shown on request
            names = " vs ".join(CHOICES.get(choice, choice) for choice in pair[1])
            if not st.toggle(f"Show the last comparison ({names}) here", key="show_last_pair",
                             help="Its two runs are also on the Runs page."):
                return
        if pair is not None:
            render_pair(*pair)


__all__ = ["CHOICES", "KNOBS", "attached_pair", "compare_panel", "render_pair", "start_pair"]
