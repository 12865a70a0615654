"""A network from any PyTorch code, kept without that code.

torch.fx traces the user's module into its standard layers (Conv2d, BatchNorm2d, Linear, …) and the functions between
them (add, flatten, cat, view, …). That graph is recorded as plain data (names, numbers, lists), which a checkpoint
holds and `torch.load(weights_only=True)` reads, and `build_graph` rebuilds it from allowlists of layer types,
functions and tensor methods: loading a teacher never imports or runs code named by the file. BatchNorm layers stay
real `nn.BatchNorm2d` modules under their original names, so DeepInversion's statistics, CKA and Grad-CAM see the same
layers as in the user's model.
"""
from __future__ import annotations

import inspect
import keyword
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
           nn.InstanceNorm2d, nn.Linear, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Mish,
           nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Softmax, nn.LogSoftmax, nn.MaxPool2d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity, nn.Upsample,
           nn.ZeroPad2d)
LAYERS = {cls.__name__: cls for cls in _LAYERS}

_FUNCTION_SOURCES = {
    "_operator": (operator, ("add", "sub", "mul", "truediv", "floordiv", "neg", "getitem", "matmul", "pow",
                             "iadd", "imul")),
    "torch": (torch, ("flatten", "cat", "stack", "transpose", "permute", "reshape", "relu", "sigmoid", "tanh", "mean",
                      "sum", "chunk", "split", "squeeze", "unsqueeze", "add", "mul", "matmul", "softmax", "clamp",
                      "max", "amax", "sqrt", "exp", "abs")),
    "torch.nn.functional": (F, ("relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "hardswish", "hardsigmoid",
                                "sigmoid", "tanh", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                                "adaptive_max_pool2d", "dropout", "dropout2d", "interpolate", "softmax",
                                "log_softmax", "layer_norm", "pad", "linear", "conv2d", "normalize")),
}
FUNCTIONS = {f"{prefix}.{name}": getattr(module, name)
             for prefix, (module, names) in _FUNCTION_SOURCES.items() for name in names}


def _stochastic_depth(input, p, mode, training=True):
    """torchvision's stochastic depth as a traced teacher (eval mode) records it: the identity."""
    if training and p > 0:
        raise GraphError("stochastic depth recorded in training mode")
    return input


FUNCTIONS["torchvision.ops.stochastic_depth.stochastic_depth"] = _stochastic_depth
METHODS = {"view", "reshape", "size", "flatten", "mean", "sum", "permute", "transpose", "contiguous", "chunk",
           "split", "squeeze", "unsqueeze", "expand", "relu", "sigmoid", "softmax", "mul", "add", "div", "sub", "dim",
           "clamp", "pow", "sqrt", "norm", "max", "amax", "float", "view_as", "expand_as", "t", "abs", "exp"}


class GraphError(ValueError):
    """A network this format cannot record: the message names the layer, function or construct."""


def _function_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', repr(fn))}"


def _layer_settings(module: nn.Module, name: str) -> dict:
    """The constructor arguments that rebuild `module`, read off its attributes."""
    cls = type(module)
    if cls.__name__ not in LAYERS or LAYERS[cls.__name__] is not cls:
        raise GraphError(f"layer '{name}' is a {cls.__module__}.{cls.__name__}, which this format does not record "
                         f"(it records {', '.join(sorted(LAYERS))})")
    settings = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.name in ("device", "dtype") or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                         parameter.VAR_KEYWORD):
            continue
        if parameter.name == "bias" and not isinstance(getattr(module, "bias", None), bool):
            settings["bias"] = getattr(module, "bias", None) is not None
            continue
        if not hasattr(module, parameter.name):
            if parameter.default is inspect.Parameter.empty:
                raise GraphError(f"layer '{name}' ({cls.__name__}): its setting '{parameter.name}' cannot be read back")
            continue
        settings[parameter.name] = _encode(getattr(module, parameter.name), name)
    return settings


