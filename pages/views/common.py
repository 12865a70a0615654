"""View helpers every page shares: the run store and job manager (one per server process), checkpoint pickers over
the run store, checkpoint upload, the real test split, the starter teacher of a first launch, starting and stopping
a page's job, and live polling of a background job.

Pages stay thin: widgets, one call into dfkd_core, plots. Nothing here runs an algorithm.
"""
from __future__ import annotations

import copy
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import streamlit as st

from dfkd_core.data import DatasetInfo, DatasetMissingError, ImageSplit, load_split
from dfkd_core.job_manager import JobLimitError, JobManager
from dfkd_core.jobs import Job
from dfkd_core.models import Checkpoint, CheckpointError, load_checkpoint
from dfkd_core.models.reference import is_untrained, untrained_reference
from dfkd_core.runs import Run, RunRecord, RunStore, atomic_write_bytes, default_home
from dfkd_core.synthesis.diagnosis import weak_teacher_note
from dfkd_core.time_left import clock
from pages.views.labels import PARTIAL_STATUSES, as_sentence, compact_labels, describe_run

MAX_CHECKPOINT_MB = 200          # also server.maxUploadSize in .streamlit/config.toml
POLL_SECONDS = 0.25             # live views refresh 4x per second while their job runs
SNAPSHOT_SECONDS = 0.15          # jobs send an image snapshot about this often (see SnapshotCadence)
STARTER_KEY = "starter-teacher"  # the digits teacher trained on a first launch
JOB_PARAM = "job"                # query parameter that lets a reload reattach to its job
CURRENT_TEACHER = "current_teacher"  # the teacher chosen last on any page: every page's teacher box opens on it
# What starting a job can fail with that is the user's to fix (a bad setting or checkpoint, a missing dataset or
# file, no free job slot): shown as a message under the Start button, not as a traceback.
START_ERRORS = (ValueError, FileNotFoundError, JobLimitError)


# ------------------------------------------------------------------ process-wide resources

@st.cache_resource(show_spinner=False)
def _store_at(home: str) -> RunStore:
    return RunStore(home)


def get_store() -> RunStore:
    """The run store of $DFKD_HOME (default ~/.dfkd), one per home per server process."""
    return _store_at(str(default_home()))


@st.cache_resource(show_spinner=False)
def get_job_manager() -> JobManager:
    """One job registry for the whole server: every tab's jobs, keyed by id (see dfkd_core.job_manager)."""
    manager = JobManager()
    manager.configure_torch_threads()
    return manager


# ------------------------------------------------------------------ checkpoints in the run store

def checkpoint_runs(kinds: Sequence[str] = ("teacher",), dataset: str | None = None) -> list[RunRecord]:
    """Runs of these kinds that hold a model.pt, newest first: finished ones, and stopped ones (marked partial by
    `describe_run`) — a teacher stopped at 72% is still a teacher to invert."""
    return [r for r in get_store().list() if r.kind in kinds and r.status in ("done", *PARTIAL_STATUSES)
            and (dataset is None or r.dataset == dataset) and (r.dir / "model.pt").is_file()]


def eta_text(job: Job) -> str:
    """' · 1:05 elapsed, about 0:42 left' from the job's pace so far, each kind of step timed apart
    (`Job.time_left`; nothing before its first step)."""
    if not job.started_at or not job.history or not job.total_steps:
        return ""
    text = f" · {clock(time.time() - job.started_at)} elapsed"
    left = job.time_left() if job.running else None
    return text + (f", {left.describe()}" if left is not None else "")


@st.cache_resource(show_spinner=False, max_entries=16)
def _load(path: str, mtime: float) -> Checkpoint:
    return load_checkpoint(path)


def open_checkpoint(run_id: str) -> Checkpoint:
    """The checkpoint of a run (cached). Shared between tabs: give a job `copy.deepcopy(ckpt.model)`, never the
    cached model itself (BN hooks and requires_grad flags are per model object)."""
    path = get_store().resolve_checkpoint(run_id)
    return _load(str(path), path.stat().st_mtime)


def open_model(ref: str, teacher_run: str) -> Checkpoint:
    """A stored checkpoint (`open_checkpoint`), or the untrained reference `ref` names ('untrained:bncnn3_w16'),
    built for `teacher_run`'s dataset: what the analysis pages compare with the teacher."""
    if is_untrained(ref):
        return untrained_reference(ref, open_checkpoint(teacher_run))
    return open_checkpoint(ref)


