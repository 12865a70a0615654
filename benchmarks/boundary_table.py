"""README evidence for methods.md#bss: does BSS-KD give students decision boundaries closer to the teacher's than KD?

Trains half-width students of a teacher with the SAME step budget (batch, lr, schedule, temperature) as
    scratch   CE on the real labels only (no teacher)
    KD        real-kd: CE + KD on the real training set
    BSS-KD    bss: CE + α·KD + β·KD on boundary-supporting samples (official α/β epoch schedules)
for each seed, adds given data-free students, and measures every student against the teacher in ONE
`compare_students` call, so all share the same base samples and targets. Prints

    student | accuracy | MagSim | AngSim | accepted pairs

each with its 95% bootstrap interval (accuracy over test images, MagSim/AngSim over base samples), plus, for each
seed, BSS-KD − KD with the tool's paired interval (`paired_differences`: the same base samples resampled for both).

    python benchmarks/boundary_table.py --teacher /work/helpers/fmnist_teacher_bncnn6_w32.pt \\
        --data-free /tmp/lead_home/runs/distill-20261125-065727-ac5d/model.pt --steps 600 --seeds 0 1

Students are ordinary distill runs in the run store `--home` (open them in the app's Boundaries page);
`--student label=checkpoint` adds (or, with `--no-train`, replaces) students. One torch thread: CPU-fair timings.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dfkd_core.analysis.boundary import METRIC_ATTACK, compare_students, paired_differences
from dfkd_core.data import load_split
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.stats import Interval, accuracy_interval
from dfkd_core.training import evaluate

DEFAULT_TEACHER = "/work/helpers/fmnist_teacher_bncnn6_w32.pt"
DEFAULT_DATA_FREE = "/tmp/lead_home/runs/distill-20261125-065727-ac5d/model.pt"
TRAINED = {"scratch": ("scratch", {}), "KD": ("real-kd", {"alpha_ce": 1.0}), "BSS-KD": ("bss", {})}


def train_student(teacher_path: str, store: RunStore, label: str, seed: int, args) -> tuple[str, float, float]:
    """One student as a distill run; returns (model.pt, test accuracy, minutes)."""
    method, extra = TRAINED[label]
    options = {"base_samples": args.base_samples} if method == "bss" else {}
    config = DistillConfig(method=method, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           temperature=args.temperature, seed=seed, eval_every=max(1, args.steps // 4),
                           options=options, **extra)
    teacher = load_checkpoint(teacher_path)
    job = DistillJob(teacher, config)   # first: a method completes its options in config (saved below)
    job.run_record = store.create("distill", {**config.to_dict(), "teacher": teacher_path}, method=method,
                                  dataset=teacher.dataset.name,
                                  name=f"{label} seed {seed}: {teacher.name} (boundary table)")
    job.run()
    run = job.run_record
    if job.status != "done":
        raise SystemExit(f"{label} seed {seed} {job.status}: {job.error}")
    r = job.result
    accepted = f", BSS accepted {r['bss_acceptance']:.0%} of {r['bss_base_samples']}" if method == "bss" else ""
    print(f"  {label:7} seed {seed}: {r['student_accuracy']:.2%} in {r['wall_minutes']:.1f} min{accepted} "
          f"[{run.id}]", flush=True)
    return r["checkpoint"], r["student_accuracy"], r["wall_minutes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=DEFAULT_TEACHER)
    p.add_argument("--data-free", action="append", default=None,
                   help=f"data-free student checkpoint(s) (default: {DEFAULT_DATA_FREE})")
    p.add_argument("--student", action="append", default=[], metavar="LABEL=CHECKPOINT", help="more students")
    p.add_argument("--no-train", action="store_true", help="only the --student / --data-free checkpoints")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=600, help="student steps, the same for every trained student")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=3.0, help="KD temperature (official BSS code: 3)")
    p.add_argument("--base-samples", type=int, default=64, help="BSS-KD base samples per batch")
    p.add_argument("--samples", type=int, default=500, help="base samples of the metric (test split)")
    p.add_argument("--home", default="/tmp/boundary_table_home", help="run store for the trained students")
    p.add_argument("--out", help="write the table as JSON here")
    p.add_argument("--data-root", help="where the teacher's dataset lives (default: $DFKD_<NAME>, then standard)")
    args = p.parse_args()
    torch.set_num_threads(1)

    store = RunStore(args.home)
    students: dict[str, str] = {}
    minutes: dict[str, float] = {}
    if not args.no_train:
        print(f"training {len(TRAINED) * len(args.seeds)} students, {args.steps} steps each", flush=True)
        for seed in args.seeds:
            for label in TRAINED:
                name = f"{label} s{seed}"
                students[name], _, minutes[name] = train_student(args.teacher, store, label, seed, args)
    for path in args.data_free if args.data_free is not None else [DEFAULT_DATA_FREE]:
        students[f"data-free {Path(path).parent.name[-4:]}"] = path
    for pair in args.student:
        label, _, path = pair.partition("=")
        students[label] = path

    teacher = load_checkpoint(args.teacher)
    test = load_split(teacher.dataset.name, "test", args.data_root)
    models = {name: load_checkpoint(path).model.eval() for name, path in students.items()}
    hits: dict[str, Interval] = {name: accuracy_interval(evaluate(model, test)["correct"])
                                 for name, model in models.items()}
    start = time.time()
    comparison = compare_students(teacher.model.eval(), models, test.normalized(), test.labels, n_base=args.samples,
                                  settings=METRIC_ATTACK, pixel_bounds=teacher.dataset.pixel_bounds(),
                                  progress=lambda m: print("  " + m, flush=True))
    pairs, t_counts = comparison.pairs, comparison.teacher_attack.counts()
    print(f"\nteacher {teacher.name} {accuracy_interval(evaluate(teacher.model, test)['correct']).format('.2%')}; "
          f"{len(pairs.labels)} base "
          f"samples (test split), {len(pairs)} (n, k) pairs weighted by p_n^k; attack η={METRIC_ATTACK.eta}, "
          f"I={METRIC_ATTACK.max_steps}; teacher accepted {t_counts['accepted']}; {time.time() - start:.0f} s\n")
    rows = []
    print("| student | accuracy | MagSim | AngSim | accepted pairs |")
    print("|---|---|---|---|---|")
    for name, r in comparison.results.items():
        rows.append({"student": name, "checkpoint": students[name], "accuracy": hits[name].to_dict(),
                     "magsim": r.magsim_interval.to_dict(), "angsim": r.angsim_interval.to_dict(),
                     "both_accepted": r.both_accepted, "student_accepted": r.student_accepted, "pairs": r.pairs,
                     "train_minutes": minutes.get(name)})
        print(f"| {name} | {hits[name].format('.2%')} | {r.magsim_interval} | {r.angsim_interval} | "
              f"{r.both_accepted} / {r.pairs}{' (too few)' if r.too_few_pairs else ''} |")
    print()
    for seed in args.seeds:
        bss, kd = comparison.results.get(f"BSS-KD s{seed}"), comparison.results.get(f"KD s{seed}")
        if bss is None or kd is None:
            continue
        (d,) = paired_differences({"BSS-KD": bss, "KD": kd})
        for key, metric in (("magsim", "MagSim"), ("angsim", "AngSim")):
            difference = Interval.from_dict(d[key]).format("+.3f")
            print(f"seed {seed}: {metric}(BSS-KD) − {metric}(KD) = {difference} (95% CI)")
    if args.out:
        Path(args.out).write_text(json.dumps({"teacher": args.teacher, "args": vars(args), "rows": rows,
                                              "base_samples": len(pairs.labels), "pairs": len(pairs)}, indent=2))


if __name__ == "__main__":
    main()
