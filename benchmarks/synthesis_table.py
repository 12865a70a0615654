"""DeepDream vs DeepInversion on one teacher and seed: teacher accuracy on the batch, BN distance, speed, grids.

    python benchmarks/synthesis_table.py --teacher <ckpt|run id> [--batch-size 100] [--iterations 200]
        [--alpha-f 1 0.3] [--threads 2] [--out docs/images]

Prints one row per setting and writes a labelled grid of each batch to --out (the README embeds them).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis import ModelInversion, SynthesisConfig
from dfkd_core.synthesis.images import save_grid


def run_setting(teacher, method: str, overrides: dict) -> tuple[dict, torch.Tensor]:
    config = SynthesisConfig.preset(method, teacher.dataset.name, **overrides)
    job = ModelInversion(teacher.model, teacher.dataset, config)
    start = time.perf_counter()
    job.run()
    seconds = time.perf_counter() - start
    if job.status != "done":
        raise SystemExit(f"{method} {overrides}: {job.status}: {job.error}")
    r = job.result
    row = {"method": method, "alpha_f": config.alpha_f, "lr": config.lr, "iterations": config.iterations,
           "teacher_acc": r["teacher_accuracy"], "confidence": r["mean_confidence"],
           "bn_start": r["bn_distance_start"], "bn_end": r["bn_distance_end"], "seconds": seconds,
           "images_per_s": config.batch_size / seconds}
    order = torch.argsort(job.targets.cpu(), stable=True)  # one row per class reads best in a README
    return row, teacher.dataset.denormalize(job.images()[order])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--alpha-f", type=float, nargs="+", default=[1.0, 0.3])
    p.add_argument("--extra-lr", type=float, nargs="*", default=[],
                   help="also run DeepInversion (α_f = 1) at these Adam learning rates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/images")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_checkpoint(RunStore().resolve_checkpoint(args.teacher))
    base = {"batch_size": args.batch_size, "iterations": args.iterations, "seed": args.seed, "device": "cpu"}
    settings = [("deepdream", {})] + [("deepinversion", {"alpha_f": a}) for a in args.alpha_f]
    settings += [("deepinversion", {"alpha_f": 1.0, "lr": lr}) for lr in args.extra_lr]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"teacher {teacher.name} on {teacher.dataset.name} (test accuracy "
          f"{teacher.metrics.get('test_accuracy', float('nan')):.4f}), batch {args.batch_size}, "
          f"{args.iterations} iterations, seed {args.seed}, {args.threads} threads")
    print("| method | α_f | lr | teacher acc on batch | mean confidence | BN distance start → end | s | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for method, overrides in settings:
        row, images = run_setting(teacher, method, {**base, **overrides})
        lr_tag = f"_lr{row['lr']:g}" if "lr" in overrides else ""
        save_grid(images, out / f"{teacher.dataset.name}_{method}_af{row['alpha_f']:g}{lr_tag}.png",
                  nrow=args.batch_size // teacher.dataset.num_classes)
        print(f"| {method} | {row['alpha_f']:g} | {row['lr']:g} | {row['teacher_acc']:.1%} | "
              f"{row['confidence']:.3f} | {row['bn_start']:.1f} → {row['bn_end']:.1f} | {row['seconds']:.1f} | "
              f"{row['images_per_s']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
