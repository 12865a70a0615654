"""The Applications page's parts: the settings of each application (methods.md#applications) as widgets, a config built
from them, starting its job through the job manager, its live progress, and a stored run's table and figures.
`pages/applications.py` lays them out; the algorithms are dfkd_core.applications'."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import streamlit as st

from dfkd_core.applications import (ContinualConfig, ContinualJob, PruningConfig, PruningJob, QuantizationConfig,
                                    QuantizationJob)
from dfkd_core.applications.common import RESULTS_FILE
from dfkd_core.applications.continual import default_feature_weight
from dfkd_core.applications.pruning import CRITERIA
from dfkd_core.applications.quantization import OBSERVERS, SOURCES
from dfkd_core.applications.report import TABLES
from dfkd_core.data import DATASETS, load_split
from dfkd_core.jobs import Job
from dfkd_core.models import list_models
from dfkd_core.plots.applications import (continual_per_class_figure, pruning_accuracy_figure,
                                          pruning_latency_figure, quantization_figure)
from dfkd_core.training import DEFAULT_TEACHER
from pages.views.common import (
    data_root_setting, fresh_model, get_store, live, open_checkpoint, require_job_slot, submit)
from pages.views.labels import describe_run
from pages.views.methods_doc import section_link

APPS = section_link("applications")   # every knob's help ends with the Methods section it belongs to
KINDS = {"prune": "Pruning", "quantize": "Quantization calibration", "continual": "Continual learning"}
NEW_POOL = ""   # the pool option meaning: synthesize new images
EXPLANATIONS = {
    "prune": r"Rank every conv filter on the teacher's synthesized images — BN scale $I_m=|\gamma_m|$ (network "
             r"slimming) or first-order Taylor $I_m=\overline{(\gamma_m\,\partial L/\partial\gamma_m+\beta_m\,"
             r"\partial L/\partial\beta_m)^2}$ (Molchanov et al.) — remove the least important until the target "
             r"share of FLOPs is left (smaller tensors, not masks), then fine-tune by KD from the unpruned teacher "
             r"on synthesized images (data-free) or on real ones (the reference).",
    "quantize": r"Post-training int8 quantization (torch.ao FX graph mode): the activation ranges (min/max, or "
                r"torch's histogram observer) come from calibration images — the teacher's synthesized images, real "
                r"ones, or $\mathcal N(0,1)$ noise. "
                r"BN-statistics-only recalibration re-estimates the fp32 teacher's BN running statistics on each "
                r"source, no weight changed: a source that matches the training statistics keeps the accuracy.",
    "continual": r"A model learns classes $0..k-1$, then the rest from real images of the new classes only. "
                  r"**naive** forgets; **replay** adds KD on images synthesized from the old model, "
                  r"$T^2\,\mathrm{KL}([p_{old}^{(T)}, 0]\,\|\,p^{(T)})$, and holds the penultimate features to the "
                  r"old model's on real and synthesized images, "
                  r"$\lambda_{feat}\,\sum\lVert f - f_{old}\rVert^2 / \sum\lVert f_{old}\rVert^2$ (without it the "
                  r"network learns *synthetic = old, real = new*); **joint** trains on every class's real images (the "
                  r"upper bound).",
}
# Synthesis sizes the page starts from: seconds on digits; on Fashion-MNIST the benchmark's pool size (1,000 images
# took 9 minutes with one thread on the loaded 2-core machine, so reuse a stored pool there). The CLI takes any.
SYNTHESIS_DEFAULTS = {"digits": {"images": 400, "iterations": 60}, "fashion-mnist": {"images": 1000, "iterations": 200}}


def key(name: str) -> str:
    return f"apps_{name}"


def pool_choices(dataset: str) -> dict[str, str]:
    """{'' : synthesize new, run id: label} of stored runs of `dataset` with synthesized images (images.pt)."""
    runs = [r for r in get_store().list() if r.dataset == dataset and r.status in ("done", "cancelled")
            and r.kind in ("synthesis", "distill", "prune", "quantize") and (r.dir / "images.pt").is_file()]
    return {NEW_POOL: "no: synthesize new images", **{r.id: describe_run(r) for r in runs}}


def synthesis_widgets(dataset: str, running: bool) -> dict:
    """How many images DeepInversion makes and in how many Adam iterations per batch."""
    defaults = SYNTHESIS_DEFAULTS.get(dataset, SYNTHESIS_DEFAULTS["fashion-mnist"])
    images = st.number_input("images to synthesize", 20, 20000, defaults["images"], step=100, key=key("images"),
                             disabled=running, help="DeepInversion images the application uses. " + APPS)
    iterations = st.number_input("inversion iterations", 1, 2000, defaults["iterations"], step=10,
                                 key=key("iterations"), disabled=running,
                                 help="Adam steps on each batch. " + section_link("model-inversion"))
    return {"images": int(images), "synthesis": {"iterations": int(iterations)}}


def pruning_widgets(running: bool) -> dict:
    criteria = st.multiselect("criteria", CRITERIA, list(CRITERIA), key=key("criteria"), disabled=running,
                              help="Filter importance: BN scale |γ| or first-order Taylor on synthesized images. "
                                   + APPS)
    keep = st.multiselect("FLOPs to keep", [0.9, 0.75, 0.5, 0.25, 0.1], [0.75, 0.5, 0.25], key=key("keep"),
                          format_func=lambda k: f"{k:.0%}", disabled=running,
                          help="Filters are removed until this share of the FLOPs is left. " + APPS)
    steps = st.number_input("fine-tune steps (KD)", 0, 20000, 300, step=50, key=key("finetune_steps"),
                            disabled=running, help="KD steps of the pruned model on the images. " + APPS)
    real = st.toggle("also fine-tune on real images (reference)", True, key=key("real_finetune"), disabled=running,
                     help="The real-data reference the synthetic fine-tuning is measured against. " + APPS)
    return {"criteria": list(criteria), "keep_flops": sorted(keep, reverse=True), "finetune_steps": int(steps),
            "real_finetune": real}


def quantization_widgets(running: bool) -> dict:
    sources = st.multiselect("calibration images", SOURCES, list(SOURCES), key=key("sources"), disabled=running,
                             help="What the activation ranges are calibrated on. " + APPS)
    count = st.number_input("images per source", 1, 10000, 512, step=64, key=key("calibration_images"),
                            disabled=running, help="Calibration images from each source. " + APPS)
    bits = st.select_slider("activation bits", list(range(2, 9)), 8, key=key("activation_bits"), disabled=running,
                            help="8: int8. Fewer levels for the activations make the calibrated range matter more. "
                                 + APPS)
    observer = st.radio("activation observer", OBSERVERS, key=key("observer"), horizontal=True, disabled=running,
                        help="minmax: the [min, max] of every activation over the calibration images, as ZeroQ and "
                             "The Knowledge Within calibrate. histogram: torch's backend default, which clips "
                             "outliers and so forgives almost any calibration images. " + APPS)
    bn = st.toggle("BN-statistics-only recalibration", True, key=key("bn_recalibration"), disabled=running,
                   help="Also re-estimate the fp32 model's BN running statistics on each source. " + APPS)
    return {"sources": list(sources), "calibration_images": int(count), "activation_bits": int(bits),
            "observer": observer, "bn_recalibration": bn}


def continual_widgets(running: bool) -> dict:
    datasets = [d for d in DATASETS if d in DEFAULT_TEACHER and d in ("digits", "fashion-mnist")]
    dataset = st.selectbox("dataset", datasets, key=key("dataset"), disabled=running,
                           help="Classes 0–4 first, then 5–9 with real data for the new classes only. " + APPS)
    models = list_models(from_scratch=True)
    model = st.selectbox("model", models, models.index(DEFAULT_TEACHER[dataset]), key=key(f"model_{dataset}"),
                         disabled=running, help="The network trained on the old classes and extended. " + APPS)
    old_steps = st.number_input("old model steps", 1, 20000, 600, step=100, key=key("old_steps"), disabled=running,
                                help="Training of the old model on classes 0–4. " + APPS)
    new_steps = st.number_input("steps per variant", 1, 20000, 600, step=100, key=key("new_steps"), disabled=running,
                                help="Steps of each way of adding classes 5–9 (naive, replay, joint). " + APPS)
    feature_weight = st.number_input(
        "λ_feat (replay's feature distillation)", 0.0, 1000.0, default_feature_weight(dataset, model),
        step=0.5, key=key(f"feature_weight_{dataset}_{model}"), disabled=running,
        help="Higher keeps more of the old classes and learns the new ones less; 0 = KD replay alone, which forgets "
             "the old classes on real images within one dataset. Starts from the value measured for this dataset and "
             "model. " + APPS)
    return {"dataset": dataset, "model": model, "old_steps": int(old_steps), "new_steps": int(new_steps),
            "feature_weight": float(feature_weight)}


def start_compression(kind: str, teacher_run: str, pool_run: str | None, values: Mapping) -> Job:
    """Check the settings, the data and the pool, create the run and submit its job. Raises ValueError,
    FileNotFoundError (a missing dataset or pool, with the install hint) or JobLimitError with a message."""
    require_job_slot()
    store, checkpoint = get_store(), open_checkpoint(teacher_run)
    info = checkpoint.dataset
    config_class, job_class = (PruningConfig, PruningJob) if kind == "prune" else (QuantizationConfig,
                                                                                  QuantizationJob)
    config = config_class(data_root=data_root_setting(info.name), **values)
    config.validate()
    load_split(info.name, "test", config.data_root, info.image_size)
    if pool_run:
        config.pool = str(store.resolve_checkpoint(pool_run, "images.pt"))
    job = job_class(dataclasses.replace(checkpoint, model=fresh_model(teacher_run)), config)
    run = store.create(kind, {**config.to_dict(), "teacher": checkpoint.path}, teacher=teacher_run, method=kind,
                       dataset=info.name, name=f"{KINDS[kind]}: {checkpoint.name} (app)")
    job.run_record = run
    return submit(job, run, label=f"{KINDS[kind]} of {checkpoint.name}")


def start_continual(values: Mapping) -> Job:
    require_job_slot()
    config = ContinualConfig(data_root=data_root_setting(values["dataset"]), **values)
    config.validate()
    load_split(config.dataset, "train", config.data_root)
    job = ContinualJob(config)
    run = get_store().create("continual", config.to_dict(), method="continual", dataset=config.dataset,
                             name=f"{KINDS['continual']}: {job.model_name} on {config.dataset} (app)")
    job.run_record = run
    return submit(job, run, label=f"continual learning on {config.dataset}")


def render_progress(job: Job) -> None:
    history = list(job.history)
    phase = history[-1].get("phase", "preparing") if history else "preparing"
    st.progress(min(1.0, len(history) / max(job.total_steps, 1)),
                text=f"**{job.status}** · {phase} · step {len(history)}/{job.total_steps}")
    if job.status == "failed":
        st.error(job.error)
    if job.rows:
        st.markdown(TABLES[job.kind](job.results(job.status)))


def render_live(job: Job | None) -> None:
    if job is not None and (job.running or job.status == "failed"):
        live(job, render_progress)


def stored_runs(kind: str, dataset: str | None) -> dict:
    """{run id: record} of this kind's runs (of `dataset`, when given) that saved results."""
    return {r.id: r for r in get_store().list(kind) if (dataset is None or r.dataset == dataset)
            and (r.dir / RESULTS_FILE).is_file()}


def render_results(results: Mapping, class_names: list[str]) -> None:
    """A stored run's notes, table (accuracies with 95% intervals, paired differences) and figures."""
    for note in results.get("notes", []):
        st.warning(note)
    rows = results["rows"]
    if not rows:   # a run stopped before its first network: the note says so; a table of headers says nothing
        return
    st.markdown(TABLES[results["kind"]](results))
    if results["kind"] == "prune":
        st.plotly_chart(pruning_accuracy_figure(rows), key="apps_prune_accuracy")
        st.plotly_chart(pruning_latency_figure(rows), key="apps_prune_latency")
    elif results["kind"] == "quantize":
        st.plotly_chart(quantization_figure(rows), key="apps_quantize")
    else:
        st.plotly_chart(continual_per_class_figure(rows, class_names), key="apps_continual")
