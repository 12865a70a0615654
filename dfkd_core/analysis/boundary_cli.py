"""`dfkd boundary`: MagSim / AngSim of students against a teacher (methods.md#bss); prints a table (or `--json`) with
95% intervals and paired differences between students, saves a run."""
from __future__ import annotations

import json
import math
import sys

from dfkd_core.analysis.boundary import METRIC_ATTACK, MIN_PAIRS, BasePairs
from dfkd_core.analysis.cli import _fmt_interval, json_ready
from dfkd_core.analysis.labels import student_label
from dfkd_core.stats import Interval


def _fmt(v, spec: str = ".3f") -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(summary: dict) -> None:
    """The boundary run's summary as a table: accuracy, MagSim, AngSim with 95% intervals; rows resting on fewer than
    MIN_PAIRS pairs marked '!'; then the paired differences between students."""
    teacher = summary["teacher_accuracy_interval"]
    print(f"teacher accuracy {_fmt_interval(Interval.from_dict(teacher), '.2%') if teacher else 'n/a'}; "
          f"{summary['base_samples']} base samples, {summary['pairs']} (n, k) pairs; teacher attack: "
          + ", ".join(f"{k} {v}" for k, v in summary["teacher_outcomes"].items()))
    rows = list(summary["students"].values())
    width = max(12, *(len(r["student"]) for r in rows)) + 2
    print(f"[95% intervals: accuracy over test images, MagSim/AngSim over base samples; '!' = fewer than "
          f"{MIN_PAIRS} pairs accepted by both models, too few to compare]")
    print(f"  {'student':{width}} {'accuracy':>24} {'MagSim':>22} {'AngSim':>22} {'accepted pairs':>15}")
    for r in rows:
        cells = [_fmt_interval(Interval.from_dict(r[k]), spec) for k, spec in
                 (("accuracy_interval", ".2%"), ("magsim_interval", ".3f"), ("angsim_interval", ".3f"))]
        flag = "!" if r["too_few_pairs"] else " "
        print(f"{flag} {r['student']:{width}} {cells[0]:>24} {cells[1]:>22} {cells[2]:>22} "
              f"{r['both_accepted']:>8} / {r['pairs']}")
        if r["note"]:
            print(f"  {'':{width}} note: {r['note']}")
    if summary["differences"]:
        print("paired differences on the same base samples (95% interval; '!' = a student with too few pairs):")
        for d in summary["differences"]:
            flag = "!" if d.get("too_few_pairs") else " "
            for metric, label in (("magsim", "MagSim"), ("angsim", "AngSim")):
                print(f"{flag} {label}({d['student_a']}) − {label}({d['student_b']}) = "
                      f"{_fmt_interval(Interval.from_dict(d[metric]), '+.3f')}")
    if summary["samples_note"]:
        print(f"note: {summary['samples_note']}")
    if summary.get("selection_note"):
        print(f"note: {summary['selection_note']}")
    if len(rows) > 1:
        print(f"note: {BasePairs.SHARED_NOTE}")


def _check_before_run(config, teacher, students: dict, data_root: str | None) -> None:
    """Settings, every teacher/student pair and the split's size, before a run exists (one sentence each)."""
    from dfkd_core.analysis.checks import require_comparable
    from dfkd_core.data import DatasetMissingError, load_split
    try:
        config.validate()
        for ref, checkpoint in students.items():
            require_comparable(teacher, checkpoint, f"student '{ref}'")
        split_size = len(load_split(teacher.dataset.name, config.split, data_root))
    except (ValueError, DatasetMissingError) as e:
        raise SystemExit(f"error: {e}")
    note = config.available_note(split_size, teacher.dataset.name)
    if note:
        print(f"note: {note}")


