"""Generator-based data-free distillation (methods.md#generator, Luo et al. "Large-Scale Generative Data-Free
Distillation").

A generator G(z | y) is trained against the frozen teacher with

    L_G = CE(T(G(z|y)), y) + λ_t·R_TV + λ_l2·||x||₂ + λ_S·Σ_l (||μ_l − μ̂_l||₂ + ||σ²_l − σ̂²_l||₂)

— the same terms as DeepInversion, but optimizing G's weights instead of a batch of pixels, so that once trained it
gives fresh images at the cost of one forward pass. Two modes: one conditional generator, or an ensemble with one
generator per class.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.data import DatasetInfo
from dfkd_core.hooks import BNStatisticsRecorder
from dfkd_core.losses import bn_feature_loss, cross_entropy_loss, l2_prior_loss, total_variation_loss


class ConditionalGenerator(nn.Module):
    """G(z | y) of methods.md#generator: Linear → 128×(H/4)×(W/4) → BN → LReLU → ↑2 → conv → BN → LReLU → ↑2 → conv → BN
    → LReLU → conv → tanh. With `num_classes=0` it is unconditional (one member of a per-class ensemble).

    The tanh output is read as pixels in [0, 1] and mapped to the teacher's normalized space, so every sample lies in
    the valid pixel range without clipping.
    """

    def __init__(self, latent_dim: int, dataset: DatasetInfo, num_classes: int | None = None, width: int = 128):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = dataset.num_classes if num_classes is None else num_classes
        self.image_size, self.channels = dataset.image_size, dataset.in_channels
        self.init_size = -(-dataset.image_size // 4)  # ceil: 8 → 2, 28 → 7, 32 → 8
        self.register_buffer("mean", torch.tensor(dataset.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(dataset.std).view(1, -1, 1, 1))
        self.project = nn.Linear(latent_dim + self.num_classes, width * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, self.channels, 3, padding=1), nn.Tanh(),
        )
        self.width = width

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if y is None:
                raise ValueError("a conditional generator needs class labels y")
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        h = self.project(z).view(-1, self.width, self.init_size, self.init_size)
        pixels01 = (self.body(h) + 1) / 2
        if pixels01.shape[-1] != self.image_size:
            pixels01 = F.interpolate(pixels01, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return (pixels01 - self.mean) / self.std


class GeneratorEnsemble(nn.Module):
    """One unconditional generator per class (methods.md#generator, ensemble mode); G(z | y) routes each sample to
    G_y."""

    def __init__(self, latent_dim: int, dataset: DatasetInfo, width: int = 128):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, dataset.num_classes
        self.members = nn.ModuleList(ConditionalGenerator(latent_dim, dataset, num_classes=0, width=width)
                                     for _ in range(dataset.num_classes))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor | None = None
        for k in y.unique().tolist():
            idx = (y == k).nonzero(as_tuple=True)[0]
            xk = self.members[k](z[idx])
            if out is None:
                out = xk.new_empty((len(z),) + xk.shape[1:])
            out[idx] = xk
        assert out is not None
        return out


def sample_latents(generator: nn.Module, batch_size: int, num_classes: int, device: torch.device,
                   rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ N(0, I) and balanced labels y (each class as often as the batch allows, in random order)."""
    z = torch.randn(batch_size, generator.latent_dim, generator=rng).to(device)
    y = torch.arange(batch_size) % num_classes
    y = y[torch.randperm(batch_size, generator=rng)].to(device)
    return z, y


def generator_loss(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, recorder: BNStatisticsRecorder,
                   lambda_tv: float, lambda_l2: float, lambda_bn: float, first_bn_multiplier: float = 1.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L_G of methods.md#generator on a generated batch. `recorder` must be attached to the teacher (moment matching
    needs the batch statistics of every BN layer's input). Returns (total, unweighted terms, teacher logits)."""
    with recorder:
        logits = teacher(x).float()
        terms = {"ce": cross_entropy_loss(logits, y), "tv": total_variation_loss(x), "l2": l2_prior_loss(x)}
        if lambda_bn > 0:
            terms["bn_feature"], _ = bn_feature_loss(recorder.statistics(), first_bn_multiplier)
    weights = {"ce": 1.0, "tv": lambda_tv, "l2": lambda_l2, "bn_feature": lambda_bn}
    total = sum(weights[k] * v for k, v in terms.items())
    return total, terms, logits


def build_generator(mode: str, latent_dim: int, dataset: DatasetInfo, width: int = 128) -> nn.Module:
    """'single' → one conditional G(z|y); 'ensemble' → one generator per class."""
    if mode == "single":
        return ConditionalGenerator(latent_dim, dataset, width=width)
    if mode == "ensemble":
        return GeneratorEnsemble(latent_dim, dataset, width=width)
    raise ValueError(f"generator mode must be 'single' or 'ensemble', got '{mode}'")
