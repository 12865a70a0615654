"""A user's weights file as it comes (a state_dict, one inside a training checkpoint, saved from DataParallel or
torch.compile) fitted into the network it was trained as, with a sentence for every way it does not fit."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from dfkd_core.models.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_tensors

# Where training scripts keep the weights inside a larger checkpoint (plain loops, Lightning, timm, mmcv…).
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "ema", "model_ema")
# Prefixes that wrappers add to every name: DataParallel/DDP, torch.compile, Lightning modules.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The name → tensor mapping in a file saved with `torch.save(model.state_dict())` or inside a training
    checkpoint (`{"state_dict": …, "epoch": …}`), read with weights_only=True; and notes on what was taken."""
    path = Path(path)
    payload = load_tensors(path, "weights file")
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path.name} is already a dfkd checkpoint: use it as it is (--teacher {path}, or upload "
                              "it as a checkpoint); importing is for weights saved by other code")
    if _is_tensor_dict(payload):
        return dict(payload), []
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path.name} holds a {type(payload).__name__}, not weights: save them with "
                              "torch.save(model.state_dict(), path)")
    found = [k for k in CONTAINER_KEYS if _is_tensor_dict(payload.get(k))]
    if not found:
        found = [k for k, v in payload.items() if _is_tensor_dict(v)]
    if len(found) != 1 and not (found and found[0] in CONTAINER_KEYS):
        keys = ", ".join(repr(k) for k in list(payload)[:8])
        what = (f"several entries hold weights ({', '.join(map(repr, found))}): save the one you mean alone with "
                "torch.save(model.state_dict(), path)") if found else \
            "none of its entries is a mapping of names to tensors"
        raise CheckpointError(f"{path.name} is a dictionary with keys {keys}, and {what}")
    others = [k for k in payload if k != found[0]]
    note = f"took the weights in its '{found[0]}' entry" + (
        f" (the file also holds {', '.join(repr(k) for k in others[:5])}{', …' if len(others) > 5 else ''})"
        if others else "")
    return dict(payload[found[0]]), [note]


def _unwrapped(weights: dict[str, torch.Tensor], wanted: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop wrapper prefixes shared by every name while that makes more names match `wanted`."""
    removed = []
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in weights)), None)
        if prefix is None:
            break
        stripped = {k[len(prefix):]: v for k, v in weights.items()}
        if len(wanted & set(stripped)) <= len(wanted & set(weights)):
            break
        weights, removed = stripped, removed + [prefix]
    return weights, removed


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def fit_weights(net: nn.Module, weights: dict[str, torch.Tensor], arch: str, num_classes: int,
                dataset: str) -> list[str]:
    """Load `weights` into `net` (strictly: every tensor present and of its shape); returns notes on what was adapted.
    Raises `CheckpointError` that says which tensors do not fit and, where it can tell, why."""
    expected = net.state_dict()
    weights, removed = _unwrapped(weights, set(expected))
    notes = [f"removed the '{p}' prefix from every name" for p in removed]
    # BatchNorm's step counter is missing from files of old PyTorch versions; it does not change a prediction.
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        raise CheckpointError(_misfit_message(expected, weights, missing, unexpected, reshaped, arch, num_classes,
                                              dataset))
    counters = [k for k in expected if k not in weights]
    net.load_state_dict({**weights, **{k: expected[k] for k in counters}})
    return notes


def _misfit_message(expected, weights, missing, unexpected, reshaped, arch, num_classes, dataset) -> str:
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} tensor(s) of another shape (e.g. {k}: {_shape(weights[k])} in the file, "
                     f"{_shape(expected[k])} in {arch})")
    if missing:
        parts.append(f"{len(missing)} missing from the file (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} the architecture lacks (e.g. {', '.join(unexpected[:3])})")
    hints = []
    tail = list(expected)[-2:]   # the classifier's weight and bias
    last = [k for k in reshaped if k in tail and expected[k].dim() >= 1 and expected[k].shape[0] == num_classes]
    if last:
        hints.append(f"the file's last layer has {weights[last[0]].shape[0]} outputs and {dataset} has "
                     f"{num_classes} classes: a teacher must be trained on the dataset's classes")
    stem = next((k for k in reshaped if expected[k].dim() == 4), None)
    if stem is not None and weights[stem].shape[2:] != expected[stem].shape[2:]:
        hints.append("the convolution kernels differ in size" + (
            ": a stock torchvision ResNet-18 has a 7×7 stem, use --arch torchvision:resnet18 (tv_resnet18 is the "
            "small-input variant)" if arch == "tv_resnet18" else ": the file was trained as another architecture"))
    elif stem is not None and weights[stem].shape[1] != expected[stem].shape[1] and stem == reshaped[0]:
        hints.append(f"the first convolution reads {weights[stem].shape[1]} channel(s) in the file and "
                     f"{expected[stem].shape[1]} for {dataset}")
    if not hints and (missing or unexpected) and not reshaped and len(missing) + len(unexpected) > 0.5 * len(expected):
        hints.append("most names differ: the file was likely trained as another architecture")
    hint = "; ".join(hints)
    return (f"the weights do not fit {arch}: " + "; ".join(parts) + "."
            + (f" {hint[0].upper()}{hint[1:]}." if hints else ""))
