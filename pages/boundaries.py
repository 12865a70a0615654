"""Boundaries: how close a student's decision boundaries are to its teacher's (MagSim / AngSim, methods.md#bss)."""
import dataclasses

import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

import torch  # noqa: E402

from dfkd_core.analysis.boundary import (  # noqa: E402
    METRIC_ATTACK, MIN_PAIRS, BasePairs, attack_both, qualifying_base_samples)
from dfkd_core.analysis.labels import student_label  # noqa: E402
from dfkd_core.analysis.boundary_job import BoundaryAnalysis, BoundaryConfig, load_boundary_run  # noqa: E402
from dfkd_core.analysis.checks import require_comparable  # noqa: E402
from dfkd_core.data import DatasetMissingError  # noqa: E402
from dfkd_core.models import CheckpointError  # noqa: E402
from dfkd_core.plots.boundary import (  # noqa: E402
    attack_loss_figure, attack_panels_figure, difference_figure, outcome_text, per_class_figure, similarity_bar_figure)
from dfkd_core.stats import Interval  # noqa: E402
from dfkd_core.synthesis.bss import AttackSettings  # noqa: E402
from pages.views.analysis_view import (  # noqa: E402
    analysis_job, incomparable, interval_text, newest_student_button, show_progress, stored_analyses)
from pages.views.common import (  # noqa: E402
    checkpoint_runs, data_root_setting, fresh_model, get_store, keep_widget_state, open_checkpoint, real_test_split,
    real_test_split_or_stop, require_job_slot, start_stop_buttons, submit, teacher_or_stop)
from pages.views.labels import as_sentence, compact_labels, describe_run  # noqa: E402
from pages.views.methods_doc import section_link  # noqa: E402


RUNNER_UP = "teacher's runner-up"
EXPLANATION = r"""
From a base sample $x_n$ of class $b$ that teacher and student both classify correctly, the BSS attack walks toward
a target class $k$: $x \leftarrow x - \eta\,\frac{L_a(x)+\varepsilon}{\lVert\nabla L_a(x)\rVert_2^2}\,\nabla L_a(x)$
with $L_a = f_b - f_k$, until $L_a < 0$ (**accepted**: it crossed the $b/k$ boundary), the prediction becomes a
third class, or $I$ steps pass (both **rejected**). It is run on the teacher and, separately, on the student; the
perturbations $\bar x^{k,m}_n = \dot x^{k,m}_n - x_n$ point from $x_n$ to each model's boundary. Over the pairs
$(n, k)$ both attacks crossed, weighted by the teacher's $p_n^k \propto p_{T,k}(x_n)$ ($k \ne b$):

$$\mathrm{MagSim} = \frac{\sum p_n^k\,\min(\lVert\bar x^{k,t}_n\rVert,\lVert\bar x^{k,s}_n\rVert)\,/\,
\max(\lVert\bar x^{k,t}_n\rVert,\lVert\bar x^{k,s}_n\rVert)}{\sum p_n^k}\qquad
\mathrm{AngSim} = \frac{\sum p_n^k\,\max\!\big(0, \cos(\bar x^{k,t}_n, \bar x^{k,s}_n)\big)}{\sum p_n^k}$$

Both lie in $[0, 1]$: 1 = the boundary is as far (MagSim) and in the same direction (AngSim) as the teacher's. Every
figure states how many pairs both models crossed: on a handful of pairs the numbers mean little, so a bar resting on
fewer than 100 is drawn faded with a warning. Error bars are 95% bootstrap intervals over base samples (a base
sample's pairs share its image, so whole base samples are resampled); two students compared on the same base
samples get a paired interval for their difference. The paper's training step ($\eta=0.3$, $I=10$) shrinks $L_a$
only by $(1-\eta)$ per step, so almost nothing crosses; the metric uses $\eta=1$ (a full step onto the
linearized boundary) and $I=20$.
"""