def fresh_model(ref: str, teacher_run: str | None = None):
    """A private copy of a run's model (or of the untrained reference `ref` names, given `teacher_run`), safe to
    hand to a job."""
    return copy.deepcopy((open_model(ref, teacher_run) if teacher_run else open_checkpoint(ref)).model)


def make_current_teacher(run_id: str | None) -> None:
    """Make `run_id` the teacher every page's teacher box opens on (a deep link, a re-attached job, a new teacher)."""
    if run_id is not None:
        st.session_state[CURRENT_TEACHER] = run_id


def checkpoint_picker(label: str, *, kinds: Sequence[str] = ("teacher",), dataset: str | None = None,
                      key: str, exclude: Sequence[str] = (), extra_options: Sequence[str] = (),
                      disabled: bool = False, help: str | None = None, current_teacher: bool = False
                      ) -> str | None:
    """A selectbox over stored checkpoints (teacher and/or student runs); returns the chosen run id.

    `extra_options` are shown first and returned as they are (e.g. 'untrained bncnn3_w16'). None when there is
    nothing to pick. With `current_teacher`, the box opens on the teacher chosen last on any page of this tab, and
    what it shows becomes that teacher: a teacher picked on Synthesize is the one Distill and the analyses open on.
    A disabled box (its page's job runs) shows its job's teacher and leaves the shared choice alone.
    """
    records = [r for r in checkpoint_runs(kinds, dataset) if r.id not in exclude]
    # The box shows ~30 characters: names that differ only at the end, and long run ids, would look alike there.
    # The chosen run's full description goes under the box.
    labels = compact_labels(records)
    options = list(extra_options) + list(labels)
    if not options:
        return None
    follow = current_teacher and not disabled
    if follow and st.session_state.get(CURRENT_TEACHER) in options:
        st.session_state[key] = st.session_state[CURRENT_TEACHER]
    if st.session_state.get(key) not in options:  # first time, or the chosen run was deleted meanwhile
        finished = [r.id for r in records if r.status == "done"]   # before a newer one that was stopped
        st.session_state[key] = next(iter([*extra_options, *finished, *options]))
    # The change is made current in a callback, before the page reruns: else the line above would undo it.
    chosen = st.selectbox(label, options, key=key, format_func=lambda o: labels.get(o, o), disabled=disabled,
                          help=help, on_change=(lambda: make_current_teacher(st.session_state[key])) if follow
                          else None)
    if follow:
        make_current_teacher(chosen)
    record = next((r for r in records if r.id == chosen), None)
    if record is not None:
        st.caption(describe_run(record))
    return chosen


def teacher_or_stop(key: str, *, disabled: bool = False, help: str | None = None,
                    missing: str = "No teacher in the run store yet: add one on the Teacher page.") -> str:
    """The sidebar's teacher picker; with no teacher stored there is nothing to do, so say `missing` and stop."""
    teacher_run = checkpoint_picker("Teacher", key=key, disabled=disabled, help=help, current_teacher=True)
    if teacher_run is None:
        st.info(missing)
        st.stop()
    teacher = open_checkpoint(teacher_run)
    if note := weak_teacher_note(teacher.metrics.get("test_accuracy"), teacher.dataset.num_classes):
        st.warning(as_sentence(note))   # everything made from it would be garbage, with no other hint
    return teacher_run


def upload_name(filename: str) -> str:
    """The last part of a browser-sent file name, printable and short: it is shown and recorded, never a path (a
    crafted request may send '../../x' or 'C:\\x')."""
    base = re.split(r"[/\\]", filename)[-1]
    return "".join(c for c in base if c.isprintable())[:100] or "upload.pt"


def import_checkpoint(data: bytes, filename: str) -> RunRecord:
    """Validate an uploaded file as a dfkd checkpoint and store it as a teacher run (its bytes as model.pt).

    Raises `CheckpointError` (with load_checkpoint's explanation) for anything else, including oversize files,
    which are refused before anything is written.
    """
    filename = upload_name(filename)
    if len(data) > MAX_CHECKPOINT_MB * 2**20:
        raise CheckpointError(f"{filename} is {len(data) / 2**20:.0f} MB; checkpoints up to {MAX_CHECKPOINT_MB} MB "
                              "are accepted here (use the CLI for larger models)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.pt"
        path.write_bytes(data)
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(str(path), filename)) from None
        store = get_store()
        run = store.create("teacher", {"uploaded": filename, "model_cfg": checkpoint.model_cfg},
                           method=checkpoint.name, dataset=checkpoint.dataset.name,
                           name=f"{checkpoint.name} on {checkpoint.dataset.name} (uploaded {filename})")
        atomic_write_bytes(run.path("model.pt"), data)
    run.set_status("done", summary={**checkpoint.metrics, "model": checkpoint.name,
                                    "dataset": checkpoint.dataset.name, "uploaded": filename})
    return run.record()


