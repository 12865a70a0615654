"""`dfkd boundary`: MagSim / AngSim of students against a teacher (METHODS §4); prints a table, saves a run."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dfkd_core.analysis.boundary import METRIC_ATTACK


def _fmt(v, spec: str = ".3f") -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def student_label(store, ref: str, checkpoint) -> str:
    """A readable name: for a run in the store, how it was trained (its method; 'scratch' for a classifier trained
    on labels) and its short id; else the file's stem (the directory's name for a run's model.pt)."""
    run_id = store.run_id_of(checkpoint.path)
    if run_id and run_id != str(checkpoint.path):
        record = store.get_record(run_id)
        how = "scratch" if record.kind == "teacher" else record.method or record.kind
        return f"{how}:{checkpoint.name}:{record.id[-4:]}"
    path = Path(ref)
    return f"{path.parent.name if path.stem == 'model' else path.stem}:{checkpoint.name}"


def print_table(rows: list[dict], teacher_accuracy: float | None, teacher_outcomes: dict, pairs: int,
                base_samples: int) -> None:
    print(f"teacher accuracy {_fmt(teacher_accuracy, '.2%')}; {base_samples} base samples, {pairs} (n, k) pairs; "
          f"teacher attack: " + ", ".join(f"{k} {v}" for k, v in teacher_outcomes.items()))
    width = max(12, *(len(r["student"]) for r in rows)) + 2
    print(f"{'student':{width}} {'accuracy':>9} {'MagSim':>7} {'AngSim':>7} {'accepted pairs':>15}")
    for r in rows:
        print(f"{r['student']:{width}} {_fmt(r['accuracy'], '.2%'):>9} {_fmt(r['magsim']):>7} "
              f"{_fmt(r['angsim']):>7} {r['both_accepted']:>8} / {r['pairs']}")
        if r["note"]:
            print(f"{'':{width}} note: {r['note']}")


def cmd_boundary(args, store) -> int:
    from dfkd_core.analysis.boundary_job import BoundaryAnalysis, BoundaryConfig
    from dfkd_core.cli import ProgressBar, _load

    teacher = _load(store, args.teacher, "teacher")
    students = {}
    for ref in args.student:
        checkpoint = _load(store, ref, "student")
        if checkpoint.dataset.name != teacher.dataset.name:
            raise SystemExit(f"error: student '{ref}' was trained on {checkpoint.dataset.name}, the teacher on "
                             f"{teacher.dataset.name}")
        label = student_label(store, ref, checkpoint)
        while label in students:
            label += "'"
        students[label] = checkpoint.model
    config = BoundaryConfig(teacher=args.teacher, students=list(args.student), samples=args.samples, pool=args.pool,
                            split=args.split, targets=args.targets, selection=args.selection, eta=args.eta,
                            eps=args.eps, max_steps=args.max_steps, gradient_norm_power=args.gradient_norm_power,
                            batch_size=args.batch_size, seed=args.seed, device=args.device)
    run = store.create("analysis", config.to_dict(), teacher=store.run_id_of(teacher.path), method="boundary",
                       dataset=teacher.dataset.name, name=f"MagSim/AngSim {teacher.name} vs {len(students)} student(s)")
    try:
        job = BoundaryAnalysis(teacher.model, students, teacher.dataset, config, run)
    except ValueError as e:
        run.set_status("failed", error=str(e))
        raise SystemExit(f"error: {e}")
    job.subscribe(ProgressBar(("magsim", "angsim", "both_accepted"), args.quiet))
    job.run()
    if not job.results:
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    print_table(job.table(), job.accuracy.get("teacher"), job.teacher_attack.counts(), len(job.pairs),
                len(job.pairs.labels))
    print(f"run {run.id} [{job.status}] -> {run.dir} (boundary.json, boundary_pairs.pt, boundary_bars.json)")
    return 0 if job.status == "done" else 1


def add_commands(sub) -> None:
    b = sub.add_parser("boundary", help="MagSim / AngSim decision-boundary similarity of students (METHODS §4)",
                       description="Attack teacher and students from the same real base samples toward the same "
                                   "target classes (BSS attack) and compare the perturbations' lengths (MagSim) "
                                   "and directions (AngSim), weighted by p_n^k over pairs both models crossed.")
    b.add_argument("--teacher", required=True, help="checkpoint path or run id")
    b.add_argument("--student", required=True, action="append",
                   help="checkpoint path or run id; repeat to compare several on the same base samples")
    b.add_argument("--samples", type=int, default=500, help="base samples N")
    b.add_argument("--pool", type=int, default=0, help="draw base samples from a random subset of this size "
                                                          "(0: the whole split)")
    b.add_argument("--split", default="test", choices=["test", "train"])
    b.add_argument("--targets", default="all", choices=["all", "sampled"],
                   help="all: every k ≠ b weighted by p_n^k; sampled: one k drawn ∝ p_n^k per base sample")
    b.add_argument("--selection", default="gap", choices=["gap", "random"],
                   help="gap: largest Σ_k (p_T,k − p_S,k)² (METHODS §4); random: uniform among correct samples")
    b.add_argument("--eta", type=float, default=METRIC_ATTACK.eta, help="attack step factor η")
    b.add_argument("--eps", type=float, default=METRIC_ATTACK.eps, help="attack overshoot ε")
    b.add_argument("--max-steps", type=int, default=METRIC_ATTACK.max_steps, help="attack step limit I")
    b.add_argument("--gradient-norm-power", type=int, default=2, choices=[1, 2],
                   help="2: step / ||∇||² (METHODS); 1: step / ||∇|| (official BSS code)")
    b.add_argument("--batch-size", type=int, default=1024)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    b.set_defaults(func=cmd_boundary)
