"""What a pool recipe costs on this machine, from a short run: time per synthesis round (inversion iterations plus
trajectory KD steps) and per pool KD step, and the full recipe's time extrapolated from them.

    python benchmarks/recipe_cost.py --teacher <fashion bncnn6_w32 model.pt> [--recipe fashion-10min] [--threads 2]

Run it on a quiet machine: it is the number behind the README's "10 minutes on 2 cores" estimate.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.recipes import recipe_overrides
from dfkd_core.models import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--recipe", default="fashion-10min")
    p.add_argument("--method", default="deepinversion", choices=["deepdream", "deepinversion", "adi"])
    p.add_argument("--rounds", type=int, default=2, help="synthesis rounds to time")
    p.add_argument("--kd-steps", type=int, default=300, help="pool KD steps to time")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_checkpoint(args.teacher)
    full = recipe_overrides(args.recipe, args.method)
    per_round_images = full["synthesis"]["batch_size"]
    short = {**full, "images": args.rounds * per_round_images, "steps": args.kd_steps, "eval_every": 10 ** 9}
    job = DistillJob(copy.deepcopy(teacher), DistillConfig(method=args.method, **short))
    marks: list[tuple[float, str]] = []
    job.subscribe(lambda e: marks.append((time.time(), e.metrics.get("phase"))) if e.kind == "step" else None)
    job.run()
    last_synthesis = max(i for i, (_, phase) in enumerate(marks) if phase == "synthesis")
    rounds_end = marks[last_synthesis + 1][0]  # the round's last trajectory KD step
    per_round = (rounds_end - marks[0][0]) / args.rounds
    per_step = (marks[-1][0] - rounds_end) / (len(marks) - last_synthesis - 2)
    rounds = full["images"] // per_round_images
    print(f"{args.method}, recipe {args.recipe}, {args.threads} threads: {per_round:.1f} s per round, "
          f"{1000 * per_step:.0f} ms per pool KD step; the full recipe ({rounds} rounds + {full['steps']} steps) "
          f"≈ {(rounds * per_round + full['steps'] * per_step) / 60:.1f} min plus evaluation")


if __name__ == "__main__":
    main()
