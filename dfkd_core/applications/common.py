"""What the three data-free applications (methods.md#applications) share: the synthesized images they run on, a job that
walks a plan of phases step by step and saves its result rows as they come, and the measurements every row reports
(accuracy on the real test set with its 95% interval, CPU latency, serialized size).

The images come from a stored pool (`pool`: the images.pt of a synthesis, distillation or application run) or are
synthesized here by DeepInversion (methods.md#model-inversion, `ModelInversion`) in rounds of one batch, exactly as the
pool methods of `dfkd distill` do.
"""
from __future__ import annotations

import copy
import io
import math
import statistics
import time
from dataclasses import dataclass, field, fields
from typing import Iterator

import torch
import torch.nn as nn

from dfkd_core.config import Config
from dfkd_core.data import DatasetInfo, ImageSplit, load_split
from dfkd_core.device import memory_layout, prepare_input, prepare_model, resolve_device
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.jobs import Job
from dfkd_core.models import Checkpoint
from dfkd_core.runs import atomic_torch_save
from dfkd_core.stats import accuracy_interval, paired_difference_interval
from dfkd_core.synthesis.images import save_grid
from dfkd_core.synthesis.inversion import ModelInversion, SynthesisConfig
from dfkd_core.training import evaluate

RESULTS_FILE = "results.json"
TEST_HITS_FILE = "test_hits.pt"
POOL_FILE = "images.pt"
CPU = torch.device("cpu")   # where latencies are measured and int8 models run


@dataclass
class ApplicationConfig(Config):
    """Settings every application shares; each application's config adds its own."""

    images: int = 1000                # images to synthesize (when there is no pool to reuse)
    synthesis: dict = field(default_factory=dict)   # SynthesisConfig overrides (batch_size, iterations, lr, ...)
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None      # where the real data lives (None: $DFKD_<NAME>, then the default)

    def validate_common(self) -> None:
        self.require_finite()
        if self.images < 1:
            raise ValueError(f"images must be >= 1, got {self.images}")
        known = {f.name for f in fields(SynthesisConfig)}
        unknown = sorted(set(self.synthesis) - known)
        if unknown:
            raise ValueError(f"unknown inversion setting(s) {unknown}; SynthesisConfig has {sorted(known)}")

    def synthesis_config(self, dataset: str) -> SynthesisConfig:
        """DeepInversion's preset for `dataset` with this config's overrides, checked."""
        config = SynthesisConfig.preset("deepinversion", dataset, **self.synthesis)
        config.validate()
        return config


@dataclass
class CompressionConfig(ApplicationConfig):
    """Pruning and quantization: a trained teacher, its synthesized images, and CPU timings of what they make."""

    pool: str | list[str] | None = None   # images.pt of stored runs (the CLI resolves run ids); None: synthesize here
    latency_batch: int = 64           # images per timed forward pass
    latency_rounds: int = 15          # rounds of timing every model once, at the end of the run; the median is kept

    def validate_common(self) -> None:
        super().validate_common()
        if self.latency_batch < 1 or self.latency_rounds < 3:
            raise ValueError(f"latency_batch must be >= 1 and latency_rounds >= 3 (a median of fewer is noise), "
                             f"got {self.latency_batch} and {self.latency_rounds}")


# ---------------------------------------------------------------------- measurements

def accuracy_entry(hits: torch.Tensor, seed: int = 0) -> dict:
    """Accuracy from per-image hits with its 95% bootstrap interval over the test images."""
    return {"accuracy": int(hits.sum()) / max(len(hits), 1),
            "accuracy_ci": accuracy_interval(hits, seed=seed).to_dict(), "test_images": len(hits)}


def paired_difference(hits_a: torch.Tensor, hits_b: torch.Tensor, seed: int = 0) -> dict:
    """accuracy(a) − accuracy(b) on the same test images, resampled together (paired 95% interval)."""
    return paired_difference_interval(hits_a.double(), hits_b.double(), seed=seed).to_dict()


@torch.inference_mode()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of one forward pass of `example` through `model` on CPU, after `warmup` passes.

    The median, because a shared machine adds one-sided outliers (another process takes the core)."""
    model = model.eval()
    example = prepare_input(example.cpu(), CPU)
    times = []
    with torch.inference_mode():   # a trainable copy would otherwise also time autograd's bookkeeping
        for _ in range(warmup):
            model(example)
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it (what a deployment ships)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def recalibrate_bn_statistics(model: nn.Module, images: torch.Tensor, batch_size: int = 200) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics from `images`, weights untouched (in place).

        running_mean = (1/K) Σ_k μ_k(x_k),   running_var = (1/K) Σ_k σ²_k(x_k)   over the K batches x_k

    (PyTorch's cumulative average, momentum=None; σ²_k unbiased, as BN stores it). Only the BN layers run in
    training mode; everything else (dropout) stays in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size].to(device))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
        m.eval()
    return model


def trainable_copy(model: nn.Module) -> nn.Module:
    """A private copy whose parameters take gradients again (an inversion freezes the teacher it inverts)."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ---------------------------------------------------------------------- synthesis

