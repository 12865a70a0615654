"""What the analysis pages (Boundaries, Representations, Attention) share: this tab's analysis job and its
progress, which stored models and image sets can be compared (and whether a chosen pair can be), which stored
analyses can be reopened, and how a number is written with its interval. Run-store lookups and layout only; the
computations live in dfkd_core.analysis."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence, TypeVar

import streamlit as st

from dfkd_core.analysis.checks import require_comparable
from dfkd_core.distill.config import default_student_of
from dfkd_core.models import Checkpoint
from dfkd_core.jobs import Job
from dfkd_core.models.reference import REFERENCE_SEED, UNTRAINED
from dfkd_core.stats import Interval
from pages.views.common import attached_job, checkpoint_runs, get_store, live
from pages.views.labels import describe_run, distinct_run_names, fit_labels, run_facts, run_name

AnalysisJob = TypeVar("AnalysisJob", bound=Job)

PEER_CHECKPOINT = "model_b.pt"   # IE-DML saves its second student beside model.pt


def analysis_job(cls: type[AnalysisJob], open_key: str) -> AnalysisJob | None:
    """This tab's analysis job if it is a `cls` (the analysis pages share the job kind 'analysis', each shows only
    its own). Once it has ended, its run is opened in the selectbox `open_key`, once per job: the page shows the
    comparison just computed, and the user can still open another afterwards."""
    job = attached_job("analysis", accept=lambda other: isinstance(other, cls))
    if not isinstance(job, cls):
        return None
    if not job.running and st.session_state.get(f"{open_key}_job") != job.id:
        st.session_state[open_key] = job.run_record.id
        st.session_state[f"{open_key}_job"] = job.id
    return job


def newest_student_button(choices: Mapping[str, str], teacher_run: str, dataset: str, state_key: str) -> None:
    """A button that picks the newest student distilled from `teacher_run` (else the newest distilled student of
    `dataset`) among `choices` into the students widget `state_key`: one click for a demo instead of a search
    through the sidebar."""
    students = [r for r in checkpoint_runs(("distill",), dataset) if r.id in choices]   # newest first
    # this teacher's own student first, else any distilled student of the dataset
    newest = next((r.id for r in students if r.teacher == teacher_run), students[0].id if students else None)
    if newest is not None:
        st.button(f"Pick the newest student: {choices[newest]}", key=f"{state_key}_newest",
                  on_click=lambda: st.session_state.update({state_key: [newest]}))


def show_progress(job: Job | None, render: Callable[[Job], None]) -> None:
    """The analysis job's live progress while it runs, and its error if it failed. A finished analysis is shown
    from the run store instead, like any stored one."""
    if job is not None and (job.running or job.status == "failed"):
        live(job, render)


def untrained_choice(teacher: Checkpoint) -> str:
    """The untrained reference the analysis pages offer: the teacher's default (half-width) student architecture,
    or the teacher's own where it has none."""
    try:
        return UNTRAINED + default_student_of(teacher)
    except ValueError:
        return UNTRAINED + teacher.name


