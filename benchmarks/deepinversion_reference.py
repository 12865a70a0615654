"""The baseline of `synthesis_speed.py`: a plain DeepInversion loop written the way the public code does it.

NVlabs/DeepInversion (`deepinversion.py`, CVPR 2020) keeps one forward hook per BatchNorm layer that computes that
layer's feature loss inside the hook (mean over (N, H, W), biased variance through `permute → contiguous → view →
var`, two `torch.norm`s), draws jitter and flip with Python's `random`, rolls and flips the batch, sums the hooks'
losses in Python, runs in fp32 here (the public code's fp16 path needs apex), and reads `loss.item()` every
iteration (its best-image bookkeeping). This module does the same with the project's objective, so the two loops
optimize the same function:

    L(x̂) = α_ce·CE + α_tv·R_TV + α_l2·||x̂||₂ + α_f·Σ_l w_l (||μ_l − μ̂_l||₂ + ||σ²_l − σ̂²_l||₂)

and draws its augmentations from the same `random.Random(seed)` stream, in the same order, as `ModelInversion`
(dx, dy, then the flip coin), with the same initial noise, Adam(β = (0.5, 0.9)), the same cosine learning rate and
the same clipping. Same inputs, same images: the speed comparison is then a comparison of the machinery alone.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeatureHook:
    """DeepInversion's `DeepInversionFeatureHook`: the layer's R_feature term, computed when the layer runs."""

    def __init__(self, module: nn.BatchNorm2d):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.r_feature: torch.Tensor | None = None

    def hook_fn(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        channels = inputs[0].shape[1]
        mean = inputs[0].mean([0, 2, 3])
        var = inputs[0].permute(1, 0, 2, 3).contiguous().view([channels, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)

    def close(self) -> None:
        self.hook.remove()


def image_prior_tv(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's `loss_var_l2`: the L2 norms of the four neighbour-difference maps."""
    diff1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    diff2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    diff3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    diff4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return torch.norm(diff1) + torch.norm(diff2) + torch.norm(diff3) + torch.norm(diff4)


def reference_deepinversion(teacher: nn.Module, init: torch.Tensor, targets: torch.Tensor, low: torch.Tensor,
                            high: torch.Tensor, *, iterations: int, lr: float, jitter: int, flip: bool,
                            alpha_ce: float = 1.0, alpha_tv: float = 1e-3, alpha_l2: float = 1e-3,
                            alpha_f: float = 1.0, first_bn_multiplier: float = 10.0, seed: int = 0,
                            after_step=None) -> torch.Tensor:
    """Invert `teacher` from `init` (B, C, H, W) for `iterations` Adam steps; returns the final batch (detached).
    `after_step()`, if given, is called after each iteration (the benchmark times a teacher pass there)."""
    rng = random.Random(seed)
    hooks = [FeatureHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    inputs = init.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    best_cost = float("inf")
    try:
        for iteration in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * iteration / iterations))
            inputs_jit = inputs
            if jitter > 0:
                off_x, off_y = rng.randint(-jitter, jitter), rng.randint(-jitter, jitter)
                inputs_jit = torch.roll(inputs_jit, shifts=(off_y, off_x), dims=(2, 3))
            if flip and rng.random() < 0.5:
                inputs_jit = torch.flip(inputs_jit, dims=(3,))
            optimizer.zero_grad()
            teacher.zero_grad()
            outputs = teacher(inputs_jit)
            loss = alpha_ce * F.cross_entropy(outputs, targets)
            rescale = [first_bn_multiplier] + [1.0] * (len(hooks) - 1)
            loss_r_feature = sum(h.r_feature * rescale[i] for i, h in enumerate(hooks))
            loss_l2 = torch.norm(inputs_jit.view(inputs.shape[0], -1), dim=1).mean()
            loss = loss + alpha_tv * image_prior_tv(inputs_jit) + alpha_f * loss_r_feature + alpha_l2 * loss_l2
            loss.backward()
            optimizer.step()
            inputs.data = torch.max(torch.min(inputs.data, high), low)
            if best_cost > loss.item():   # the public loop's best-image bookkeeping: one host read per step
                best_cost = loss.item()
            if after_step is not None:
                after_step()
    finally:
        for h in hooks:
            h.close()
    return inputs.detach()