def synthesis_rounds(config: SynthesisConfig, images: int) -> int:
    return math.ceil(images / config.batch_size)


def synthesize_into(pool: SyntheticPool, teacher: nn.Module, dataset: DatasetInfo, config: SynthesisConfig,
                    images: int, seed: int, device: torch.device) -> Iterator[dict]:
    """DeepInversion (methods.md#model-inversion) in rounds of one batch until `pool` holds `images` more images; one
    metrics dict per inversion iteration. Round r uses inversion seed `config.seed + 1000·seed + r`, as `dfkd distill`
    does."""
    for r in range(synthesis_rounds(config, images)):
        batch = min(config.batch_size, images - r * config.batch_size)
        inversion = ModelInversion(teacher, dataset, config.replace(
            seed=config.seed + 1000 * seed + r, batch_size=batch, device=str(device), snapshot_every=0))
        inversion.setup()
        for i in range(inversion.total_steps):
            metrics = inversion.step(i)
            yield {"phase": "synthesis", "round": r,
                   **{f"inv_{k}": v for k, v in metrics.items() if not isinstance(v, list)}}
        inversion.finish("done")
        pool.append(inversion.images(), inversion.targets.cpu())


# ---------------------------------------------------------------------- the job

class ApplicationJob(Job):
    """A plan of phases run one step at a time (`plan()` yields one metrics dict per step and `count_steps()` says
    how many beforehand). Result rows (`self.rows`) are saved to results.json as they are made, so a stopped or
    killed run keeps every finished row, and its status and notes say it is incomplete."""

    kind = "application"
    pool_file = POOL_FILE   # where images synthesized here are saved

    def __init__(self, config: ApplicationConfig, dataset: DatasetInfo, run=None):
        super().__init__(run)
        config.validate()
        self.config, self.dataset = config, dataset
        self.device = resolve_device(config.device)
        self.synthesis = config.synthesis_config(dataset.name)
        self.rows: list[dict] = []
        self.notes: list[str] = []   # what the results must say alongside them (fewer images, a stopped run)
        self.hits: dict[str, torch.Tensor] = {}      # per-image test hits by result name, for paired comparisons
        self.comparisons: list[dict] = []
        self.pool = SyntheticPool(dataset)
        self.synthesized_here = False   # whether `pool` was made by this run (then saved with it)
        self._splits: dict[str, ImageSplit] = {}

    # ------------------------------------------------------------------ subclass interface
    def count_steps(self) -> int:
        raise NotImplementedError

    def plan(self) -> Iterator[dict]:
        raise NotImplementedError

    def summary(self) -> dict:
        """Headline numbers for the run index and the CLI (the rows are in results.json)."""
        return {}

    # ------------------------------------------------------------------ helpers for plans
    def real_split(self, split: str) -> ImageSplit:
        if split not in self._splits:
            self._splits[split] = load_split(self.dataset.name, split, self.config.data_root,
                                             self.dataset.image_size)
        return self._splits[split]

    def test_hits(self, model: nn.Module, name: str, device: torch.device | None = None) -> torch.Tensor:
        """Per-image hits of `model` on the real test set, kept for paired comparisons and test_hits.pt."""
        self.hits[name] = evaluate(model, self.real_split("test"), device or self.device)["correct"]
        return self.hits[name]

    def add_row(self, row: dict) -> None:
        self.rows.append(row)
        self.save_progress()

    def add_comparison(self, label: str, a: str, b: str, among: torch.Tensor | None = None, **context) -> dict:
        """accuracy(a) − accuracy(b) of two results measured here, on the same test images (paired interval); `among`
        (a mask over the test images) restricts it to some of them."""
        hits_a, hits_b = self.hits[a], self.hits[b]
        if among is not None:
            hits_a, hits_b = hits_a[among], hits_b[among]
        comparison = {"comparison": label, "a": a, "b": b, **context,
                      "difference_ci": paired_difference(hits_a, hits_b, self.config.seed)}
        self.comparisons.append(comparison)
        self.save_progress()
        return comparison

    # ------------------------------------------------------------------ job interface
    def setup(self) -> None:
        torch.manual_seed(self.config.seed)
        self.rng = torch.Generator().manual_seed(self.config.seed)
        self.real_split("test")   # fails early, with the install hint, if the dataset is missing
        self._plan = self.plan()

    def step(self, index: int) -> dict:
        try:
            return next(self._plan)
        except StopIteration:
            raise RuntimeError(f"{type(self).__name__}'s plan ended at step {index} of {self.total_steps} "
                               "(count_steps and plan disagree)") from None

    def _complete_plan(self) -> None:
        """Run what the plan does after its last step (its comparisons): the job loop stops asking for steps once
        it has `total_steps`, which leaves the generator paused at its last `yield`."""
        for _ in self._plan:
            raise RuntimeError(f"{type(self).__name__}'s plan has more steps than the {self.total_steps} counted")

    def results(self, status: str) -> dict:
        return {"kind": self.kind, "status": status, "config": self.config.to_dict(), "dataset": self.dataset.name,
                "rows": self.rows, "comparisons": self.comparisons, "notes": self.notes, "pool_images": len(self.pool),
                "pool_source": self.pool.source}

    def save_progress(self) -> None:
        if self.run_record is not None:
            self.run_record.save_json(RESULTS_FILE, self.results("running"))   # atomic: temp file + os.replace

    def finish(self, status: str) -> dict:
        if status == "done":
            self._complete_plan()
        else:
            measured = ("only the rows listed were measured" if self.rows else
                        f"before any network was measured (during {self.history[-1].get('phase', 'its first phase')})"
                        if self.history else "before its first step")
            kept = (f"; its {len(self.pool):,} synthesized images are kept in this run (reuse them: --pool <run>)"
                    if self.synthesized_here and len(self.pool) else "")
            self.notes.append(f"the run ended '{status}' after {len(self.history):,} of its {self.total_steps:,} "
                              f"steps, {measured}{kept}")
        summary = {**self.summary(), "status": status, "rows": len(self.rows), "notes": list(self.notes),
                   "pool_images": len(self.pool)}
        if self.run_record is None:
            return summary
        directory = self.run_record.dir
        self.run_record.save_json(RESULTS_FILE, self.results(status))
        if self.hits:
            atomic_torch_save({"dataset": self.dataset.name, "labels": self.real_split("test").labels,
                               "hits": {k: v.bool().cpu() for k, v in self.hits.items()}}, directory / TEST_HITS_FILE)
        if self.synthesized_here and len(self.pool):
            self.pool.save(directory / self.pool_file)   # reusable: --pool <this run>
            save_grid(self.dataset.denormalize(self.pool.images[:100]), directory / "grid.png")
        return summary