def model_choices(dataset: str, exclude: str | None = None, teacher: Checkpoint | None = None
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """({checkpoint ref: label}, the same with compact labels) of every stored model of `dataset`: teacher and
    distill runs (their model.pt, a run id) and IE-DML peers (their model_b.pt, a path), newest first; with
    `teacher`, an untrained reference last (`untrained_choice`). The compact labels suit a narrow sidebar box
    (see `compact_labels`); show the full label of the choice beside it."""
    records = checkpoint_runs(("distill", "teacher"), dataset)
    full, compact = {}, {}
    for record, name in zip(records, distinct_run_names(records)):
        tail = record.id.rsplit("-", 1)[-1]
        if record.id != exclude:
            full[record.id] = describe_run(record)
            compact[record.id] = (name, run_facts(record), tail)
        peer = record.dir / PEER_CHECKPOINT
        if peer.is_file():
            accuracy = record.summary.get("student_b_accuracy")
            shown = f" · {accuracy:.1%}" if isinstance(accuracy, (int, float)) else ""
            full[str(peer)] = f"{run_name(record)} · peer B{shown} · {record.id}"
            compact[str(peer)] = (name, f" · peer B{shown}", tail)
    if teacher is not None and full:   # a reference beside trained models, not instead of them
        reference = untrained_choice(teacher)
        architecture = reference[len(UNTRAINED):]
        full[reference] = (f"untrained {architecture}: never trained (initialised from seed {REFERENCE_SEED}), the "
                           "floor to read a trained student's similarity against")
        compact[reference] = (f"untrained {architecture}", " · reference", "")
    return full, fit_labels(compact)


def short_label(ref: str) -> str:
    """A few characters that name a model in figure titles: method and the run id's tail (+ ' B' for a peer)."""
    store = get_store()
    run_id = store.run_id_of(ref) if ref.endswith(".pt") else ref
    try:
        record = store.get_record(run_id)
    except KeyError:
        return ref.rsplit("/", 1)[-1]
    return f"{record.method or record.kind} {record.id[-4:]}" + (" B" if ref.endswith(PEER_CHECKPOINT) else "")


def input_choices(dataset: str, teacher_run: str | None = None) -> dict[str, str]:
    """{'real': the test split, run id: its synthesized images} for runs of `dataset` that hold an images.pt; a
    pool inverted from another teacher than `teacher_run` says so."""
    runs = [r for r in get_store().list() if r.kind in ("synthesis", "distill") and r.dataset == dataset
            and (r.dir / "images.pt").is_file()]
    def origin(record) -> str:
        return " · from another teacher" if teacher_run and record.teacher and record.teacher != teacher_run else ""
    return {"real": "real test images",
            **{r.id: f"synthesized: {r.name or r.method}{origin(r)} · {r.id}" for r in runs}}


def stored_analyses(method: str, result_file: str, dataset: str) -> dict:
    """{run id: record} of finished or partial analyses of one method ('boundary' | 'cka' | 'gradcam') for `dataset`."""
    return {r.id: r for r in get_store().list("analysis") if r.method == method and r.dataset == dataset
            and (r.dir / result_file).is_file()}


def incomparable(teacher, students: Mapping[str, object], labels: Mapping[str, str]) -> str:
    """The sentence saying why a chosen student cannot be compared with the teacher (dataset, input shape or
    classes differ), or '' when all can. `students`: {ref: checkpoint}; `labels`: {ref: what the user saw}."""
    for ref, checkpoint in students.items():
        try:
            require_comparable(teacher, checkpoint, f"student '{labels.get(ref, ref)}'")
        except ValueError as e:
            return str(e)
    return ""


def interval_text(interval: Mapping | None, estimate: float | None = None, spec: str = ".3f") -> str:
    """'0.912 [0.893, 0.929]' from a stored Interval dict; the bare estimate when the run predates intervals."""
    if interval:
        i = Interval.from_dict(interval)
        if math.isnan(i.estimate):
            return "undefined"
        return i.format(spec) if i.defined else f"{format(i.estimate, spec)} [no interval: {i.units} unit(s)]"
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return "undefined"
    return format(estimate, spec)


def sample_slider(label: str, options: Sequence[int], default: int, available: int | None, *, key: str,
                  slot=st, **kwargs) -> int:
    """A count of images to use, offering no more than `available` (None: unknown): the counts below it, then
    "all of them", so digits' 360 test images are not asked for as 1,000 and cut back with a warning."""
    if available is not None and available < max(options):
        options = [v for v in options if v < available] + [available]
    default = max((v for v in options if v <= default), default=options[0])
    if st.session_state.get(key) not in (None, *options):   # a count offered for other images
        del st.session_state[key]
    if len(options) == 1:   # nothing to choose: a slider of one value is a lone dot
        slot.caption(f"{label}: {options[0]:,} images, all there are")
        return options[0]
    return slot.select_slider(label, options, default, key=key, **kwargs)
