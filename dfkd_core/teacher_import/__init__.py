"""Bring your own teacher: a classifier trained by other code (a stock torchvision network or a registered one, its
weights in a state_dict) checked, measured where test data exist, and stored as a teacher run every page and command
can use. `dfkd import-teacher` and the Teacher page's upload call `import_teacher`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from dfkd_core.config import Config
from dfkd_core.data import DATASETS, DatasetMissingError, dataset_info, load_split
from dfkd_core.hooks import batchnorm_layers
from dfkd_core.models import Checkpoint, CheckpointError, create_model, save_checkpoint
from dfkd_core.models.graph import describe_graph
from dfkd_core.models.imported import (CODE_PREFIX, TRACED, ImportedClassifier, check_architecture,
                                       load_user_factory)
from dfkd_core.stats import accuracy_interval
from dfkd_core.synthesis.diagnosis import near_chance
from dfkd_core.teacher_import.weights import fit_weights, read_weights

# Normalizations training scripts commonly use, by the name the CLI and the app offer.
NORMALIZATIONS = {
    "dataset": None,                                               # the tool's own for the dataset
    "none": ([0.0], [1.0]),                                        # ToTensor() only: pixels in [0, 1]
    "half": ([0.5], [0.5]),                                        # Normalize(0.5, 0.5): pixels in [-1, 1]
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


@dataclass
class ImportConfig(Config):
    weights: str = ""               # the user's file: a state_dict, or a training checkpoint holding one
    arch: str = ""                  # a registered model, torchvision:<name>, or code:<file.py>:<class or function>
    arch_kwargs: dict = field(default_factory=dict)   # a code: architecture's constructor arguments
    dataset: str = "cifar10"        # whose classes, image size and channels the teacher was trained on
    data_root: str | None = None
    normalization: str = "dataset"  # a NORMALIZATIONS name, or "custom" with input_mean and input_std
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)
    evaluate: bool = True           # measure test accuracy when the dataset's test split is on this machine
    name: str = ""                  # shown in pickers; default '<arch> on <dataset> (imported <file>)'

    def validate(self) -> None:
        self.require_finite()
        if not self.weights:
            raise ValueError("give the weights file to import")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset '{self.dataset}'; choose one of {sorted(DATASETS)}")
        check_architecture(self.arch)
        if self.normalization == "custom":
            if not self.input_mean or len(self.input_mean) != len(self.input_std):
                raise ValueError("a custom normalization needs input_mean and input_std of one value per channel "
                                 f"(or one for all), got {self.input_mean} and {self.input_std}")
            if any(s <= 0 for s in self.input_std):
                raise ValueError(f"every input_std must be > 0, got {self.input_std}")
        elif self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS) + ['custom']}, "
                             f"got '{self.normalization}'")

    def input_statistics(self, channels: int) -> tuple[list[float], list[float]] | None:
        """The mean and std the network was trained with, one per channel; None: the dataset's own."""
        if self.normalization == "custom":
            mean, std = list(self.input_mean), list(self.input_std)
        elif NORMALIZATIONS[self.normalization] is None:
            return None
        else:
            mean, std = NORMALIZATIONS[self.normalization]
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels:
            raise ValueError(f"the normalization has {len(mean)} values per statistic and the {self.dataset} images "
                             f"have {channels} channel(s)")
        return list(mean), list(std)


