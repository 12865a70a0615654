"""Is a data-free student held back by its BatchNorm statistics? (issue 19, a lever to measure)

A pool student trains with half of each batch mixed (λ·x_i + (1−λ)·x_j), so its BN running statistics describe
mixes and inversions, not the real images it is tested on. For each finished distillation run this script
re-estimates the student's BN statistics (weights untouched: a cumulative average over the images, then eval mode)
on

- `pool`: the run's own synthesized images with the training shift/flip but no mixing (data-free, no training);
- `pool+mix`: the same with the training's mixing (the distribution the running averages were meant to follow);
- `real (oracle)`: 2,000 real training images — NOT data-free, a diagnostic of how much BN statistics can matter;

and prints test accuracy with its 95% interval, the paired difference against the student as trained, and the
accuracy on the class where the student loses most against its teacher.

    python benchmarks/student_bn.py <distill run id> [<run id> ...] [--home ~/.dfkd]
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from dfkd_core.data import load_split
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.distill.results import load_test_hits
from dfkd_core.distill.student import mix_images, random_flip, random_shift, resolve_augment
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.stats import accuracy_interval, paired_difference_interval
from dfkd_core.training import evaluate


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device) -> nn.Module:
    """A copy of `model` whose BN running mean/var are the plain average over `batches` (weights unchanged)."""
    model = copy.deepcopy(model).to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average: every batch counts equally
    model.train()
    for x in batches:
        model(x.to(device))
    return model.eval()


def pool_batches(images: torch.Tensor, augment: str, max_shift: int, mixup: float, seed: int, batch: int = 200,
                 passes: int = 2):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(passes):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch):
            x = random_shift(images[order[i:i + batch]], max_shift, generator)
            if augment == "shift_flip":
                x = random_flip(x, generator)
            yield mix_images(x, mixup, generator)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished pool distillation runs (they keep images.pt)")
    p.add_argument("--home")
    p.add_argument("--data-root")
    p.add_argument("--real-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    device = torch.device("cpu")
    print("| run | BN statistics from | student acc [95% CI] | Δ vs as trained [95% CI] | worst class: acc |")
    print("|---|---|---|---|---|")
    for ref in args.runs:
        run = store.get(ref)
        config = run.load_json("config.json")
        student = load_checkpoint(run.dir / "model.pt")
        info = student.dataset
        test = load_split(info.name, "test", args.data_root, info.image_size)
        pool = SyntheticPool.load(run.dir / "images.pt", info)
        hits = load_test_hits(run)
        teacher_hits, labels = hits["hits"]["teacher"], hits["labels"]
        augment = resolve_augment(config.get("augment", "auto"), info)
        max_shift = max(1, info.image_size // 14) if augment != "none" else 0
        real = load_split(info.name, "train", args.data_root, info.image_size)
        real_x = real.normalized(torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
                                 [:args.real_images])
        variants = {
            "as trained": student.model.eval(),
            "pool": recalibrate_bn(student.model, pool_batches(pool.images, augment, max_shift, 0.0, 0), device),
            "pool+mix": recalibrate_bn(student.model, pool_batches(pool.images, augment, max_shift,
                                                                   float(config.get("mixup", 0.0)), 0), device),
            "real (oracle)": recalibrate_bn(student.model, real_x.split(200), device),
        }
        base = None
        worst = None
        for name, model in variants.items():
            correct = evaluate(model, test, device)["correct"]
            if base is None:
                base = correct
                gaps = [float(teacher_hits[labels == k].float().mean() - correct[labels == k].float().mean())
                        for k in range(info.num_classes)]
                worst = max(range(info.num_classes), key=lambda k: gaps[k])
            delta = paired_difference_interval(correct, base).format("+.2%") if name != "as trained" else "—"
            cls = f"{info.class_names[worst]}: {correct[labels == worst].float().mean():.1%}"
            print(f"| {run.id} | {name} | {accuracy_interval(correct).format('.2%')} | {delta} | {cls} |", flush=True)


if __name__ == "__main__":
    main()
