"""How much of a student's CKA with its teacher does training explain?

Layer-i-vs-layer-i linear CKA of each teacher with a distilled student and with untrained networks of the student's
architecture (`untrained:<model>`, the reference the app and `dfkd cka` offer, seed 0; more seeds give its spread),
on the same real test images. Prints one row per (teacher, model), each cell with its 95% interval (random halves of
the images):

    python benchmarks/cka_reference.py --home ~/.dfkd --pair TEACHER_RUN=STUDENT_RUN [--pair ...] \\
        --samples 1000 --seeds 0 1 2

One torch thread unless --threads says otherwise.
"""
from __future__ import annotations

import argparse

import torch

from dfkd_core.analysis.cka_matrix import cka_matrix
from dfkd_core.data import load_split
from dfkd_core.models import load_checkpoint
from dfkd_core.models.reference import UNTRAINED, untrained_reference
from dfkd_core.runs import RunStore


def diagonal(teacher, student, inputs) -> list[str]:
    """'0.98 [0.97, 0.98]' for each teacher layer i against student layer i."""
    result = cka_matrix(teacher.model.eval(), student.model.eval(), None, None, inputs)
    depth = min(len(result.layers_teacher), len(result.layers_student))
    return [result.interval(result.layers_teacher[i], result.layers_student[i]).format(".3f") for i in range(depth)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="~/.dfkd")
    parser.add_argument("--pair", action="append", required=True, help="TEACHER=STUDENT (run ids or checkpoints)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="untrained references' seeds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    header = None
    for pair in args.pair:
        teacher_ref, student_ref = pair.split("=", 1)
        teacher = load_checkpoint(store.resolve_checkpoint(teacher_ref))
        student = load_checkpoint(store.resolve_checkpoint(student_ref))
        split = load_split(teacher.dataset.name, "test", image_size=teacher.dataset.image_size)
        inputs = split.subset(min(args.samples, len(split)), seed=0)
        rows = [(f"distilled {student.name} ({student_ref[-4:]})", diagonal(teacher, student, inputs))]
        for seed in args.seeds:
            reference = untrained_reference(UNTRAINED + student.name, teacher, seed=seed)
            rows.append((f"untrained {student.name}, seed {seed}", diagonal(teacher, reference, inputs)))
        if header is None:
            header = f"{'teacher':18} {'model':34} " + " ".join(f"{'layer ' + str(i + 1):>22}"
                                                                   for i in range(len(rows[0][1])))
            print(f"linear CKA, teacher layer i vs student layer i, {len(inputs)} real test images "
                  "[95% interval: random halves of the images]")
            print(header)
        for name, cells in rows:
            print(f"{teacher.name + ' ' + teacher_ref[-4:]:18} {name:34} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
