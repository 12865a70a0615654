"""Data-free quantization calibration (methods.md#applications; Haroush et al. 2020, "The Knowledge Within"; Cai et al.
2020, ZeroQ): post-training int8 quantization of a teacher with PyTorch's own FX graph mode (`torch.ao.quantization`:
`prepare_fx` inserts observers, calibration batches run through them, `convert_fx` swaps in int8 kernels), with the
activation ranges calibrated on

    synthetic   the teacher's DeepInversion images (a stored pool or synthesized here; data-free)
    real        real training images (the reference, not data-free)
    noise       x ~ N(0, 1) in the normalized input space (where inversion starts; data-free, the lower bound)

the same number of images from each. Weights keep the backend's default observer (x86: per-channel symmetric int8);
the activation ranges come from one of torch.ao's observers (`observer`):

    minmax      MinMaxObserver: [min, max] of every activation over all calibration images, as ZeroQ and The
                Knowledge Within calibrate (the default: the protocol the data-free calibration claims were made with)
    histogram   the backend default's HistogramObserver: the range that minimizes the L2 error of quantizing the
                histogram it saw, which clips outliers and so forgives almost any calibration images

so what changes between rows is only the images the ranges were estimated from.

BN-statistics-only recalibration (Yin et al. 2020 match these statistics; Haroush et al. read them as a measure of
data similarity): every BN layer's running mean and variance of the fp32 teacher re-estimated on each source, no
weight changed, no quantization. A source that reproduces the statistics the teacher was trained with keeps its
accuracy; one that does not shows how far off it is.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn

from dfkd_core.applications.common import (CPU, CompressionConfig, CompressionJob, accuracy_entry,
                                           recalibrate_bn_statistics, serialized_size_bytes)

SOURCES = ("synthetic", "real", "noise")
OBSERVERS = ("minmax", "histogram")
DATA_FREE = {"synthetic": True, "real": False, "noise": True}


@dataclass
class QuantizationConfig(CompressionConfig):
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    calibration_images: int = 512
    calibration_batch: int = 64
    backend: str = ""                 # torch.backends.quantized engine; "" = the current one (x86 on this machine)
    activation_bits: int = 8          # < 8: activation ranges of 2^bits levels (int8 kernels), where calibration bites
    observer: str = "minmax"          # activation observer, one of OBSERVERS (weights: the backend's default)
    bn_recalibration: bool = True     # also report the fp32 teacher with BN statistics re-estimated on each source

    def validate(self) -> None:
        """One sentence for the first bad setting, before any run exists."""
        self.validate_common()
        if not self.sources or len(set(self.sources)) != len(self.sources) or \
                any(s not in SOURCES for s in self.sources):
            raise ValueError(f"sources must be distinct names out of {list(SOURCES)}, got {self.sources}")
        if self.calibration_images < 1 or self.calibration_batch < 1:
            raise ValueError(f"calibration_images and calibration_batch must be >= 1, got {self.calibration_images} "
                             f"and {self.calibration_batch}")
        if not 2 <= self.activation_bits <= 8:
            raise ValueError(f"activation_bits must be in 2..8, got {self.activation_bits}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {list(OBSERVERS)}, got '{self.observer}'")
        engines = torch.backends.quantized.supported_engines
        if self.backend and self.backend not in engines:
            raise ValueError(f"quantization backend '{self.backend}' is not available here; choose one of {engines}")


def activation_observer(default, observer: str, activation_bits: int):
    """The activation observer factory replacing the backend default's `default` (a HistogramObserver): the same
    class for 'histogram', MinMaxObserver for 'minmax', with the default's settings (x86: reduce_range, 128 levels)
    at 8 bits, and 2^bits levels [0, 2^bits − 1] below (coarser activations make the calibrated range matter more,
    as at the 4-bit settings of Haroush et al. and ZeroQ)."""
    from torch.ao.quantization import HistogramObserver, MinMaxObserver
    settings = dict(default.p.keywords) if hasattr(default, "p") else {}
    if activation_bits < 8:
        settings = {"dtype": torch.quint8, "quant_min": 0, "quant_max": 2 ** activation_bits - 1}
    return {"histogram": HistogramObserver, "minmax": MinMaxObserver}[observer].with_args(**settings)


def _observer_class(factory) -> type:
    """The class an observer factory (a bare class or torch.ao's `with_args` partial) builds."""
    return factory.p.func if hasattr(factory, "p") else factory


def fx_quantization_config(backend: str, activation_bits: int = 8, observer: str = "minmax"):
    """The backend's default QConfigMapping with every HistogramObserver on activations (the global entry and the
    per-op ones) replaced by `activation_observer`; weight observers and fixed-range ops (sigmoid, softmax) keep the
    default's."""
    from torch.ao.quantization import HistogramObserver, QConfig, get_default_qconfig_mapping
    mapping = get_default_qconfig_mapping(backend)

    def replaced(qconfig):
        if qconfig is None or _observer_class(qconfig.activation) is not HistogramObserver:
            return qconfig
        return QConfig(activation=activation_observer(qconfig.activation, observer, activation_bits),
                       weight=qconfig.weight)
    mapping.set_global(replaced(mapping.global_qconfig))
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(kind, replaced(qconfig))
    return mapping


def prepare_int8(model: nn.Module, example: torch.Tensor, backend: str, activation_bits: int = 8,
                 observer: str = "minmax") -> nn.Module:
    """An fp32 copy of `model` (CPU, eval) traced by torch.fx, BN folded into the convs, observers inserted."""
    from torch.ao.quantization.quantize_fx import prepare_fx
    with warnings.catch_warnings():
        # Every activation observer repeats torch's notice that `reduce_range` will become quant_min/max.
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        return prepare_fx(copy.deepcopy(model).cpu().eval(),
                          fx_quantization_config(backend, activation_bits, observer), (example,))


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The calibrated model with int8 weights and activations (quantized kernels of the backend)."""
    from torch.ao.quantization.quantize_fx import convert_fx
    with warnings.catch_warnings():   # convert_fx builds each observer once more to read its dtype
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        return convert_fx(prepared)


class QuantizationJob(CompressionJob):
    """`dfkd quantize`: the fp32 teacher, then one int8 model per calibration source (and BN recalibrations)."""

    kind = "quantize"

    def __init__(self, teacher, config: QuantizationConfig, run=None, pool=None):
        super().__init__(teacher, config, run, pool)
        self.backend = config.backend or torch.backends.quantized.engine
        self.int8 = "int8" if config.activation_bits == 8 else f"int8, {config.activation_bits}-bit activations"
        d = self.dataset
        example = torch.zeros(2, d.in_channels, d.image_size, d.image_size)
        try:   # before any run exists: a model torch.fx cannot trace (shape-dependent branches) gets a sentence
            prepare_int8(teacher.model, example, self.backend)
        except Exception as e:
            raise ValueError(f"{teacher.name} cannot be quantized by torch.ao's FX graph mode: "
                             f"{str(e).splitlines()[0][:200]}") from None

    def uses_pool(self) -> bool:
        return "synthetic" in self.config.sources

    def count_steps(self) -> int:
        c = self.config
        calibration = math.ceil(c.calibration_images / c.calibration_batch) + 1
        return self.synthesis_steps() + 1 + len(c.sources) * (calibration + int(c.bn_recalibration)) + 1

    def setup(self) -> None:
        if torch.backends.quantized.engine != self.backend:
            torch.backends.quantized.engine = self.backend   # process-wide: the int8 kernels come from it
        super().setup()

    def plan(self) -> Iterator[dict]:
        c = self.config
        yield from self.synthesize_pool()
        self.example = self.latency_example()
        yield self._measure_fp32()
        images = {source: self._calibration_images(source) for source in c.sources}
        for source in c.sources:
            yield from self._quantize(source, images[source])
        if c.bn_recalibration:
            for source in c.sources:
                yield self._recalibrate(source, images[source])
        yield self.measure_latencies()
        self._compare(self.int8)
        if c.bn_recalibration:
            self._compare("fp32, BN recalibrated")

    # ------------------------------------------------------------------ phases
    def _calibration_images(self, source: str) -> torch.Tensor:
        c, d = self.config, self.dataset
        if source == "real":
            return self.real_split("train").subset(c.calibration_images, seed=c.seed).normalized()
        if source == "noise":
            return torch.randn(c.calibration_images, d.in_channels, d.image_size, d.image_size, generator=self.rng)
        if len(self.pool) < c.calibration_images:
            self.notes.append(f"synthetic calibration used all {len(self.pool)} pool images, fewer than the "
                              f"{c.calibration_images} of the other sources")
        order = torch.randperm(len(self.pool), generator=self.rng)[:c.calibration_images]
        return self.pool.images[order]

    def _measure_fp32(self) -> dict:
        fp32 = copy.deepcopy(self.teacher).cpu().eval()
        self.fp32 = {"size_bytes": serialized_size_bytes(fp32), "timing": self.time_later("fp32", fp32),
                     "latency_ms": None}   # a BN recalibration changes no tensor's size: the same network
        hits = self.test_hits(fp32, "fp32", CPU)
        self.add_row({"model": "fp32", "calibration": "-", "data_free": True, **self.fp32,
                      **accuracy_entry(hits, self.config.seed)})
        return {"phase": "evaluate", "accuracy": self.rows[-1]["accuracy"]}

    def _quantize(self, source: str, images: torch.Tensor) -> Iterator[dict]:
        c = self.config
        batch = c.calibration_batch
        prepared = prepare_int8(self.teacher, self.example, self.backend, c.activation_bits, c.observer)
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                prepared(images[start:start + batch])
                yield {"phase": f"calibrate ({source})", "calibration_images": min(start + batch, len(images))}
        int8 = convert_int8(prepared)
        hits = self.test_hits(int8, f"{self.int8}/{source}", CPU)
        self.add_row({"model": self.int8, "calibration": source, "calibration_images": len(images),
                      "observer": c.observer, "data_free": DATA_FREE[source], "size_bytes": serialized_size_bytes(int8),
                      "timing": self.time_later(f"int8/{source}", int8), "latency_ms": None,
                      **accuracy_entry(hits, c.seed)})
        yield {"phase": "evaluate", "accuracy": self.rows[-1]["accuracy"]}

    def _recalibrate(self, source: str, images: torch.Tensor) -> dict:
        model = recalibrate_bn_statistics(copy.deepcopy(self.teacher).cpu(), images, self.config.calibration_batch)
        hits = self.test_hits(model, f"fp32, BN recalibrated/{source}", CPU)
        self.add_row({"model": "fp32, BN recalibrated", "calibration": source, "calibration_images": len(images),
                      "data_free": DATA_FREE[source], **self.fp32, **accuracy_entry(hits, self.config.seed)})
        return {"phase": "evaluate", "accuracy": self.rows[-1]["accuracy"]}

    def _compare(self, model: str) -> None:
        """synthetic − real and synthetic − noise on the same test images; each int8 or BN-recalibrated model
        − fp32 (a recalibration on noise can cost points, and its row showed no difference to say so)."""
        sources = self.config.sources
        for other in ("real", "noise"):
            if "synthetic" in sources and other in sources:
                self.add_comparison(f"{model}: synthetic − {other}", f"{model}/synthetic", f"{model}/{other}",
                                    model=model)
        for source in sources:
            self.add_comparison(f"{model} ({source}) − fp32", f"{model}/{source}", "fp32", model=model)

    def summary(self) -> dict:
        """fp32_accuracy and int8_<source>_accuracy for the run index and the CLI."""
        out = {"fp32_accuracy" if r["model"] == "fp32" else f"int8_{r['calibration']}_accuracy": r["accuracy"]
               for r in self.rows if r["model"] in ("fp32", self.int8)}
        c = self.config
        return {**out, "backend": self.backend, "activation_bits": c.activation_bits, "observer": c.observer}
