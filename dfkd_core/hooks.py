"""Forward hooks that record the batch statistics entering every BatchNorm layer (METHODS §1, R_feature)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from dfkd_core.losses import BNStatistics

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """(name, module) of every BatchNorm layer that tracks running statistics, in forward-definition order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None]


class BNStatisticsRecorder:
    """Hooks the input of each BN layer; after a forward pass, `statistics()` lists one `BNStatistics` per layer.

    Use as a context manager so the hooks are always removed, even when the forward pass raises.
    """

    def __init__(self, model: nn.Module):
        self.layers = batchnorm_layers(model)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].float()
            dims = [0] + list(range(2, x.dim()))
            self._captured[name] = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))
        return record

    def __enter__(self) -> "BNStatisticsRecorder":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def statistics(self) -> list[BNStatistics]:
        missing = [n for n, _ in self.layers if n not in self._captured]
        if missing:
            raise RuntimeError(f"BN layers {missing[:3]} were not reached by the last forward pass")
        return [BNStatistics(n, *self._captured[n], m.running_mean, m.running_var) for n, m in self.layers]


@contextmanager
def record_bn_statistics(model: nn.Module) -> Iterator[BNStatisticsRecorder]:
    with BNStatisticsRecorder(model) as recorder:
        yield recorder