# What to read a student's numbers against: measured in docs/results.md (Fashion-MNIST bncnn6_w32 teacher, 300 base
# samples): students that never saw the teacher against data-free ones.
READING_NOTE = ("To read these numbers, compare against a student that never saw the teacher: `scratch` on the "
                "Distill page (real labels only) trains one in seconds on digits; add it to the students. On "
                "Fashion-MNIST, scratch students scored MagSim 0.45–0.47 and AngSim 0.23–0.27, real-data KD "
                "students 0.53 and 0.26–0.28, data-free students 0.47 and 0.41–0.46 (measured on the 300 base samples of "
                "largest teacher–student gap, the selection then in use; random selection reads higher on some "
                "students).")


def start_analysis(teacher_run: str, student_runs: list[str], config: BoundaryConfig) -> BoundaryAnalysis:
    config.validate()
    require_job_slot()
    store, teacher = get_store(), open_checkpoint(teacher_run)
    students = {}
    for run_id in student_runs:
        label = student_label(store, run_id, open_checkpoint(run_id))
        require_comparable(teacher, open_checkpoint(run_id), f"student '{label}'")
        students[label + "'" * list(students).count(label)] = fresh_model(run_id)
    run = store.create("analysis", config.to_dict(), teacher=teacher_run, method="boundary",
                       dataset=teacher.dataset.name, name=f"MagSim/AngSim {teacher.name} vs {len(students)} student(s)")
    return submit(lambda: BoundaryAnalysis(fresh_model(teacher_run), students, teacher.dataset, config, run), run,
                  label=f"boundary analysis, {len(students)} students")


def render_progress(job: BoundaryAnalysis) -> None:
    done, total = len(job.history), job.total_steps or 1 + len(job.students)
    now = "the teacher" if done == 0 else f"student {done} of {total - 1}"
    text = f"**{job.status}** · {done}/{total} models attacked" + (f" · attacking {now}…" if job.running else "")
    st.progress(done / total, text=text)
    if job.status == "failed":
        st.error(job.error)
    if job.results:
        st.dataframe(display_rows(job.table()), hide_index=True, column_config=TABLE_COLUMNS)


def display_rows(rows: list[dict]) -> list[dict]:
    """Table rows with every metric's 95% interval beside it, and a flag where the numbers rest on too little."""
    return [{"student": r["student"], "accuracy": interval_text(r.get("accuracy_interval"), r["accuracy"], ".2%"),
             "MagSim": interval_text(r.get("magsim_interval"), r["magsim"]),
             "AngSim": interval_text(r.get("angsim_interval"), r["angsim"]),
             "pairs used": f"{r['both_accepted']:,}" + (" ⚠" if r["both_accepted"] < MIN_PAIRS else ""),
             "student crossed": r["student_accepted"], "tried": r["pairs"], "note": r["note"]} for r in rows]


TABLE_COLUMNS = {
    "pairs used": st.column_config.TextColumn(help="(n, k) pairs where both the teacher's and the student's attack "
                                              f"crossed into class k: what MagSim and AngSim average over (⚠ under "
                                              f"{MIN_PAIRS}: too few to compare students)"),
    "student crossed": st.column_config.NumberColumn(help="pairs where the student's attack crossed into class k"),
    "tried": st.column_config.NumberColumn(help="(n, k) pairs attacked: base samples × target classes")}


@st.cache_data(show_spinner="Checking which test images qualify as base samples…", max_entries=32)
def qualifying(teacher_ref: str, student_refs: tuple[str, ...], dataset: str, root: str | None) -> tuple[int, int]:
    """(test images, of which classified correctly by the teacher and every student)."""
    split = real_test_split(dataset, root)
    models = [open_checkpoint(r).model for r in (teacher_ref, *student_refs)]
    return len(split), qualifying_base_samples(models[0], models[1:], split.normalized(), split.labels)


