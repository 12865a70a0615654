"""The Synthesize page's parts: its knobs (one line of methods.md#model-inversion each), presets, starting a
ModelInversion job from the knobs, and the live view of a running job. `pages/synthesize.py` lays them out."""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import streamlit as st

from dfkd_core.distill.config import default_student_of
from dfkd_core.hooks import batchnorm_layers
from dfkd_core.models import create_model
from dfkd_core.plots import bn_statistics_figure, class_columns, image_grid_png, loss_curves_figure
from dfkd_core.plots.synthesis import describe_update
from dfkd_core.synthesis import DATASET_DEFAULTS, PRESETS, ModelInversion, SynthesisConfig
from dfkd_core.synthesis.diagnosis import persistent_note
from pages.views.common import (POLL_SECONDS, SNAPSHOT_SECONDS, fresh_model, get_store, live, open_checkpoint,
                                    require_job_slot, submit)
from pages.views.methods_doc import section_link

PRESET_NAMES = {"deepdream": "DeepDream", "deepinversion": "DeepInversion", "adi": "Adaptive DI"}
UNTRAINED = "untrained "  # student option prefix: a fresh model of the teacher's half-width student
ALPHAS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class Knob:
    name: str              # SynthesisConfig field ('pace' is the job manager's, not the method's)
    label: str
    explanation: str       # one line, LaTeX in $...$ (docs/methods.md, model inversion)
    options: tuple = ()    # select_slider values; () for a toggle
    live: bool = False     # may change while the job runs (job.update at the next step)
    fmt: str = "{:g}"


KNOBS = (
    Knob("alpha_ce", "α_ce · cross-entropy", r"$\alpha_{ce}\,\mathrm{CE}(T(\hat x), y)$: make $T$ classify each "
         r"image as its target $y$.", ALPHAS, live=True),
    Knob("alpha_tv", "α_tv · total variation", r"$\alpha_{tv} R_{TV}$, $R_{TV}=\sum_{d\in\{\to,\downarrow,\searrow,"
         r"\swarrow\}}\lVert \hat x_{+d}-\hat x\rVert_2$: smooth images (DeepDream prior).", ALPHAS, live=True),
    Knob("alpha_l2", "α_l2 · L2 prior", r"$\alpha_{l2}\lVert\hat x\rVert_2$ (mean per-image norm): small pixel "
         r"energy (DeepDream prior).", ALPHAS, live=True),
    Knob("alpha_f", "α_f · BN feature statistics", r"$\alpha_f\sum_l w_l(\lVert\mu_l(\hat x)-\hat\mu_l\rVert_2+"
         r"\lVert\sigma^2_l(\hat x)-\hat\sigma^2_l\rVert_2)$: match $T$'s BN running stats (DeepInversion).",
         ALPHAS, live=True),
    Knob("first_bn_multiplier", "w₁ · first-BN multiplier", r"$w_1$ in $R_{feature}$, other $w_l=1$: extra weight "
         r"on the BN layer closest to the pixels.", (1.0, 2.0, 5.0, 10.0, 20.0, 50.0), live=True),
    Knob("alpha_c", "α_c · competition", r"$\alpha_c\,(1-\mathrm{JS}(p_T,p_S))$ at $T=3$: seek images where teacher "
         r"and student disagree (Adaptive DI, needs a student).", ALPHAS, live=True),
    Knob("alpha_cr", "α_cr · contrastive diversity", r"$\alpha_{cr}R_{cr}$ (CMI): each image must be told apart from "
         r"the batch's others through a random crop of itself, which spreads a class's images.", ALPHAS),
    Knob("lr", "learning rate η", r"Adam$(\beta=(0.5,0.9))$ on $\hat x$, cosine decay "
         r"$\eta_t=\frac{\eta}{2}(1+\cos\frac{\pi t}{N_{it}})$.",
         (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5), live=True),
    Knob("jitter", "jitter J (pixels)", r"Each step roll $\hat x$ by up to $\pm J$ pixels: robust to shifts.",
         (0, 1, 2, 3, 4), live=True, fmt="{}"),
    Knob("flip", "random horizontal flip", r"Each step flip $\hat x$ with $p=0.5$ (off for digits: a mirrored digit "
         r"is not a digit).", live=True),
    Knob("pace", "pace (steps per second)", r"At most this many steps per second, to watch and steer; not part of "
         r"the method (∞ = as fast as possible).", (5, 10, 20, 30, 60, 0), live=True,
         fmt="{}"),
    Knob("batch_size", "batch B", r"$B$ images optimized together; BN statistics are taken over the batch.",
         (10, 20, 50, 100, 200, 400), fmt="{}"),
    Knob("iterations", "iterations", r"$N_{it}$ Adam steps on $\hat x$, which starts as $\mathcal N(0, 1)$ noise.",
         (50, 100, 200, 300, 500, 1000, 2000), fmt="{}"),
    Knob("multi_resolution_iterations", "half-resolution iterations k", r"First $k$ steps at half resolution, then "
         r"upsample and continue ($0$ = full resolution throughout).", (0, 25, 50, 100, 200), fmt="{}"),
    Knob("seed", "seed", r"Seeds $\hat x\sim\mathcal N(0,1)$ and the augmentations: same seed, same run.",
         tuple(range(10)), fmt="{}"),
)
KNOB = {k.name: k for k in KNOBS}
FIRST_SNAPSHOT_WAIT_S = 0.5
DEFAULT_PACE = 30  # a digits step takes ~10 ms: unpaced, 200 steps are over before anyone can steer them


