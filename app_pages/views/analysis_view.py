"""What the Representations and Attention pages share: which stored models and image sets can be compared, and
which stored analyses can be reopened. Only run-store lookups; the computations live in dfkd_core.analysis."""
from __future__ import annotations

from app_pages.views.common import checkpoint_runs, describe_run, get_store

PEER_CHECKPOINT = "model_b.pt"   # IE-DML saves its second student beside model.pt


def model_choices(dataset: str, exclude: str | None = None) -> dict[str, str]:
    """{checkpoint ref: label} of every stored model of `dataset`: teacher and distill runs (their model.pt, a run
    id) and IE-DML peers (their model_b.pt, a path), newest first."""
    choices = {}
    for record in checkpoint_runs(("distill", "teacher"), dataset):
        if record.id != exclude:
            choices[record.id] = describe_run(record)
        peer = record.dir / PEER_CHECKPOINT
        if peer.is_file():
            accuracy = record.summary.get("student_b_accuracy")
            shown = f" · {accuracy:.1%}" if isinstance(accuracy, (int, float)) else ""
            choices[str(peer)] = f"{record.name or record.method} · peer B{shown} · {record.id}"
    return choices


def short_label(ref: str) -> str:
    """A few characters that name a model in figure titles: method and the run id's tail (+ ' B' for a peer)."""
    store = get_store()
    run_id = store.run_id_of(ref) if ref.endswith(".pt") else ref
    try:
        record = store.get_record(run_id)
    except KeyError:
        return ref.rsplit("/", 1)[-1]
    return f"{record.method or record.kind} {record.id[-4:]}" + (" B" if ref.endswith(PEER_CHECKPOINT) else "")


def input_choices(dataset: str) -> dict[str, str]:
    """{'real': the test split, run id: its synthesized images} for runs of `dataset` that hold an images.pt."""
    runs = [r for r in get_store().list() if r.kind in ("synthesis", "distill") and r.dataset == dataset
            and (r.dir / "images.pt").is_file()]
    return {"real": "real test images", **{r.id: f"synthesized: {r.name or r.method} · {r.id}" for r in runs}}


def stored_analyses(method: str, result_file: str, dataset: str) -> dict:
    """{run id: record} of finished or partial analyses of one kind ('cka' | 'gradcam') for `dataset`."""
    return {r.id: r for r in get_store().list("analysis") if r.method == method and r.dataset == dataset
            and (r.dir / result_file).is_file()}
