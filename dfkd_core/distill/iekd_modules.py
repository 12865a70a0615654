"""IE-KD building blocks (methods.md#ie-kd): the loss terms as small functions, the factor networks, a feature tap.

    L_rec = ‖f_T − D(E(f_T))‖²                                   the teacher autoencoder (E, D)       §5.1
    t = E(f_T);  ŝ_inh = C_inh(f_S^inh);  ŝ_exp = C_exp(f_S^exp)    student halves → their own encoders §5.2
    x̂ = x / ‖x‖₂ (per sample, flattened)                         factor normalization                §5.2
    d(t, s) = ‖t̂ − ŝ‖_p  (p = 1: Factor Transfer's distance)      inheritance and exploration distance §5.3
    L = L_goal + λ_inh · d(t, ŝ_inh) − λ_exp · d(t, ŝ_exp)                                             §5.3

d is the paper's per-sample norm. The official code uses p = 1 as `F.l1_loss(normalize(s), normalize(t))`, a mean
over the D factor elements, with loss weights 1: that is λ = 1/D here, and on Fashion-MNIST's 64×7×7 factors it
leaves the student where CE alone puts it (benchmarks/iekd_table.py). The per-sample L1 norm grows like √D, so
weights 1 overwhelm CE there. The default is p = 2: bounded by 2 for any layer size, so weights of order 1 mean the
same on every layer (METHODS: weights 1); p = 1 stays available (`distance_norm=1`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

FACTOR_NORMS = (1, 2)


# ------------------------------------------------------------------ the equations

def reconstruction_loss(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """L_rec = ‖f_T − D(E(f_T))‖² (methods.md#ie-kd): squared L2 norm per sample, mean over the batch."""
    return (features - reconstruction).flatten(1).pow(2).sum(1).mean()


def normalize_factor(factor: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x̂ = x / ‖x‖₂ per sample, flattened to (B, D) (methods.md#ie-kd); an all-zero factor stays zero."""
    flat = factor.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)


def factor_distance(teacher_factor: torch.Tensor, student_factor: torch.Tensor, p: int = 2) -> torch.Tensor:
    """d(t, s) = ‖t̂ − ŝ‖_p per sample, mean over the batch, on normalized factors (methods.md#ie-kd).

    Bounded: for unit vectors ‖t̂ − ŝ‖₂ ≤ 2 and ‖t̂ − ŝ‖₁ ≤ √D·‖t̂ − ŝ‖₂ ≤ 2√D, which is what keeps the
    exploration term (a distance that is *maximized*) from diverging.
    """
    if p not in FACTOR_NORMS:
        raise ValueError(f"the factor distance is an L1 or L2 norm, got p={p}")
    if teacher_factor.shape != student_factor.shape:
        raise ValueError(f"factor shapes differ: teacher {tuple(teacher_factor.shape)}, "
                         f"student {tuple(student_factor.shape)}")
    diff = normalize_factor(teacher_factor) - normalize_factor(student_factor)
    return torch.linalg.vector_norm(diff, ord=p, dim=1).mean()


def inheritance_distance(teacher_factor: torch.Tensor, inheritance_factor: torch.Tensor, p: int = 2
                         ) -> torch.Tensor:
    """d(t, ŝ_inh): how far the inheritance half's factor is from the teacher's (pulled toward it), §5.3."""
    return factor_distance(teacher_factor.detach(), inheritance_factor, p)


def exploration_distance(teacher_factor: torch.Tensor, exploration_factor: torch.Tensor, p: int = 2
                         ) -> torch.Tensor:
    """d(t, ŝ_exp): how far the exploration half's factor is from the teacher's (pushed away from it), §5.3.

    The objective subtracts it, so it is maximized; it cannot run away because both factors are unit vectors
    (see `factor_distance`): −λ_exp · d ≥ −2·λ_exp (p = 2) or −2·λ_exp·√D (p = 1).
    """
    return factor_distance(teacher_factor.detach(), exploration_factor, p)


def ie_loss(goal: torch.Tensor, inheritance: torch.Tensor, exploration: torch.Tensor, lambda_inh: float = 1.0,
            lambda_exp: float = 1.0) -> torch.Tensor:
    """L = L_goal + λ_inh · d_inh − λ_exp · d_exp (methods.md#ie-kd)."""
    return goal + lambda_inh * inheritance - lambda_exp * exploration


def ie_term_weights(lambda_inh: float, lambda_exp: float) -> dict[str, float]:
    """The weights that make the KD loop's weighted sum of terms equal `ie_loss` (the exploration sign included)."""
    return {"goal": 1.0, "inh": lambda_inh, "exp": -lambda_exp}


def split_channels(features: torch.Tensor, inheritance_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f_S → (f_S^inh, f_S^exp): the first `inheritance_channels` channels and the rest (methods.md#ie-kd)."""
    if not 0 < inheritance_channels < features.shape[1]:
        raise ValueError(f"cannot split {features.shape[1]} channels into an inheritance part of "
                         f"{inheritance_channels} and a non-empty exploration part")
    return features[:, :inheritance_channels], features[:, inheritance_channels:]


# ------------------------------------------------------------------ the factor networks

def as_map(features: torch.Tensor) -> torch.Tensor:
    """(B, C) vectors (a fully-connected layer) as (B, C, 1, 1) maps, so one kind of encoder serves both."""
    return features[:, :, None, None] if features.dim() == 2 else features


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


class FactorEncoder(nn.Module):
    """Feature map (C, H, W) → factor (F, h, w): conv-BN-LeakyReLU, conv; resized to the teacher's factor size
    when the student's map has another resolution. The teacher's E and each student half's encoder are this."""

    def __init__(self, in_channels: int, factor_channels: int, factor_size: tuple[int, int] | None = None):
        super().__init__()
        self.net = nn.Sequential(*_conv_block(in_channels, in_channels),
                                 nn.Conv2d(in_channels, factor_channels, 3, padding=1))
        self.factor_size = factor_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = as_map(features)
        if self.factor_size is not None and tuple(x.shape[-2:]) != tuple(self.factor_size):
            x = F.interpolate(x, size=self.factor_size, mode="bilinear", align_corners=False)
        return self.net(x)


class FactorDecoder(nn.Module):
    """Factor (F, h, w) → reconstructed feature map (C, h, w): the teacher autoencoder's D."""

    def __init__(self, factor_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(*_conv_block(factor_channels, out_channels),
                                 nn.Conv2d(out_channels, out_channels, 3, padding=1))

    def forward(self, factor: torch.Tensor) -> torch.Tensor:
        return self.net(factor)


class FactorAutoencoder(nn.Module):
    """(E, D) on one layer's feature map (methods.md#ie-kd); t = E(f) is the compact factor the student inherits."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = FactorEncoder(channels, factor_channels)
        self.decoder = FactorDecoder(factor_channels, channels)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, reconstruction of the map)."""
        factor = self.encoder(features)
        return factor, self.decoder(factor)

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        """L_rec on a batch of feature maps."""
        return reconstruction_loss(as_map(features), self(features)[1])


class InheritanceExploration(nn.Module):
    """The student side of §5.2: its split layer's map → (inheritance factor, exploration factor), both with the
    teacher factor's shape.

    With every channel in the inheritance part there is no exploration factor (None): that is Factor Transfer, the
    baseline IE-KD extends (IE-FT vs FT in the paper)."""

    def __init__(self, channels: int, inheritance_channels: int, factor_channels: int,
                 factor_size: tuple[int, int]):
        super().__init__()
        self.inheritance_channels = inheritance_channels
        self.inheritance = FactorEncoder(inheritance_channels, factor_channels, factor_size)
        self.exploration = (FactorEncoder(channels - inheritance_channels, factor_channels, factor_size)
                            if inheritance_channels < channels else None)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = as_map(features)
        if self.exploration is None:
            return self.inheritance(features), None
        inh, exp = split_channels(features, self.inheritance_channels)
        return self.inheritance(inh), self.exploration(exp)


# ------------------------------------------------------------------ reading a layer with gradients

class LayerTap:
    """Keeps the output of one module from the latest forward pass, gradients included (unlike the analysis
    FeatureCapture, which detaches). Hooks live only inside `with tap.attached():`, so models handed to a job
    carry no hooks afterwards."""

    def __init__(self, module: nn.Module, name: str):
        self.module, self.name = module, name
        self.output: torch.Tensor | None = None

    def _record(self, module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer '{self.name}' returns {type(output).__name__}, not a tensor")
        self.output = output

    @contextmanager
    def attached(self) -> Iterator["LayerTap"]:
        self.output = None
        handle = self.module.register_forward_hook(self._record)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> torch.Tensor:
        """The recorded output (once per forward pass: a missing output is an error, never a stale one)."""
        if self.output is None:
            raise RuntimeError(f"layer '{self.name}' was not reached by the forward pass")
        out, self.output = self.output, None
        return out


__all__ = ["FACTOR_NORMS", "FactorAutoencoder", "FactorDecoder", "FactorEncoder", "InheritanceExploration",
           "LayerTap", "as_map", "exploration_distance", "factor_distance", "ie_loss", "ie_term_weights",
           "inheritance_distance", "normalize_factor", "reconstruction_loss", "split_channels"]
