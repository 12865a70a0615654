"""Contrastive diversity for model inversion, after CMI (Fang et al. 2021, "Contrastive Model Inversion").

DeepInversion's objective pulls every image of a class towards the same BN statistics and the same confident
logit, so a pool's images of one class crowd together and leave the space between classes (where a student learns
its boundaries) empty. CMI adds an instance-discrimination term: each image, seen through two augmentations, must
be recognizable among the batch and among the images of earlier rounds, which pushes new images away from old ones.

    f(x)     = [mean over space of the input of each teacher BN layer]   (one vector per image)
    v(x)     = h(f(x)) / ||h(f(x))||₂                                    h: a two-layer MLP head, trained along
    R_cr     = CE over rows of  v(local_i) · v(global_j)ᵀ / τ  with label j = i
               (rows: this batch, then the bank of earlier rounds; the mean over each part, summed)

The global view is the batch as the teacher sees it in the step (jitter and flip); the local view a random resized
crop of it (a quarter to all of the image), flipped at random. Gradients flow into the images and the head through
the local side only, as in CMI. The bank keeps (local, global) features of the finished images of earlier rounds.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.hooks import batchnorm_layers


def instance_channel_means(x: torch.Tensor) -> torch.Tensor:
    """(B, C): the mean of each image's channel over its spatial dims (a BN layer's input, per image)."""
    return x.float().flatten(2).mean(2) if x.dim() > 2 else x.float()


def contrastive_loss(local: torch.Tensor, global_: torch.Tensor, current: int, temperature: float) -> torch.Tensor:
    """R_cr: cross-entropy of each local projection against every global one, the matching image as the label.

    `local` and `global_` are (N, D) unit vectors, rows 0..current-1 this batch and the rest the bank. The global
    side is a fixed target (detached). The bank's rows get a mean of their own so that a bank ten times the batch
    does not shrink the batch's gradient ten times (CMI splits it the same way).
    """
    logits = local @ global_.detach().T / temperature
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(per_row) > current:
        return per_row[:current].mean() + per_row[current:].mean()
    return per_row.mean()


def draw_crops(batch: int, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
               flip: bool = True) -> torch.Tensor:
    """(B, 2, 3) affine maps of `F.affine_grid` for a random resized crop of each image: area a share in `scale`
    of the image (square), at a random place inside it, mirrored with probability ½ when `flip`. Drawn on the CPU
    from the job's generator, so a seed gives the same crops on any device."""
    u = torch.rand(batch, 4, generator=generator)
    side = (scale[0] + (scale[1] - scale[0]) * u[:, 0]).sqrt()   # crop side as a share of the image side
    centre_x = (1 - side) * (2 * u[:, 1] - 1)                     # keeps the crop inside [-1, 1]
    centre_y = (1 - side) * (2 * u[:, 2] - 1)
    mirror = torch.where((u[:, 3] < 0.5) & flip, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = side * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = side, centre_y
    return theta


def resized_crop(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image of x cropped by its map in `theta` and resized back to x's size (bilinear, differentiable)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ProjectionHead(nn.Module):
    """h of R_cr: Linear → ReLU → Linear, then onto the unit sphere."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


class ContrastiveMemory:
    """What R_cr keeps between the steps and rounds of one synthesis: the head and its optimizer, and the bank of
    earlier images' (local, global) features. A pool's rounds share one (through their shared objective), so each
    round's images are pushed away from every earlier round's."""

    def __init__(self, teacher: nn.Module, device: torch.device | str, temperature: float = 0.2,
                 head_dim: int = 128, head_lr: float = 1e-3, bank_size: int = 4096):
        if not temperature > 0:
            raise ValueError(f"the contrastive temperature must be > 0, got {temperature}")
        self.layers = [m for _, m in batchnorm_layers(teacher)]
        if not self.layers:
            raise ValueError("the contrastive term (α_cr > 0) describes an image by the inputs of the teacher's "
                             "BatchNorm layers; this teacher has none")
        self.temperature, self.bank_size = temperature, bank_size
        dim = sum(m.num_features for m in self.layers)
        self.head = ProjectionHead(dim, head_dim).to(device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=head_lr)
        self.bank = torch.empty(0, 2 * dim, device=device)   # rows: [local features | global features]
        self._captured: list[torch.Tensor] = []

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, a teacher forward records each BN layer's per-image channel means (with gradients)."""
        self._captured = []
        handles = [m.register_forward_pre_hook(lambda _m, inputs: self._captured.append(
            instance_channel_means(inputs[0]))) for m in self.layers]
        try:
            yield self._captured
        finally:
            for h in handles:
                h.remove()

    def features(self, teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher logits, f(x)) of one forward."""
        with self.capture() as captured:
            logits = teacher(x)
        if len(captured) != len(self.layers):
            raise RuntimeError(f"the teacher's forward reached {len(captured)} of its {len(self.layers)} "
                               "BatchNorm layers")
        return logits, torch.cat(captured, dim=1)

    def loss(self, local_features: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        """R_cr of this batch against itself and the bank."""
        dim = local_features.shape[1]
        bank_local, bank_global = self.bank[:, :dim], self.bank[:, dim:]
        local = self.head(torch.cat([local_features, bank_local]))
        global_ = self.head(torch.cat([global_features, bank_global]))
        return contrastive_loss(local, global_, len(local_features), self.temperature)

    def step_head(self) -> None:
        """The head's update from the step's backward (the images' optimizer steps the images)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def remember(self, teacher: nn.Module, x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> None:
        """Add finished images to the bank (the oldest leave once it holds `bank_size`); their local view is cropped
        as the steps' are (`flip` as the run's: a mirrored digit is not a digit)."""
        _, global_features = self.features(teacher, x)
        _, local_features = self.features(teacher, resized_crop(x, draw_crops(len(x), generator, flip=flip)))
        rows = torch.cat([local_features, global_features], dim=1).float()
        self.bank = torch.cat([self.bank, rows])[-self.bank_size:]

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(), "bank": self.bank}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bank = state["bank"].to(self.bank.device)
