"""Data-free pruning (methods.md#applications; Yin et al. 2020, §4.3): rank conv filters by an importance measured on
the teacher's synthesized images, remove the least important ones until a target share of the FLOPs is left (smaller
tensors, `surgery.py`), and fine-tune the pruned network by KD (methods.md#knowledge-distillation) from the unpruned one
on those images.

    bn_scale   I_m = Σ_BN |γ_m|                                            Liu et al. 2017 (network slimming)
    taylor     I_m = (1/K) Σ_k ( Σ_BN γ_m ∂L_k/∂γ_m + β_m ∂L_k/∂β_m )²      Molchanov et al. 2019 (Taylor-FO-BN)

L_k is the cross-entropy of the unpruned network on synthesized batch k against the class each image was made
for. Every conv loses the same share of its filters (uniform allocation); the share is the smallest that brings the
FLOPs to the target. Each pruned network is reported four ways, one result row each:

    no fine-tune      the pruned weights as they are
    BN recalibrated   BN running statistics re-estimated on the synthesized images, no gradient step
    synthetic KD      KD from the unpruned teacher on the synthesized images (data-free)
    real KD           the same KD on real training images (not data-free: the reference it should approach)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.applications.common import (CompressionConfig, CompressionJob, accuracy_entry,
                                           recalibrate_bn_statistics, trainable_copy)
from dfkd_core.applications.surgery import (ChannelGroup, channel_groups, count_macs, registered_copy,
                                            remove_channels)
from dfkd_core.device import prepare_model
from dfkd_core.distill.config import DistillConfig
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.models import save_checkpoint
from dfkd_core.training import predict_logits

CRITERIA = ("taylor", "bn_scale")
VARIANTS = ("no fine-tune", "BN recalibrated", "synthetic KD", "real KD")
SEARCH_ITERATIONS = 14   # bisection steps on the removed share: 2^-14 is finer than one filter of any layer here


@dataclass
class PruningConfig(CompressionConfig):
    criteria: list[str] = field(default_factory=lambda: list(CRITERIA))
    keep_flops: list[float] = field(default_factory=lambda: [0.75, 0.5, 0.25])   # target shares of the FLOPs
    importance_images: int = 512      # synthesized images the Taylor criterion averages over
    finetune_steps: int = 300         # KD steps per pruned network and data source
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 4.0
    mixup: float = 0.0
    real_finetune: bool = True        # also fine-tune on real images (the non-data-free reference)

    def validate(self) -> None:
        """One sentence for the first bad setting, before any run exists."""
        self.validate_common()
        if not self.criteria or len(set(self.criteria)) != len(self.criteria) or \
                any(c not in CRITERIA for c in self.criteria):
            raise ValueError(f"criteria must be distinct names out of {list(CRITERIA)}, got {self.criteria}")
        if not self.keep_flops or any(not 0 < k < 1 for k in self.keep_flops):
            raise ValueError(f"keep_flops are shares of the FLOPs to keep, each in (0, 1), got {self.keep_flops}")
        if self.importance_images < 1 or self.batch_size < 1 or self.finetune_steps < 0:
            raise ValueError(f"importance_images and batch_size must be >= 1 and finetune_steps >= 0, got "
                             f"{self.importance_images}, {self.batch_size} and {self.finetune_steps}")
        if not self.lr > 0 or not self.temperature > 0 or not 0 <= self.mixup <= 1:
            raise ValueError(f"lr and temperature must be > 0 and mixup in [0, 1], got {self.lr}, "
                             f"{self.temperature} and {self.mixup}")


# ---------------------------------------------------------------------- criteria

def bn_scale_importance(group: ChannelGroup) -> torch.Tensor:
    """I_m = Σ_BN |γ_m| over the BN layers normalizing filter m (Liu et al. 2017): a filter whose BN scales it
    toward zero contributes little downstream. Reads weights only, no images."""
    return sum(bn.weight.detach().abs().cpu() for bn in group.batchnorms)


def taylor_fo_bn_term(group: ChannelGroup) -> torch.Tensor:
    """Σ_BN (γ_m ∂L/∂γ_m + β_m ∂L/∂β_m) for one minibatch: the first-order Taylor estimate of the change in L when
    filter m's normalized output is zeroed (Molchanov et al. 2019, eq. 8 on the BN parameters)."""
    return sum((bn.weight.detach() * bn.weight.grad + bn.bias.detach() * bn.bias.grad).cpu()
               for bn in group.batchnorms)


