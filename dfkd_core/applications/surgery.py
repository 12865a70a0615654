"""Structural pruning surgery: conv filters really removed (smaller weight tensors, fewer FLOPs), not masked.

The surgery is torch-pruning's (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"): its dependency
graph knows that removing output channel m of a conv also removes channel m of the BatchNorm after it and input
channel m of every layer that reads it (the next conv, a Linear after global pooling, the other branch of a residual
sum), for any model it can trace. This file only says which channels go; `pruning.py` decides that.

A pruned model is stored as the registered model `pruned` (dfkd_core/models/pruned.py): its `base` model rebuilt
with the number of filters each conv kept (`channels`), so `load_checkpoint` rebuilds it from the registry like any
other model, on every page and command.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from dfkd_core.models import create_model
from dfkd_core.models.pruned import conv_channels, dependency_graph

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class ChannelGroup:
    """Output channels of one conv (`name`), removed together with everything that depends on them; `batchnorms`
    are the BN layers normalizing those channels (the BN-based importance criteria read them)."""

    name: str
    conv: nn.Conv2d
    batchnorms: list[nn.Module]

    @property
    def channels(self) -> int:
        return self.conv.out_channels


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Linear layers that output the classes: never pruned (their outputs are the model's answer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def channel_groups(model: nn.Module, example: torch.Tensor, num_classes: int) -> list[ChannelGroup]:
    """One group per independently prunable set of conv output channels, in the graph's order."""
    graph = dependency_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=classifier_layers(model, num_classes),
                                      root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        batchnorms = [dep.target.module for dep, _ in group if isinstance(dep.target.module, _BN_TYPES)]
        groups.append(ChannelGroup(names[root], root, batchnorms))
    return groups


def remove_channels(model: nn.Module, example: torch.Tensor, removals: dict[str, list[int]]) -> nn.Module:
    """Remove the listed output channels of the named convs (and every dependent slice), in place."""
    graph = dependency_graph(model, example)
    modules = dict(model.named_modules())
    for name, channels in removals.items():
        if channels:
            graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=sorted(channels)).prune()
    return model


def count_macs(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-accumulates of one image's forward pass (torch-pruning's counter; `example`'s first image)."""
    macs, _ = tp.utils.count_ops_and_params(model, example[:1])
    return float(macs)


def registered_copy(model: nn.Module, base_cfg: dict) -> nn.Module:
    """`model` (pruned in place from a model of `base_cfg`) as the registered `pruned` model with its weights, so
    save_checkpoint can record it; building it also checks that the registry rebuilds this exact architecture."""
    if base_cfg["name"] == "pruned":
        base, base_kwargs = base_cfg.get("base"), base_cfg.get("base_kwargs") or {}
    else:
        facts = ("name", "num_classes", "in_channels", "image_size")
        base, base_kwargs = base_cfg["name"], {k: v for k, v in base_cfg.items() if k not in facts}
    rebuilt = create_model("pruned", base_cfg["num_classes"], base_cfg["in_channels"], base_cfg["image_size"],
                           base=base, channels=conv_channels(model), **({"base_kwargs": base_kwargs}
                                                                        if base_kwargs else {}))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt
