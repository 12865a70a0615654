"""torchvision architectures adapted to small inputs and any channel count (weights are never downloaded)."""
from __future__ import annotations

import torch.nn as nn

from dfkd_core.models.registry import register_model

# torchvision is imported inside each factory: importing it loads torch._dynamo (through torchvision.ops), about 3.5 s
# of every CLI call, app start and worker process on 2 cores, which only these two models need.


@register_model
def tv_resnet18(num_classes=10, in_channels=3, image_size=32, **_):
    """torchvision ResNet-18; for inputs under 64 px the stem becomes a 3x3 stride-1 conv without max-pool."""
    import torchvision
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if image_size < 64:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


@register_model
def tv_mobilenet_v2(num_classes=10, in_channels=3, image_size=32, **_):
    """torchvision MobileNetV2; the first conv gets stride 1 for inputs under 64 px."""
    import torchvision
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stride = 1 if image_size < 64 else 2
    model.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride, 1, bias=False)
    return model
