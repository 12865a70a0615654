"""Teacher training on real data, plus the evaluation every method reports (accuracy on the real test set)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.config import Config
from dfkd_core.data import ImageSplit, load_split, resolve_data_root
from dfkd_core.device import autocast, prepare_input, prepare_model, resolve_device
from dfkd_core.jobs import Job, check_finite
from dfkd_core.models import check_from_scratch, create_model, save_checkpoint
from dfkd_core.stats import accuracy_interval

DEFAULT_TEACHER = {"digits": "bncnn3_w32", "fashion-mnist": "bncnn6_w32", "cifar10": "resnet18_cifar",
                   "imagefolder": "resnet18_cifar"}
AUGMENTATIONS = ("none", "crop", "crop_flip")
DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 3, "cifar10": 30, "imagefolder": 30}


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device | None = None,
                   batch_size: int = 1000) -> torch.Tensor:
    """Logits for a (possibly large) tensor of normalized images, in eval mode, on CPU at the end."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(prepare_input(x[i:i + batch_size], device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


class EvaluationStopped(Exception):
    """`evaluate` was asked to stop between batches (a job was cancelled mid-evaluation)."""


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, device: torch.device | None = None,
             batch_size: int = 1000, stop: Callable[[], bool] | None = None) -> dict:
    """Accuracy and mean cross-entropy of `model` on a real split, plus `correct`: the per-image hits (bool, on CPU)
    that a bootstrap interval or a paired comparison of two models on the same images needs. `stop()` is asked
    between batches; when it says so, `EvaluationStopped` is raised (a Stop must not wait for 10,000 images)."""
    device = device or next(model.parameters()).device
    loss, n = 0.0, len(split)
    hits = []
    was_training = model.training
    model.eval()
    for i in range(0, n, batch_size):
        if stop is not None and stop():
            model.train(was_training)
            raise EvaluationStopped
        x = prepare_input(split.normalized(slice(i, i + batch_size)), device)
        y = split.labels[i:i + batch_size].to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        hits.append((logits.argmax(1) == y).cpu())
    model.train(was_training)
    correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    return {"accuracy": int(correct.sum()) / max(n, 1), "loss": loss / max(n, 1), "correct": correct}


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """'none' | 'crop' (pad 2 + random crop, one shift per batch) | 'crop_flip' (+ random horizontal flip)."""
    if mode == "none":
        return x
    pad = 2
    padded = F.pad(x, [pad] * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    x = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    if mode == "crop_flip":
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    return x


def shuffled_batches(split: ImageSplit, batch_size: int, generator: torch.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of (normalized images, labels) batches, reshuffled every epoch."""
    while True:
        order = torch.randperm(len(split), generator=generator)
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            idx = order[i:i + batch_size]
            yield split.normalized(idx), split.labels[idx]


@dataclass
class TeacherConfig(Config):
    dataset: str = "digits"
    model: str = ""             # empty: the dataset's default teacher
    epochs: int = 0             # 0: the dataset's default
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    augment: str = "none"
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None

    def validate(self) -> None:
        self.require_finite()
        if self.dataset not in DEFAULT_TEACHER:
            raise ValueError(f"unknown dataset '{self.dataset}'; choose one of {sorted(DEFAULT_TEACHER)}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 (0: the dataset's default) and batch_size >= 1, got "
                             f"{self.epochs} and {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got '{self.augment}'")
        if self.model:
            check_from_scratch(self.model)

    def resolved(self) -> "TeacherConfig":
        return self.replace(model=self.model or DEFAULT_TEACHER[self.dataset],
                            epochs=self.epochs or DEFAULT_EPOCHS[self.dataset])

    def run_name(self) -> str:
        """'bncnn3_w16 on digits'; for a user's own data also its folder ('… on imagefolder (shoes)'): teachers of
        two folders were otherwise told apart only by their ids."""
        root = resolve_data_root(self.dataset, self.data_root) if self.dataset in ("imagefolder", "cifar10") else None
        return f"{self.model} on {self.dataset}" + (f" ({Path(root).name})" if root else "")


class TeacherTraining(Job):
    """Train a classifier on a real dataset (AdamW, one-cycle LR), evaluate on the test split every epoch."""

    kind = "teacher"

    def __init__(self, config: TeacherConfig, run=None):
        super().__init__(run)
        config.validate()
        self.config = config.resolved()

    def setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.device = resolve_device(c.device)
        self.train_split = load_split(c.dataset, "train", c.data_root)
        self.test_split = load_split(c.dataset, "test", c.data_root)
        info = self.train_split.info
        self.model = prepare_model(create_model(c.model, info.num_classes, info.in_channels, info.image_size),
                                   self.device)
        self.steps_per_epoch = max(1, len(self.train_split) // c.batch_size)
        self.total_steps = c.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=c.lr,
                                                             total_steps=self.total_steps)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.batches = shuffled_batches(self.train_split, c.batch_size, self.generator)
        self.test_accuracy = float("nan")

    def step(self, index: int) -> dict:
        x, y = next(self.batches)
        x = prepare_input(augment_batch(x, self.config.augment, self.generator), self.device)
        y = y.to(self.device)
        self.model.train()
        with autocast(self.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        check_finite({"cross_entropy": loss}, index, weighted=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        metrics = {"loss": loss.item(), "batch_accuracy": (logits.argmax(1) == y).float().mean().item(),
                   "lr": self.scheduler.get_last_lr()[0], "epoch": index // self.steps_per_epoch + 1}
        if (index + 1) % self.steps_per_epoch == 0:
            try:
                self.test_accuracy = evaluate(self.model, self.test_split, self.device,
                                              stop=lambda: self.cancel_requested)["accuracy"]
                metrics["test_accuracy"] = self.test_accuracy
            except EvaluationStopped:
                pass   # stopped: this epoch's accuracy is not needed, the partial teacher is saved at once
        return metrics

    def save_progress(self) -> None:
        """The model so far, so a killed run still leaves a usable (partial) teacher."""
        if self.run_record is not None and hasattr(self, "model"):
            self._save_checkpoint({"partial": True})

    def finish(self, status: str) -> dict:
        if not hasattr(self, "model"):
            return {}
        steps = len(self.history)
        summary = {"model": self.config.model, "dataset": self.config.dataset, "steps": steps,
                   "epochs_done": steps / self.steps_per_epoch, "parameters": sum(p.numel() for p in
                                                                                  self.model.parameters())}
        notes = [split.note for split in (self.train_split, self.test_split) if split.note]
        if notes:   # images resized, a class without test images: said with the result, not only while loading
            summary["data_note"] = "; ".join(notes)
        if status == "done":
            result = evaluate(self.model, self.test_split, self.device)
            summary.update({"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                            "test_accuracy_ci": accuracy_interval(result["correct"], seed=self.config.seed).to_dict()})
        else:
            # A stopped teacher is saved at once, not evaluated here (10,000 Fashion-MNIST images would keep a Stop
            # waiting for seconds): it is marked partial, and whoever shows it evaluates it (the Teacher page does).
            summary["partial"] = True
        if self.run_record is not None and status != "failed":
            self._save_checkpoint(summary)
            summary["checkpoint"] = str(self.run_record.path("model.pt"))
        return summary

    def _save_checkpoint(self, metrics: dict) -> None:
        save_checkpoint(self.run_record.path("model.pt"), self.model, self.train_split.info,
                        {k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def train_teacher(config: TeacherConfig, store=None) -> TeacherTraining:
    """Create a teacher run in `store` and train it synchronously; returns the finished job."""
    job = TeacherTraining(config)   # validates before a run exists
    config = job.config
    if store is not None:
        job.run_record = store.create("teacher", config.to_dict(), method=config.model, dataset=config.dataset,
                                      name=config.run_name())
    job.run()
    return job


__all__ = ["TeacherConfig", "TeacherTraining", "evaluate", "predict_logits", "train_teacher", "augment_batch",
           "shuffled_batches"]
