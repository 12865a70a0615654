"""Small BatchNorm CNNs: the project's default teachers (width 32) and students (half width).

Stages of conv3x3-BN-ReLU with 2x2 max-pooling between stages and global average pooling at the end, so one
network works at any input size (which multi-resolution inversion needs).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dfkd_core.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class ConvNet(nn.Module):
    """`stages` is a list of (channels, convs per stage); pooling after every stage but the last."""

    def __init__(self, stages: list[tuple[int, int]], num_classes: int, in_channels: int,
                 batchnorm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (width, convs) in enumerate(stages):
            for _ in range(convs):
                layers += _conv_bn_relu(cin, width, batchnorm)
                cin = width
            if i < len(stages) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _three_conv(width: int, num_classes: int, in_channels: int, batchnorm: bool = True) -> ConvNet:
    return ConvNet([(width, 1), (2 * width, 1), (2 * width, 1)], num_classes, in_channels, batchnorm)


def _six_conv(width: int, num_classes: int, in_channels: int) -> ConvNet:
    return ConvNet([(width, 2), (2 * width, 2), (4 * width, 2)], num_classes, in_channels)


@register_model
def bncnn3_w32(num_classes=10, in_channels=1, image_size=8, **_):
    """3-conv BN CNN, width 32 (digits teacher)."""
    return _three_conv(32, num_classes, in_channels)


@register_model
def bncnn3_w16(num_classes=10, in_channels=1, image_size=8, **_):
    """3-conv BN CNN, width 16 (digits half-width student)."""
    return _three_conv(16, num_classes, in_channels)


@register_model
def bncnn3_w8(num_classes=10, in_channels=1, image_size=8, **_):
    """3-conv BN CNN, width 8 (quarter-width student)."""
    return _three_conv(8, num_classes, in_channels)


@register_model
def bncnn6_w32(num_classes=10, in_channels=1, image_size=28, **_):
    """6-conv BN CNN, width 32 (Fashion-MNIST teacher)."""
    return _six_conv(32, num_classes, in_channels)


@register_model
def bncnn6_w16(num_classes=10, in_channels=1, image_size=28, **_):
    """6-conv BN CNN, width 16 (Fashion-MNIST half-width student)."""
    return _six_conv(16, num_classes, in_channels)


@register_model
def plaincnn3_w32(num_classes=10, in_channels=1, image_size=8, **_):
    """3-conv CNN without BatchNorm (DeepDream works on it; DeepInversion's feature loss cannot)."""
    return _three_conv(32, num_classes, in_channels, batchnorm=False)