@st.cache_data(show_spinner="Attacking teacher and student…", max_entries=64)
def attack_images(teacher_ref: str, student_ref: str, indices: tuple[int, ...], target: str, dataset: str,
                  root: str | None, settings: tuple) -> dict:
    split = real_test_split(dataset, root)
    teacher, student = open_checkpoint(teacher_ref).model, open_checkpoint(student_ref).model
    idx = torch.tensor(indices)
    x, labels = split.normalized(idx), split.labels[idx]
    with torch.no_grad():
        probs = teacher(x).softmax(1)
    if target == RUNNER_UP:
        targets = probs.scatter(1, labels.view(-1, 1), -1.0).argmax(1)
    else:
        targets = torch.full_like(labels, split.info.class_names.index(target) if split.info.class_names
                                  else int(target))
    keep = targets != labels
    t, s = attack_both(teacher, student, x[keep], labels[keep], targets[keep], AttackSettings(*settings),
                       pixel_bounds=split.info.pixel_bounds())
    with torch.no_grad():
        predictions = {"teacher": teacher(x[keep]).argmax(1), "student": student(x[keep]).argmax(1)}
    return {"x": x[keep], "labels": labels[keep], "targets": targets[keep], "indices": idx[keep], "teacher": t,
            "student": s, "predictions": predictions, "skipped": idx[~keep].tolist()}


st.title("Boundaries")
st.caption("Do the student's decision boundaries sit where the teacher's do? Attack both from the same real images "
           "toward the same classes and compare the distances (MagSim) and directions (AngSim) — "
           "[Methods: BSS and MagSim / AngSim](/methods#bss).")
with st.expander("What MagSim and AngSim measure"):
    st.markdown(EXPLANATION)
keep_widget_state("boundary_teacher", "boundary_students", "boundary_samples", "boundary_targets", "boundary_eta",
                  "boundary_steps", "boundary_power", "boundary_open", "one_student", "one_images", "one_target")
job = analysis_job(BoundaryAnalysis, open_key="boundary_open")
running = job is not None and job.running
BSS = section_link("bss")

with st.sidebar:
    st.subheader("New comparison")
    teacher_run = teacher_or_stop("boundary_teacher", disabled=running)
    teacher = open_checkpoint(teacher_run)
    dataset = teacher.dataset
    candidates = compact_labels([r for r in checkpoint_runs(("distill", "teacher"), dataset.name)
                                 if r.id != teacher_run])
    students = st.pills("Students: click to pick one or more", list(candidates), selection_mode="multi",
                        format_func=candidates.get, key="boundary_students", disabled=running,
                        help="Every student is attacked from the same base samples toward the same targets. " + BSS) or []
    samples = st.number_input("base samples N", 5, 2000, 200, step=50, key="boundary_samples", disabled=running,
                              help="Test images classified correctly by the teacher and every student, the N with "
                                   "the largest Σ_k (p_T,k − p_S,k)². " + BSS)
    targets = st.radio("targets per base sample", ["all", "sampled"], key="boundary_targets", disabled=running,
                       horizontal=True, help="all: every k ≠ b weighted by p_n^k; sampled: one k drawn ∝ p_n^k. "
                       + BSS)
    eta = st.select_slider("η", [0.3, 0.5, 1.0, 1.5], METRIC_ATTACK.eta, key="boundary_eta", disabled=running,
                           help="The attack's step size. " + BSS)
    steps = st.select_slider("I (max steps)", [5, 10, 20, 40], METRIC_ATTACK.max_steps, key="boundary_steps",
                             disabled=running, help="An attack not across the boundary after I steps is rejected. "
                             + BSS)
    power = st.radio("step", [2, 1], key="boundary_power", disabled=running, horizontal=True,
                     format_func={2: "÷‖∇‖² (paper)", 1: "÷‖∇‖ (official code)"}.get,
                     help="How the attack step is normalized by the gradient. " + BSS)
    data_root = data_root_setting(dataset.name)
    config = BoundaryConfig(teacher=teacher_run, students=students, samples=int(samples), targets=targets, eta=eta,
                            max_steps=steps, gradient_norm_power=power, data_root=data_root)

    def compare() -> BoundaryAnalysis:
        """Read the widgets as they are at the click: a number still being typed commits its value only as
        Compare is clicked, after the script that drew the button has run."""
        state = st.session_state
        chosen = list(state.get("boundary_students") or [])
        if not chosen:
            raise ValueError("Pick one or more students in the sidebar first.")
        now = dataclasses.replace(config, students=chosen, samples=int(state["boundary_samples"]),
                                  targets=state["boundary_targets"], eta=state["boundary_eta"],
                                  max_steps=state["boundary_steps"], gradient_norm_power=state["boundary_power"])
        return start_analysis(teacher_run, chosen, now)

    start_stop_buttons(job, compare, label="Compare", slots=st.columns(2))
    # After the buttons: this check can take a second on a cache miss, and a Compare drawn only after it would
    # miss a click made meanwhile (right after a multiselect closes).
    refused = incomparable(teacher, {ref: open_checkpoint(ref) for ref in students}, candidates)
    if refused:
        st.error(refused)
    elif students:
        try:
            available, qualified = qualifying(teacher_run, tuple(students), dataset.name, data_root)
        except DatasetMissingError as e:
            st.error(str(e))
        else:
            said = (f"{qualified:,} of the {available:,} test images qualify as base samples (classified correctly "
                    f"by the teacher and every chosen student)")
            if qualified < samples:
                st.warning(f"{int(samples):,} base samples asked: {said}, so {qualified:,} will be used.")
            else:
                st.caption(f"{said}.")
