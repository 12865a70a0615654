"""Data-free continual learning (methods.md#applications; Yin et al. 2020, §4.4): a model trained on the first k classes
learns the remaining ones from real images of the new classes only; images synthesized from the old model by
DeepInversion stand in for the old classes' data, which is gone.

    1. old model     CE on real images of classes < k (a k-way head)
    2. synthesize    DeepInversion (methods.md#model-inversion) from the old model: its BN statistics are the old
                     classes'
    3. from the old model with its head grown to K outputs (old rows copied), the same steps for each of
       naive        CE on real images of the new classes only: it forgets
       replay       CE on the new classes' real images plus KD on synthesized old-class images (replay_kd_loss),
                    plus feature distillation (feature_distillation_loss) against the old model on both
       joint        CE on real images of every class: the upper bound, what keeping the old data would give

Replay's KD alone keeps the old classes on synthesized images only: within one dataset the network then learns the
shortcut "synthetic texture = old class, real image = new class" and forgets the old classes on real test images
(Fashion-MNIST: 22% kept). Holding the penultimate features to the old model's on the real new-class images too is
what keeps real old-class images in their old decision regions; `feature_weight` trades old against new classes.

Every training runs through the one KD loop (`StudentTrainer`): label-only phases weight its KD term 0, replay adds
its two terms on the two halves of its batch. Reported on the real test set: accuracy on old-class, new-class and
all images, per class, and the share of the old model's old-class accuracy each variant keeps (a ratio on the same
images, with a paired interval).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from dfkd_core.applications.common import (ApplicationConfig, ApplicationJob, accuracy_entry, synthesis_rounds,
                                           synthesize_into)
from dfkd_core.data import DATASETS, DatasetInfo, ImageSplit, dataset_info
from dfkd_core.device import prepare_model
from dfkd_core.distill.config import DistillConfig
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.hooks import batchnorm_layers
from dfkd_core.losses import cross_entropy_loss, feature_distillation_loss, kd_loss
from dfkd_core.models import check_from_scratch, create_model, save_checkpoint
from dfkd_core.stats import ratio_interval
from dfkd_core.training import DEFAULT_TEACHER, evaluate

VARIANTS = ("naive", "replay", "joint")
REPLAY_FILE = "replay_images.pt"
# λ_feat measured per dataset and model (docs/results.md, benchmarks/continual_variants.py): the knee of old classes
# kept against new ones learned. The right weight depends on how far the features must move to take the new classes,
# and on how much room the network has: digits' 8×8 classes are apart (1 keeps 97% of both; 10 stops the new ones),
# Fashion-MNIST's Shirt sits among the old tops (bncnn6_w16: 12 keeps over 85% of the old classes, 1 keeps 26%), and
# the wider bncnn6_w32 needs twice the weight for the same (24: 90%; 12: 71%). Unmeasured models take their
# dataset's value, unknown datasets the within-dataset case.
FEATURE_WEIGHTS = {("digits", None): 1.0, ("fashion-mnist", None): 24.0, ("fashion-mnist", "bncnn6_w32"): 24.0,
                   ("fashion-mnist", "bncnn6_w16"): 12.0}
FEATURE_WEIGHT = FEATURE_WEIGHTS[("fashion-mnist", None)]   # unknown datasets: the within-dataset case


def default_feature_weight(dataset: str, model: str = "") -> float:
    """The measured λ_feat for this dataset and model ("" = the dataset's default architecture)."""
    model = model or DEFAULT_TEACHER.get(dataset, "")
    return FEATURE_WEIGHTS.get((dataset, model), FEATURE_WEIGHTS.get((dataset, None), FEATURE_WEIGHT))


NEW_CLASS_LOGIT = -1e4   # the old model's "logit" for a class it never saw: softmax gives it exactly 0


@dataclass
class ContinualConfig(ApplicationConfig):
    dataset: str = "digits"
    model: str = ""                   # registered model; "" = the dataset's default teacher architecture
    old_classes: int = 0              # k: classes 0..k-1 come first; 0 = half of them
    old_steps: int = 600              # CE steps of the old model
    new_steps: int = 600              # steps of each variant adding the new classes
    batch_size: int = 128             # real images per step
    replay_batch: int = 128           # synthesized old-class images per replay step
    lr: float = 1e-3
    temperature: float = 4.0
    feature_weight: float | None = None   # λ_feat of replay's feature distillation; 0 = KD replay alone; None = the
                                          # measured value for the dataset and model, filled in at creation

    def __post_init__(self) -> None:
        if self.feature_weight is None:
            self.feature_weight = default_feature_weight(self.dataset, self.model)

    def validate(self) -> None:
        """One sentence for the first bad setting, before any run exists."""
        self.validate_common()
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset '{self.dataset}'; choose one of {sorted(DATASETS)}")
        if self.model:
            check_from_scratch(self.model)
        if self.old_classes < 0 or min(self.old_steps, self.new_steps, self.batch_size, self.replay_batch) < 1:
            raise ValueError(f"old_classes must be >= 0 and old_steps, new_steps, batch_size, replay_batch >= 1, got "
                             f"{self.old_classes}, {self.old_steps}, {self.new_steps}, {self.batch_size}, "
                             f"{self.replay_batch}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr} and {self.temperature}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {self.feature_weight}")


class NoTeacher(nn.Module):
    """Zero logits: the loop's teacher for label-only training, where its KD term is weighted 0."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), self.num_classes, device=x.device)


class OldClassesTeacher(nn.Module):
    """The old model's logits for the old classes and NEW_CLASS_LOGIT for the new ones: as a KD target it says
    "one of the old classes, never a new one", which is what a replayed image is."""

    def __init__(self, old: nn.Module, num_classes: int):
        super().__init__()
        self.old, self.num_classes = old, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.old(x)
        return torch.cat([z, z.new_full((len(x), self.num_classes - z.shape[1]), NEW_CLASS_LOGIT)], 1)


def replay_kd_loss(student_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² KL( softmax(z_old/T) padded with 0 for the new classes ‖ softmax(z/T) ) on replayed images:
    methods.md#knowledge-distillation's KD against the old model, which also pushes the new classes' probability on
    old-class images to 0."""
    return kd_loss(student_logits, old_logits, temperature)


def grow_head(old: nn.Module, new: nn.Module, old_classes: int) -> nn.Module:
    """Copy the old model's weights into `new` (same architecture, more classes); the classifier's first
    `old_classes` rows come from the old model, the rest keep their fresh initialization."""
    grown = new.state_dict()
    for name, tensor in old.state_dict().items():
        if grown[name].shape == tensor.shape:
            grown[name] = tensor.clone()
        elif tensor.shape[0] == old_classes and grown[name].shape[1:] == tensor.shape[1:]:
            grown[name][:old_classes] = tensor
        else:
            raise ValueError(f"cannot grow {name} from {tuple(tensor.shape)} to {tuple(grown[name].shape)}")
    new.load_state_dict(grown)
    return new


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last Linear layer: its classifier, whose input is the penultimate features."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no Linear classifier, so its penultimate features are "
                         "undefined; use feature_weight=0")
    return linear[-1]


