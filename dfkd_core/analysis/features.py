"""Layer activations for representation analysis (methods.md#ie-kd, #cka): find layers, capture them, count active
neurons.

Layers are named as in `model.named_modules()` and resolved to modules once. `layer_names(model)` lists the ones
worth analyzing in the order the forward pass runs them, found by tracing one small forward pass:

- ``"conv"``: Conv/Linear layers (pre-normalization responses),
- ``"bn"``: BatchNorm layers,
- ``"blocks"`` (default): the output of every block — an activation module (conv-BN-ReLU ends here) or a composite
  module such as a ResNet BasicBlock — plus the classifier whose output is the logits. When several modules return
  the very same tensor (an in-place ReLU and the Sequential around it) only the innermost is listed,
- ``"all"``: the union, in execution order.

Modules that run more than once per forward pass (torchvision's reused ``relu``) have no single activation and are
never listed; capturing one is an error naming its parent instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
import torch.nn as nn

from dfkd_core.data import ImageSplit
from dfkd_core.device import prepare_input

Inputs = Union[torch.Tensor, ImageSplit]   # normalized images (N, C, H, W), or a split normalized batch by batch
LayerRef = Union[str, nn.Module]

LAYER_KINDS = ("blocks", "conv", "bn", "all")
REDUCTIONS = ("flatten", "mean", "none")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh,
                nn.Sigmoid)
_SIDE_BRANCHES = ("shortcut", "downsample")


@dataclass
class LayerInfo:
    """One module as seen by a traced forward pass."""

    name: str
    module: nn.Module
    kind: str                     # "conv" | "bn" | "block" | "logits" | "other"
    output_shape: tuple[int, ...]  # without the batch dimension
    calls: int


def _example_input(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "default_cfg", None)
    if cfg is None:
        raise ValueError("the model was not built by create_model(); pass example_input=(a batch of images)")
    device = next(model.parameters()).device
    return torch.zeros(2, cfg["in_channels"], cfg["image_size"], cfg["image_size"], device=device)


def trace_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every submodule that returns a tensor, in the order its forward finishes, from one eval-mode pass."""
    x = _example_input(model) if example_input is None else example_input.to(next(model.parameters()).device)
    finished: list[tuple[str, nn.Module, torch.Tensor]] = []
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and calls[name] == 1:
                finished.append((name, module, output))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    infos, seen_outputs = [], set()
    for name, module, out in finished:
        if isinstance(module, _CONV):
            kind = "logits" if out is logits else "conv"
        elif isinstance(module, _BN):
            kind = "bn"
        elif (isinstance(module, _ACTIVATIONS) or any(True for _ in module.children())) and \
                name.rsplit(".", 1)[-1] not in _SIDE_BRANCHES and out is not logits:
            # Innermost wins: a Sequential returning its in-place ReLU's tensor is the same activation again.
            kind = "other" if id(out) in seen_outputs else "block"
            seen_outputs.add(id(out))
        else:
            kind = "other"
        infos.append(LayerInfo(name, module, kind, tuple(out.shape[1:]), calls[name]))
    return infos