show_progress(job, render_progress)
stored = stored_analyses("boundary", "boundary_pairs.pt", dataset.name)
if not students and not stored:
    st.info("Pick one or more students in the sidebar (distill runs, or other trained classifiers of the same "
            "dataset) and press **Compare**.")
    newest_student_button(candidates, teacher_run, dataset.name, "boundary_students")
    st.stop()

st.subheader("Similarity to the teacher")
if st.session_state.get("boundary_open") not in stored:   # first visit, or deleted / other dataset since
    st.session_state["boundary_open"] = next(iter(stored), None)
opened = st.selectbox("Comparison", list(stored), key="boundary_open", placeholder="none computed yet",
                      format_func=lambda i: f"{describe_run(stored[i])} · {stored[i].status}")
names = dataset.class_names or [str(k) for k in range(dataset.num_classes)]
# The image section attacks the opened comparison's models with its settings, else the sidebar's picks.
teacher_ref, student_refs = teacher_run, students
student_names = {ref: candidates.get(ref, ref) for ref in students}
settings, first_images = (eta, METRIC_ATTACK.eps, steps, power), [0, 1, 2]
if opened is not None:
    data, saved = load_boundary_run(get_store().get(opened))
    rows, c = list(data["students"].values()), data["config"]
    if data.get("samples_note"):
        st.warning(data["samples_note"] + ".")
    if data.get("selection_note"):
        st.warning(as_sentence(data["selection_note"]))
    few = [r["student"] for r in rows if r["both_accepted"] < MIN_PAIRS]
    if few:
        st.warning(f"Resting on fewer than {MIN_PAIRS} pairs accepted by both models (faded below): "
                   + ", ".join(f"**{n}**" for n in few) + ". Too few to compare students: use more base samples.")
    st.plotly_chart(similarity_bar_figure(rows), key="boundary_bars")
    st.caption(f"{data['base_samples']} base samples ({c['split']} split, {c['selection']} selection), "
               f"{data['pairs']} (n, k) pairs, targets: {c['targets']}; attack η = {c['eta']}, I = {c['max_steps']}, "
               f"step ÷‖∇‖{'²' if c['gradient_norm_power'] == 2 else ''}; the teacher crossed on "
               f"{data['teacher_outcomes']['accepted']}"
               f" pairs" + (" · **partial: stopped before every student was measured**" if data["partial"] else "")
               + (f". Note: {BasePairs.SHARED_NOTE}." if len(rows) > 1 else ""))
    st.dataframe(display_rows(rows), hide_index=True, column_config=TABLE_COLUMNS)
    compared = {get_store().get_record(ref).method for ref in c["students"][:len(rows)]
                if not ref.endswith(".pt") and ref in candidates}
    if "scratch" not in compared:
        st.caption(READING_NOTE)
    if data.get("differences"):
        st.plotly_chart(difference_figure(data["differences"], too_few=few), key="boundary_differences")
        st.dataframe([{"students": f"{d['student_a']} − {d['student_b']}",
                       "enough pairs": "no ⚠" if {d["student_a"], d["student_b"]} & set(few) else "yes",
                       **{label: interval_text(d[k], Interval.from_dict(d[k]).estimate, "+.3f")
                          for k, label in (("magsim", "MagSim difference"), ("angsim", "AngSim difference"))}}
                      for d in data["differences"]], hide_index=True)
    with st.expander("By base class"):
        st.plotly_chart(per_class_figure({n: r["per_class"] for n, r in data["results"].items()}, names),
                        key="boundary_per_class")
    teacher_ref, student_refs = c["teacher"], c["students"][:len(rows)]
    student_names = dict(zip(student_refs, data["students"]))
    settings = (c["eta"], c["eps"], c["max_steps"], c["gradient_norm_power"])
    if c["split"] == "test" and not c["pool"]:   # the base samples with the largest teacher-student gap
        first_images = saved["source_index"][:3].tolist()

