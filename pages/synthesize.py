"""Synthesize: invert a teacher into images (methods.md#model-inversion) and steer the loss weights while they form."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from dfkd_core.synthesis import ModelInversion  # noqa: E402
from pages.views.common import (attached_job, checkpoint_picker, ensure_starter_teacher, get_job_manager,  # noqa: E402
                                    keep_widget_state, make_current_teacher, open_checkpoint, show_starter_progress,
                                    start_stop_buttons, teacher_or_stop)
from pages.views.synthesis_view import (  # noqa: E402
    KNOBS, PRESET_NAMES, UNTRAINED, apply_preset, config_from_knobs, has_bn, init_knobs, knob_key, knob_widget,
    preset_changes, render_idle, render_live, set_knobs, start_inversion, student_options)
from pages.views.compare_view import attached_pair, compare_panel  # noqa: E402
from pages.views.inspect_view import inspect_batch  # noqa: E402


st.title("Synthesize")
st.caption("Images from a trained classifier alone: optimize a batch $\\hat x$ so that "
           "$L=\\alpha_{ce}\\mathrm{CE}(T(\\hat x),y)+\\alpha_{tv}R_{TV}+\\alpha_{l2}\\lVert\\hat x\\rVert_2+"
           "\\alpha_f R_{feature}+\\alpha_c R_{compete}$ is small. Move the sliders while it runs.")
keep_widget_state("synth_teacher", "preset", "synth_student", "synth_targets", *(knob_key(k.name) for k in KNOBS))
if "teacher" in st.query_params:  # deep link from the Teacher page: ?teacher=<run id>
    make_current_teacher(st.query_params.pop("teacher"))
manager = get_job_manager()
pair = attached_pair()
job = attached_job("synthesis", accept=lambda other: pair is None or other not in pair[0])   # not this tab's own pair
running = job is not None and job.running
show_starter_progress(ensure_starter_teacher())

# A reload (or a link) re-attaches to its job: the knobs show that job's settings, not this tab's old ones.
if job is not None and st.session_state.get("synced_job") != job.id:
    set_knobs(job.config.to_dict())
    st.session_state[knob_key("pace")] = manager.pace(job.id) or 0
    st.session_state["preset"] = job.config.method
    if job.run_record is not None:
        st.session_state["synth_teacher"] = job.run_record.record().teacher
        make_current_teacher(st.session_state["synth_teacher"])
        st.session_state["knobs_for"] = (st.session_state["synth_teacher"], job.dataset.name)
    st.session_state["synced_job"] = job.id


def on_live_change(name: str) -> None:
    """Send a moved knob to the running job; it takes effect at the next step (and is marked on the curves)."""
    if job is None or not job.running:
        return
    value = st.session_state[knob_key(name)]
    if name == "pace":
        manager.set_pace(job.id, value or None)
    else:
        job.update(**{name: value})


@st.fragment
def knob_panel(running: bool, bn: bool, method: str, has_student: bool, names: list[str], dataset_name: str) -> None:
    """The knobs, as a fragment: moving one while a job runs reruns only this panel, so the live view keeps
    refreshing while the user steers. What moved from the preset is said here, where a move redraws it."""
    keep_widget_state("synth_targets", *(knob_key(k.name) for k in KNOBS))
    if changes := preset_changes(method, dataset_name):
        st.caption(f"Moved from the {PRESET_NAMES[method]} preset: {changes}. A run uses the weights as they are "
                   "(its name lists them).")
        st.button("Restore the preset's weights", on_click=apply_preset, args=(method, dataset_name),
                  disabled=running, key="restore_preset")
    st.subheader("Loss weights · live")
    for name in ("alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "first_bn_multiplier", "alpha_c"):
        off = (name in ("alpha_f", "first_bn_multiplier") and not bn) or (name == "alpha_c" and not has_student)
        knob_widget(name, running, disabled=off, on_live_change=on_live_change)
    st.subheader("Optimizer and augmentation · live")
    for name in ("lr", "jitter", "flip", "pace"):
        knob_widget(name, running, on_live_change=on_live_change)
    pace, iterations = st.session_state[knob_key("pace")], st.session_state[knob_key("iterations")]
    if not running and pace and iterations / pace < 30:
        # A digits run at full pace is over in seconds: too quick to move a slider in front of a class. Said here,
        # in the knobs' fragment, so it follows the pace and iterations as they move.
        st.caption(f"At most {pace:g} steps/s, {iterations:,} iterations take at least {iterations / pace:.0f} s: "
                   "lower the pace or raise the iterations for time to steer a run.")
    st.subheader("Batch and diversity · fixed per run")
    st.multiselect("target classes y", range(len(names)), format_func=lambda i: names[i], key="synth_targets",
                   disabled=running, placeholder="all classes, cycled")
    st.caption(r"Classes $y$ to synthesize, cycled over the batch (empty = all).")
    for name in ("batch_size", "iterations", "multi_resolution_iterations", "seed"):
        knob_widget(name, running)
    knob_widget("alpha_cr", running, disabled=not bn)


with st.sidebar:
    teacher_run = teacher_or_stop("synth_teacher", disabled=running,
                                  help="A teacher run from the run store (add one on the Teacher page)",
                                  missing="No teacher in the run store yet: a digits teacher trains by itself on "
                                          "first launch (progress on the right), or add one on the Teacher page.")
    dataset = open_checkpoint(teacher_run).dataset
    bn = has_bn(teacher_run)
    methods = list(PRESET_NAMES) if bn else ["deepdream"]
    if st.session_state.get("preset") not in methods:
        st.session_state["preset"] = "deepinversion" if bn else "deepdream"
    if st.session_state.get("knobs_for") != (teacher_run, dataset.name):
        if "knobs_for" not in st.session_state:
            init_knobs(st.session_state["preset"], dataset.name)
        else:
            apply_preset(st.session_state["preset"], dataset.name)
        st.session_state["knobs_for"] = (teacher_run, dataset.name)
    method = st.radio("Preset (sets the weights of its method)", methods, key="preset", horizontal=True,
                      format_func=PRESET_NAMES.get, disabled=running,
                      on_change=lambda: apply_preset(st.session_state["preset"], dataset.name))
    if not bn:
        st.warning("This teacher has no BatchNorm layers: DeepInversion's $R_{feature}$ has no statistics to "
                   "match, so only DeepDream (image priors) is available.")
    student = None
    if method == "adi":
        student = checkpoint_picker("Student to compete against", kinds=("distill", "teacher"),
                                    dataset=dataset.name, key="synth_student", exclude=(teacher_run,),
                                    extra_options=student_options(teacher_run), disabled=running,
                                    help=f"'{UNTRAINED}…' = a freshly initialized half-width student")
    knob_panel(running, bn, method, job.student is not None if running else method == "adi",
               dataset.class_names or [str(i) for i in range(dataset.num_classes)], dataset.name)


def start() -> ModelInversion:
    config = config_from_knobs(method, sorted(st.session_state.get("synth_targets") or []))
    new = start_inversion(teacher_run, config, student, st.session_state[knob_key("pace")])
    st.session_state["synced_job"] = new.id   # the knobs already show its settings
    return new


start_stop_buttons(job, start)
compare_panel(teacher_run, bn, lambda: config_from_knobs(st.session_state["preset"],
                                                         sorted(st.session_state.get("synth_targets") or [])),
              st.session_state[knob_key("pace")], running, job)
if job is None:
    st.info(f"Teacher **{open_checkpoint(teacher_run).title}** on **{dataset.name}** is ready. Press **Start** and "
            "watch the batch turn from noise into images the teacher recognizes.")
    render_idle(teacher_run)
render_live(job)
if job is not None and not job.running and job.run_record is not None and hasattr(job, "x"):
    st.subheader("Inspect one image")
    inspect_batch(job.images(), job.targets.tolist(), job.run_record.record().teacher, job.dataset, "synth_inspect",
                  note=" Predictions here are on the images as they are; the live grid above shows them on the "
                       "shifted and flipped view its step's loss saw, so a confidence can differ between the two.")