# ------------------------------------------------------------------ real data

@st.cache_resource(show_spinner="Loading the real test split…", max_entries=4)
def real_test_split(dataset: str, root: str | None) -> ImageSplit:
    """The real test split of a dataset, loaded once per server (accuracy, examples and attacks all use it)."""
    return load_split(dataset, "test", root)


def data_root_key(dataset: str) -> str:
    return f"data_root_{dataset}"


def data_root_setting(dataset: str) -> str | None:
    """Where this tab reads `dataset` from: the Teacher page's "Data folder" (None: $DFKD_<NAME>, then the default,
    as on the command line). Never a checkpoint's: a teacher made on another machine names its dataset, not a path."""
    key = data_root_key(dataset)
    # On any other page Streamlit has dropped the Teacher page's widget value: `keep_widget_state` keeps it.
    return st.session_state.get(key) or st.session_state.get(KEPT_WIDGETS, {}).get(key) or None


def real_test_split_or_stop(info: DatasetInfo) -> ImageSplit:
    """The real test split, or the missing dataset's install hint and a stopped page."""
    try:
        return real_test_split(info.name, data_root_setting(info.name))
    except DatasetMissingError as e:
        st.error(str(e))
        st.stop()


# ------------------------------------------------------------------ first launch

def ensure_starter_teacher() -> Job | None:
    """On an empty run store, train the digits teacher in the background (~5 s) so a first-time user can press
    Start on the Synthesize page without preparing anything. Returns the training job while it matters."""
    manager = get_job_manager()
    job = manager.find(STARTER_KEY)
    if checkpoint_runs(("teacher",)):
        return job if job is not None and job.running else None
    if job is not None and job.status == "failed":
        return job  # shown with its error; the user retries from the Teacher page, no retry loop here

    def make() -> Job:
        from dfkd_core.training import TeacherConfig, TeacherTraining
        config = TeacherConfig(dataset="digits", epochs=20).resolved()
        run = get_store().create("teacher", config.to_dict(), method=config.model, dataset="digits",
                                 name=f"{config.model} on digits (starter)")
        return TeacherTraining(config, run)

    return manager.ensure(STARTER_KEY, make, label="starter digits teacher")


def show_starter_progress(job: Job | None) -> None:
    """A progress bar for the starter teacher, refreshed until it is done (then the page reruns once)."""
    if job is None:
        return

    def render(j: Job) -> None:
        if j.status == "failed":
            st.error(f"Training the starter digits teacher failed: {j.error}")
        elif j.running and not j.total_steps:
            st.progress(0.0, text="First launch: loading the digits data to train a teacher…")
        elif j.running:
            accuracy = j.history[-1].get("test_accuracy") if j.history else None
            note = f", test accuracy so far {accuracy:.1%}" if accuracy is not None else ""
            st.progress(j.step_index / max(j.total_steps, 1),
                        text=f"First launch: training a digits teacher ({j.step_index}/{j.total_steps} steps"
                             f"{note}); it will be selected here when done.")
    live(job, render)


# ------------------------------------------------------------------ live polling

def attached_job(kind: str, accept: Callable[[Job], bool] = lambda job: True) -> Job | None:
    """This tab's job of `kind` ('synthesis', 'teacher', ...): the one named in the URL (`?job=<id>`, so a reload
    reattaches), else the one this session last started on that page (the URL loses it on page switches). With
    none, a job of this kind (and `accept`ed) running from another tab is offered to watch here."""
    job_id = st.query_params.get(JOB_PARAM)
    job = get_job_manager().get(job_id)
    if job_id and job is None:
        del st.query_params[JOB_PARAM]
        st.info(f"Job {job_id} is no longer in this server's memory (restarted?). Its results, if any, are on the "
                "Runs page.")
    if job is None or job.kind != kind:
        job = get_job_manager().get(st.session_state.get(f"{JOB_PARAM}_{kind}"))
        if job is not None:
            st.query_params[JOB_PARAM] = job.id
    if job is None or not job.running:
        offer_running_jobs(kind, accept)
    return job