@dataclass
class ImportedTeacher:
    checkpoint: Checkpoint
    summary: dict
    notes: list[str]
    run: object = None     # the stored run, when a store was given


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_network(model: nn.Module, info) -> list[str]:
    """Refuse a network that cannot serve as a teacher (non-finite weights, wrong output); notes on what limits it."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]}): the training that "
                              "saved them diverged; a teacher needs finite weights")
    example = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            logits = model.eval()(example)
    except RuntimeError as e:
        raise CheckpointError(f"the network fails on {info.in_channels}×{info.image_size}×{info.image_size} "
                              f"{info.name} images: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, info.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckpointError(f"the network gives {shape} for a batch of 2 images, not (2, {info.num_classes}) "
                              "class scores")
    notes = []
    layers = batchnorm_layers(model)
    if not layers:
        notes.append("no BatchNorm layers: DeepInversion's feature loss has no statistics to match; DeepDream "
                     "(image priors only) can invert this teacher")
    untouched = [n for n, m in layers if bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())]
    if untouched:
        notes.append(f"{len(untouched)} of {len(layers)} BatchNorm layers hold their initial running statistics "
                     f"(mean 0, variance 1; e.g. {untouched[0]}): they never saw data in training mode, so "
                     "DeepInversion would match N(0, 1) there, not the training data")
    return notes


def import_teacher(config: ImportConfig, store=None, source_name: str | None = None) -> ImportedTeacher:
    """Read, fit, check and measure the user's network; with `store`, keep it as a teacher run (model.pt in the
    tool's checkpoint format, the config and the file's SHA-256 beside it). Nothing is stored when a check fails.
    Raises `CheckpointError` (the file) or `ValueError` (the settings) with the reason."""
    config.validate()
    info = dataset_info(config.dataset, config.data_root)
    statistics = config.input_statistics(info.in_channels)
    weights, notes = read_weights(config.weights)
    cfg = {"arch": config.arch, "dataset_mean": list(info.mean), "dataset_std": list(info.std)}
    if statistics is not None:
        cfg.update(input_mean=statistics[0], input_std=statistics[1])
    if config.arch.startswith(CODE_PREFIX):
        model = _traced_user_network(config, info, cfg, weights, notes)
    else:
        model = create_model("imported", info.num_classes, info.in_channels, info.image_size, **cfg)
        notes += fit_weights(model.net, weights, config.arch, info.num_classes, config.dataset)
    model.eval()
    if model.renormalizes:
        notes.append(f"inputs are mapped to the network's normalization (mean {statistics[0]}, std {statistics[1]})")
    notes += check_network(model, info)
    uploaded = source_name is not None   # read from a temporary copy: its path means nothing later
    source_name = source_name or Path(config.weights).name
    summary = {"model": f"imported {config.arch}", "dataset": config.dataset, "imported": source_name,
               "parameters": sum(p.numel() for p in model.parameters()),
               "batchnorm_layers": len(batchnorm_layers(model))}
    if config.evaluate:
        summary.update(_measure(model, config, info, notes))
    else:
        notes.append("not evaluated (asked not to): its accuracy is unknown until a page measures it")
    summary["import_notes"] = notes
    checkpoint = Checkpoint(model, dict(model.default_cfg), info, {k: v for k, v in summary.items()
                                                                   if isinstance(v, (int, float))})
    result = ImportedTeacher(checkpoint, summary, notes)
    if store is not None:
        recorded = {**config.to_dict(), "sha256": file_digest(config.weights), "source": source_name}
        if uploaded:
            recorded["weights"] = f"uploaded: {source_name}"
        run = store.create("teacher", recorded,
                           method=f"imported {config.arch}", dataset=config.dataset,
                           name=config.name or f"{config.arch} on {config.dataset} (imported {source_name}"
                           + ("" if config.normalization == "dataset" else f", normalization {config.normalization}")
                           + ")")
        try:
            save_checkpoint(run.path("model.pt"), model, info, checkpoint.metrics)
        except BaseException as e:
            run.set_status("failed", error=f"could not write the checkpoint: {e}")
            raise
        summary["checkpoint"] = str(run.path("model.pt"))
        run.set_status("done", summary=summary)
        checkpoint.path = summary["checkpoint"]
        result.run = run
    return result


def _traced_user_network(config: ImportConfig, info, cfg: dict, weights: dict, notes: list[str]) -> nn.Module:
    """The user's own class, built by their code with their weights, traced into a record that is stored without
    the code (models/graph.py); refused unless the record computes what their code computes."""
    factory = load_user_factory(config.arch)
    try:
        user_net = factory(**config.arch_kwargs)
    except Exception as e:
        raise ValueError(f"{config.arch}(**{config.arch_kwargs}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(user_net, nn.Module):
        raise ValueError(f"{config.arch} made a {type(user_net).__name__}, not a torch.nn.Module")
    notes += fit_weights(user_net, weights, config.arch, info.num_classes, config.dataset)
    user_net.eval()
    graph = describe_graph(user_net)
    model = create_model("imported", info.num_classes, info.in_channels, info.image_size,
                         **{**cfg, "arch": TRACED, "graph": graph, "origin": config.arch})
    kept = model.net.state_dict()
    model.net.load_state_dict({k: v for k, v in user_net.state_dict().items() if k in kept})
    model.eval()
    example = torch.randn(4, info.in_channels, info.image_size, info.image_size,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.net(example), user_net(example)
    if not (isinstance(theirs, torch.Tensor) and ours.shape == theirs.shape
            and torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)):
        raise CheckpointError(f"the traced record of {config.arch} computes other outputs than its code; it cannot be "
                              "kept without the code")
    unused = [k for k in user_net.state_dict() if k not in kept]
    notes.append(f"traced from {config.arch}: stored as {len(graph['layers'])} layers and {len(graph['nodes'])} "
                 "steps of standard PyTorch, without the code; loading it runs none"
                 + (f"; {len(unused)} tensor(s) its forward never uses were left out (e.g. {unused[0]})"
                    if unused else ""))
    return model


def _measure(model: ImportedClassifier, config: ImportConfig, info, notes: list[str]) -> dict:
    """Test accuracy with its interval; a warning where it is near chance, and where another common normalization
    scores clearly higher on the same images (a normalization other than the training's costs accuracy silently:
    a digits network trained on raw pixels read 77% through the dataset's normalization and 99% through its own)."""
    from dfkd_core.training import evaluate
    try:
        split = load_split(config.dataset, "test", config.data_root)
    except DatasetMissingError as e:
        notes.append(f"not evaluated: no {config.dataset} test images here ({str(e).splitlines()[0]}); data-free "
                     "distillation needs none, but the tool cannot tell how good this teacher is")
        return {}
    if split.note:
        notes.append(split.note)
    result = evaluate(model, split)
    ci = accuracy_interval(result["correct"])
    if near_chance(ci.high, info.num_classes):   # the whole interval, not only the estimate: certainly near it
        notes.append(f"test accuracy {result['accuracy']:.1%} is near chance ({1 / info.num_classes:.0%}): the "
                     "normalization (--normalization), the class order or the architecture likely differ from the "
                     "training's")
    measured = {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_accuracy_ci": ci.to_dict(),
                "test_images": len(split)}
    better = _better_normalization(model, config, info, split, result["correct"])
    if better is not None:
        name, accuracy, difference = better
        notes.append(f"with --normalization {name} the same network scores {accuracy:.1%} against "
                     f"{result['accuracy']:.1%} on these test images (paired difference {difference.format('+.1%')}): "
                     f"it was likely trained that way; import it again with normalization '{name}' "
                     f"(--normalization {name})")
        measured["better_normalization"] = name
    return measured


def _better_normalization(model: ImportedClassifier, config: ImportConfig, info, split, correct: torch.Tensor):
    """(name, accuracy, paired interval) of the common normalization that beats the chosen one on the same test
    images by an interval above 0 and by the most; None when none does."""
    from dfkd_core.stats import paired_difference_interval
    from dfkd_core.training import evaluate
    best = None
    for name in NORMALIZATIONS:
        if name == config.normalization:
            continue
        try:
            statistics = ImportConfig(dataset=config.dataset, normalization=name).input_statistics(info.in_channels)
        except ValueError:
            continue   # ImageNet's three values on a grayscale dataset
        mean, std = statistics if statistics is not None else (info.mean, info.std)
        probe = ImportedClassifier(model.net, info.mean, info.std, mean, std).eval()
        hits = evaluate(probe, split)["correct"]
        difference = paired_difference_interval(hits.float(), correct.float())
        if difference.low > 0 and (best is None or difference.estimate > best[2].estimate):
            best = (name, float(hits.float().mean()), difference)
    return best


__all__ = ["ImportConfig", "ImportedTeacher", "NORMALIZATIONS", "check_network", "import_teacher", "read_weights",
           "fit_weights"]
