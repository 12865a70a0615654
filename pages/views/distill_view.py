"""The Distill page's settings: the method's main weights (one line each, methods.md#model-inversion to
#knowledge-distillation), recipes, a `DistillConfig` built from them, and starting a `DistillJob` through the job
manager. Its live view is distill_live.py, the result table results_view.py; `pages/distill.py` lays them out; the
algorithm is dfkd_core.distill's."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import streamlit as st

from dfkd_core.data import load_split
from dfkd_core.device import cpu_computes_bf16
from dfkd_core.distill import DISTILL_METHODS, DistillConfig, DistillJob
from dfkd_core.distill.config import default_student_of
from dfkd_core.distill.estimate import FINISHED, planned_time
from dfkd_core.distill.fast import FastMetaKD
from dfkd_core.distill.generator_kd import GeneratorKD
from dfkd_core.distill.inversion_kd import PoolKD
from dfkd_core.distill.methods import RealOrPoolMethod
from dfkd_core.distill.recipes import RECIPES, adapt_to_precision, default_recipe, float32_settings, recipes_for
from dfkd_core.launch import LaunchedDistillJob
from dfkd_core.runs import RunRecord
from dfkd_core.synthesis import SynthesisConfig
from pages.views.common import (
    SNAPSHOT_SECONDS, fresh_model, get_store, open_checkpoint, require_job_slot,
    submit)
from pages.views.labels import PARTIAL_STATUSES, describe_run, live_edits, run_name
from pages.views.methods_doc import section_link
from pages.views.synthesis_view import ALPHAS

CURVE_POINTS = 40                          # about this many held-out evaluations per run (sets eval_every)
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class Weight:
    """One setting of the page: where it goes in DistillConfig, when it applies, and its line of METHODS."""

    name: str
    label: str
    explanation: str
    applies: Callable[[type], bool]
    target: str = "config"         # "config" | "synthesis" (SynthesisConfig override) | "option" (method Options)
    options: tuple = ()            # select_slider values; () = a number input
    minimum: int = 0

    @property
    def section(self) -> str:
        """The section of docs/methods.md its help links to."""
        if self.target == "synthesis" or self.name in ("images", "kd_steps_per_round"):
            return "model-inversion"
        return "generator" if self.name in ("generator_steps", "lambda_bn") else "knowledge-distillation"


def _pool(cls) -> bool:
    return issubclass(cls, PoolKD)


def _makes_pool(cls) -> bool:
    """Methods that build a pool round by round (inversion rounds, or fast's generator rounds)."""
    return issubclass(cls, (PoolKD, FastMetaKD))


WEIGHTS = (
    Weight("images", "images N", r"Images synthesized in total, one batch per round.", _makes_pool,
           minimum=1),
    # No symbol here: this sidebar's T is the temperature (docs/methods.md calls the iterations N_it).
    Weight("iterations", "inversion iterations", r"Adam steps on each batch $\hat x\sim\mathcal N(0,1)$.", _pool,
           "synthesis", minimum=1),
    Weight("inv_lr", "inversion learning rate η", r"Adam on $\hat x$, cosine decay over the iterations.", _pool,
           "synthesis", (0.01, 0.03, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5)),
    Weight("batch_size_inv", "inversion batch B", r"Images per round; with $\alpha_f > 0$ the BN statistics are "
           r"matched over the batch.",
           _pool, "synthesis", minimum=1),
    Weight("alpha_f", "α_f · BN feature statistics", r"$\alpha_f R_{feature}$: match the teacher's BN running "
           r"statistics (0 = DeepDream, image priors only).", lambda c: _pool(c) and c.name != "deepdream",
           "synthesis", ALPHAS),
    Weight("alpha_tv", "α_tv · total variation", r"$\alpha_{tv} R_{TV}$: smoothness prior on $\hat x$. DeepDream's "
           r"only hold on its images besides $\alpha_{l2}$; too large and its images fade to grey.", _pool,
           "synthesis", ALPHAS),
    Weight("alpha_c", "α_c · competition", r"$\alpha_c(1-\mathrm{JS}(p_T,p_S))$: seek images where the current "
           r"student disagrees with the teacher (Adaptive DI).", lambda c: c.name == "adi", "synthesis", ALPHAS),
    Weight("kd_steps_per_round", "KD steps per round", r"Student steps on the pool so far after each batch (the "
           r"ADI loop); the rest come after synthesis.", _makes_pool),
    Weight("trajectory_kd_from", "trajectory KD from iteration k", r"From inversion iteration $k$ on, each "
           r"half-formed batch is also a KD batch ($-1$ = off).", _pool, "option", minimum=-1),
    Weight("generator_steps", "generator steps", r"Steps training $G(z|y)$ against the frozen teacher "
           r"($L_G$) before the student learns.", lambda c: issubclass(c, GeneratorKD)),
    Weight("lambda_bn", "λ_bn · BN moment matching", r"$\lambda_{bn}$ in $L_G$: the generated batch's BN "
           r"statistics against the teacher's running ones.", lambda c: issubclass(c, GeneratorKD), options=ALPHAS),
    Weight("steps", "KD steps after synthesis", r"Student steps once the images exist; the progress bar counts "
           r"these plus any taken during synthesis (after each round, on half-formed batches).", lambda c: True),
    Weight("batch_size", "student batch", r"Images per KD step.", lambda c: True, minimum=1),
    Weight("lr", "student learning rate", f"AdamW (weight decay {DistillConfig.weight_decay:g}), cosine decay over "
           "all student steps.", lambda c: True, options=LRS),
    Weight("mixup", "mixup share", r"Share of each KD batch replaced by $\lambda x_i+(1-\lambda)x_j$, "
           r"$\lambda\sim U(0,1)$, labelled by the teacher: fills the space between pool images; pays off with a "
           r"long KD (`fashion-best`: 0.5, 8,000 steps).", lambda c: issubclass(c, (PoolKD, GeneratorKD, FastMetaKD)),
           options=(0.0, 0.25, 0.5, 0.75, 1.0)),
    Weight("cutmix", "cutmix share", r"Share of each KD batch (not the mixed images; at most $1-$ mixup share) "
           r"given a box of another image, labelled by the teacher (CutMix without labels): a part of one image "
           r"on another, such as a sleeve on another garment's body.",
           lambda c: issubclass(c, (PoolKD, GeneratorKD, FastMetaKD)), options=(0.0, 0.25, 0.5, 0.75, 1.0)),
    Weight("teacher_echo", "teacher echo K", r"Student steps per teacher-labelled batch: the teacher labels every "
           r"$K$-th augmented batch and each step draws from the last $K$ labelled ones (data echoing), so a KD "
           r"step costs about half as much teacher time at $K=2$; spend it on more steps.",
           lambda c: c.echoes_teacher, options=(1, 2, 3, 4)),
    Weight("temperature", "temperature T", r"$T^2\,\mathrm{KL}(p_T^{(T)}\|\,p_S^{(T)})$ with "
           r"$p^{(T)}=\mathrm{softmax}(z/T)$: larger $T$ shows the student more of the teacher's dark knowledge.",
           lambda c: True,
           options=(1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 20.0)),
)
WEIGHT = {w.name: w for w in WEIGHTS}
SYNTHESIS_FIELD = {"iterations": "iterations", "inv_lr": "lr", "batch_size_inv": "batch_size", "alpha_f": "alpha_f",
                   "alpha_tv": "alpha_tv", "alpha_c": "alpha_c"}


def weight_key(name: str) -> str:
    return f"distill_{name}"


def ordered_methods(has_batchnorm: bool = True) -> list[str]:
    """Every registered method, data-free ones first (registry order otherwise); for a teacher without BatchNorm,
    not those whose defaults match its BN statistics (they were offered, then refused after Start)."""
    return sorted((m for m in DISTILL_METHODS if has_batchnorm or not DISTILL_METHODS[m].needs_batchnorm),
                  key=lambda m: not DISTILL_METHODS[m].data_free)


def method_label(name: str) -> str:
    return name if DISTILL_METHODS[name].data_free else f"{name} (uses real data)"


NO_RECIPE = ""   # the recipe option meaning: the library's defaults and the method's synthesis preset only
AUTO_RECIPE = "auto"


def defaults(method: str, dataset: str, recipe: str | None = AUTO_RECIPE) -> dict:
    """Every weight's value: DistillConfig's defaults and the method's synthesis preset for this dataset, then a
    measured recipe (dfkd_core/distill/recipes.py, the settings behind the README's tables) on top: `recipe`, or
    by default the one the app prefers for this dataset and method; NO_RECIPE/None for none."""
    if recipe == AUTO_RECIPE:
        recipe = default_recipe(dataset, method)
    config = DistillConfig()
    values = {w.name: getattr(config, w.name) for w in WEIGHTS if w.target == "config"}
    preset = "deepinversion" if method not in ("deepdream", "adi") else method
    synthesis = SynthesisConfig.preset(preset, dataset)
    values.update({name: getattr(synthesis, field) for name, field in SYNTHESIS_FIELD.items()})
    values["trajectory_kd_from"] = -1
    values["cpu_bf16"] = config.cpu_bf16
    if recipe:
        values.update(weights_of(DistillConfig(method=method, **recipe_values(recipe, method)[0])))
    return values


def recipe_values(recipe: str, method: str) -> tuple[dict, dict]:
    """The recipe's settings as a run on this machine computes them (its float32 settings on a CPU without bf16),
    and the settings that changed for that."""
    return adapt_to_precision(recipe, method, {})


def recipe_widget(dataset: str, method: str, disabled: bool) -> str:
    """The measured recipes of this dataset for this method (the robust one first), or none; NO_RECIPE if none
    exists. Choosing one sets every weight below to it."""
    recipes = recipes_for(dataset, method)
    if not recipes:
        st.caption(f"No recipe was measured for {method} on {dataset}: the weights start at the method's "
                   "defaults.")
        return NO_RECIPE
    if st.session_state.get("distill_recipe") not in (*recipes, NO_RECIPE):
        st.session_state["distill_recipe"] = recipes[0]
    recipe = st.selectbox("Recipe", [*recipes, NO_RECIPE], key="distill_recipe", disabled=disabled,
                          format_func=lambda r: r or "none: the method's defaults",
                          help="Measured settings (README results; `dfkd distill --recipe`). Choosing one sets "
                               "every weight below; a weight you then move wins.")
    if recipe:
        adjusted = recipe_values(recipe, method)[1]
        st.caption(RECIPES[recipe]["description"] + (f". This CPU computes float32, so: {float32_settings(adjusted)}"
                                                      if adjusted else ""))
    return recipe


def _snap(weight: Weight, value):
    if not weight.options or value in weight.options:
        return value
    return min(weight.options, key=lambda o: abs(math.log(float(o) + 1e-9) - math.log(float(value) + 1e-9)))


def set_weights(values: Mapping) -> None:
    for name, value in values.items():
        if name in WEIGHT:
            st.session_state[weight_key(name)] = _snap(WEIGHT[name], value)
        elif name == "cpu_bf16":
            st.session_state[weight_key(name)] = bool(value)


def weights_of(config: DistillConfig) -> dict:
    """The page's weights as a stored config has them (a reload of a running job shows its settings)."""
    values = {w.name: getattr(config, w.name) for w in WEIGHTS if w.target == "config"}
    values.update({name: config.synthesis[field] for name, field in SYNTHESIS_FIELD.items()
                   if field in config.synthesis})
    values.update({k: v for k, v in config.options.items() if k in WEIGHT})
    values["cpu_bf16"] = config.cpu_bf16
    return values


def cpu_bf16_widget(disabled: bool) -> None:
    """Whether KD and inversion run in bfloat16 on this CPU (a config's cpu_bf16; a recipe may set it)."""
    native = cpu_computes_bf16()
    # Disabled without native bf16, but a recipe may still ask for it: the label says what runs.
    st.checkbox("bfloat16 on this CPU" + ("" if native else " (none here: float32)"), key=weight_key("cpu_bf16"),
                disabled=disabled or not native,
                help="KD and inversion in bfloat16 autocast, on a CPU that computes it natively (AVX512-BF16 or "
                     "AMX): KD steps about 1.5x faster on the AMD EPYC measured, but 0.79x on an Intel Xeon whose "
                     "flags also say AVX512-BF16 (`benchmarks/cpu_paths.py --switch precision` measures yours); "
                     "numbers differ by rounding (a student measured 0.4 points lower, docs/results.md). On a GPU the "
                     "run uses bfloat16 autocast anyway."
                     + ("" if native else " This CPU has no native bf16, so runs stay float32."))


def weight_widget(name: str, disabled: bool) -> None:
    w = WEIGHT[name]
    key = weight_key(name)
    help = section_link(w.section)
    if w.options:
        st.select_slider(w.label, w.options, key=key, disabled=disabled, format_func=lambda v: f"{v:g}", help=help)
    else:
        st.number_input(w.label, min_value=w.minimum, step=1, key=key, disabled=disabled, help=help)
    st.caption(w.explanation)


def extra_option_widgets(method: str, disabled: bool) -> dict:
    """The method's own settings (its Options dataclass) that have no weight above, typed by their defaults."""
    fields = [f for f in dataclasses.fields(DISTILL_METHODS[method].Options) if f.name not in WEIGHT
              and isinstance(f.default, (bool, int, float, str))]
    if not fields:
        return {}
    values = {}
    with st.expander(f"More {method} options"):
        for f in fields:
            key = f"distill_opt_{method}_{f.name}"
            if isinstance(f.default, bool):
                values[f.name] = st.toggle(f.name, value=f.default, key=key, disabled=disabled)
            elif isinstance(f.default, (int, float)):
                values[f.name] = st.number_input(f.name, value=f.default, key=key, disabled=disabled,
                                                 step=1 if isinstance(f.default, int) else None, format=None
                                                 if isinstance(f.default, int) else "%g")
            else:
                values[f.name] = st.text_input(f.name, value=f.default, key=key, disabled=disabled)
    return {k: v for k, v in values.items() if v != next(f.default for f in fields if f.name == k)}


def config_from_widgets(method: str, student: str, pool_run: str | None, extra_options: Mapping,
                        data_root: str | None = None) -> DistillConfig:
    cls = DISTILL_METHODS[method]
    shown = [w for w in WEIGHTS if w.applies(cls)]
    fallback = defaults(method, "digits")
    value = {w.name: st.session_state.get(weight_key(w.name), fallback[w.name]) for w in shown}
    synthesis = {SYNTHESIS_FIELD[w.name]: value[w.name] for w in shown if w.target == "synthesis"}
    option_defaults = {f.name: f.default for f in dataclasses.fields(cls.Options)}
    options = {**extra_options, **{w.name: value[w.name] for w in shown if w.target == "option"
                                   and value[w.name] != option_defaults.get(w.name)}}
    cpu_bf16 = bool(st.session_state.get(weight_key("cpu_bf16"), fallback["cpu_bf16"]))
    config = DistillConfig(method=method, student=student, pool=pool_run, synthesis=synthesis, options=options,
                           data_root=data_root, cpu_bf16=cpu_bf16,
                           **{w.name: value[w.name] for w in shown if w.target == "config"})
    config.validate()
    return config


def processes_widget(method: str, disabled: bool) -> int:
    """How many local processes run the job (torchrun, DDP); 1 = this process, live images included."""
    if not DISTILL_METHODS[method].multi_process:
        st.caption("Runs in one process (its epochs and extra modules are written for one).")
        return 1
    return int(st.number_input(
        "processes", min_value=1, max_value=max(1, os.cpu_count() or 1), value=1, step=1, key="distill_processes",
        disabled=disabled, help="More than 1: torchrun starts that many processes on this machine; each inverts "
        "its share of the rounds and the student trains with DistributedDataParallel (the batch is split over "
        "them). The pool is the same whatever the number; rounds with KD during synthesis need 1. "
        + section_link("scaling-out")))


def student_choices(teacher_run: str) -> tuple[list[str], str]:
    """(every registered model, the default: the teacher's half-width student or else the teacher's own model)."""
    from dfkd_core.models import list_models
    teacher = open_checkpoint(teacher_run)
    try:
        default = default_student_of(teacher)
    except ValueError:
        default = teacher.name
    return list_models(from_scratch=True), default


def pool_runs(dataset: str) -> list[RunRecord]:
    """Stored runs whose synthesized images can be reused (synthesis or distillation runs with an images.pt)."""
    return [r for r in get_store().list() if r.kind in ("synthesis", "distill") and r.dataset == dataset
            and r.status in ("done", "cancelled") and (r.dir / "images.pt").is_file()]


def uses_pool(method: str) -> bool:
    """Pool methods skip synthesis with a reused pool; real-data-or-pool methods (IE-KD, BSS) learn from it."""
    return issubclass(DISTILL_METHODS[method], (PoolKD, RealOrPoolMethod))


def planned_time_text(teacher_run: str, config: DistillConfig, processes: int) -> str | None:
    """The run these settings make, in steps and, where this teacher has a finished run with the same step
    settings, in minutes at that run's pace; None while the settings cannot make a job (Start says why)."""
    store = get_store()
    finished = tuple(r.id for r in store.list(kind="distill") if r.teacher == teacher_run and r.status in FINISHED)
    return _planned_time_text(teacher_run, json.dumps(config.to_dict(), sort_keys=True), processes, finished)


@st.cache_data(show_spinner=False, max_entries=64)
def _planned_time_text(teacher_run: str, config_json: str, processes: int, finished: tuple[str, ...]) -> str | None:
    config = DistillConfig(**json.loads(config_json))
    try:
        if config.pool:
            config.pool = str(get_store().resolve_checkpoint(config.pool, "images.pt"))
        job = DistillJob(dataclasses.replace(open_checkpoint(teacher_run), model=fresh_model(teacher_run)), config)
    except Exception:   # noqa: BLE001 (any refusal is Start's to explain, in its own words)
        return None
    return planned_time(job, get_store(), teacher_run, processes).describe()


def start_distillation(teacher_run: str, config: DistillConfig, processes: int = 1) -> DistillJob:
    """Check everything that can be checked here, create the distill run and submit its job. Raises ValueError,
    FileNotFoundError (a missing dataset or pool, with the install hint) or JobLimitError with a message.
    `processes` > 1: the job runs in that many torchrun processes on this machine (dfkd_core/launch.py)."""
    require_job_slot()
    store, checkpoint = get_store(), open_checkpoint(teacher_run)
    info = checkpoint.dataset
    load_split(info.name, "test", config.data_root, info.image_size)  # real test set: evaluation
    if config.pool:
        config.pool = str(store.resolve_checkpoint(config.pool, "images.pt"))
    teacher = dataclasses.replace(checkpoint, model=fresh_model(teacher_run))
    if processes > 1:   # the same checks and plan as a job of this process, for N processes
        job = LaunchedDistillJob(teacher, config, processes, store)
    else:
        job = DistillJob(teacher, config)   # loads config.pool
    job.config.eval_every = max(1, round(job.method.student_steps() / CURVE_POINTS))
    where = f" · {processes} processes" if processes > 1 else ""
    run = store.create("distill", {**job.config.to_dict(), "teacher": checkpoint.path, "processes": processes},
                       teacher=teacher_run, method=config.method, dataset=info.name,
                       name=f"{job.title()}{where} · {time.strftime('%H:%M')} (app)")
    job.run_record = run
    return submit(job, run, label=f"{config.method} distillation on {info.name}", snapshot_interval_s=SNAPSHOT_SECONDS)


# ------------------------------------------------------------------ pools

def pool_size(record: RunRecord) -> int | None:
    s = record.summary
    images = s.get("pool_size", s.get("images_synthesized", s.get("images")))
    return images if isinstance(images, int) else None


def describe_pool(record: RunRecord) -> str:
    """The run in full, its image count and, for a synthesis, how often the teacher calls its images their target
    class: a batch collapsed by a live change reads 11% there (at 0.98 confidence) beside 100% for a sound one."""
    agreement = record.summary.get("teacher_accuracy" if record.kind == "synthesis" else "pool_teacher_agreement")
    images = pool_size(record)
    text = describe_run(record) + (f" · {images:,} images" if images is not None else "")
    if isinstance(agreement, (int, float)):
        text += f" · the teacher calls {agreement:.0%} of them their target class"
    return text


def pool_labels(records: Sequence[RunRecord]) -> dict[str, str]:
    """{run id: label} for the pool box, what tells pools apart first, since the narrow box cuts the end: image
    count, the kind of run, stopped or changed live, the id's tail, then the name ('100 images · synthesis ·
    partial · changed live · 0659 · DeepInversion α_f=1 …')."""
    def label(r: RunRecord) -> str:
        size = pool_size(r)
        flags = ("partial" if r.status in PARTIAL_STATUSES else "", "changed live" if live_edits(r) else "")
        parts = [f"{size:,} images" if size is not None else "", r.kind, *flags, r.id.rsplit("-", 1)[-1],
                 run_name(r)]
        return " · ".join(p for p in parts if p)
    return {r.id: label(r) for r in records}


def pool_warning(record: RunRecord) -> str:
    """Why this pool may teach a student badly, in a sentence, or ''."""
    reasons = []
    if record.status in PARTIAL_STATUSES:
        reasons.append(f"its run was stopped ({record.status}) before its end")
    if edits := live_edits(record):
        reasons.append(f"its settings were changed while it ran ({edits}), so its name gives only the settings it "
                       "started with")
    agreement = record.summary.get("teacher_accuracy" if record.kind == "synthesis" else "pool_teacher_agreement")
    if isinstance(agreement, (int, float)) and agreement < 0.5:
        reasons.append(f"the teacher calls only {agreement:.0%} of its images their target class")
    return "; ".join(reasons)
