"""Image grids for runs and the app (torchvision's make_grid; tiny images are upscaled to stay visible)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dfkd_core.runs import atomic_open


def grid_image(images01: torch.Tensor, nrow: int | None = None, min_cell: int = 32) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> one (3, H', W') grid; cells smaller than `min_cell` px are upscaled (nearest)."""
    from torchvision.utils import make_grid   # lazily: importing torchvision costs seconds (see models/tv_models.py)
    images01 = images01.detach().float().cpu()
    if images01.shape[-1] < min_cell:
        scale = math.ceil(min_cell / images01.shape[-1])
        images01 = F.interpolate(images01, scale_factor=scale, mode="nearest")
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images01))))
    return make_grid(images01, nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images01: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write the grid as a PNG atomically: a page or a killed run never reads half an image."""
    from torchvision.utils import save_image
    with atomic_open(path) as f:
        save_image(grid_image(images01, nrow), f, format="png")
    return Path(path)
