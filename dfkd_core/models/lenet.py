"""LeNet-5 and LeNet-5-half as used in the data-free KD literature (DAFL, ZSKD) on MNIST-like data.

A BatchNorm layer follows each convolution: DeepInversion needs running statistics to invert, and the published
data-free LeNets are trained the same way. Inputs are padded to 32x32 like the original LeNet-5.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, scale: float = 1.0):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"LeNet-5 needs inputs of at least 16x16 pixels, this dataset has {image_size}x"
                             f"{image_size}; use a bncnn model for digits.")
        c1, c2, c3, f1 = (max(1, int(round(c * scale))) for c in (6, 16, 120, 84))
        self.image_size = image_size
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, c1, 5), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, 5), nn.BatchNorm2d(c2), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(nn.Conv2d(c2, c3, 5), nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        self.fc1 = nn.Sequential(nn.Linear(c3, f1), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Resize to 32x32 so that conv3 sees exactly 5x5 at any input size (multi-resolution inversion included).
        if x.shape[-1] == 28:
            x = F.pad(x, [2, 2, 2, 2])
        elif x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(self.conv3(x), 1)
        return self.fc2(self.fc1(x))


@register_model
def lenet5(num_classes=10, in_channels=1, image_size=28, **_):
    """LeNet-5 with BatchNorm (data-free KD literature teacher)."""
    return LeNet5(num_classes, in_channels, image_size)


@register_model
def lenet5_half(num_classes=10, in_channels=1, image_size=28, **_):
    """LeNet-5-half: every layer at half the channels (data-free KD literature student)."""
    return LeNet5(num_classes, in_channels, image_size, scale=0.5)
