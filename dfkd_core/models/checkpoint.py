"""Checkpoints that rebuild their model from the registry: no pickled code, loaded with weights_only=True."""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from dfkd_core.data import DatasetInfo
from dfkd_core.models.registry import create_model, list_models

CHECKPOINT_FORMAT = "dfkd-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable dfkd checkpoint; the message says what it is instead."""


@dataclass
class Checkpoint:
    model: nn.Module
    model_cfg: dict
    dataset: DatasetInfo
    metrics: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def name(self) -> str:
        return self.model_cfg["name"]


def save_checkpoint(path: str | Path, model: nn.Module, dataset: DatasetInfo, metrics: dict | None = None) -> Path:
    """Write a model built by `create_model` with the facts needed to rebuild and use it."""
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise CheckpointError("model was not built by create_model(); its architecture cannot be recorded")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_cfg": dict(cfg),
        "dataset": dataset.to_dict(),
        "metrics": {k: float(v) if isinstance(v, (int, float)) else v for k, v in (metrics or {}).items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half checkpoint under the real name
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and rebuild a checkpoint; every way a file can be wrong gets a `CheckpointError` that says how."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or truncated?): "
                                  f"{str(e).splitlines()[-1][:200]}") from e
        raise CheckpointError(
            f"{path} contains pickled Python objects beyond tensors and plain containers; it was refused "
            f"(weights_only=True) because loading it could run arbitrary code. Details: {str(e)[:200]}") from e
    except Exception as e:  # torch raises many types for a damaged file (IndexError, RuntimeError, EOFError...)
        raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or truncated?): {e}") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a dfkd checkpoint dictionary")
    if payload.get("format") != CHECKPOINT_FORMAT:
        if all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise CheckpointError(
                f"{path} is a bare state_dict ({len(payload)} tensors) with no record of its architecture or "
                "dataset. Rebuild the model with create_model(...), load_state_dict it, and save it with "
                "dfkd_core.models.save_checkpoint(...).")
        raise CheckpointError(f"{path} is not a dfkd checkpoint (keys: {sorted(payload)[:8]})")
    cfg = dict(payload["model_cfg"])
    if cfg.get("name") not in list_models():
        raise CheckpointError(f"{path} needs model '{cfg.get('name')}', which this version does not register")
    model = create_model(**cfg)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit '{cfg['name']}' "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return Checkpoint(model, cfg, DatasetInfo.from_dict(payload["dataset"]), dict(payload.get("metrics", {})),
                      str(path))
