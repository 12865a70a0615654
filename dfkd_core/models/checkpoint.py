"""Checkpoints that rebuild their model from the registry: no pickled code, loaded with weights_only=True."""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from dfkd_core.data import DatasetInfo
from dfkd_core.models.registry import create_model, list_models
from dfkd_core.runs import atomic_torch_save

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

    @property
    def title(self) -> str:
        """What to call the network in text: its registered name, or an imported one's own architecture."""
        if self.name == "imported":
            return self.model_cfg.get("origin") or self.model_cfg.get("arch") or self.name
        return self.name


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
    return atomic_torch_save(payload, path)   # a crash mid-write never leaves half a checkpoint under the name


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _torch_detail(error: Exception) -> str:
    """The first sentence of what torch found wrong, without its advice to load with weights_only=False (that
    advice is how a malicious pickle runs code; this tool never follows it)."""
    text = _ANSI.sub("", str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    if not lines:
        return type(error).__name__
    first = lines[0]
    end = first.find(". ")
    return (first[:end] if end >= 0 else first).rstrip(".")[:200]


def load_tensors(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu"):
    """`torch.load(path, weights_only=True)` with our own sentence for every way it can fail: what the file is, why
    it is refused, what to do; torch's detail is trimmed to its first sentence. Raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if len(path.parts) == 1 and not path.suffix:   # 'teacher-20261207-…': the CLI and the app take run ids
            name = "images.pt" if what == "image pool" else "model.pt"
            hint = (f"; '{path}' looks like a run id: dfkd_core.runs.RunStore().resolve_checkpoint('{path}'"
                    + (", 'images.pt'" if name == "images.pt" else "") + f") gives that run's {name}")
        raise CheckpointError(f"{what} not found: {path}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE_GLOBAL.search(_ANSI.sub("", str(e)))
        if unsafe is None:
            raise CheckpointError(f"{path} is not a readable {what}: the file is corrupt, truncated or not a PyTorch "
                                  f"file (torch: {_torch_detail(e)}).") from None
        raise CheckpointError(
            f"{path} was refused: it is a pickle that needs the Python object {unsafe.group(1)} (a whole model saved "
            f"with torch.save(model) is one), and unpickling an object can run arbitrary code, so dfkd studio reads "
            f"only tensors and plain containers. If you trust the file, load it yourself, save its weights with "
            f"torch.save(model.state_dict(), path) and bring them in with `dfkd import-teacher --weights path "
            f"--arch <its architecture>` or the Teacher page's upload.") from None
    except Exception as e:  # torch raises many types for a damaged file (IndexError, RuntimeError, EOFError...)
        raise CheckpointError(f"{path} is not a readable {what}: the file is corrupt, truncated or not a PyTorch "
                              f"file (torch: {_torch_detail(e)}).") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and rebuild a checkpoint; every way a file can be wrong gets a `CheckpointError` that says how."""
    path = Path(path)
    payload = load_tensors(path, "checkpoint", map_location)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a dfkd checkpoint dictionary")
    if payload.get("format") != CHECKPOINT_FORMAT:
        if all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise CheckpointError(
                f"{path} is a bare state_dict ({len(payload)} tensors) with no record of its architecture or "
                "dataset. Bring it in with `dfkd import-teacher --weights <file> --arch <its architecture> "
                "--dataset <its dataset>` (or the Teacher page's upload, which asks for both).")
        raise CheckpointError(f"{path} is not a dfkd checkpoint (keys: {sorted(payload)[:8]})")
    for key in ("model_cfg", "dataset", "state_dict"):
        if not isinstance(payload.get(key), dict):
            found = "missing" if key not in payload else f"a {type(payload[key]).__name__}"
            raise CheckpointError(f"{path} is a damaged dfkd checkpoint: its '{key}' entry is {found}, not a "
                                  "dictionary; save the model again with dfkd_core.models.save_checkpoint(...)")
    cfg = dict(payload["model_cfg"])
    if cfg.get("name") not in list_models():
        raise CheckpointError(f"{path} needs model '{cfg.get('name')}', which this version does not register")
    try:
        dataset = DatasetInfo.from_dict(payload["dataset"])
    except TypeError as e:
        raise CheckpointError(f"{path} is a damaged dfkd checkpoint: its 'dataset' entry lacks facts this version "
                              f"needs ({_torch_detail(e)}); save the model again with "
                              "dfkd_core.models.save_checkpoint(...)") from None
    try:
        model = create_model(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} records settings that model '{cfg['name']}' does not take "
                              f"({_torch_detail(e)})") from None
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as e:   # shapes that differ: torch lists every tensor over many lines
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise CheckpointError(f"{path}: weights do not fit '{cfg['name']}' as its recorded settings build it "
                              f"({len(lines)} tensors of another shape, e.g. "
                              f"{(lines[0] if lines else _torch_detail(e))[:200].rstrip('.')})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit '{cfg['name']}' "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return Checkpoint(model, cfg, dataset, dict(payload.get("metrics", {})), str(path))