class CompressionJob(ApplicationJob):
    """Pruning and quantization: compress a trained teacher with the help of its synthesized images (a stored pool,
    else synthesized here first)."""

    def __init__(self, teacher: Checkpoint, config: CompressionConfig, run=None, pool: SyntheticPool | None = None):
        super().__init__(config, teacher.dataset, run)
        self.teacher_checkpoint, self.teacher = teacher, teacher.model
        if pool is None and config.pool:
            pool = SyntheticPool.load(config.pool, self.dataset)
        if pool is not None:
            self.pool = pool
        self.synthesized_here = self.uses_pool() and not len(self.pool)
        self.timed: dict[str, nn.Module] = {}   # CPU models the last step times, by the `timing` key of their rows
        self.total_steps = self.count_steps()

    def uses_pool(self) -> bool:
        """Whether this run needs the teacher's synthesized images (else none are synthesized)."""
        return True

    def setup(self) -> None:
        self.teacher = prepare_model(self.teacher, self.device).eval()
        super().setup()

    def synthesis_steps(self) -> int:
        if not self.synthesized_here:
            return 0
        return synthesis_rounds(self.synthesis, self.config.images) * self.synthesis.iterations

    def synthesize_pool(self) -> Iterator[dict]:
        if self.synthesized_here:
            yield from synthesize_into(self.pool, self.teacher, self.dataset, self.synthesis, self.config.images,
                                       self.config.seed, self.device)

    def time_later(self, key: str, model: nn.Module) -> str:
        """Keep a CPU copy of `model` for the run's last step to time; rows measured on it carry `timing: key`.
        Every float model in the CPU's layout (`prepare_model`): a pruned copy came out of the surgery in NCHW while
        the unpruned teacher ran in NHWC, and the smaller network timed slower than the full one."""
        timed = copy.deepcopy(model).cpu().eval()
        if memory_layout(timed) is not None:   # int8 models have no float convolutions to lay out
            timed = prepare_model(timed, CPU)
        self.timed[key] = timed
        return key

    def measure_latencies(self) -> dict:
        """The run's last step: every model timed back to back, `latency_rounds` rounds of each model once (the
        median of 5 passes), so a change of load on a shared machine hits every model alike; each row gets its
        model's median over rounds and the range it moved in."""
        times = {key: [] for key in self.timed}
        for _ in range(self.config.latency_rounds):
            for key, model in self.timed.items():
                times[key].append(cpu_latency_ms(model, self.example))
        for row in self.rows:
            measured = times.get(row.get("timing"))
            if measured:
                row["latency_ms"], row["latency_range_ms"] = statistics.median(measured), [min(measured), max(measured)]
        self.save_progress()
        return {"phase": "latency", "models_timed": len(times)}

    def latency_example(self) -> torch.Tensor:
        d = self.dataset
        generator = torch.Generator().manual_seed(self.config.seed)
        return torch.randn(self.config.latency_batch, d.in_channels, d.image_size, d.image_size,
                           generator=generator)

    def results(self, status: str) -> dict:
        return {**super().results(status), "teacher": self.teacher_checkpoint.path,
                "torch_threads": torch.get_num_threads()}   # what the latencies were measured with
