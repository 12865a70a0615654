"""Where do data-free students lose to their teachers? (issue 19: the per-class diagnosis behind the mean ratio)

For a set of finished distillation runs (e.g. the robustness table's students) this prints

1. the teacher − student accuracy gap per class, over the runs: mean, min, max, and the class's share of the overall
   gap (the test classes are balanced, so the overall gap is the mean of the class gaps);
2. for the class with the largest mean gap: how often teacher and student predict it on the real test images, and
   where each student sends the images of that class its teacher gets right;
3. the same prediction counts on the run's synthetic pool and on random mixes of it (λ·x_i + (1−λ)·x_j), which tell
   a student biased against the class (it under-predicts it on the pool too) from one that is wrong only where the
   pool has no images (it agrees with the teacher on the pool).

    python benchmarks/class_gaps.py <distill run id> [<run id> ...] [--home ~/.dfkd] [--class Shirt]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dfkd_core.data import load_split
from dfkd_core.distill.pool import SyntheticPool, pool_files
from dfkd_core.distill.results import load_test_hits, per_class_accuracy
from dfkd_core.distill.student import mix_images
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore


@torch.no_grad()
def predictions(model: torch.nn.Module, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


def pool_paths(run) -> list[Path] | None:
    """The run's own images.pt, else the pool files it reused (one or several), if they are all still there."""
    own = run.dir / "images.pt"
    if own.exists():
        return [own]
    paths = pool_files(run.load_json("config.json").get("pool"))
    return paths if paths and all(p.exists() for p in paths) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished distillation runs (with test_hits.pt)")
    p.add_argument("--home")
    p.add_argument("--data-root")
    p.add_argument("--class", dest="focus", help="the class to follow (default: the largest mean gap)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    runs = [store.get(ref) for ref in args.runs]
    students = [load_checkpoint(run.dir / "model.pt") for run in runs]
    info = students[0].dataset
    names = info.class_names or [str(k) for k in range(info.num_classes)]

    gaps = []
    for run in runs:
        hits = load_test_hits(run)
        teacher = per_class_accuracy(hits["hits"]["teacher"], hits["labels"], info.num_classes)
        student = per_class_accuracy(hits["hits"]["student"], hits["labels"], info.num_classes)
        gaps.append([100 * (t - s) for t, s in zip(teacher, student)])
    gaps = torch.tensor(gaps)
    overall = gaps.mean(1)
    print(f"{len(runs)} students: teacher − student {overall.mean():.2f} points on average "
          f"({overall.min():.2f}–{overall.max():.2f})\n")
    print("| class | gap, mean (points) | min | max | share of the overall gap |\n|---|---|---|---|---|")
    for k in gaps.mean(0).argsort(descending=True).tolist():
        col = gaps[:, k]
        print(f"| {names[k]} | {col.mean():+.1f} | {col.min():+.1f} | {col.max():+.1f} | "
              f"{col.sum() / info.num_classes / overall.sum():.0%} |")

    focus = names.index(args.focus) if args.focus else int(gaps.mean(0).argmax())
    test = load_split(info.name, "test", args.data_root, info.image_size)
    x, y = test.normalized(), test.labels
    teachers: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}   # path → (model, its test predictions)
    sent = torch.zeros(info.num_classes, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    print(f"\n| run | {names[focus]} said on the test images: teacher / student | on its pool: teacher / student "
          "| on mixes of the pool: teacher / student |\n|---|---|---|---|")
    for run, student in zip(runs, students):
        teacher_path = str(store.resolve_checkpoint(store.get_record(run.id).teacher))
        if teacher_path not in teachers:
            model = load_checkpoint(teacher_path).model
            teachers[teacher_path] = model, predictions(model, x)
        teacher, t_test = teachers[teacher_path]
        s_test = predictions(student.model, x)
        right = (y == focus) & (t_test == focus)
        sent += torch.bincount(s_test[right], minlength=info.num_classes)
        cells = [f"{int((t_test == focus).sum())} / {int((s_test == focus).sum())} of {len(y)}"]
        paths = pool_paths(run)
        if paths is None:
            cells += ["no pool", "no pool"]
        else:
            images = SyntheticPool.load(paths, info).images
            for data in (images, mix_images(images, 1.0, generator)):
                cells.append(f"{int((predictions(teacher, data) == focus).sum())} / "
                             f"{int((predictions(student.model, data) == focus).sum())} of {len(data)}")
        print(f"| {run.id} | " + " | ".join(cells) + " |", flush=True)
    total = int(sent.sum())
    print(f"\nthe {total} {names[focus]} test images the teachers get right, as their students classify them: "
          + ", ".join(f"{names[k]} {int(sent[k]) / total:.1%}" for k in sent.argsort(descending=True).tolist()
                      if sent[k]))


if __name__ == "__main__":
    main()
