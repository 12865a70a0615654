"""Bring your own teacher, end to end on Fashion-MNIST: a stock torchvision classifier trained the way a user's own
script does it, imported, then distilled data-free.

For each seed: (1) train `torchvision.models.<arch>` (its first convolution made grayscale, as users do) in a plain
loop on Fashion-MNIST with ToTensor() only (pixels in [0, 1], no normalization), and save it as training scripts do
(`{"state_dict": …, "epoch": …}` under DataParallel's `module.` prefix); (2) import it twice: with the normalization
it was trained with (`none`), whose test accuracy must equal the one the user's loop measured, and with the tool's
default (`dataset`), to see what a wrong choice costs and whether the import says so; (3) distill a student from the
imported teacher with a recipe, no real image seen. Prints one row per seed and the mean ratio with its t-interval
over seeds.

    python benchmarks/import_teacher.py --home /tmp/byo --arch resnet18 --epochs 1 --seeds 0 1 2
    python benchmarks/import_teacher.py --home /tmp/byo --arch resnet18 --seeds 0 --recipe fashion-5min
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dfkd_core.data import load_split
from dfkd_core.device import describe_machine
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.recipes import adapt_to_precision
from dfkd_core.models.imported import build_architecture
from dfkd_core.runs import RunStore
from dfkd_core.stats import Interval
from dfkd_core.teacher_import import ImportConfig, import_teacher
from robustness import mean_t_interval, parse_settings


def train_like_a_user(arch: str, epochs: int, seed: int, path: Path) -> tuple[float, float]:
    """A plain training loop outside the tool; returns (its own test accuracy, minutes)."""
    torch.manual_seed(seed)
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    net = build_architecture(f"torchvision:{arch}", 10, 1, 28).to(memory_format=torch.channels_last)
    steps = epochs * (len(train) // 128)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    started = time.time()
    net.train()
    order = torch.randperm(len(train))
    for step in range(steps):
        index = order[(step * 128) % len(order):][:128]
        if len(index) < 128:
            order = torch.randperm(len(train))
            index = order[:128]
        x = (train.images[index].float() / 255).contiguous(memory_format=torch.channels_last)   # ToTensor()
        loss = F.cross_entropy(net(x), train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        hits = torch.cat([net(test.images[i:i + 1000].float() / 255).argmax(1) == test.labels[i:i + 1000]
                          for i in range(0, len(test), 1000)])
    torch.save({"epoch": epochs, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return hits.float().mean().item(), (time.time() - started) / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="run store for the imported teachers and their students")
    p.add_argument("--arch", default="resnet18", help="a torchvision classification model (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--recipe", default="fashion-5min")
    p.add_argument("--method", default="deepinversion")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the recipe (synthesis.alpha_f=0.1)")
    args = p.parse_args()
    overrides = parse_settings(args.set)
    store, home = RunStore(args.home), Path(args.home)
    print(f"{describe_machine()}; torchvision:{args.arch}, {args.epochs} epoch(s), recipe {args.recipe}", flush=True)
    rows = []
    for seed in args.seeds:
        weights = home / f"{args.arch}_fashion_seed{seed}.pth"
        if weights.is_file():
            user_accuracy, train_minutes = float("nan"), float("nan")
            print(f"seed {seed}: reusing {weights}", flush=True)
        else:
            user_accuracy, train_minutes = train_like_a_user(args.arch, args.epochs, seed, weights)
            print(f"seed {seed}: the user's loop measured {user_accuracy:.2%} ({train_minutes:.1f} min)", flush=True)
        common = dict(weights=str(weights), arch=f"torchvision:{args.arch}", dataset="fashion-mnist")
        right = import_teacher(ImportConfig(**common, normalization="none",
                                            name=f"byo torchvision:{args.arch} seed {seed}"), store)
        wrong = import_teacher(ImportConfig(**common))   # not stored: what the tool's default would have read
        caught = "yes" if wrong.summary.get("better_normalization") == "none" else "no"
        config = DistillConfig(method=args.method, seed=seed,
                               **adapt_to_precision(args.recipe, args.method, overrides)[0])
        teacher = right.checkpoint
        job = DistillJob(teacher, config)
        job.run_record = store.create("distill", {**config.to_dict(), "teacher": teacher.path},
                                      teacher=right.run.id, method=args.method, dataset="fashion-mnist",
                                      name=f"byo {args.arch} seed {seed} · {args.recipe}"
                                      + "".join(f" {s}" for s in args.set))
        started = time.time()
        job.run()
        if job.status != "done":
            raise SystemExit(f"seed {seed}: {job.status}: {job.error}")
        ratio = Interval.from_dict(job.result["ratio_ci"])
        rows.append(dict(seed=seed, user=user_accuracy, imported=right.summary["test_accuracy"],
                         wrong=wrong.summary["test_accuracy"], caught=caught, student=job.result["student_accuracy"],
                         ratio=ratio, minutes=(time.time() - started) / 60, train=train_minutes,
                         student_name=job.student_name,
                         agreement=job.result.get("pool_teacher_agreement", float("nan"))))
        print(f"seed {seed}: student {job.student_name} {job.result['student_accuracy']:.2%}, ratio "
              f"{ratio.format('.3f')} in {rows[-1]['minutes']:.1f} min", flush=True)
    print(f"\n{' '.join(args.set) or 'recipe as measured'}")
    print("| seed | user's loop | imported (none) | read with dataset norm. | probe names `none` | pool given its "
          "class | student | ratio [95% CI] | distill min | train min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['user']:.2%} | {r['imported']:.2%} | {r['wrong']:.2%} | {r['caught']} | "
              f"{r['agreement']:.0%} | {r['student_name']} {r['student']:.2%} | {r['ratio'].format('.3f')} | "
              f"{r['minutes']:.1f} | {r['train']:.1f} |")
    if len(rows) > 1:
        mean, low, high = mean_t_interval([r["ratio"].estimate for r in rows])
        print(f"\nmean ratio {mean:.3f} [{low:.3f}, {high:.3f}] over {len(rows)} seeds (95% t-interval); "
              f"min {min(r['ratio'].estimate for r in rows):.3f}")


if __name__ == "__main__":
    main()