def taylor_importance(model: nn.Module, groups: list[ChannelGroup], images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int) -> Iterator[dict]:
    """I_m = mean over minibatches of taylor_fo_bn_term², with L = CE(model(x̂), y). Yields one metrics dict per
    minibatch and returns {group name: I} (use with `yield from`). The model stays in eval mode: the importance
    is that of the network as deployed."""
    model.eval()
    totals = {g.name: torch.zeros(g.channels) for g in groups}
    device = next(model.parameters()).device
    batches = range(0, len(images), batch_size)
    for start in batches:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[start:start + batch_size].to(device)),
                               labels[start:start + batch_size].to(device))
        loss.backward()
        for g in groups:
            totals[g.name] += taylor_fo_bn_term(g) ** 2
        yield {"phase": "importance", "importance_loss": float(loss.detach())}
    model.zero_grad(set_to_none=True)
    return {name: total / len(batches) for name, total in totals.items()}


# ---------------------------------------------------------------------- choosing what to remove

def removal_plan(groups: list[ChannelGroup], importance: dict[str, torch.Tensor], share: float
                 ) -> dict[str, list[int]]:
    """The ⌊share · n⌋ least important filters of every conv (n its filters), always keeping one."""
    plan = {}
    for g in groups:
        count = min(g.channels - 1, math.floor(share * g.channels))
        plan[g.name] = importance[g.name].argsort()[:count].tolist()
    return plan


def prune_to_flops(model: nn.Module, example: torch.Tensor, num_classes: int, importance: dict[str, torch.Tensor],
                   keep: float) -> tuple[nn.Module | None, float, float]:
    """A pruned copy of `model` (CPU) whose FLOPs are at most `keep` of the original, removing the smallest share
    of every conv's filters that gets there (bisection: FLOPs fall as the share grows). Returns (copy, share,
    MACs per image); the copy is None when even one filter per conv is more than `keep` allows."""
    model = trainable_copy(model).cpu().eval()
    target = keep * count_macs(model, example)
    groups = channel_groups(model, example, num_classes)
    low, high, best = 0.0, 1.0, (None, 1.0, math.inf)
    for _ in range(SEARCH_ITERATIONS):
        share = (low + high) / 2
        candidate = remove_channels(copy.deepcopy(model), example, removal_plan(groups, importance, share))
        macs = count_macs(candidate, example)
        if macs <= target:
            high, best = share, (candidate, share, macs)
        else:
            low = share
    if best[0] is None:
        candidate = remove_channels(copy.deepcopy(model), example, removal_plan(groups, importance, 1.0))
        macs = count_macs(candidate, example)
        if macs <= target:
            best = (candidate, 1.0, macs)
    return best


# ---------------------------------------------------------------------- the job