def layer_names(model: nn.Module, kind: str = "blocks", example_input: torch.Tensor | None = None) -> list[str]:
    """Names of the layers worth analyzing, in execution order (see the module docstring for the kinds)."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind '{kind}'; choose one of {LAYER_KINDS}")
    wanted = {"blocks": ("block", "logits"), "conv": ("conv",), "bn": ("bn",),
              "all": ("conv", "bn", "block", "logits")}[kind]
    infos = trace_layers(model, example_input)
    if kind == "blocks":
        wanted = (_block_kind(infos), "logits")
    return [i.name for i in infos if i.kind in wanted and i.calls == 1]


def _block_kind(infos: list[LayerInfo]) -> str:
    """What stands for a network's blocks: its blocks; in a network whose activations are functions (F.relu in its
    forward, as a traced imported teacher keeps them) there are none, and its BatchNorm outputs (else its
    convolutions) are the layers."""
    kinds = {i.kind for i in infos if i.calls == 1}
    return next((k for k in ("block", "bn", "conv") if k in kinds), "block")


def default_attention_layer(model: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """The last block whose output is still a spatial map (H·W > 1): the usual Grad-CAM layer (methods.md#grad-cam);
    in a network without block modules, the last such BatchNorm or convolution output."""
    infos = trace_layers(model, example_input)
    spatial = []
    for kind in ("block", "bn", "conv"):
        spatial = spatial or [i for i in infos if i.kind == kind and i.calls == 1 and len(i.output_shape) == 3
                              and i.output_shape[1] * i.output_shape[2] > 1]
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no block with a spatial output map; Grad-CAM needs one")
    return spatial[-1].name


def resolve_layers(model: nn.Module, layers: Sequence[LayerRef]) -> list[tuple[str, nn.Module]]:
    """(name, module) for each name or module; an unknown name is an error that lists the valid ones."""
    modules = dict(model.named_modules())
    names_of = {id(m): n for n, m in modules.items()}
    resolved = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in names_of:
                raise ValueError(f"module {type(layer).__name__} is not part of {type(model).__name__}")
            resolved.append((names_of[id(layer)], layer))
        elif layer in modules and layer:
            resolved.append((layer, modules[layer]))
        else:
            raise ValueError(f"{type(model).__name__} has no layer '{layer}'. Layers worth analyzing: "
                             f"{', '.join(layer_names(model, 'all'))}")
    return resolved


def reduce_features(t: torch.Tensor, reduce: str = "flatten") -> torch.Tensor:
    """(N, C, *spatial) -> (N, p). 'flatten': every unit of the map is a feature (Kornblith et al. 2019);
    'mean': global average pooling, one feature per channel; 'none': unchanged (a copy)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{reduce}'; choose one of {REDUCTIONS}")
    t = t.detach()
    if reduce == "mean" and t.dim() > 2:
        return t.float().flatten(2).mean(2)
    # Always a copy: an in-place ReLU after this layer would otherwise rewrite the captured values.
    out = t.float().flatten(1) if reduce == "flatten" else t.float()
    return out.clone() if out.data_ptr() == t.data_ptr() else out


class FeatureCapture:
    """Forward hooks that keep each layer's (reduced) output of the latest forward pass, on the CPU.

    A context manager: the hooks are removed on exit even if the forward pass raised.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], reduce: str = "flatten"):
        self.model, self.layers, self.reduce = model, resolve_layers(model, layers), reduce
        reduce_features(torch.zeros(1, 1), reduce)  # validate now, not inside a hook
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def record(module, inputs, output):
            if name in self.features:
                raise RuntimeError(f"layer '{name}' ran twice in one forward pass (a shared module); capture "
                                   "the block that contains it instead")
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer '{name}' returns {type(output).__name__}, not a tensor")
            self.features[name] = reduce_features(output, self.reduce).cpu()
        return record

    def __enter__(self) -> "FeatureCapture":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on x; {layer name: its output} (N, p)."""
        self.features = {}
        self.model(x)
        missing = [n for n, _ in self.layers if n not in self.features]
        if missing:
            raise RuntimeError(f"layers {missing} were not reached by the forward pass")
        return self.features


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; the last batch is never smaller than 4 (merged into the previous one instead),
    so the unbiased HSIC estimator is defined on every batch."""
    if batch_size < 4:
        raise ValueError(f"batch size must be at least 4, got {batch_size}")
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 4:
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:]))


def batch_of(inputs: Inputs, start: int, end: int) -> torch.Tensor:
    """Normalized images [start, end) of a tensor or an ImageSplit."""
    return inputs.normalized(slice(start, end)) if isinstance(inputs, ImageSplit) else inputs[start:end]


def iter_batches(inputs: Inputs, batch_size: int) -> Iterator[torch.Tensor]:
    """Normalized image batches of `inputs` (see `batch_bounds`)."""
    for a, b in batch_bounds(len(inputs), batch_size):
        yield batch_of(inputs, a, b)


def iter_features(model: nn.Module, layers: Sequence[LayerRef], inputs: Inputs, batch_size: int = 500,
                  reduce: str = "flatten") -> Iterator[dict[str, torch.Tensor]]:
    """Per batch of `inputs`, {layer: (batch, p) features}, with the model in eval mode and no gradients.
    The model's train/eval mode is restored and the hooks removed when the iteration ends or is abandoned."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FeatureCapture(model, layers, reduce) as capture:
            for x in iter_batches(inputs, batch_size):
                with torch.no_grad():
                    yield dict(capture(prepare_input(x, device)))
    finally:
        model.train(was_training)


def capture_features(model: nn.Module, layers: Sequence[LayerRef], inputs: Inputs, batch_size: int = 500,
                     reduce: str = "flatten") -> dict[str, torch.Tensor]:
    """{layer name: (N, p) float32 features of all inputs} (keeps them all in memory; see `iter_features`)."""
    names = [n for n, _ in resolve_layers(model, layers)]
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for batch in iter_features(model, layers, inputs, batch_size, reduce):
        for n in names:
            chunks[n].append(batch[n])
    return {n: torch.cat(c) for n, c in chunks.items()}


NEURONS = ("channel", "unit")


def neuron_firing_rates(model: nn.Module, layer: LayerRef, inputs: Inputs, threshold: float = 0.0,
                        neuron: str = "channel", batch_size: int = 500) -> torch.Tensor:
    """For each neuron of `layer`, the share of inputs on which it is active (response > `threshold`).

    neuron='channel': a channel's response to one input is its spatial mean (what global average pooling passes
    on); neuron='unit': every element (c, h, w) of the map is a neuron with its own response. For a
    fully-connected layer both are the unit's value.
    """
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got '{neuron}'")
    (name, _), = resolve_layers(model, [layer])
    active, n = None, 0
    reduce = "mean" if neuron == "channel" else "flatten"
    for batch in iter_features(model, [name], inputs, batch_size, reduce=reduce):
        fired = (batch[name] > threshold).sum(0)
        active = fired if active is None else active + fired
        n += len(batch[name])
    return active.double() / max(n, 1)


def active_neuron_fraction(model: nn.Module, layer: LayerRef, inputs: Inputs, threshold: float = 0.0,
                           min_share: float = 0.01, neuron: str = "channel", batch_size: int = 500) -> float:
    """Fraction of the layer's neurons that are active (response > `threshold`, see `neuron_firing_rates`) on at
    least `min_share` of the inputs (methods.md#ie-kd: IE-KD students are expected to keep more neurons alive).

    With the defaults on a post-ReLU layer: the share of channels whose map is non-zero on at least 1% of the
    inputs; a channel that never fires, or only on a handful of outliers, is inactive. Channels of trained BN
    CNNs almost always fire somewhere in the map, so this often saturates at 1; `neuron='unit'` counts dead
    positions too, and `activation_density` measures how many units a typical input switches on.
    """
    rates = neuron_firing_rates(model, layer, inputs, threshold, neuron, batch_size)
    return float((rates >= min_share).double().mean())


def activation_density(model: nn.Module, layer: LayerRef, inputs: Inputs, threshold: float = 0.0,
                       batch_size: int = 500) -> float:
    """Mean over inputs of the share of the layer's units (every (c, h, w)) with response > `threshold`,
    i.e. 1 − activation sparsity."""
    return float(neuron_firing_rates(model, layer, inputs, threshold, "unit", batch_size).mean())


__all__ = ["FeatureCapture", "Inputs", "LayerInfo", "NEURONS", "activation_density", "active_neuron_fraction",
           "batch_bounds", "batch_of", "capture_features", "default_attention_layer", "iter_batches", "iter_features",
           "layer_names", "neuron_firing_rates", "reduce_features", "resolve_layers", "trace_layers"]