def knob_key(name: str) -> str:
    return f"knob_{name}"


def _snap(knob: Knob, value):
    """The option closest to `value`, so any config value maps onto the slider."""
    if not knob.options or value in knob.options:
        return value
    return min(knob.options, key=lambda o: abs(float(o) - float(value)))


def set_knobs(values: dict) -> None:
    for name, value in values.items():
        if name in KNOB:
            st.session_state[knob_key(name)] = _snap(KNOB[name], value)


# Every setting some dataset's defaults set: a dataset without its own value takes the generic one, so a Fashion-MNIST
# teacher's lr 0.25 does not stay on the knobs when a digits teacher is picked.
DATASET_KEYS = tuple(sorted(set().union(*(set(d) for d in DATASET_DEFAULTS.values()))))


def apply_preset(method: str, dataset: str) -> None:
    """Set the weights exactly as PRESETS[method] and the dataset's settings (methods.md#model-inversion)."""
    config = SynthesisConfig.preset(method, dataset)
    set_knobs({k: getattr(config, k) for k in (*PRESETS[method], *DATASET_KEYS) if k in KNOB})


def preset_changes(method: str, dataset: str) -> str:
    """'α_f 1 → 0, α_tv 0.001 → 3': the knobs the preset sets that now differ from it ('' when none do), so the
    radio's method name is not taken for the weights a run will use."""
    config = SynthesisConfig.preset(method, dataset)
    changes = []
    for name in (*PRESETS[method], *(k for k in DATASET_KEYS if k in KNOB)):
        knob, preset = KNOB[name], _snap(KNOB[name], getattr(config, name))
        value = st.session_state.get(knob_key(name), preset)
        if value != preset:
            symbol = knob.label.split(" · ")[0].split(" (")[0]
            changes.append(f"{symbol} {knob.fmt.format(preset)} → {knob.fmt.format(value)}" if knob.options
                           else f"{symbol} {'on' if preset else 'off'} → {'on' if value else 'off'}")
    return ", ".join(changes)


def init_knobs(method: str, dataset: str) -> None:
    """First visit: every knob from `SynthesisConfig.preset(method, dataset)`, pace from DEFAULT_PACE."""
    config = SynthesisConfig.preset(method, dataset)
    set_knobs({k.name: getattr(config, k.name) for k in KNOBS if k.name != "pace"})
    st.session_state[knob_key("pace")] = DEFAULT_PACE


def knob_widget(name: str, running: bool, disabled: bool = False, on_live_change=None) -> None:
    knob = KNOB[name]
    key = knob_key(name)
    locked = disabled or (running and not knob.live)
    help = section_link("model-inversion")
    if knob.options:
        st.select_slider(knob.label, knob.options, key=key, disabled=locked, on_change=on_live_change,
                         args=(name,), format_func=lambda v: "∞" if name == "pace" and v == 0 else knob.fmt.format(v),
                         help=help)
    else:
        st.toggle(knob.label, key=key, disabled=locked, on_change=on_live_change, args=(name,), help=help)
    st.caption(knob.explanation)


