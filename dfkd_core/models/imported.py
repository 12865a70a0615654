"""A user's own trained network as a teacher: a stock torchvision architecture (or a registered one) with the user's
weights, behind the normalization it was trained with (self-contained model file, timm style)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from dfkd_core.models.registry import create_model, list_models, register_model

TORCHVISION_PREFIX = "torchvision:"
CODE_PREFIX = "code:"     # code:path/to/models.py:factory — the user's own class, run once at import, then traced
TRACED = "traced"         # what a code: network is stored as (models/graph.py): no code in the checkpoint


def torchvision_architectures() -> list[str]:
    """torchvision's classification architectures, as `--arch` names them ('torchvision:resnet18', …)."""
    import torchvision
    return [TORCHVISION_PREFIX + name for name in torchvision.models.list_models(module=torchvision.models)]


def split_code_arch(arch: str) -> tuple[Path, str]:
    """'code:nets/wrn.py:wrn_16_2' → (the file, the factory's name); ValueError where the form is wrong."""
    path, sep, factory = arch[len(CODE_PREFIX):].rpartition(":")
    if not sep or not path or not factory.isidentifier():
        raise ValueError(f"'{arch}': give code:<file.py>:<class or function>, e.g. code:models.py:Net")
    return Path(path).expanduser(), factory


def load_user_factory(arch: str):
    """The class or function a code: architecture names, from the user's own file (run here, at import time only;
    sibling modules of the file import as they do in the user's scripts)."""
    import importlib.util
    import sys
    path, factory = split_code_arch(arch)
    if not path.is_file():
        raise ValueError(f"'{arch}': no file {path}")
    spec = importlib.util.spec_from_file_location(f"dfkd_user_code_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not callable(getattr(module, factory, None)):
        raise ValueError(f"'{arch}': {path.name} defines no class or function '{factory}'")
    return getattr(module, factory)


def check_architecture(arch: str) -> None:
    """Refuse, in one sentence, an architecture this tool cannot build."""
    if arch.startswith(CODE_PREFIX):
        path, _ = split_code_arch(arch)
        if not path.is_file():
            raise ValueError(f"'{arch}': no file {path}")
        return
    if arch.startswith(TORCHVISION_PREFIX):
        if arch not in torchvision_architectures():
            raise ValueError(f"torchvision has no classification model '{arch[len(TORCHVISION_PREFIX):]}'; "
                             f"e.g. torchvision:resnet18, torchvision:mobilenet_v2 (`dfkd import-teacher "
                             f"--list-architectures` lists all)")
        return
    if arch not in list_models(from_scratch=True):
        raise ValueError(f"unknown architecture '{arch}': give a registered model "
                         f"({', '.join(list_models(from_scratch=True))}), torchvision:<name> for a stock torchvision "
                         "classifier, or code:<file.py>:<class> for your own")


def _take_channels(net: nn.Module, in_channels: int) -> None:
    """Give the first convolution `in_channels` inputs, its other settings unchanged: the usual way a torchvision
    network is made to read grayscale images, so the user's weights for it fit."""
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size,
                                                    child.stride, child.padding, child.dilation, child.groups,
                                                    child.bias is not None, child.padding_mode))
                return


def build_architecture(arch: str, num_classes: int, in_channels: int, image_size: int,
                       graph: dict | None = None) -> nn.Module:
    """The untrained network the user's weights are loaded into (`graph`: a traced network's record)."""
    if arch == TRACED:
        from dfkd_core.models.graph import build_graph
        return build_graph(graph)
    check_architecture(arch)
    if arch.startswith(TORCHVISION_PREFIX):
        import torchvision
        name = arch[len(TORCHVISION_PREFIX):]
        extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
        if in_channels != 3:
            _take_channels(net, in_channels)
        return net
    return create_model(arch, num_classes, in_channels, image_size)


class ImportedClassifier(nn.Module):
    """`net` unchanged, reading the tool's inputs (normalized with the dataset's mean and std) as it was trained to:
    x_net = (x·σ_data + μ_data − μ_net) / σ_net per channel. Every other part of the tool (synthesis bounds, real test
    images, students) keeps the dataset's normalization; only this map knows the user's."""

    def __init__(self, net: nn.Module, dataset_mean: Sequence[float], dataset_std: Sequence[float],
                 input_mean: Sequence[float], input_std: Sequence[float]):
        super().__init__()
        self.net = net
        d_mean, d_std = torch.tensor(dataset_mean, dtype=torch.float32), torch.tensor(dataset_std, dtype=torch.float32)
        n_mean, n_std = torch.tensor(input_mean, dtype=torch.float32), torch.tensor(input_std, dtype=torch.float32)
        scale, shift = d_std / n_std, (d_mean - n_mean) / n_std
        self.renormalizes = not (torch.allclose(scale, torch.ones_like(scale))
                                 and torch.allclose(shift, torch.zeros_like(shift)))
        # Not in the state_dict: they follow from the recorded settings, and the user's weights file lacks them.
        self.register_buffer("input_scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalizes:
            x = torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))
        return self.net(x)


@register_model(derived="a user's trained network brought in by `dfkd import-teacher`")
def imported(num_classes=10, in_channels=3, image_size=32, arch: str = "", dataset_mean=(0.0,), dataset_std=(1.0,),
             input_mean=None, input_std=None, graph: dict | None = None, **_):
    """A user's network (stock torchvision, registered, or traced from their code) with its own input normalization."""
    if arch.startswith(CODE_PREFIX):
        raise ValueError(f"'{arch}' is built at import only (dfkd import-teacher), then stored as a traced graph")
    net = build_architecture(arch, num_classes, in_channels, image_size, graph)
    return ImportedClassifier(net, dataset_mean, dataset_std, input_mean if input_mean is not None else dataset_mean,
                              input_std if input_std is not None else dataset_std)
