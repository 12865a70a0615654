"""Every distillation method on one teacher, one table (issue 5):

    method | data-free | student | student acc | teacher acc | ratio | minutes | images

(each accuracy and the ratio with its 95% bootstrap interval over the real test images),

plus the curve of student accuracy (held-out real test images) vs images synthesized for each data-free method.
Settings come from the named recipe in `dfkd_core/distill/recipes.py` (the CLI's `--recipe` uses the same ones).

    # Fashion-MNIST, width-32 BN CNN teacher → half width (teacher from `dfkd train-teacher --dataset fashion-mnist`)
    python benchmarks/dfkd_table.py --teacher <fashion bncnn6_w32 model.pt> --recipe fashion-10min
    # the same with the published LeNet-5 pair
    python benchmarks/dfkd_table.py --teacher <fashion lenet5 model.pt> --recipe fashion-10min
    # digits (trains its own teacher in seconds)
    python benchmarks/dfkd_table.py --dataset digits --recipe digits-quick

Runs land in the run store of --home (default $DFKD_HOME), so the app's Runs page can open and compare them.
`--json` writes every summary (with curves) for the README.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dfkd_core.distill import DISTILL_METHODS, DistillConfig, DistillJob
from dfkd_core.distill.recipes import DATASET_RECIPE, RECIPES, list_recipes, recipe_overrides
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.stats import Interval
from dfkd_core.training import TeacherConfig, train_teacher

DEFAULT_METHODS = ["noise", "deepdream", "deepinversion", "adi", "generator", "generator-ensemble", "real-kd"]


def teacher_checkpoint(args, store: RunStore):
    if args.teacher:
        return load_checkpoint(args.teacher)
    if args.dataset != "digits":
        raise SystemExit("--teacher is needed for datasets other than digits (train one with dfkd train-teacher)")
    job = train_teacher(TeacherConfig(dataset="digits", epochs=20, seed=args.seed), store)
    return load_checkpoint(job.run_record.path("model.pt"))


def distill(teacher, method: str, args, store: RunStore) -> dict:
    overrides = recipe_overrides(args.recipe, method)
    config = DistillConfig(method=method, seed=args.seed, device=args.device, **overrides)
    if args.student:
        config.student = args.student
    job = DistillJob(teacher, config)
    job.run_record = store.create("distill", {**config.to_dict(), "teacher": str(teacher.path)},
                                  teacher=store.run_id_of(teacher.path), method=method,
                                  dataset=teacher.dataset.name,
                                  name=f"{method} [{args.recipe}]: {teacher.name} → {job.student_name}")
    job.run()
    if job.status != "done":
        print(f"{method}: {job.status}: {job.error}", file=sys.stderr)
    summary = dict(job.result)
    summary["run"] = job.run_record.id
    return summary


def format_table(summaries: list[dict]) -> str:
    lines = ["| method | data-free | student | student acc [95% CI] | teacher acc [95% CI] | ratio [95% CI] | minutes "
             "| images |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        student, teacher, ratio = (Interval.from_dict(s[f"{k}_ci"]) for k in ("student_accuracy", "teacher_accuracy",
                                                                                "ratio"))
        lines.append(f"| {s['method']} | {'yes' if s['data_free'] else 'no'} | {s['student']} | "
                     f"{student.format('.2%')} | {teacher.format('.2%')} | {ratio.format('.3f')} | "
                     f"{s['wall_minutes']:.1f} | {s['images_synthesized']:,} |")
    return "\n".join(lines)


def format_curves(summaries: list[dict]) -> str:
    lines = ["| method | images synthesized → student acc (held-out real test subset) |", "|---|---|"]
    for s in summaries:
        if not s["data_free"]:
            continue
        points = ", ".join(f"{p['images_synthesized']:,}: {100 * p['student_accuracy']:.1f}%" for p in s["curve"])
        lines.append(f"| {s['method']} | {points} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="teacher checkpoint (model.pt); digits trains one when omitted")
    p.add_argument("--dataset", default="digits", help="only used when no --teacher is given")
    p.add_argument("--student", help="student model (default: the teacher's half-width student)")
    p.add_argument("--recipe", help=f"settings per method: {list_recipes()} (default: the dataset's)")
    p.add_argument("--methods", nargs="+", choices=list(DISTILL_METHODS),
                   help=f"default: those of {DEFAULT_METHODS} that the recipe has settings for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--home", help="run store (default $DFKD_HOME or ~/.dfkd)")
    p.add_argument("--json", type=Path, help="write all summaries here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    teacher = teacher_checkpoint(args, store)
    args.recipe = args.recipe or DATASET_RECIPE.get(teacher.dataset.name)
    if args.recipe is None:
        raise SystemExit(f"no recipe for dataset '{teacher.dataset.name}'; pass --recipe")
    print(f"teacher {teacher.name} on {teacher.dataset.name}, recipe {args.recipe}, {args.threads} threads",
          file=sys.stderr)
    summaries = []
    methods = args.methods or [m for m in DEFAULT_METHODS if m in RECIPES[args.recipe]["methods"]]
    for method in methods:
        summaries.append(distill(teacher, method, args, store))
        print(f"{method}: {100 * summaries[-1]['student_accuracy']:.2f}% in "
              f"{summaries[-1]['wall_minutes']:.1f} min", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(summaries, indent=1))
    print(format_table(summaries))
    print()
    print(format_curves(summaries))


if __name__ == "__main__":
    main()