def config_from_knobs(method: str, targets: list[int]) -> SynthesisConfig:
    values = {k.name: st.session_state[knob_key(k.name)] for k in KNOBS if k.name != "pace"}
    config = SynthesisConfig(method=method, targets=targets, snapshot_every=1, **values)
    config.validate()
    return config


def has_bn(teacher_run: str) -> bool:
    return bool(batchnorm_layers(open_checkpoint(teacher_run).model))


def student_options(teacher_run: str) -> list[str]:
    """A fresh half-width student first (ADI works from an untrained student, as in its ADI loop)."""
    try:
        return [UNTRAINED + default_student_of(open_checkpoint(teacher_run))]
    except ValueError:
        return []


def start_inversion(teacher_run: str, config: SynthesisConfig, student_choice: str | None, pace: float,
                    origin: str = "app") -> ModelInversion:
    """Create the synthesis run and submit its job; raises ValueError / JobLimitError with a message to show.
    `origin` ends the run's name ('app', 'compare A'...)."""
    require_job_slot()
    store, teacher = get_store(), open_checkpoint(teacher_run)
    student, student_name = None, None
    if config.alpha_c > 0 and student_choice:
        if student_choice.startswith(UNTRAINED):
            student_name = student_choice[len(UNTRAINED):]
            info = teacher.dataset
            student = create_model(student_name, info.num_classes, info.in_channels, info.image_size)
        else:
            student, student_name = fresh_model(student_choice), student_choice
    job = ModelInversion(fresh_model(teacher_run), teacher.dataset, config, student=student,   # validates first
                         teacher_test_accuracy=teacher.metrics.get("test_accuracy"))
    run = store.create("synthesis", {**config.to_dict(), "teacher": teacher.path, "student": student_name},
                       teacher=teacher_run, method=config.method, dataset=teacher.dataset.name,
                       name=f"{config.title()} · {teacher.name} · {time.strftime('%H:%M')} ({origin})")
    job.run_record = run
    submit(job, run, label=f"{PRESET_NAMES[config.method]} on {teacher.dataset.name}", steps_per_second=pace or None,
           snapshot_interval_s=SNAPSHOT_SECONDS)
    # The first snapshot is a step away (~0.1 s on digits): waiting briefly lets the page that follows the click
    # show the grid at once instead of one poll later.
    deadline = time.monotonic() + FIRST_SNAPSHOT_WAIT_S
    while job.latest_snapshot is None and job.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return job


