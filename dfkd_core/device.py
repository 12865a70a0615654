"""Device selection and the CUDA fast paths (AMP, channels_last); everything degrades to plain CPU."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available on this machine; use 'cpu'")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where it would only slow small nets."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to device; channels_last on CUDA where convolutions run faster in NHWC."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def thread_policy() -> str:
    """How this process's CPU threads behave, in words: the torch thread count and OpenMP's wait policy (set by
    importing dfkd_core before torch, see `dfkd_core/__init__.py`)."""
    from dfkd_core import OMP_WAIT_POLICY_IN_EFFECT as policy
    waiting = (f"OMP_WAIT_POLICY={policy}" if policy else
               "OpenMP's default wait policy (threads spin before they sleep: torch was imported before dfkd_core "
               "and the environment names no OMP_WAIT_POLICY)")
    return f"{torch.get_num_threads()} torch threads, {waiting}"
