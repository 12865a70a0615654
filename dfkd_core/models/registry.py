"""A timm-style model registry: constructors register under a name; checkpoints store that name + kwargs."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_DERIVED: dict[str, str] = {}   # name -> how it is made from a trained model (never built from nothing)


def register_model(fn: Callable[..., nn.Module] | None = None, *, derived: str = ""):
    """Decorator: make `fn(num_classes, in_channels, image_size)` available to `create_model(fn.__name__)`.
    `@register_model(derived="made by `dfkd prune` from a trained model")`: the model is rebuilt from a trained one's
    settings (its checkpoint names them) and cannot be trained from scratch, so teacher and student pickers leave it
    out."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = fn
        _DESCRIPTIONS[fn.__name__] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        if derived:
            _DERIVED[fn.__name__] = derived
        return fn
    return add(fn) if fn is not None else add


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 **kwargs) -> nn.Module:
    """Build a registered model. Every model takes the same three facts about its input."""
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'. Registered models: {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    model.default_cfg = dict(name=name, num_classes=num_classes, in_channels=in_channels,
                             image_size=image_size, **kwargs)
    return model


def list_models(pattern: str = "", *, from_scratch: bool = False) -> list[str]:
    """Registered names containing `pattern`; `from_scratch`: only those a new teacher or student can be."""
    return sorted(n for n in _MODELS if pattern in n and not (from_scratch and n in _DERIVED))


def check_from_scratch(name: str, role: str = "model") -> None:
    """Refuse, in one sentence, a name that is not registered or that cannot be trained from nothing."""
    if name in _DERIVED:
        raise ValueError(f"{role} '{name}' is {_DERIVED[name]}, not trained from scratch; choose one of "
                         f"{', '.join(list_models(from_scratch=True))}")
    if name not in _MODELS:
        raise ValueError(f"unknown {role} '{name}'; registered models: {', '.join(list_models(from_scratch=True))}")


def describe_model(name: str) -> str:
    """The one-line description a model was registered with ('' when it has none)."""
    return _DESCRIPTIONS.get(name, "")