class PruningJob(CompressionJob):
    """`dfkd prune`: for every criterion and FLOPs target, prune the teacher and report the four variants."""

    kind = "prune"

    def __init__(self, teacher, config: PruningConfig, run=None, pool=None):
        super().__init__(teacher, config, run, pool)
        example = torch.zeros(2, self.dataset.in_channels, self.dataset.image_size, self.dataset.image_size)
        model = trainable_copy(teacher.model).cpu().eval()
        try:
            groups = channel_groups(model, example, self.dataset.num_classes)
        except Exception as e:   # a model torch-pruning cannot trace: say so before any run exists
            raise ValueError(f"cannot trace {teacher.name} for pruning: {str(e).splitlines()[0][:200]}") from None
        if not groups:
            raise ValueError(f"{teacher.name} has no conv layer that can be pruned")
        without_bn = [g.name for g in groups if not g.batchnorms]
        if without_bn:
            raise ValueError(f"{teacher.name} has conv layers without BatchNorm ({', '.join(without_bn[:3])}); both "
                             "pruning criteria read the BN layer after each pruned conv")
        fewest = remove_channels(copy.deepcopy(model), example,
                                 removal_plan(groups, {g.name: torch.zeros(g.channels) for g in groups}, 1.0))
        floor = count_macs(fewest, example) / count_macs(model, example)
        if min(config.keep_flops) < floor:
            raise ValueError(f"{teacher.name} keeps at least {floor:.1%} of its FLOPs with one filter per conv; "
                             f"keep_flops {min(config.keep_flops)} is below that")

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v != "real KD" or self.config.real_finetune]

    def count_steps(self) -> int:
        c = self.config
        taylor = math.ceil(min(c.importance_images, len(self.pool) or c.images) / c.batch_size) \
            if "taylor" in c.criteria else 0
        finetunes = len(self.variants()) - 2
        per_target = 3 + finetunes * (c.finetune_steps + 1)
        return self.synthesis_steps() + 1 + taylor + len(c.criteria) * len(c.keep_flops) * per_target + 1

    def plan(self) -> Iterator[dict]:
        c = self.config
        yield from self.synthesize_pool()
        self.example = self.latency_example()
        yield self._measure_unpruned()
        importance = {}
        if "bn_scale" in c.criteria:
            groups = self._groups(trainable_copy(self.teacher))
            importance["bn_scale"] = {g.name: bn_scale_importance(g) for g in groups}
        if "taylor" in c.criteria:
            importance["taylor"] = yield from self._taylor()
        for criterion in c.criteria:
            for keep in c.keep_flops:
                yield from self._prune_and_finetune(criterion, keep, importance[criterion])
        yield self.measure_latencies()

    # ------------------------------------------------------------------ phases
    def _groups(self, model: nn.Module) -> list[ChannelGroup]:
        example = self.example[:2].to(next(model.parameters()).device)
        return channel_groups(model, example, self.dataset.num_classes)

    def _measure_unpruned(self) -> dict:
        self.base_macs = count_macs(copy.deepcopy(self.teacher).cpu(), self.example)
        hits = self.test_hits(self.teacher, "unpruned")
        self.add_row({"criterion": "-", "keep_target": 1.0, "kept_flops": 1.0, "macs": self.base_macs,
                      "parameters": sum(p.numel() for p in self.teacher.parameters()),
                      "timing": self.time_later("unpruned", self.teacher), "latency_ms": None,
                      "variant": "unpruned", "data_free": True, **accuracy_entry(hits, self.config.seed)})
        return {"phase": "evaluate", "accuracy": self.rows[-1]["accuracy"]}

    def _taylor(self) -> Iterator[dict]:
        c = self.config
        count = min(c.importance_images, len(self.pool))
        if count < c.importance_images:
            self.notes.append(f"the Taylor criterion averaged over {count} synthesized images (the pool's size), "
                              f"not the {c.importance_images} asked for")
        images, targets = self.pool.images[:count], self.pool.targets[:count]
        predicted = predict_logits(self.teacher, images, self.device).argmax(1)
        labels = torch.where(targets >= 0, targets, predicted)   # the class it was made for, where the pool says
        model = trainable_copy(self.teacher)
        return (yield from taylor_importance(model, self._groups(model), images, labels, c.batch_size))

    def _prune_and_finetune(self, criterion: str, keep: float, importance: dict[str, torch.Tensor]
                            ) -> Iterator[dict]:
        pruned, share, macs = prune_to_flops(self.teacher, self.example, self.dataset.num_classes, importance, keep)
        if pruned is None:
            raise ValueError(f"keeping {keep:.0%} of the FLOPs is impossible with one filter left per conv; "
                             "choose a larger keep share")
        pruned = registered_copy(pruned, self.teacher_checkpoint.model_cfg)
        name = f"{criterion}-keep{round(100 * keep)}"
        architecture = {"criterion": criterion, "keep_target": keep, "kept_flops": macs / self.base_macs,
                        "macs": macs, "parameters": sum(p.numel() for p in pruned.parameters()),
                        "removed_share": share, "timing": self.time_later(name, pruned), "latency_ms": None}
        pruned = prepare_model(trainable_copy(pruned), self.device)
        yield {"phase": "prune", "criterion": criterion, "kept_flops": architecture["kept_flops"]}
        self._add_variant(architecture, "no fine-tune", pruned, name)
        yield {"phase": "evaluate"}
        recalibrated = recalibrate_bn_statistics(copy.deepcopy(pruned), self.pool.images)
        self._add_variant(architecture, "BN recalibrated", recalibrated, name)
        yield {"phase": "evaluate"}
        for variant in self.variants()[2:]:
            student = copy.deepcopy(pruned)
            yield from self._finetune(student, variant)
            self._add_variant(architecture, variant, student, name, save=True)
            yield {"phase": "evaluate"}
        if self.config.real_finetune:
            self.add_comparison(f"{name}: synthetic KD − real KD", f"{name}/synthetic KD", f"{name}/real KD",
                                criterion=criterion, keep_target=keep)

    def _finetune(self, student: nn.Module, variant: str) -> Iterator[dict]:
        c = self.config
        settings = DistillConfig(steps=c.finetune_steps, batch_size=c.batch_size, lr=c.lr, temperature=c.temperature,
                                 mixup=c.mixup, seed=c.seed, device=c.device)
        trainer = StudentTrainer(student, self.teacher, settings, self.dataset, self.device, c.finetune_steps)
        real = self.real_split("train") if variant == "real KD" else None
        for _ in range(c.finetune_steps):
            if real is None:
                x = self.pool.sample(c.batch_size, self.rng)[0]
            else:
                x = real.normalized(torch.randint(0, len(real), (c.batch_size,), generator=self.rng))
            yield {"phase": f"fine-tune ({variant})", **trainer.train_step(x)}

    def _add_variant(self, architecture: dict, variant: str, model: nn.Module, name: str, save: bool = False
                     ) -> None:
        hits = self.test_hits(model, f"{name}/{variant}")
        self.add_row({**architecture, "variant": variant, "data_free": variant != "real KD",
                      **accuracy_entry(hits, self.config.seed)})
        if save and self.run_record is not None:
            slug = variant.replace(" ", "-").lower()
            save_checkpoint(self.run_record.path(f"pruned-{name}-{slug}.pt"), model.cpu(), self.dataset,
                            {"test_accuracy": self.rows[-1]["accuracy"], "kept_flops": architecture["kept_flops"]})
            model.to(self.device)

    def summary(self) -> dict:
        """The headline: synthetic vs real KD at the target closest to half the FLOPs, first criterion."""
        done = [r for r in self.rows if r["variant"] == "synthetic KD"]
        if not done:
            return {}
        keep = min({r["keep_target"] for r in done}, key=lambda k: abs(k - 0.5))
        pick = {r["variant"]: r for r in self.rows if r.get("keep_target") == keep
                and r["criterion"] == self.config.criteria[0]}
        out = {f"{v.lower().replace(' ', '_').replace('-', '_')}_accuracy": r["accuracy"] for v, r in pick.items()}
        return {"criterion": self.config.criteria[0], "keep_target": keep, **out,
                "unpruned_accuracy": self.rows[0]["accuracy"]}