st.subheader("One image at a time")
if not student_refs:
    st.stop()
st.caption("The opened comparison's teacher and students, with its attack settings: base image, both attacks' "
           "results, and the two perturbations on one shared red-blue scale (red: pixel raised).")
split = real_test_split_or_stop(dataset)
cols = st.columns([2, 3, 2])
student_ref = cols[0].selectbox("Student", student_refs, format_func=lambda r: student_names.get(r, r),
                                key="one_student")
chosen = cols[1].multiselect("Test images", sorted(set(range(100)) | set(first_images)), default=first_images,
                             key="one_images", max_selections=6,
                             format_func=lambda i: f"#{i} · {names[int(split.labels[i])]}")
target = cols[2].selectbox("Target class k", [RUNNER_UP] + names, key="one_target")
if not chosen:
    st.stop()
try:
    shot = attack_images(teacher_ref, student_ref, tuple(chosen), target, dataset.name,
                         data_root_setting(dataset.name), settings)
except (FileNotFoundError, CheckpointError) as e:   # a model of a stored comparison was deleted since
    st.error(f"Cannot attack these models: {e}")
    st.stop()
if shot["skipped"]:
    st.caption(f"Skipped {shot['skipped']}: already of class {target}.")
if len(shot["x"]):
    t, s = shot["teacher"], shot["student"]
    row_titles = [f"#{i} {names[b]} → {names[k]}" for i, b, k in zip(shot["indices"].tolist(),
                                                                     shot["labels"].tolist(), shot["targets"].tolist())]
    status = {m: [outcome_text(int(r.outcome[j]), int(r.crossed_step[j]), int(r.steps[j]))
                  + ("" if int(shot["predictions"][m][j]) == int(shot["labels"][j])
                     else f" (predicts {names[int(shot['predictions'][m][j])]}: not a base sample)")
                  for j in range(len(shot["x"]))] for m, r in (("teacher", t), ("student", s))}
    st.plotly_chart(attack_panels_figure(shot["x"], t.adversarial, s.adversarial, dataset.mean, dataset.std,
                                         row_titles, status["teacher"], status["student"]), key="one_panels")
    which = st.selectbox("Attack loss of", range(len(row_titles)), format_func=row_titles.__getitem__,
                         key="one_loss_row")
    st.plotly_chart(attack_loss_figure(t, s, which), key="one_loss")
