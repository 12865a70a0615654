"""How an analysis names the models it compares, in the CLI's tables, the runs' names and the app: every analysis
(CKA, Grad-CAM, MagSim/AngSim) the same way."""
from __future__ import annotations

from pathlib import Path

from dfkd_core.models.reference import UNTRAINED


def student_label(store, ref: str, checkpoint) -> str:
    """A readable name: for a run in the store, how it was trained (its method; 'scratch' for a classifier trained
    on labels) and its short id; 'untrained:<model>' for an untrained reference; else the file's stem (the
    directory's name for a run's model.pt)."""
    if str(ref).startswith(UNTRAINED):
        return f"{UNTRAINED}{checkpoint.name}"
    run_id = store.run_id_of(checkpoint.path)
    if run_id and run_id != str(checkpoint.path):
        record = store.get_record(run_id)
        how = "scratch" if record.kind == "teacher" else record.method or record.kind
        return f"{how}:{checkpoint.name}:{record.id[-4:]}"
    path = Path(ref)
    return f"{path.parent.name if path.stem == 'model' else path.stem}:{checkpoint.name}"


def teacher_label(store, checkpoint) -> str:
    """'bncnn3_w32:2fce' for a teacher run in the store (two teachers of one architecture told apart), else the
    model's name."""
    run_id = store.run_id_of(checkpoint.path)
    return f"{checkpoint.name}:{run_id[-4:]}" if run_id and run_id != str(checkpoint.path) else checkpoint.name
