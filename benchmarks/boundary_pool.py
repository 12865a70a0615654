"""Boundary-supporting samples added to a synthesized pool (issue 19, a lever to measure)

The `fashion-best` students fail on Shirt / Coat / Pullover: real images of those classes lie near the teacher's
decision boundaries, while DeepInversion's images are confident prototypes. This script attacks every image x of a
stored pool on the teacher alone, from its teacher class b toward one class k ≠ b drawn ∝ p_T,k (methods.md#bss's BSS
attack: η = 1, 20 steps, step ÷ ||∇L_a||², clamped to the valid pixel range), keeps the accepted samples (just across
the b|k boundary) and writes pool ∪ BSS as an images.pt that `dfkd distill --pool` reads. No student is involved, so
this costs ~20 teacher forward+backward passes per pool image, once.

    python benchmarks/boundary_pool.py <distill or synthesis run id> --out /tmp/bss_pool.pt
    dfkd distill --teacher <its teacher> --method deepinversion --recipe fashion-best --pool /tmp/bss_pool.pt --seed S
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch

from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis.bss import AttackSettings, sample_target_classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run with images.pt (the pool) whose teacher to attack")
    p.add_argument("--out", required=True)
    p.add_argument("--home")
    p.add_argument("--share", type=float, default=1.0, help="share of the pool's images attacked")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = RunStore(args.home)
    run = store.get(args.run)
    teacher_ref = run.record().teacher
    teacher = load_checkpoint(store.resolve_checkpoint(teacher_ref, "model.pt"))
    info = teacher.dataset
    model = teacher.model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    pool = SyntheticPool.load(run.dir / "images.pt", info)
    generator = torch.Generator().manual_seed(args.seed)
    n = int(round(args.share * len(pool)))
    chosen = torch.randperm(len(pool), generator=generator)[:n]
    attack = AttackSettings(eta=args.eta, max_steps=args.max_steps).build(model, info.pixel_bounds())
    kept, kept_targets, pairs, outcomes = [], [], Counter(), Counter()
    for i in range(0, n, 200):
        x = pool.images[chosen[i:i + 200]].float()
        with torch.no_grad():
            probs = model(x).softmax(1)
        base = probs.argmax(1)
        target, _ = sample_target_classes(probs, base, generator)
        result = attack.attack(x, base, target)
        ok = result.accepted
        kept.append(result.adversarial[ok].detach())
        kept_targets.append(base[ok])
        outcomes.update(result.counts())
        pairs.update(zip((info.class_names[b] for b in base[ok].tolist()),
                         (info.class_names[k] for k in target[ok].tolist())))
        print(f"  {min(i + 200, n)} / {n} attacked, {sum(len(k) for k in kept)} accepted", flush=True)
    samples, targets = torch.cat(kept), torch.cat(kept_targets)
    out = SyntheticPool(info, torch.cat([pool.images, samples.to(pool.images.dtype)]),
                        torch.cat([pool.targets, targets.to(pool.targets.dtype)]))
    out.save(args.out)
    print(f"\n{run.id}: {len(pool)} pool images + {len(samples)} BSS ({dict(outcomes)}) → {args.out}")
    print("most frequent boundaries (teacher class → target):",
          ", ".join(f"{b}→{k} {c}" for (b, k), c in pairs.most_common(8)))


if __name__ == "__main__":
    main()
