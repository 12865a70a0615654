"""Continual learning's replay, variant by variant, on ONE old model and ONE replay pool (issue 16): how λ_feat trades
old-class against new-class accuracy, and the variants tried and not kept. `dfkd continual` trains a new old model
and synthesizes a new pool in every run; here both are made once (and cached with --cache), so each variant costs
only its own training (about a minute on Fashion-MNIST with 2 threads) and the rows differ only by the variant.

    python benchmarks/continual_variants.py --dataset fashion-mnist --model bncnn6_w16 --seed 0 \\
        --weights 0 5 10 12 15 20 30 --variants lwf local-ce local-ce+lwf weight-align balanced-head

Rows: old / new / all-class accuracy on the real test set with 95% bootstrap intervals, the share of the old model's
old-class accuracy kept, and per-class accuracy. A weight row is `dfkd continual`'s replay with that
--feature-weight; the named variants (at λ_feat = 0 unless --variant-weight) are:

    lwf            + T² KL on the real new-class images between the old model's and the student's old-class logits
    local-ce       the new images' cross-entropy over the new classes' logits only
    weight-align   after training, the new classifier rows rescaled to the old rows' mean norm (Zhao et al. 2020)
    balanced-head  after training, the classifier alone re-trained on equal batches of real new and synthesized old
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn as nn

from dfkd_core.applications import continual as C
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.losses import cross_entropy_loss, feature_distillation_loss, kd_loss

VARIANTS = ("lwf", "local-ce", "local-ce+lwf", "weight-align", "balanced-head")


class VariantsJob(C.ContinualJob):
    def __init__(self, config: C.ContinualConfig, rows: list[tuple[str, float, set[str]]], cache: str | None):
        super().__init__(config)
        self.variant_rows, self.cache = rows, cache

    def old_model_and_replay(self):
        """The job's phases 1 and 2, or their cached result."""
        if not (self.cache and os.path.exists(self.cache)):
            yield from super().old_model_and_replay()
            if self.cache:
                torch.save({"old": self.old_model.state_dict(), "images": self.pool.images,
                            "targets": self.pool.targets}, self.cache)
            return
        self.split_classes()
        blob = torch.load(self.cache, weights_only=True)
        self.old_model = self.new_old_model()
        self.old_model.load_state_dict(blob["old"])
        self.old_model.eval()
        self.pool = SyntheticPool(self.old_info, blob["images"], blob["targets"])
        yield self._evaluate_old()

    def plan(self):
        c = self.config
        yield from self.old_model_and_replay()
        for name, weight, options in self.variant_rows:
            started = time.time()
            torch.manual_seed(c.seed)   # every variant: the same new head rows and batches, cached pool or not
            self.rng = torch.Generator().manual_seed(c.seed)
            c.feature_weight = weight   # what the job's own replay step reads
            model = self._grown()
            teacher = C.OldClassesTeacher(self.old_model, self.dataset.num_classes)
            with self.catching_features(model):
                yield from self._train(model, teacher, c.new_steps, name, lambda o=options: self._step(o))
            if "weight-align" in options:
                weight_align(model, self.k)
            if "balanced-head" in options:
                self._balanced_head(model)
            yield self._evaluate(model, name)
            self.rows[-1]["minutes"] = (time.time() - started) / 60

    def _step(self, options: set[str]) -> dict:
        """A λ_feat row is `dfkd continual`'s replay step itself; a named variant changes its terms."""
        if not options & {"lwf", "local-ce", "local-ce+lwf"}:
            return self._replay_step()
        c, k = self.config, self.k
        x_new, y_new = self._sample("new", c.batch_size)
        x_old = self.pool.sample(c.replay_batch, self.rng)[0]
        n = len(x_new)

        def terms(x, s, t):
            y = y_new.to(self.device)
            local = "local-ce" in options or "local-ce+lwf" in options
            out = {"ce_new": cross_entropy_loss(s[:n, k:], y - k) if local else cross_entropy_loss(s[:n], y),
                   "kd_replay": C.replay_kd_loss(s[n:], t[n:], c.temperature)}
            if "lwf" in options or "local-ce+lwf" in options:
                out["lwf"] = kd_loss(s[:n, :k], t[:n, :k], c.temperature)
            if c.feature_weight > 0:
                out["feature"] = feature_distillation_loss(self.features[0].features, self.features[1].features)
            return out
        return self.trainer.train_step(torch.cat([x_new, x_old]), extra_terms=terms,
                                       weights={"kd": 0.0, "feature": c.feature_weight})

    def _balanced_head(self, model: nn.Module, steps: int = 300) -> None:
        caught = C.PenultimateFeatures(model)
        head = C.last_linear(model)
        optimizer = torch.optim.Adam(head.parameters(), lr=self.config.lr)
        model.eval()
        for _ in range(steps):
            x_new, y_new = self._sample("new", self.config.batch_size)
            x_old = self.pool.sample(self.config.batch_size, self.rng)[0].to(self.device)
            with torch.no_grad():
                y_old = self.old_model(x_old).argmax(1)
                model(torch.cat([x_new.to(self.device), x_old]))
            loss = cross_entropy_loss(head(caught.features), torch.cat([y_new.to(self.device), y_old]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        caught.remove()


def percent(entry: dict) -> str:
    ci = entry["accuracy_ci"]
    return f"{entry['accuracy']:.2%} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]"


def weight_align(model: nn.Module, old_classes: int) -> None:
    head = C.last_linear(model)
    with torch.no_grad():
        ratio = head.weight[:old_classes].norm(dim=1).mean() / head.weight[old_classes:].norm(dim=1).mean()
        head.weight[old_classes:] *= ratio
        if head.bias is not None:
            head.bias[old_classes:] *= ratio


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--inv-iterations", type=int, default=200)
    p.add_argument("--inv-batch-size", type=int, default=200)
    p.add_argument("--old-steps", type=int, default=600)
    p.add_argument("--new-steps", type=int, default=600)
    p.add_argument("--weights", type=float, nargs="*", default=[0, 5, 10, 12, 15, 20, 30])
    p.add_argument("--variants", nargs="*", choices=VARIANTS, default=[])
    p.add_argument("--variant-weight", type=float, default=0.0, help="λ_feat of the named variants")
    p.add_argument("--cache", help="a file keeping the old model and pool between sittings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = C.ContinualConfig(dataset=args.dataset, model=args.model, seed=args.seed, images=args.images,
                               synthesis={"iterations": args.inv_iterations, "batch_size": args.inv_batch_size},
                               old_steps=args.old_steps, new_steps=args.new_steps, data_root=args.data_root)
    rows = [(f"λ_feat {w:g}", w, set()) for w in args.weights]
    rows += [(f"{v} (λ_feat {args.variant_weight:g})", args.variant_weight, {v}) for v in args.variants]
    job = VariantsJob(config, rows, args.cache)
    job.setup()
    for _ in job._plan:
        pass
    names = job.dataset.class_names
    print(f"{args.dataset}, {job.model_name}, seed {args.seed}: {job.k} old classes, {args.images} replay images, "
          f"{args.new_steps} steps per variant\n")
    print("| replay | old classes | new classes | all classes | old accuracy kept | "
          + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for row in job.rows:
        kept = f"{row['old_retention']:.1%}" if "old_retention" in row else "–"
        cells = [percent(row[p]) if p != "new" or row["model"] != "old model" else "–" for p in ("old", "new", "all")]
        print(f"| {row['model']} | " + " | ".join(cells) + f" | {kept} | "
              + " | ".join(f"{v:.0%}" for v in row["per_class"]) + " |")


if __name__ == "__main__":
    main()
