"""Does a recipe hold across teachers and seeds? (issue 19)

Trains (or reuses) teachers with seeds T, and for each runs the distillation recipe with synthesis+KD seeds S:
|T| × |S| students. Prints every student's accuracy and ratio with their 95% intervals over the test images, the
minimum and the mean ratio with a 95% t-interval over the students (the seed-to-seed spread, which the per-run
intervals do not cover), per-class accuracy of the worst student against its teacher, and the time.

A full Fashion-MNIST `fashion-best` table is 9 runs of 20–35 CPU minutes each, so the script resumes: teachers and
students already in the run store (found by the run names this script gives them) are reused, and the table can be
completed over several sittings.

    python benchmarks/robustness.py --home ~/.dfkd --recipe fashion-best                      # 3 teachers x 3 seeds
    python benchmarks/robustness.py --dataset digits --recipe digits-quick --teacher-epochs 20   # a quick check
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from dfkd_core.device import describe_machine
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.recipes import list_recipes, recipe_overrides
from dfkd_core.distill.results import load_test_hits
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.stats import Interval
from dfkd_core.training import TeacherConfig, TeacherTraining

# Two-sided 95% quantiles of Student's t for small sample sizes (df = n − 1), so no scipy is needed.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}


def mean_t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean ± t_{0.975, n−1} · s / √n over runs (NaN bounds below two runs)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def find_run(store: RunStore, kind: str, name: str):
    """The newest finished run of this kind and name (a run this script made before), else None."""
    return next((r for r in store.list(kind=kind, status="done") if r.name == name), None)


def teacher_for(seed: int, args, store: RunStore):
    name = f"robustness teacher {args.teacher_model} {args.dataset} seed {seed} ({args.teacher_epochs} epochs)"
    record = find_run(store, "teacher", name)
    if record is None:
        job = TeacherTraining(TeacherConfig(dataset=args.dataset, model=args.teacher_model,
                                            epochs=args.teacher_epochs, seed=seed, data_root=args.data_root))
        job.run_record = store.create("teacher", job.config.to_dict(), method=job.config.model,
                                      dataset=args.dataset, name=name)
        job.run()
        if job.status != "done":
            raise SystemExit(f"teacher seed {seed}: {job.status}: {job.error}")
        record = job.run_record.record()
        print(f"  {name}: {job.result['test_accuracy']:.2%}", flush=True)
    return record


def student_for(teacher_record, teacher_seed: int, seed: int, args, store: RunStore):
    name = f"robustness {args.method} [{args.recipe}] teacher seed {teacher_seed} seed {seed}"
    record = find_run(store, "distill", name)
    if record is not None:
        return record, False
    teacher = load_checkpoint(teacher_record.dir / "model.pt")
    config = DistillConfig(method=args.method, seed=seed, device=args.device, data_root=args.data_root,
                           **recipe_overrides(args.recipe, args.method))
    job = DistillJob(teacher, config)
    job.run_record = store.create("distill", {**config.to_dict(), "teacher": str(teacher.path)},
                                  teacher=teacher_record.id, method=args.method, dataset=teacher.dataset.name,
                                  name=name)
    started = time.time()
    job.run()
    if job.status != "done":
        raise SystemExit(f"{name}: {job.status}: {job.error}")
    print(f"  {name}: {job.result['student_accuracy']:.2%} in {(time.time() - started) / 60:.1f} min", flush=True)
    return job.run_record.record(), True


def per_class(record) -> dict[str, list[float]]:
    hits = load_test_hits(record)
    labels = hits["labels"]
    classes = sorted(set(labels.tolist()))
    return {model: [float(h[labels == k].float().mean()) for k in classes] for model, h in hits["hits"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="run store (default $DFKD_HOME or ~/.dfkd); reused between sittings")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root")
    p.add_argument("--teacher-model", default="bncnn6_w32")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teachers", type=int, nargs="+", default=[0, 1, 2], help="teacher seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synthesis+KD seeds per teacher")
    p.add_argument("--method", default="deepinversion")
    p.add_argument("--recipe", default="fashion-best", choices=list_recipes())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--only-table", action="store_true", help="print the table of what is stored; run nothing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    rows, started = [], time.time()
    for teacher_seed in args.teachers:
        if args.only_table:
            name = (f"robustness teacher {args.teacher_model} {args.dataset} seed {teacher_seed} "
                    f"({args.teacher_epochs} epochs)")
            teacher = find_run(store, "teacher", name)
            if teacher is None:
                continue
        else:
            teacher = teacher_for(teacher_seed, args, store)
        for seed in args.seeds:
            if args.only_table:
                record = find_run(store, "distill",
                                  f"robustness {args.method} [{args.recipe}] teacher seed {teacher_seed} seed {seed}")
                if record is None:
                    continue
            else:
                record, _ = student_for(teacher, teacher_seed, seed, args, store)
            rows.append((teacher_seed, seed, record))
    if not rows:
        raise SystemExit("no student in the run store yet")
    print(f"\n{args.method} [{args.recipe}], {args.dataset}: {args.teacher_model} teachers → students "
          f"(95% intervals over the test images)\nmachine: {describe_machine()}\n")
    print("| teacher seed | teacher acc | seed | student acc | ratio | minutes |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for teacher_seed, seed, record in rows:
        s = record.summary
        fmt = {k: Interval.from_dict(s[f"{k}_ci"]).format(".2%" if k != "ratio" else ".3f")
               for k in ("teacher_accuracy", "student_accuracy", "ratio")}
        ratios.append(s["ratio"])
        print(f"| {teacher_seed} | {fmt['teacher_accuracy']} | {seed} | {fmt['student_accuracy']} | {fmt['ratio']} "
              f"| {s['wall_minutes']:.1f} |")
    mean, low, high = mean_t_interval(ratios)
    print(f"\n{len(ratios)} students: ratio min {min(ratios):.3f}, mean {mean:.3f} (95% t-interval over students "
          f"[{low:.3f}, {high:.3f}]); {sum(r >= 0.95 for r in ratios)} of {len(ratios)} at or above 0.950")
    worst = min(rows, key=lambda row: row[2].summary["ratio"])
    names = load_checkpoint(worst[2].dir / "model.pt").dataset.class_names
    classes = per_class(worst[2])
    print(f"\nper-class accuracy of the worst student (teacher seed {worst[0]}, seed {worst[1]}):\n")
    print("| class | teacher | student | gap |")
    print("|---|---|---|---|")
    for k, (t, st) in enumerate(zip(classes["teacher"], classes["student"])):
        print(f"| {names[k] if names else k} | {t:.1%} | {st:.1%} | {st - t:+.1%} |")
    print(f"\nthis sitting: {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
