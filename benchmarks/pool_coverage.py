"""Do synthetic images lie where the real ones do? (issue 19: the coverage behind the Shirt gap)

For a teacher and one batch of inversions per setting (the same noise and seed for each), prints per class:

- the teacher's probability of the class on the synthetic images of that class against the real test images of it
  (median and 10% quantile): a pool much surer than the data sits at prototypes, away from where hard real images
  lie;
- coverage: for each real test image, the cosine similarity of the teacher's features (last block before the
  classifier, averaged over space) with its nearest synthetic image; the class mean, higher is closer;
- detail dependence: of the images the teacher puts in their class, the share it still puts there after a Gaussian
  blur (σ = --blur-sigma pixels). Low means the teacher's evidence for the class lies in fine detail; a pool whose
  class survives the blur far more often than the real images' does carries coarser evidence than the data.

    python benchmarks/pool_coverage.py --teacher <run id | model.pt> --variant "" --variant alpha_f=0.3
    python benchmarks/pool_coverage.py --teacher <run> --variant alpha_f=0.3,alpha_tv=1e-4 --iterations 100
    python benchmarks/pool_coverage.py --teacher <run> --pool <run>/images.pt      # stored pools only
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from dfkd_core.analysis.image_debug import embed, feature_layer
from dfkd_core.data import load_split
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis import ModelInversion, SynthesisConfig


@torch.no_grad()
def probabilities(teacher: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    teacher.eval()
    return torch.cat([teacher(images[i:i + 1000]).float().softmax(1) for i in range(0, len(images), 1000)])


def kept_under_blur(teacher: torch.nn.Module, images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                    sigma: float) -> torch.Tensor:
    """Per image: NaN where the teacher does not put it in its class (`probs`: its probabilities on `images`), else
    whether it still does after the blur."""
    before = probs.argmax(1)
    after = probabilities(teacher, gaussian_blur(images, [7, 7], [sigma, sigma])).argmax(1)
    kept = (after == labels).float()
    return torch.where(before == labels, kept, torch.full_like(kept, float("nan")))


def coverage(real_features: torch.Tensor, pool_features: torch.Tensor) -> torch.Tensor:
    """For each real image, the cosine similarity with its nearest pool image (features L2-normalized)."""
    return torch.cat([(real_features[i:i + 2000] @ pool_features.T).max(1).values
                      for i in range(0, len(real_features), 2000)])


def describe(name: str, teacher, images, targets, real, real_features, layer, names, sigma: float) -> list[str]:
    probs = probabilities(teacher, images)
    p_pool = probs.gather(1, targets[:, None]).flatten()
    near = coverage(real_features, embed(teacher, images, layer))
    kept = kept_under_blur(teacher, images, probs, targets, sigma)
    rows = []
    for k, class_name in enumerate(names):
        mine = targets == k
        theirs = real.labels == k
        rows.append(f"| {name} | {class_name} | {p_pool[mine].median():.3f} / {p_pool[mine].quantile(0.1):.3f} | "
                    f"{near[theirs].mean():.3f} | {kept[mine].nanmean():.3f} |")
    rows.append(f"| {name} | **all** | {p_pool.median():.3f} / {p_pool.quantile(0.1):.3f} | **{near.mean():.3f}** | "
                f"{kept.nanmean():.3f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher run id or model.pt")
    p.add_argument("--home")
    p.add_argument("--data-root")
    p.add_argument("--variant", action="append", metavar="KEY=VALUE,...",
                   help="settings of one batch (SynthesisConfig fields over the DeepInversion preset of the "
                        "dataset); repeat for several; \"\" is the preset itself (the default without --pool)")
    p.add_argument("--pool", nargs="*", default=[], help="stored images.pt files to describe as well")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blur-sigma", type=float, default=0.8, help="σ of the detail-dependence blur, in pixels")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    path = store.resolve_checkpoint(args.teacher)
    checkpoint = load_checkpoint(path)
    teacher, info = checkpoint.model.eval(), checkpoint.dataset
    names = info.class_names or [str(k) for k in range(info.num_classes)]
    real = load_split(info.name, "test", args.data_root)
    real_images = real.normalized()
    layer = feature_layer(teacher, real_images[:2])
    real_features = embed(teacher, real, layer)
    probs_real = probabilities(teacher, real_images)
    p_real = probs_real.gather(1, real.labels[:, None]).flatten()
    kept_real = kept_under_blur(teacher, real_images, probs_real, real.labels, args.blur_sigma)
    print(f"teacher {path}; coverage in `{layer}` features; {len(real)} real test images; blur σ {args.blur_sigma}")
    print("| images | class | teacher p(class): median / 10% quantile | coverage of the class's real images | "
          "class kept under blur |")
    print("|---|---|---|---|---|")
    for k, class_name in enumerate(names):
        theirs = real.labels == k
        mine = p_real[theirs]
        print(f"| real test | {class_name} | {mine.median():.3f} / {mine.quantile(0.1):.3f} | — | "
              f"{kept_real[theirs].nanmean():.3f} |")
    print(f"| real test | **all** | {p_real.median():.3f} / {p_real.quantile(0.1):.3f} | — | "
          f"{kept_real.nanmean():.3f} |")
    for variant in args.variant or ([] if args.pool else [""]):   # stored pools alone: nothing to synthesize
        started = time.time()
        settings = {k: json.loads(v) for k, _, v in (pair.partition("=") for pair in variant.split(",") if pair)}
        config = SynthesisConfig.preset("deepinversion", info.name, **{
            "batch_size": args.batch_size, "iterations": args.iterations, "seed": args.seed, "snapshot_every": 0,
            **settings})
        job = ModelInversion(teacher, info, config)
        job.run()
        if job.status != "done":
            raise SystemExit(f"{variant or 'preset'}: {job.status}: {job.error}")
        rows = describe(f"{variant or 'preset'} (BN distance {job.result['bn_distance_end']:.1f}, "
                        f"{time.time() - started:.0f} s)", teacher, job.images(), job.targets.cpu(), real,
                        real_features, layer, names, args.blur_sigma)
        print("\n".join(rows), flush=True)
        teacher = job.teacher.eval()
    for file in args.pool:
        pool = SyntheticPool.load(file, info)
        print("\n".join(describe(f"pool {file}", teacher, pool.images, pool.targets, real, real_features, layer,
                                 names, args.blur_sigma)), flush=True)


if __name__ == "__main__":
    main()