def _encode(value, where: str):
    if isinstance(value, fx.Node):
        return {"$node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, slice):
        return {"$slice": [_encode(value.start, where), _encode(value.stop, where), _encode(value.step, where)]}
    if value is Ellipsis:
        return {"$ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: _encode(v, where) for k, v in value.items()}}
    raise GraphError(f"{where}: a value of type {type(value).__name__} ({value!r:.60}) cannot be recorded")


def _decode(value, nodes: dict):
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if "$node" in value:
        if value["$node"] not in nodes:
            raise GraphError(f"a graph step uses {value['$node']!r} before it is made")
        return nodes[value["$node"]]
    if "$tuple" in value:
        return tuple(_decode(v, nodes) for v in value["$tuple"])
    if "$slice" in value:
        return slice(*(_decode(v, nodes) for v in value["$slice"]))
    if "$ellipsis" in value:
        return Ellipsis
    if "$dtype" in value:
        dtype = getattr(torch, value["$dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise GraphError(f"unknown dtype '{value['$dtype']}'")
        return dtype
    if "$dict" in value:
        return {k: _decode(v, nodes) for k, v in value["$dict"].items()}
    raise GraphError(f"unrecognised recorded value {sorted(value)}")


def describe_graph(model: nn.Module) -> dict:
    """The plain-data record of `model` (traced in eval mode). Raises `GraphError` naming what cannot be recorded,
    and torch.fx's reason where the forward cannot be traced (control flow on tensor values)."""
    was_training = model.training
    model.eval()
    try:
        traced = fx.symbolic_trace(model)
    except Exception as e:
        raise GraphError(f"torch.fx cannot trace the network's forward ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); a forward whose steps depend on tensor values cannot be "
                         "recorded") from None
    finally:
        model.train(was_training)
    modules = dict(traced.named_modules())
    layers, tensors, nodes = {}, {}, []
    for node in traced.graph.nodes:
        where = f"step '{node.name}'"
        target = node.target
        if node.op == "call_module":
            layers[target] = {"type": type(modules[target]).__name__,
                              "settings": _layer_settings(modules[target], target)}
        elif node.op == "call_function":
            target = _function_name(node.target)
            if target not in FUNCTIONS:
                raise GraphError(f"{where} calls {target}, which this format does not record")
        elif node.op == "call_method" and target not in METHODS:
            raise GraphError(f"{where} calls the tensor method .{target}(), which this format does not record")
        elif node.op == "call_method" and target == "view":
            # The tool runs convolutions channels-last on CPUs, where .view of their output fails; .reshape gives
            # the same values (copying only where the memory layout needs it).
            target = "reshape"
        elif node.op == "get_attr":
            value = traced.get_parameter(target) if target in dict(traced.named_parameters()) else \
                traced.get_buffer(target)
            tensors[target] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                               "parameter": isinstance(value, nn.Parameter)}
        nodes.append({"op": node.op, "name": node.name, "target": target,
                      "args": _encode(node.args, where), "kwargs": _encode(dict(node.kwargs), where)})
    return {"format": "dfkd-graph/1", "layers": layers, "tensors": tensors, "nodes": nodes}


def _name(text, what: str) -> str:
    """A name the graph's generated code will hold: torch.fx writes placeholder names, attribute paths and keyword
    names into Python source, so a crafted file could put code there. Only plain identifiers or indices (dotted for
    paths: 'layer1.0.conv1'), no keywords and nothing private, pass."""
    parts = text.split(".") if isinstance(text, str) else [None]
    if not all(isinstance(p, str) and (p.isdecimal() and p.isascii() or p.isidentifier() and not keyword.iskeyword(p)
                                       and not p.startswith("_")) for p in parts):
        raise GraphError(f"{what} {text!r} is not a plain name; the recorded graph is refused")
    return text


def _checked_kwargs(kwargs) -> dict:
    if not isinstance(kwargs, dict):
        raise GraphError("a graph step's keyword arguments are not a mapping")
    for key in kwargs:
        _name(key, "keyword")
    return kwargs


def _place(root: nn.Module, path: str, make) -> None:
    *parents, leaf = _name(path, "layer path").split(".")
    owner = root
    for part in parents:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    make(owner, leaf)


def build_graph(spec: dict) -> fx.GraphModule:
    """The network `spec` records, built from the allowlists only (its weights are loaded afterwards)."""
    if not isinstance(spec, dict) or spec.get("format") != "dfkd-graph/1":
        raise GraphError("not a recorded network graph")
    root = nn.Module()
    for path, layer in spec["layers"].items():
        cls = LAYERS.get(layer["type"])
        if cls is None:
            raise GraphError(f"layer '{path}' is a {layer['type']}, which this format does not build")
        module = cls(**{k: _decode(v, {}) for k, v in layer["settings"].items()})
        _place(root, path, lambda owner, leaf, m=module: owner.add_module(leaf, m))
    for path, tensor in spec["tensors"].items():
        value = torch.zeros(tensor["shape"], dtype=_decode({"$dtype": tensor["dtype"]}, {}))
        _place(root, path, lambda owner, leaf, v=value, p=tensor["parameter"]:
               owner.register_parameter(leaf, nn.Parameter(v)) if p else owner.register_buffer(leaf, v))
    graph, built = fx.Graph(), {}
    for node in spec["nodes"]:
        args, kwargs = _decode(node["args"], built), _checked_kwargs(_decode(node["kwargs"], built))
        op, target = node["op"], node["target"]
        if op == "placeholder":
            made = graph.placeholder(_name(target, "input name"))
        elif op == "get_attr":
            made = graph.get_attr(_name(target, "tensor path"))
        elif op == "call_module":
            made = graph.call_module(_name(target, "layer path"), tuple(args), kwargs)
        elif op == "call_function":
            if target not in FUNCTIONS:
                raise GraphError(f"the graph calls {target}, which this format does not build")
            made = graph.call_function(FUNCTIONS[target], tuple(args), kwargs)
        elif op == "call_method":
            if target not in METHODS:
                raise GraphError(f"the graph calls the tensor method .{target}(), which this format does not build")
            made = graph.call_method(target, tuple(args), kwargs)
        elif op == "output":
            made = graph.output(args[0])
        else:
            raise GraphError(f"unknown graph step '{op}'")
        built[node["name"]] = made
    graph.lint()
    return fx.GraphModule(root, graph)