def offer_running_jobs(kind: str, accept: Callable[[Job], bool]) -> None:
    """Jobs of `kind` running from another tab (or from this one before a reload that lost its URL), each with a
    button that makes it this tab's job: otherwise a tab could neither watch nor stop them."""
    manager = get_job_manager()

    def offer(other: Job) -> None:   # redrawn while the job runs: its step counts, and it goes when the job ends
        if not other.running:
            return
        text, button = st.columns([5, 1], vertical_alignment="center")
        steps = f" · step {other.step_index:,} of {other.total_steps:,}" if other.total_steps else ""
        text.info(f"Running from another tab: **{manager.label(other.id)}**{steps}.")
        if button.button("Watch here", key=f"watch_{other.id}",
                         help="Show this job here, with its Stop button (and live settings where the page has them)"):
            attach(other)
            st.rerun()   # the whole page: it now draws this job

    for other in [j for j in manager.running_untagged() if j.kind == kind and accept(j)]:
        live(other, offer, every=1.0)


def attach(job: Job) -> None:
    """Make `job` this tab's job of its kind (URL and session)."""
    st.query_params[JOB_PARAM] = job.id
    st.session_state[f"{JOB_PARAM}_{job.kind}"] = job.id


def require_job_slot() -> None:
    """Raise JobLimitError, naming the running jobs, when no job slot is free: checked before a start loads data or
    creates a run, so a refused start costs nothing and leaves nothing behind."""
    manager = get_job_manager()
    active = manager.active()
    if len(active) >= manager.max_running:
        raise JobLimitError(f"{len(active)} jobs are already running (the limit on this machine); stop one first: "
                            + ", ".join(manager.label(j.id) for j in active))


def submit(job: Job | Callable[[], Job], run: Run, **options) -> Job:
    """Start `job` (or the job `job()` builds), which records into `run` (options as JobManager.submit).

    The run exists before its job, so whatever stops the job from starting marks the run failed with the reason
    rather than leaving it 'running' with no job behind it (such a run could not even be deleted before a
    restart): a job whose constructor refuses the settings, or the last slot going to another tab since
    `require_job_slot`. The error goes on to the caller, which shows it.
    """
    try:
        return get_job_manager().submit(job() if callable(job) else job, **options)
    except Exception as e:
        run.set_status("failed", error=str(e))
        raise


def start_stop_buttons(job: Job | None, start: Callable[[], Job], *, label: str = "Start",
                       errors: tuple[type[Exception], ...] = START_ERRORS, disabled: bool = False,
                       stop_help: str | None = None, slots: Sequence | None = None) -> None:
    """A page's action button and its Stop, side by side: the action is off while `job` runs, Stop on only then.

    `start()` creates the run from the current widgets and submits its job, which becomes this tab's job. An
    exception of the `errors` types is shown under the buttons after the rerun (a callback's own output would land
    at the top of the page). `slots`: two containers for the buttons, by default two narrow columns.
    """
    running = job is not None and job.running
    error_key = f"_start_error_{label}"

    def on_start() -> None:
        try:
            attach(start())
        except errors as e:
            st.session_state[error_key] = str(e)

    left, right = slots if slots is not None else st.columns([1, 1, 4])[:2]
    left.button(label, type="primary", on_click=on_start, disabled=running or disabled, width="stretch")
    right.button("Stop", on_click=lambda: get_job_manager().cancel(job.id), disabled=not running, width="stretch",
                 help=stop_help)
    if error_key in st.session_state:
        st.error(st.session_state.pop(error_key))


KEPT_WIDGETS = "_kept_widgets"


def keep_widget_state(*keys: str) -> None:
    """Streamlit forgets a widget's value when its page is not shown; call at the top of a page to keep the
    values of these widget keys across page switches."""
    shadow = st.session_state.setdefault(KEPT_WIDGETS, {})
    for key in keys:
        if key in st.session_state:
            shadow[key] = st.session_state[key]
        elif key in shadow:
            st.session_state[key] = shadow[key]


def live(job: Job | None, render: Callable[[Job], None], every: float = POLL_SECONDS) -> None:
    """Call `render(job)` now and, while the job runs, again every `every` seconds in a fragment (only this part
    of the page reruns). When the job ends the whole page reruns once, so widgets disabled during the run
    come back. `render` must only read the job: the job's thread owns it."""
    if job is None:
        return
    polling = job.running

    @st.fragment(run_every=every if polling else None)
    def _view() -> None:
        render(job)
        if polling and not job.running:
            st.rerun()

    _view()
