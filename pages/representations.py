"""Representations: layer × layer CKA between a stored teacher and student (methods.md#cka), as a background job, with
a 95% interval for every cell."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from dfkd_core.analysis import KERNELS, CKAResult, layer_names  # noqa: E402
from dfkd_core.analysis.labels import student_label, teacher_label  # noqa: E402
from dfkd_core.analysis.checks import require_comparable, sample_count_note  # noqa: E402
from dfkd_core.analysis.cka_matrix import FULL_MAX_SAMPLES  # noqa: E402
from dfkd_core.analysis.jobs import CKAAnalysis, CKAConfig, available_inputs, load_inputs  # noqa: E402
from dfkd_core.data import DatasetMissingError  # noqa: E402
from dfkd_core.models import CheckpointError  # noqa: E402
from dfkd_core.models.reference import is_untrained  # noqa: E402
from dfkd_core.plots.representations import cka_heatmap_figure, cka_interval_figure  # noqa: E402
from dfkd_core.stats import Interval  # noqa: E402
from pages.views.analysis_view import (  # noqa: E402
    analysis_job, incomparable, input_choices, model_choices, sample_slider, show_progress, stored_analyses,
    untrained_choice)
from pages.views.common import (  # noqa: E402
    START_ERRORS, data_root_setting, fresh_model, get_store, keep_widget_state, open_checkpoint, open_model,
    require_job_slot, start_stop_buttons, submit, teacher_or_stop)
from pages.views.labels import describe_run  # noqa: E402
from pages.views.methods_doc import section_link  # noqa: E402
CKA = section_link("cka")


KERNEL_NAMES = {"linear": "linear", "rbf": "RBF", "debiased": "linear, debiased", "debiased_rbf": "RBF, debiased"}


def start(teacher_run: str, student_ref: str, config: CKAConfig) -> CKAAnalysis:
    config.validate()
    teacher = open_checkpoint(teacher_run)
    require_comparable(teacher, open_model(student_ref, teacher_run), "this student")
    require_job_slot()
    inputs = load_inputs(config.inputs, teacher.dataset, config.samples, config.seed, get_store(), config.data_root)
    student = student_label(get_store(), student_ref, open_model(student_ref, teacher_run))
    # No kernel in the name: the minibatch estimator may answer another quantity (the summary keeps it).
    run = get_store().create("analysis", config.to_dict(), teacher=teacher_run, method="cka",
                             dataset=teacher.dataset.name,
                             name=f"CKA {teacher_label(get_store(), teacher)} vs {student} ({config.inputs})")
    return submit(lambda: CKAAnalysis(fresh_model(teacher_run), fresh_model(student_ref, teacher_run), inputs.images,
                                      config, run,
                                      samples_note=inputs.note), run, label="CKA")


def start_reference(config: dict, reference: str) -> None:
    """The opened comparison again with the untrained reference as the student (every layer of it)."""
    try:
        start(config["teacher"], reference, CKAConfig.from_dict({**config, "student": reference,
                                                                  "layers_student": []}))
    except START_ERRORS as e:
        st.session_state["cka_reference_error"] = str(e)


def reference_note(config: dict, stored: dict) -> str | None:
    """The untrained reference to read a trained student's CKA against: its layer-i-vs-layer-i values from the
    newest stored comparison with the same teacher, kernel and images; None when there is none."""
    configs = {i: get_store().get(i).config() for i, r in stored.items() if r.status == "done"}
    same = [(stored[i], c) for i, c in configs.items() if is_untrained(c.get("student", ""))
            and all(c.get(k) == config.get(k) for k in ("teacher", "kernel", "inputs", "reduce"))]
    if not same:
        return None
    record, reference = same[0]
    diagonal = record.summary.get("cka_diagonal") or {}
    values = ", ".join(f"{pair.split(' | ')[0]} {Interval.from_dict(v).format('.3f')}" for pair, v in diagonal.items())
    return (f"Untrained reference ({reference['student'].split(':', 1)[1]}, same teacher, kernel and images, "
            f"{record.id}): layer i vs layer i {values}. What the student scores above these, training explains. "
            "It is one untrained draw (seed 0): other seeds move it, by up to about 0.2 in the middle layers of the "
            "Fashion-MNIST networks measured.")


@st.cache_data(show_spinner=False, max_entries=32)
def available(teacher_run: str, source: str, data_root: str | None) -> tuple[int, str]:
    """(images in the chosen source, its description), for saying before the run how many will be used."""
    return available_inputs(source, open_checkpoint(teacher_run).dataset, get_store(), data_root)


def render_progress(job: CKAAnalysis) -> None:
    samples = job.history[-1]["samples"] if job.history else 0
    st.progress(job.step_index / max(job.total_steps, 1), text=f"**{job.status}** · {samples} images so far")
    if job.status == "failed":
        st.error(job.error)


st.title("Representations")
st.caption(r"Do teacher and student represent the same images alike? Linear CKA of centered features $X$ "
           r"(teacher layer, $n\times p_1$) and $Y$ (student layer): $\mathrm{CKA}=\lVert Y^\top X\rVert_F^2/"
           r"(\lVert X^\top X\rVert_F\,\lVert Y^\top Y\rVert_F)$, 1 = the same up to rotation and scale. The RBF "
           r"kernel $k(x,x')=\exp(-\lVert x-x'\rVert^2/(2\,t^2\,m))$ takes $m$ = the median of all $n^2$ squared "
           r"distances, diagonal included, exactly as Kornblith et al.'s reference code, with threshold $t$; "
           r"'debiased' replaces HSIC by its unbiased estimator. Every cell carries a 95% interval from random "
           r"halves of the images (how far it moves with the draw of images). IE-KD students are expected to "
           r"score *lower* than plain KD students at their split layer ([Methods: IE-KD](/methods#ie-kd)).")
keep_widget_state("cka_teacher", "cka_student", "cka_kernel", "cka_threshold", "cka_inputs", "cka_samples",
                  "cka_reduce", "cka_open")
job = analysis_job(CKAAnalysis, open_key="cka_open")
running = job is not None and job.running

with st.sidebar:
    st.subheader("New comparison")
    teacher_run = teacher_or_stop("cka_teacher", disabled=running)
    teacher = open_checkpoint(teacher_run)
    dataset = teacher.dataset
    choices, compact = model_choices(dataset.name, exclude=teacher_run, teacher=teacher)
    if not choices:
        st.info(f"No other {dataset.name} model is stored: distill a student first (Distill page, or `dfkd distill`).")
        st.stop()
    student_ref = st.selectbox("Student", list(choices), format_func=compact.get, key="cka_student",
                               disabled=running)
    st.caption(choices[student_ref])
    kernel = st.radio("Kernel", KERNELS, format_func=KERNEL_NAMES.get, key="cka_kernel", horizontal=True,
                      disabled=running, help="Linear CKA, RBF CKA as in Kornblith et al.'s code, or the debiased "
                      "(unbiased HSIC) estimator. " + CKA)
    threshold = st.select_slider("RBF threshold", [0.2, 0.5, 1.0, 2.0], 1.0, key="cka_threshold",
                                 disabled=running or "rbf" not in kernel,
                                 help="The RBF bandwidth is threshold × the median distance. " + CKA)
    inputs = input_choices(dataset.name, teacher_run)
    source = st.selectbox("Images", list(inputs), format_func=inputs.get, key="cka_inputs", disabled=running,
                          help="The inputs both models' features are taken on. " + CKA)
    data_root = data_root_setting(dataset.name)
    try:
        count, where = available(teacher_run, source, data_root)
        unusable = None
    except (DatasetMissingError, FileNotFoundError, KeyError, ValueError) as e:
        count, unusable = None, e
    samples = sample_slider("How many", [100, 250, 500, 1000, 2000, 5000], 1000, count, key="cka_samples",
                            disabled=running, help="Inputs n; the intervals come from random halves of them. " + CKA)
    reduce = st.radio("Feature maps", ["flatten", "mean"], key="cka_reduce", horizontal=True, disabled=running,
                      help="flatten: every unit (c, h, w) is a feature; mean: one feature per channel. " + CKA)
    refused = incomparable(teacher, {student_ref: open_model(student_ref, teacher_run)}, choices)
    if refused:
        st.error(refused)
    else:
        if unusable is not None:
            st.error(f"Cannot use these images: {unusable}")
        else:
            note = sample_count_note(samples, count, where)
            if note:
                st.warning(f"{note}.")
            if min(samples, count) > FULL_MAX_SAMPLES:
                st.caption(f"Above {FULL_MAX_SAMPLES:,} images the exact n×n estimator does not fit: linear CKA is "
                           "streamed exactly when its features allow; otherwise the minibatch estimator runs and "
                           "the result is named for what it estimates (debiased CKA).")
    with st.expander("Layers (default: every block and the logits)"):
        layers_t = st.multiselect("Teacher layers", layer_names(teacher.model), disabled=running,
                                  key=f"cka_layers_t_{teacher_run}")
        layers_s = st.multiselect("Student layers", layer_names(open_model(student_ref, teacher_run).model),
                                  disabled=running, key=f"cka_layers_s_{student_ref}")
    config = CKAConfig(teacher=teacher_run, student=student_ref, kernel=kernel, threshold=threshold,
                       layers_teacher=layers_t, layers_student=layers_s, inputs=source, samples=samples,
                       reduce=reduce, data_root=data_root)
    start_stop_buttons(job, lambda: start(teacher_run, student_ref, config), label="Compute CKA",
                       errors=(*START_ERRORS, KeyError), slots=st.columns(2))   # KeyError: a deleted input run
show_progress(job, render_progress)

stored = stored_analyses("cka", "cka.json", dataset.name)
if not stored:
    st.info("Pick a student, the kernel and the images in the sidebar and press **Compute CKA**.")
    st.stop()
if st.session_state.get("cka_open") not in stored:
    st.session_state["cka_open"] = next(iter(stored))
opened = st.selectbox("Comparison", list(stored), key="cka_open",
                      format_func=lambda i: " · ".join(filter(None, (describe_run(stored[i]),
                                                                     stored[i].summary.get("quantity"),
                                                                     stored[i].status))))
record = stored[opened]
saved = get_store().get(opened).load_json("cka.json")
result = CKAResult.from_dict(saved)
if result.note:
    st.warning(f"Estimator: {result.note}.")
if saved.get("samples_note"):
    st.warning(f"{saved['samples_note']}.")
st.plotly_chart(cka_heatmap_figure(result), key="cka_heatmap")
summary = record.summary
opened_config = get_store().get(opened).config()
student_run = opened_config.get("student", "")
try:   # the run's own name did not say which student until 2026-12-07
    compared = (f"{teacher_label(get_store(), open_checkpoint(opened_config['teacher']))} vs "
                f"{student_label(get_store(), student_run, open_model(student_run, opened_config['teacher']))}")
except (KeyError, FileNotFoundError, CheckpointError):   # a deleted run or a moved file
    compared = f"vs {student_run or '?'}"
facts = [f"**{compared}**", result.quantity, f"{result.samples} images ({summary.get('inputs', '?')})",
         f"features: {result.reduce}", f"{result.estimator} estimator"]
if summary.get("cka_diagonal"):   # each pair with its interval: a bare mean over them would carry none
    facts.append("layer i vs layer i, 95% intervals: " + ", ".join(
        f"{pair.split(' | ')[0]} {Interval.from_dict(value).format('.3f')}"
        for pair, value in summary["cka_diagonal"].items()))
if summary.get("partial"):
    facts.append("**partial: stopped early**")
st.caption(" · ".join(facts))
if not is_untrained(student_run):
    note = reference_note(opened_config, stored)
    if note is not None:
        st.caption(note)
    else:
        reference = untrained_choice(open_checkpoint(opened_config["teacher"]))
        text, button = st.columns([3, 2], vertical_alignment="center")   # the label whole at 1280 px
        text.caption("Read it against a network that never trained: the first layers of almost any network score "
                     f"high on the same pixels. **{reference.replace(':', ' ', 1)}** (initialised, never trained) "
                     "with these settings gives the floor.")
        button.button("Compute the untrained reference", key="cka_reference", disabled=running,
                      on_click=start_reference, args=(opened_config, reference))
        if "cka_reference_error" in st.session_state:
            st.error(st.session_state.pop("cka_reference_error"))
if result.low is not None:
    st.plotly_chart(cka_interval_figure(result), key="cka_intervals")
else:
    st.caption("This comparison was computed before CKA carried intervals: recompute it for error bars.")
try:
    split = get_store().get_record(student_run).summary.get("layer_student")
except KeyError:   # a peer B checkpoint path, or a deleted run
    split = None
if split in result.layers_student:
    st.caption(f"This student was trained with IE-KD/IE-DML: its split layer is **{split}** (CKA with the "
               f"teacher's layers, 95% interval: " + ", ".join(f"{t} {result.interval(t, split).format()}" for t in
                                                               result.layers_teacher) + ").")
