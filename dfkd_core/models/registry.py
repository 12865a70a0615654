"""A timm-style model registry: constructors register under a name; checkpoints store that name + kwargs."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make `fn(num_classes, in_channels, image_size)` available to `create_model(fn.__name__)`."""
    _MODELS[fn.__name__] = fn
    _DESCRIPTIONS[fn.__name__] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return fn


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 **kwargs) -> nn.Module:
    """Build a registered model. Every model takes the same three facts about its input."""
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'. Registered models: {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    model.default_cfg = dict(name=name, num_classes=num_classes, in_channels=in_channels,
                             image_size=image_size, **kwargs)
    return model


def list_models(pattern: str = "") -> list[str]:
    return sorted(n for n in _MODELS if pattern in n)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")
