"""Distill: train a smaller student from a teacher alone (methods.md#model-inversion to #knowledge-distillation) and
watch it learn, live."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from dfkd_core.distill import DISTILL_METHODS, DistillJob  # noqa: E402
from dfkd_core.distill.recipes import RECIPES  # noqa: E402
from dfkd_core.hooks import batchnorm_layers  # noqa: E402
from pages.views.common import (  # noqa: E402
    attached_job, data_root_setting, ensure_starter_teacher, get_store, keep_widget_state, make_current_teacher,
    open_checkpoint, show_starter_progress, start_stop_buttons, teacher_or_stop)
from pages.views.labels import PARTIAL_STATUSES, describe_run  # noqa: E402
from pages.views.distill_live import render_live  # noqa: E402
from pages.views.distill_view import (  # noqa: E402
    SYNTHESIS_FIELD, WEIGHTS, config_from_widgets, cpu_bf16_widget, defaults, describe_pool, extra_option_widgets,
    method_label, ordered_methods, planned_time_text, pool_labels, pool_runs, pool_warning, processes_widget,
    recipe_widget, set_weights, start_distillation, student_choices, uses_pool, weight_key,
    weight_widget, weights_of)

NEW_POOL = ""  # the pool option meaning: synthesize new images
JOB_SETTINGS = "job"   # the weights show a re-attached job's settings, whichever recipe the box shows

st.title("Distill")
st.caption("A smaller student learns from the teacher alone: the teacher is inverted into images (or a generator "
           "learns to make them) and the student matches the teacher's softened outputs on them, "
           "$T^2\\,\\mathrm{KL}(p_T^{(T)}\\,\\|\\,p_S^{(T)})$. Real test images only measure the student.")
keep_widget_state("distill_teacher", "distill_method", "distill_recipe", "distill_student", "distill_pool",
                  *(weight_key(w.name) for w in WEIGHTS))
job = attached_job("distill")
running = job is not None and job.running
show_starter_progress(ensure_starter_teacher())   # a deep link to an empty run store gets the starter teacher too

# A reload (or a link) re-attaches to its job: the widgets show that job's settings, not this tab's old ones.
if job is not None and st.session_state.get("distill_synced") != job.id:
    set_weights(weights_of(job.config))
    st.session_state["distill_method"] = job.config.method
    st.session_state["distill_student"] = job.student_name
    pool = job.config.pool   # the page picks one pool; a CLI run's several are shown in its settings instead
    st.session_state["distill_pool"] = get_store().run_id_of(pool) if isinstance(pool, str) else NEW_POOL
    if job.run_record is not None:
        st.session_state["distill_teacher"] = job.run_record.record().teacher
        make_current_teacher(st.session_state["distill_teacher"])
    st.session_state["distill_for"] = (st.session_state.get("distill_teacher"), job.config.method, JOB_SETTINGS)
    st.session_state["distill_synced"] = job.id

with st.sidebar:
    teacher_run = teacher_or_stop("distill_teacher", disabled=running,
                                  help="A teacher run from the run store (add one on the Teacher page)",
                                  missing="No teacher in the run store yet: a digits teacher trains by itself on "
                                          "first launch (progress on the right), or add one on the Teacher page.")
    dataset = open_checkpoint(teacher_run).dataset
    has_bn = bool(batchnorm_layers(open_checkpoint(teacher_run).model))
    methods = ordered_methods(has_bn)
    if st.session_state.get("distill_method") not in methods:
        st.session_state["distill_method"] = "deepinversion" if has_bn else "deepdream"
    method = st.selectbox("Method", methods, key="distill_method", format_func=method_label, disabled=running,
                          help="Data-free methods first; 'uses real data' marks the comparison baselines")
    st.caption(DISTILL_METHODS[method].description)
    if not has_bn:
        st.caption("This teacher has no BatchNorm layers, so the methods that match its BN statistics (" + ", ".join(
            m for m in ordered_methods() if m not in methods) + ") are not offered.")
    models, default_model = student_choices(teacher_run)
    recipe = recipe_widget(dataset.name, method, running)
    previous = st.session_state.get("distill_for")
    if previous is None or previous[0] != teacher_run:   # first visit or another teacher: its defaults
        set_weights(defaults(method, dataset.name, recipe))
        st.session_state["distill_student"] = default_model
    elif previous[2] not in (recipe, JOB_SETTINGS):      # another recipe: all of its settings
        set_weights(defaults(method, dataset.name, recipe))
    elif previous[1] != method:                          # another method: its synthesis preset, other weights kept
        set_weights({k: v for k, v in defaults(method, dataset.name, recipe).items() if k in SYNTHESIS_FIELD})
    st.session_state["distill_for"] = (teacher_run, method, recipe)
    student = st.selectbox("Student", models, key="distill_student", disabled=running,
                           format_func=lambda m: f"{m} · default" if m == default_model else m,
                           help=f"Any registered model. The default, {default_model}, is the teacher's "
                                "architecture at half its width (the teacher's own where none is registered)")
    pool_run = None
    if uses_pool(method):
        pools = {r.id: r for r in pool_runs(dataset.name)}
        if st.session_state.get("distill_pool") not in (NEW_POOL, *pools):
            st.session_state["distill_pool"] = NEW_POOL
        labels = pool_labels(list(pools.values()))
        pool_run = st.selectbox("Reuse a stored pool", [NEW_POOL, *pools], key="distill_pool", disabled=running,
                                format_func=lambda i: "no: synthesize new images" if i == NEW_POOL
                                else labels[i]) or None
        if pool_run in pools:
            st.caption(describe_pool(pools[pool_run]))
            if warning := pool_warning(pools[pool_run]):
                st.warning(f"This pool may teach badly: {warning}.")
        else:
            st.caption("The images.pt of a synthesis or distillation run: synthesize once, distill many students.")
    st.subheader("Weights")
    cls = DISTILL_METHODS[method]
    for weight in WEIGHTS:
        synthesis_only = weight.name in ("images", "kd_steps_per_round", "trajectory_kd_from", *SYNTHESIS_FIELD)
        if weight.applies(cls) and not (pool_run and synthesis_only):
            weight_widget(weight.name, running)
    cpu_bf16_widget(running)
    extra_options = extra_option_widgets(method, running)
    processes = processes_widget(method, running)


def start() -> DistillJob:
    new = start_distillation(teacher_run, config_from_widgets(method, student, pool_run, extra_options,
                                                              data_root_setting(dataset.name)), processes)
    st.session_state["distill_synced"] = new.id   # the widgets already show its settings
    return new


start_stop_buttons(job, start, stop_help="Stops before the next step; the student so far is evaluated and saved")
if job is None:
    st.info(f"Teacher **{open_checkpoint(teacher_run).title}** on **{dataset.name}** → student **{student}** with "
            f"**{method}**. Press **Start** to watch the student's accuracy on real test images climb "
            + ("as it learns from the stored pool" if pool_run else "as images are synthesized")
            + "; the student and the images are saved in the run store (Runs page).")
    if recipe:   # its time is in its description (fashion-best: 20-40 CPU minutes), said where Start is
        st.caption(f"Recipe **{recipe}**: {RECIPES[recipe]['description']}.")
if job is None or not job.running:   # the next run's time, also beside a finished one
    planned = planned_time_text(teacher_run, config_from_widgets(method, student, pool_run, extra_options,
                                                                 data_root_setting(dataset.name)), processes)
    if planned:
        st.caption(f"**Time** of {'a run with these settings' if job is not None else 'this run'}: {planned}.")
if job is None:
    teacher_record = get_store().get_record(teacher_run)
    if teacher_record.status in PARTIAL_STATUSES:
        st.warning(f"This teacher is partial: its training was stopped ({describe_run(teacher_record)}). A student "
                   "learns only what its teacher knows.")
render_live(job)
