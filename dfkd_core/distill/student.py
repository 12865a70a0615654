"""The one KD loop every distillation method shares (methods.md#knowledge-distillation), plus the augmentations it
applies.

    L_KD = T² · KL(softmax(z_T / T) ‖ softmax(z_S / T))

Methods differ only in where the images x come from (a pool, noise, a generator, real data) and in optional extra
loss terms (`extra_terms`): IE-KD's factor losses, BSS's boundary term, CE on real labels.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.data import DatasetInfo
from dfkd_core.device import autocast, precision, prepare_input
from dfkd_core.distill.config import DistillConfig
from dfkd_core.distill.resume import clone_state
from dfkd_core.distributed import Distributed, data_parallel
from dfkd_core.jobs import check_finite
from dfkd_core.losses import cross_entropy_loss, kd_loss

ExtraTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]

# Datasets whose images stay what they are when mirrored (a mirrored digit is not a digit).
FLIP_SAFE = {"fashion-mnist", "cifar10", "imagefolder"}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image independently by up to ±max_shift pixels (edges replicated)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, :, None]   # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, :]   # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def mix_images(x: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mixup without labels: a share `probability` of the images becomes λ·x_i + (1−λ)·x_j, λ ~ U(0, 1).

    KD needs no labels for the mix — the teacher labels the mixed image — so this only widens the input region the
    student sees between the synthesized points.
    """
    if probability <= 0:
        return x
    b = x.shape[0]
    chosen = (torch.rand(b, generator=generator) < probability).to(x.device).view(-1, 1, 1, 1)
    lam = torch.rand(b, generator=generator).to(x.device, x.dtype).view(-1, 1, 1, 1)
    partner = x[torch.randperm(b, generator=generator).to(x.device)]
    return torch.where(chosen, lam * x + (1 - lam) * partner, x)