def cmd_boundary(args, store) -> int:
    from dfkd_core.analysis.boundary_job import BoundaryAnalysis, BoundaryConfig
    from dfkd_core.cli import ProgressBar, _load, _load_student

    teacher = _load(store, args.teacher, "teacher")
    checkpoints = {ref: _load_student(store, ref, teacher) for ref in args.student}
    config = BoundaryConfig(teacher=args.teacher, students=list(args.student), samples=args.samples, pool=args.pool,
                            split=args.split, targets=args.targets, selection=args.selection, eta=args.eta,
                            eps=args.eps, max_steps=args.max_steps, gradient_norm_power=args.gradient_norm_power,
                            batch_size=args.batch_size, seed=args.seed, device=args.device, data_root=args.data_root)
    _check_before_run(config, teacher, checkpoints, args.data_root)
    students = {}
    for ref, checkpoint in checkpoints.items():
        label = student_label(store, ref, checkpoint)
        while label in students:
            label += "'"
        students[label] = checkpoint.model
    run = store.create("analysis", config.to_dict(), teacher=store.run_id_of(teacher.path), method="boundary",
                       dataset=teacher.dataset.name, name=f"MagSim/AngSim {teacher.name} vs {len(students)} student(s)")
    job = BoundaryAnalysis(teacher.model, students, teacher.dataset, config, run)
    job.subscribe(ProgressBar(("magsim", "angsim", "both_accepted"), args.quiet))
    job.run()
    if not job.results:
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    if args.json:
        print(json.dumps(json_ready({"run": run.id, "status": job.status, **job.result}), indent=2))
    else:
        print_table(job.result)
        print(f"run {run.id} [{job.status}] -> {run.dir} (boundary.json, boundary_pairs.pt, boundary_bars.json)")
    return 0 if job.status == "done" else 1


def add_commands(sub) -> None:
    b = sub.add_parser("boundary", help="MagSim / AngSim decision-boundary similarity of students (docs/methods.md#bss)",
                       description="Attack teacher and students from the same real base samples toward the same "
                                   "target classes (BSS attack) and compare the perturbations' lengths (MagSim) "
                                   "and directions (AngSim), weighted by p_n^k over pairs both models crossed.")
    b.add_argument("--teacher", required=True, help="checkpoint path or run id")
    b.add_argument("--student", required=True, action="append",
                   help="checkpoint path or run id, or untrained:<model> (a freshly initialised reference); repeat "
                        "to compare several on the same base samples")
    b.add_argument("--samples", type=int, default=500, help="base samples N")
    b.add_argument("--pool", type=int, default=0, help="draw base samples from a random subset of this size "
                                                          "(0: the whole split)")
    b.add_argument("--split", default="test", choices=["test", "train"])
    b.add_argument("--targets", default="all", choices=["all", "sampled"],
                   help="all: every k ≠ b weighted by p_n^k; sampled: one k drawn ∝ p_n^k per base sample")
    b.add_argument("--selection", default="random", choices=["random", "gap"],
                   help="random: uniform among the samples every model gets right (estimates the value over all of "
                        "them); gap: the largest Σ_k (p_T,k − p_S,k)², as BSS-KD picks its training samples (the value "
                        "then depends on --samples)")
    b.add_argument("--eta", type=float, default=METRIC_ATTACK.eta, help="attack step factor η")
    b.add_argument("--eps", type=float, default=METRIC_ATTACK.eps, help="attack overshoot ε")
    b.add_argument("--max-steps", type=int, default=METRIC_ATTACK.max_steps, help="attack step limit I")
    b.add_argument("--gradient-norm-power", type=int, default=2, choices=[1, 2],
                   help="2: step / ||∇||² (the paper's); 1: step / ||∇|| (official BSS code)")
    b.add_argument("--batch-size", type=int, default=1024)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    b.add_argument("--data-root", help="where the teacher's dataset lives (default: $DFKD_<NAME>, then the "
                                       "standard location)")
    b.add_argument("--json", action="store_true", help="print the results, intervals included, as JSON")
    b.set_defaults(func=cmd_boundary)
