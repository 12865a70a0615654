"""The registered model `pruned`: a registered model with conv filters removed by `dfkd prune`.

It is the `base` model rebuilt with the number of filters each conv kept (`channels`), the removal done by
torch-pruning's dependency graph (Fang et al. 2023), so a pruned checkpoint loads through `load_checkpoint` like any
other model — on every page and command, not only where the pruning code was imported.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dfkd_core.models.registry import create_model, register_model


def dependency_graph(model: nn.Module, example: torch.Tensor):
    """torch-pruning's dependency graph of `model` traced on `example`: which slices go with a removed filter."""
    # torch-pruning leaves out layers whose parameters take no gradient, so a frozen model (an inverted teacher)
    # would silently have nothing to prune.
    if any(not p.requires_grad for p in model.parameters()):
        raise ValueError("pruning needs a model whose parameters take gradients (torch-pruning skips frozen layers); "
                         "pass a trainable copy")
    import torch_pruning as tp   # imported when a pruned model is built, not whenever the registry is

    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv: what the registered `pruned` model needs to rebuild the architecture."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@register_model(derived="made by `dfkd prune` from a trained model")
def pruned(num_classes=10, in_channels=1, image_size=28, base: str = "", channels: dict | None = None,
           base_kwargs: dict | None = None, **_):
    """A registered model with conv filters removed (`dfkd prune`): `base` with `channels` filters per conv."""
    # base_kwargs: the base's own settings (an imported network's architecture and normalization).
    model = create_model(base, num_classes, in_channels, image_size, **(base_kwargs or {}))
    example = torch.zeros(2, in_channels, image_size, image_size)
    current = conv_channels(model)
    unknown = sorted(set(channels or {}) - set(current))
    if unknown:
        raise ValueError(f"pruned model: {base} has no conv layers {unknown[:3]}")
    import torch_pruning as tp

    graph = dependency_graph(model, example)
    modules = dict(model.named_modules())
    for name, kept in (channels or {}).items():
        conv = modules[name]
        if conv.out_channels > kept:   # a conv coupled to one pruned before it already has its size
            graph.get_pruning_group(conv, tp.prune_conv_out_channels,
                                    idxs=list(range(kept, conv.out_channels))).prune()
    return model
