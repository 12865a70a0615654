"""How many images does KD need, when the images are real? The ceiling a synthesized pool of that size can reach.

Each row distills the teacher into its half-width student on a random subset of the real training images, used
exactly like a synthesized pool (`--pool`: KD on the teacher's outputs, labels unused), then tests on the real test
set. If 2,000 real images already come close to the whole training set, a 2,000-image pool that falls short is
short on quality, not on count.

    python benchmarks/real_subset_kd.py --teacher <fashion bncnn6_w32 model.pt> --sizes 2000 10000 --threads 1
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dfkd_core.data import load_split
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--steps", type=int, default=2000, help="KD steps (batch 128), as in the fashion-10min recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_checkpoint(RunStore().resolve_checkpoint(args.teacher))
    train = load_split(teacher.dataset.name, "train", teacher.dataset.root, teacher.dataset.image_size)
    print("| real images | student acc | teacher acc | ratio | minutes |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            subset = train.subset(min(n, len(train)), seed=args.seed)
            path = SyntheticPool(teacher.dataset, subset.normalized(), subset.labels).save(Path(tmp) / f"real{n}.pt")
            config = DistillConfig(method="deepinversion", pool=str(path), steps=args.steps, seed=args.seed,
                                   eval_every=args.steps)
            job = DistillJob(teacher, config)
            job.run()
            r = job.result
            print(f"| {len(subset):,} | {r['student_accuracy']:.2%} | {r['teacher_accuracy']:.2%} | {r['ratio']:.3f} "
                  f"| {r['wall_minutes']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