def grid_png(job: ModelInversion, snap) -> bytes:
    """A snapshot as a labelled PNG, one target class per column (first 50 images)."""
    names = job.dataset.class_names or [str(i) for i in range(job.dataset.num_classes)]
    ncols, titles = class_columns(job.targets.tolist(), names)
    return image_grid_png(snap.images, snap.labels, ncols=ncols, max_rows=max(1, 50 // ncols),
                          column_titles=titles)


def cached(name: str, version: tuple, build):
    """The last value built for `name` if its data `version` is unchanged: a poll with no new step re-sends the
    same grid and figures instead of rebuilding them (the page polls faster than a Fashion-MNIST step)."""
    cache = st.session_state.setdefault("_live_cache", {})
    if name not in cache or cache[name][0] != version:
        cache[name] = (version, build())
    return cache[name][1]


def png_data_uri(png: bytes) -> str:
    """A live grid inline in the page: st.image of bytes serves them as a media file that the next poll replaces,
    and a browser still fetching the old one got a broken image (about one refresh in nine on 2 cores)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_progress_and_grid(job: ModelInversion) -> None:
    history = list(job.history)
    last = history[-1] if history else {}
    rate = len(history) / last["elapsed_s"] if last.get("elapsed_s") else 0.0
    # The first run after the app starts spends 2-3 s before its first step: "0.0 steps/s" read as stuck.
    pace = f"{rate:.1f} steps/s" if history or not job.running else "setting up the first step…"
    st.progress(len(history) / max(job.total_steps, 1),
                text=f"**{job.status}** · step {len(history)}/{job.total_steps} · {pace}")
    if job.status == "failed":
        st.error(job.error)
    cols = st.columns([1, 1, 1, 1.4])   # room for "BN distance", cut to "BN dista…" at 1280 px
    cols[0].metric("accuracy", f"{last['teacher_accuracy']:.0%}" if last else "–",
                   help="Teacher accuracy on the synthesized batch: argmax T(x̂) = y")
    cols[1].metric("confidence", f"{last['mean_confidence']:.2f}" if last else "–",
                   help="Mean over the batch of the teacher's top softmax probability")
    cols[2].metric("total loss", f"{last['loss_total']:.3g}" if last else "–", help="The weighted sum L(x̂)")
    cols[3].metric("BN distance", f"{last['bn_distance']:.3g}" if "bn_distance" in last else "–",
                   help="Σ_l (||μ_l − running μ_l||₂ + ||σ²_l − running σ²_l||₂), unweighted, of this step's "
                        "shifted and flipped view of the batch; the finished run's result (the Runs page) measures "
                        "the batch itself, so the two differ")
    diagnosis = None if job.running else (job.result or {}).get("diagnosis")   # the finished batch's own reading
    if warning := diagnosis or persistent_note(history):
        st.warning(warning)
    st.markdown("**Synthesized batch**: column = target class; under each image the teacher's prediction and "
                "confidence at this step, on the shifted and flipped view the loss saw (green = the target)")
    if job.latest_snapshot is not None:
        snap = job.latest_snapshot
        shown = f"first {min(50, len(snap.images))} of {len(snap.images)} images"
        st.image(cached("grid", (job.id, snap.step), lambda: png_data_uri(grid_png(job, snap))),
                 caption=f"step {snap.step + 1} · {shown}", output_format="PNG")
    else:
        st.info("Preparing the first step…")


def render_curves(job: ModelInversion) -> None:
    weighted = st.session_state.get("curves_weighted", False)
    st.markdown(f"**Loss terms** ({'each times its weight: what it adds to the total' if weighted else 'unweighted'})"
                " and teacher accuracy on the batch; grey dashed verticals: live changes")
    history, updates = list(job.history), list(job.updates)
    if not history and job.running:   # an empty chart read as a broken one for the first seconds
        st.caption("The curves start with the first step.")
        return
    figure = cached("curves", (job.id, len(history), len(updates), weighted),
                    lambda: loss_curves_figure(history, updates, weighted=weighted))
    st.plotly_chart(figure, key="live_curves")
    st.toggle("Weighted terms", key="curves_weighted", help="Each term times its weight at that step: which term "
              "drives the images (unweighted, R_TV reads 10²–10³ even where α_tv = 0.001 makes it negligible)")
    if late := (job.result or {}).get("late_updates"):
        st.caption(f"Not applied: {describe_update(late)} came after the run's last step began; the knobs keep it "
                   "for the next run.")


def render_bn(job: ModelInversion) -> None:
    stats, snap = job.latest_bn_statistics, job.latest_snapshot
    if stats and snap is not None:
        st.markdown("**BN statistics** per channel: the synthesized batch at this step, as R_feature saw it (blue), "
                    "against the teacher's running statistics (grey); d = the layer's R_feature term")
        figure = cached("bn", (job.id, snap.step), lambda: bn_statistics_figure(stats))
        st.plotly_chart(figure, key="live_bn")


def render_idle(teacher_run: str) -> None:
    """Before Start: what DeepInversion will match. (Drawing a chart now also loads the browser's plotting code
    before the run, instead of stalling the first live seconds.)"""
    layers = batchnorm_layers(open_checkpoint(teacher_run).model)
    if layers:
        st.markdown("**The teacher's BN running statistics**: what $R_{feature}$ pulls the synthesized batch to")
        st.plotly_chart(bn_statistics_figure([{"layer": name, "running_mean": m.running_mean,
                                               "running_var": m.running_var} for name, m in layers]),
                        key="idle_bn")


def render_live(job: ModelInversion | None) -> None:
    """The live view of a synthesis job: grid and metrics 4x/s, curves 2x/s, BN chart 1x/s (each a fragment,
    so a refresh redraws only its part). Read-only: the job's thread owns the job."""
    left, right = st.columns([1, 1])
    with left:
        live(job, render_progress_and_grid, POLL_SECONDS)
    with right:
        live(job, render_curves, 2 * POLL_SECONDS)
    live(job, render_bn, 4 * POLL_SECONDS)