def cutmix_boxes(batch: int, height: int, width: int, keep: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """(B, 1, H, W) boolean masks, one axis-aligned box per image covering about a share 1 − keep[b] of it.

    CutMix's box (Yun et al. 2019): sides H·√(1−λ) and W·√(1−λ) around a uniform centre, clipped at the border, so
    a box near an edge is smaller than its λ asks for.
    """
    side = torch.sqrt(1 - keep)
    cut_h, cut_w = (side * height).long(), (side * width).long()
    cy = torch.randint(0, height, (batch,), generator=generator)
    cx = torch.randint(0, width, (batch,), generator=generator)
    top, bottom = (cy - cut_h // 2).clamp(0, height), (cy - cut_h // 2 + cut_h).clamp(0, height)
    left, right = (cx - cut_w // 2).clamp(0, width), (cx - cut_w // 2 + cut_w).clamp(0, width)
    rows, cols = torch.arange(height)[None, :], torch.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])            # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])            # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def mix_batch(x: torch.Tensor, mixup: float, cutmix: float = 0.0, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Each image is blended with a partner (share `mixup`, as `mix_images`), gets a box of the partner pasted in
    (share `cutmix`, CutMix without labels), or stays as it is; the two shares are exclusive, so they sum to ≤ 1.

    With cutmix 0 this is `mix_images` draw for draw, so runs made before CutMix existed repeat exactly. A blend
    fills the space between two images; a pasted box puts one garment's part (a sleeve, a collar) on another's
    body, inputs no blend and no pool image reaches.
    """
    if cutmix <= 0:
        return mix_images(x, mixup, generator)
    b, _, h, w = x.shape
    draw = torch.rand(b, generator=generator)
    lam = torch.rand(b, generator=generator)
    partner = x[torch.randperm(b, generator=generator).to(x.device)]
    blend = (draw < mixup).view(-1, 1, 1, 1)
    paste = ((draw >= mixup) & (draw < mixup + cutmix)).view(-1, 1, 1, 1) & cutmix_boxes(b, h, w, lam, generator)
    lam = lam.to(x.device, x.dtype).view(-1, 1, 1, 1)
    mixed = torch.where(blend.to(x.device), lam * x + (1 - lam) * partner, x)
    return torch.where(paste.to(x.device), partner, mixed)


def resolve_augment(mode: str, dataset: DatasetInfo) -> str:
    if mode != "auto":
        return mode
    return "shift_flip" if dataset.name in FLIP_SAFE else "shift"


class StudentTrainer:
    """Trains a student against a frozen teacher: `train_step(x)` is one optimizer step of the KD loop.

    AdamW with a cosine schedule over `total_steps`. Extra loss terms are computed by `extra_terms(x, student_logits,
    teacher_logits)` after both forward passes (forward hooks placed by a method can read features there) and
    weighted by `weights[name]` (default 1).

    With `teacher_echo` k > 1 the teacher labels a fresh augmented batch only every k-th step, and every step trains
    on a batch drawn without replacement from the last k labelled batches (data echoing, Choi et al. 2019, shuffled
    across batches): each labelled image is used about k times, and the teacher's forward, half of a CPU KD step,
    is paid once per k steps. A step with labels or extra terms needs its own batch's features, so it cannot echo.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, dataset: DatasetInfo,
                 device: torch.device, total_steps: int, parameters=None, world: Distributed | None = None):
        self.student, self.teacher, self.config, self.dataset, self.device = student, teacher, config, dataset, device
        world = world or Distributed()
        # Several processes: the forward runs through DDP, whose backward averages the gradients over the ranks.
        self.forward_model = data_parallel(student, world)
        self.augment = resolve_augment(config.augment, dataset)
        self.max_shift = max(1, dataset.image_size // 14) if self.augment != "none" else 0
        self.optimizer = torch.optim.AdamW(parameters if parameters is not None else student.parameters(),
                                           lr=config.lr, weight_decay=config.weight_decay)
        total = max(1, total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        self.generator = torch.Generator().manual_seed(world.seed(config.seed + 1))
        self.steps_done = 0
        self.echo_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []   # the last teacher_echo labelled batches

    @property
    def precision(self) -> str:
        """What the KD step computes in: bfloat16 autocast on CUDA (and on a CPU with native bf16 if the config's
        cpu_bf16 asks for it), else float32."""
        return precision(self.device, self.config.amp, cpu=self.config.cpu_bf16)

    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = random_shift(x, self.max_shift, self.generator)
        if self.augment == "shift_flip":
            x = random_flip(x, self.generator)
        return mix_batch(x, self.config.mixup, self.config.cutmix, self.generator)

    def train_step(self, x: torch.Tensor, labels: torch.Tensor | None = None, extra_terms: ExtraTerms | None = None,
                   weights: dict[str, float] | None = None, augment: bool = True, force_ce: bool = False
                   ) -> dict[str, float]:
        c = self.config
        echo = c.teacher_echo > 1
        if echo and (labels is not None or extra_terms is not None or force_ce):
            raise ValueError("teacher_echo > 1 reuses the teacher's labels of earlier batches, but this method's "
                             "steps compute labels or extra terms from each batch's own features: set "
                             "teacher_echo 1")
        if not echo or self.steps_done % c.teacher_echo == 0:
            if augment:   # the augmentations return NCHW, so the models' layout is set after them, once
                x = self.augment_batch(x.to(self.device, non_blocking=True))
            x = prepare_input(x, self.device)
            with autocast(self.device, c.amp, cpu=c.cpu_bf16), torch.no_grad():
                teacher_logits = self.teacher(x).float()
            if echo:
                self.echo_buffer = [*self.echo_buffer[1 - c.teacher_echo:], (x, teacher_logits)]
        if echo:
            x, teacher_logits = self._echo_batch(len(x))
        self.forward_model.train()
        with autocast(self.device, c.amp, cpu=c.cpu_bf16):
            student_logits = self.forward_model(x).float()
            terms = {"kd": kd_loss(student_logits, teacher_logits, c.temperature)}
            if labels is not None and (c.alpha_ce > 0 or force_ce):
                terms["ce"] = cross_entropy_loss(student_logits, labels.to(self.device))
            if extra_terms is not None:
                terms.update(extra_terms(x, student_logits, teacher_logits))
        w = {"ce": c.alpha_ce, **(weights or {})}
        total = sum(w.get(k, 1.0) * v for k, v in terms.items())
        check_finite({**terms, "total": total}, self.steps_done)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()
        return {**{f"loss_{k}": float(v.detach()) for k, v in terms.items()}, "loss_total": float(total.detach()),
                "student_lr": self.scheduler.get_last_lr()[0], "agreement": agree}

    def state_dict(self) -> dict:
        """What the loop needs to continue exactly where it is (a resume): the student, its optimizer, the schedule,
        the augmentation RNG and the step count, copied so the live loop can move on."""
        return clone_state({"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                            "steps_done": self.steps_done,
                            "echo_buffer": [[x.cpu(), z.cpu()] for x, z in self.echo_buffer]})

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.steps_done = state["steps_done"]
        self.echo_buffer = [(prepare_input(x.to(self.device), self.device), z.to(self.device))
                            for x, z in state.get("echo_buffer", [])]

    def _echo_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` labelled images drawn without replacement from the echo buffer (images, teacher logits)."""
        images = torch.cat([x for x, _ in self.echo_buffer])
        logits = torch.cat([z for _, z in self.echo_buffer])
        chosen = torch.randperm(len(images), generator=self.generator)[:batch_size].to(self.device)
        return prepare_input(images[chosen], self.device), logits[chosen]