class PenultimateFeatures:
    """The input of a model's last Linear layer (its penultimate features) at each forward, caught by a hook."""

    def __init__(self, model: nn.Module):
        self.features: torch.Tensor | None = None
        self.handle = last_linear(model).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = inputs[0]

    def remove(self) -> None:
        self.handle.remove()


def class_subset(split: ImageSplit, classes: range, info: DatasetInfo | None = None) -> ImageSplit:
    mask = (split.labels >= classes.start) & (split.labels < classes.stop)
    return ImageSplit(split.images[mask], split.labels[mask], info or split.info)


class ContinualJob(ApplicationJob):
    """`dfkd continual`: the old model, its synthesized images, then naive / replay / joint."""

    kind = "continual"
    pool_file = REPLAY_FILE

    def __init__(self, config: ContinualConfig, run=None):
        info = dataset_info(config.dataset, config.data_root)
        super().__init__(config, info, run)
        self.model_name = config.model or DEFAULT_TEACHER[config.dataset]
        self.k = config.old_classes or info.num_classes // 2
        if not 0 < self.k < info.num_classes:
            raise ValueError(f"old_classes must leave classes on both sides: 1..{info.num_classes - 1}, got {self.k}")
        self.old_info = DatasetInfo(info.name, self.k, info.in_channels, info.image_size, list(info.mean),
                                    list(info.std), list(info.class_names[:self.k]))
        try:
            probe = create_model(self.model_name, self.k, info.in_channels, info.image_size).eval()
            with torch.no_grad():
                probe(torch.zeros(2, info.in_channels, info.image_size, info.image_size))
        except Exception as e:   # a registered model may not take this dataset's images
            raise ValueError(f"model '{self.model_name}' cannot take {info.name} images: "
                             f"{str(e).splitlines()[0][:200]}") from None
        if self.synthesis.alpha_f > 0 and not batchnorm_layers(probe):
            raise ValueError(f"'{self.model_name}' has no BatchNorm layers, so DeepInversion (α_f > 0) cannot "
                             "synthesize from it; choose a BN model")
        self.pool = SyntheticPool(self.old_info)
        self.synthesized_here = True
        self.total_steps = self.count_steps()

    def count_steps(self) -> int:
        c = self.config
        synthesis = synthesis_rounds(self.synthesis, c.images) * self.synthesis.iterations
        return c.old_steps + 1 + synthesis + len(VARIANTS) * (c.new_steps + 1)

    def plan(self) -> Iterator[dict]:
        c = self.config
        yield from self.old_model_and_replay()
        for variant in VARIANTS:
            model = self._grown()
            teacher = OldClassesTeacher(self.old_model, self.dataset.num_classes) if variant == "replay" \
                else NoTeacher(self.dataset.num_classes)
            step = self._replay_step if variant == "replay" else lambda v=variant: self._label_step(
                "new" if v == "naive" else "all")
            catch = self.catching_features(model) if variant == "replay" and c.feature_weight > 0 \
                else contextlib.nullcontext()
            with catch:
                yield from self._train(model, teacher, c.new_steps, variant, step)
            yield self._evaluate(model, variant)
        old = self.real_split("test").labels < self.k
        for variant in ("naive", "joint"):
            self.add_comparison(f"replay − {variant} (old classes)", "replay", variant, among=old)
        self.add_comparison("replay − naive (all classes)", "replay", "naive")

    def old_model_and_replay(self) -> Iterator[dict]:
        """Phases 1 and 2: the old model on the old classes' real images, its evaluation, its synthesized images."""
        c = self.config
        self.split_classes()
        old = self.new_old_model()
        yield from self._train(old, NoTeacher(self.k), c.old_steps, "old model", lambda: self._label_step("old"))
        self.old_model = old.eval()
        yield self._evaluate_old()
        yield from synthesize_into(self.pool, self.old_model, self.old_info, self.synthesis, c.images, c.seed,
                                   self.device)

    def split_classes(self) -> None:
        train = self.real_split("train")
        self.splits = {"old": class_subset(train, range(self.k), self.old_info),
                       "new": class_subset(train, range(self.k, self.dataset.num_classes)), "all": train}

    def new_old_model(self) -> nn.Module:
        d = self.dataset
        return prepare_model(create_model(self.model_name, self.k, d.in_channels, d.image_size), self.device)

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def catching_features(self, model: nn.Module) -> Iterator[None]:
        """`self.features`: the penultimate features of `model` and of the old model at each forward, for replay's
        feature distillation; the hooks go when the block ends, also when a stopped run closes the plan."""
        self.features = PenultimateFeatures(model), PenultimateFeatures(self.old_model)
        try:
            yield
        finally:
            for hook in self.features:
                hook.remove()

    def _grown(self) -> nn.Module:
        d = self.dataset
        new = create_model(self.model_name, d.num_classes, d.in_channels, d.image_size)
        return prepare_model(grow_head(self.old_model, new, self.k), self.device)

    def _train(self, model: nn.Module, teacher: nn.Module, steps: int, phase: str, batch) -> Iterator[dict]:
        c = self.config
        settings = DistillConfig(steps=steps, batch_size=c.batch_size, lr=c.lr, temperature=c.temperature,
                                 seed=c.seed, device=c.device, mixup=0.0)   # mixing would blend the two halves
        self.trainer = StudentTrainer(model, teacher, settings, self.dataset, self.device, steps)
        for _ in range(steps):
            metrics = batch()
            yield {"phase": phase, **{k: v for k, v in metrics.items() if k not in ("loss_kd", "agreement")}}

    def _sample(self, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.splits[split]
        idx = torch.randint(0, len(data), (count,), generator=self.rng)
        return data.normalized(idx), data.labels[idx]

    def _label_step(self, split: str) -> dict:
        x, y = self._sample(split, self.config.batch_size)
        return self.trainer.train_step(x, labels=y, weights={"kd": 0.0, "ce": 1.0}, force_ce=True)

    def _replay_step(self) -> dict:
        c = self.config
        x_new, y_new = self._sample("new", c.batch_size)
        x_old = self.pool.sample(c.replay_batch, self.rng)[0]
        n = len(x_new)

        def terms(x, student_logits, teacher_logits):
            out = {"ce_new": cross_entropy_loss(student_logits[:n], y_new.to(self.device)),
                   "kd_replay": replay_kd_loss(student_logits[n:], teacher_logits[n:], c.temperature)}
            if c.feature_weight > 0:   # the teacher's forward on x filled the old model's features
                student, old = self.features
                out["feature"] = feature_distillation_loss(student.features, old.features)
            return out
        return self.trainer.train_step(torch.cat([x_new, x_old]), extra_terms=terms,
                                       weights={"kd": 0.0, "feature": c.feature_weight})

    # ------------------------------------------------------------------ evaluation
    def _evaluate_old(self) -> dict:
        """The old model on the old classes' test images; as a K-class model it misses every new-class image."""
        test = self.real_split("test")
        old_mask = test.labels < self.k
        hits = torch.zeros(len(test), dtype=torch.bool)
        hits[old_mask] = evaluate(self.old_model, class_subset(test, range(self.k), self.old_info),
                                  self.device)["correct"]
        self.hits["old model"] = hits
        return self._add_result("old model", hits)

    def _evaluate(self, model: nn.Module, variant: str) -> dict:
        hits = self.test_hits(model, variant)
        if self.run_record is not None:
            save_checkpoint(self.run_record.path(f"{variant}.pt"), model.cpu(), self.dataset,
                            {"test_accuracy": int(hits.sum()) / len(hits)})
            model.to(self.device)
        return self._add_result(variant, hits)

    def _add_result(self, name: str, hits: torch.Tensor) -> dict:
        labels, seed = self.real_split("test").labels, self.config.seed
        old, new = labels < self.k, labels >= self.k
        row = {"model": name, "old_classes": self.k, "data_free": name != "joint",
               "old": accuracy_entry(hits[old], seed), "new": accuracy_entry(hits[new], seed),
               "all": accuracy_entry(hits, seed),
               "per_class": [float(hits[labels == c].double().mean()) for c in range(self.dataset.num_classes)]}
        if name != "old model":
            retention = ratio_interval(hits[old].double(), self.hits["old model"][old].double(), seed=seed)
            row["old_retention"], row["old_retention_ci"] = retention.estimate, retention.to_dict()
        self.add_row(row)
        return {"phase": "evaluate", "old_accuracy": row["old"]["accuracy"]}

    def finish(self, status: str) -> dict:
        summary = super().finish(status)
        if self.run_record is not None and hasattr(self, "old_model"):
            save_checkpoint(self.run_record.path("old-model.pt"), self.old_model.cpu(), self.old_info,
                            {"test_accuracy_old_classes": self.rows[0]["old"]["accuracy"]})
        return summary

    def summary(self) -> dict:
        out = {"old_classes": self.k, "model": self.model_name}
        for row in self.rows:
            name = row["model"].replace(" ", "_")
            out[f"{name}_old_accuracy"] = row["old"]["accuracy"]
            if name != "old_model":
                out[f"{name}_new_accuracy"] = row["new"]["accuracy"]
                out[f"{name}_old_retention"] = row["old_retention"]
        return out
