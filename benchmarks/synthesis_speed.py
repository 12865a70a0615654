"""Synthesis speed: the project's engine against a plain DeepInversion loop, side by side in one process (issue 18).

    python benchmarks/synthesis_speed.py --teacher <ckpt|run id> [--batch-sizes 200] [--iterations 40]
        [--repeats 3] [--threads N] [--device cpu|cuda] [--variants reference engine compiled]

Same teacher, batch, iterations, seed, initial noise and augmentation draws for every variant:
- `reference`: `deepinversion_reference.py`, the loop written the way NVlabs' public code is (hooks, Python-side
  jitter/flip, fp32, one `loss.item()` per iteration);
- `engine`: `ModelInversion` run as `dfkd synthesize` runs it (events, metrics, a snapshot every 10 steps);
- `compiled`: the same with `compile=True`; its one-off compilation is timed apart (`compile s`) and its
  images/s counts the steps only, as a pool's later rounds see it.

Variants run interleaved (A B C, B C A, ...) so a change of load hits all alike; the table gives medians over the
repeats and the load average seen. `overhead` = one step's wall time ÷ one plain forward + backward of the teacher
on the same batch (no hooks, no losses) in the variant's memory layout (`layout`: the reference keeps the public
code's NCHW, the engine runs NHWC where `prepare_model` picks it; `floor ms`), the floor of any inversion step.
On a CPU that pass runs after every step of every run and is taken out of the run's time (`PairedFloor`): each run's
overhead is against the passes made during it, and the table gives the median over runs. This virtual machine's
speed wanders by 20-30% over minutes; a floor measured between runs put the same engine at 0.92 and 1.22.
BN distance (unweighted, as the runs report it) and teacher accuracy are measured the same way on each variant's
final batch; `max |Δx|` is the largest pixel difference from the reference's final batch.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

# This checkout's engine (not an installed copy) and the reference loop beside this file; dfkd_core before torch,
# so its OpenMP wait policy takes effect (dfkd_core/__init__.py).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import dfkd_core  # noqa: E402,F401

import torch  # noqa: E402
from deepinversion_reference import reference_deepinversion  # noqa: E402

from dfkd_core.device import (describe_machine, memory_layout, prepare_input, prepare_model,  # noqa: E402
                              thread_policy)
from dfkd_core.hooks import BNStatisticsRecorder  # noqa: E402
from dfkd_core.losses import bn_feature_loss  # noqa: E402
from dfkd_core.models import load_checkpoint  # noqa: E402
from dfkd_core.runs import RunStore  # noqa: E402
from dfkd_core.synthesis import ModelInversion, SynthesisConfig  # noqa: E402
from dfkd_core.synthesis.engine import InversionObjective  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frozen_teacher(checkpoint, device: torch.device) -> torch.nn.Module:
    """A copy of the teacher of its own (hooks and fused forwards are per model object), frozen, in eval mode."""
    teacher = copy.deepcopy(checkpoint.model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def initial_batch(config: SynthesisConfig, checkpoint, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and targets `ModelInversion.setup` makes for this config (same generator, same seed)."""
    info = checkpoint.dataset
    generator = torch.Generator(device=device).manual_seed(config.seed)
    init = torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, device=device,
                       generator=generator)
    targets = torch.arange(config.batch_size, device=device) % info.num_classes
    return init, targets


@torch.no_grad()
def quality(teacher: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(unweighted BN distance, teacher accuracy) of a final batch, measured the same way for every variant."""
    with BNStatisticsRecorder(teacher) as recorder:
        logits = teacher(x)
        _, per_layer = bn_feature_loss(recorder.statistics(), 1.0)
    return float(per_layer.sum()), float((logits.argmax(1) == targets).float().mean())


def teacher_pass_seconds(teacher: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int = 5
                         ) -> float:
    """Median wall time of one plain forward + backward of the teacher on x (the floor of an inversion step)."""
    times = []
    for _ in range(repeats + 1):
        batch = x.detach().clone().requires_grad_(True)
        synchronize(device)
        start = time.perf_counter()
        teacher(batch).sum().backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


class PairedFloor:
    """A plain teacher forward + backward after every step of a variant's run (CPU), timed and taken out of the run's
    time: each step is compared with a floor measured seconds apart from it, not minutes, so a virtual machine whose
    speed wanders by 20-30% over minutes moves both alike. `None` (a GPU): the floor is measured between runs,
    since a timed pass would make the GPU's asynchronous steps wait."""

    def __init__(self, teacher: torch.nn.Module, x: torch.Tensor):
        self.teacher, self.x = teacher, x
        self.passes: list[float] = []

    def __call__(self, *_) -> None:
        batch = self.x.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        self.teacher(batch).sum().backward()
        self.passes.append(time.perf_counter() - start)

    @property
    def spent(self) -> float:
        """Seconds the timed passes took (the clone before each, a fraction of a millisecond, stays in the run's
        time)."""
        return sum(self.passes)


def run_reference(checkpoint, config: SynthesisConfig, device: torch.device,
                  paired: PairedFloor | None = None) -> tuple[float, torch.Tensor]:
    teacher = frozen_teacher(checkpoint, device)
    init, targets = initial_batch(config, checkpoint, device)
    low, high = checkpoint.dataset.pixel_bounds(device)
    synchronize(device)
    start = time.perf_counter()
    x = reference_deepinversion(teacher, init, targets, low, high, iterations=config.iterations, lr=config.lr,
                                jitter=config.jitter, flip=config.flip, alpha_ce=config.alpha_ce,
                                alpha_tv=config.alpha_tv, alpha_l2=config.alpha_l2, alpha_f=config.alpha_f,
                                first_bn_multiplier=config.first_bn_multiplier, seed=config.seed,
                                after_step=paired)
    synchronize(device)
    return time.perf_counter() - start - (paired.spent if paired else 0.0), x


def run_engine(checkpoint, config: SynthesisConfig, device: torch.device,
               objective: InversionObjective | None = None, paired: PairedFloor | None = None
               ) -> tuple[float, torch.Tensor, ModelInversion]:
    """Seconds from the first step's start to the last step's end (less the paired floor passes), the final batch
    and the job."""
    job = ModelInversion(frozen_teacher(checkpoint, device) if objective is None else objective.teacher,
                         checkpoint.dataset, config, objective=objective)
    marks: list[float] = []

    def listen(event) -> None:
        if event.kind in ("started", "step"):
            marks.append(time.perf_counter())
        if event.kind == "step" and paired is not None:   # a CPU job publishes every step as it ends
            paired()
    job.subscribe(listen)
    job.run()
    if job.status != "done":
        raise SystemExit(f"engine: {job.status}: {job.error}")
    synchronize(device)
    return time.perf_counter() - marks[0] - (paired.spent if paired else 0.0), job.images().to(device), job


def compiled_objective(checkpoint, config: SynthesisConfig, device: torch.device
                       ) -> tuple[InversionObjective, float]:
    """An objective compiled for this batch shape, and the seconds its compilation took (a 2-step run)."""
    objective = InversionObjective(frozen_teacher(checkpoint, device), compile=True)
    start = time.perf_counter()
    run_engine(checkpoint, config.replace(iterations=2, snapshot_every=0), device, objective)
    if not objective.compiled:
        print(f"note: {objective.fallback}")
    return objective, time.perf_counter() - start


def benchmark_batch(checkpoint, batch_size: int, args, device: torch.device) -> list[dict]:
    config = SynthesisConfig.preset("deepinversion", checkpoint.dataset.name, batch_size=batch_size,
                                    iterations=args.iterations, seed=args.seed, device=str(device),
                                    snapshot_every=args.snapshot_every)
    compile_s, objective = None, None
    if "compiled" in args.variants:
        objective, compile_s = compiled_objective(checkpoint, config, device)
    runners = {"reference": lambda paired: run_reference(checkpoint, config, device, paired)[:2],
               "engine": lambda paired: run_engine(checkpoint, config, device, paired=paired)[:2],
               "compiled": lambda paired: run_engine(checkpoint, config, device, objective, paired)[:2]}
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    overheads: dict[str, list[float]] = {v: [] for v in args.variants}   # per run, against its paired floor
    finals: dict[str, torch.Tensor] = {}
    loads: list[float] = []
    probe_teacher = frozen_teacher(checkpoint, device)
    # The engine runs the teacher in the layout `prepare_model` picks (NHWC on the CPU and CUDA), the reference in
    # the public code's NCHW: each variant's overhead is against the floor in its own layout, or a faster layout
    # would read as an overhead below 1.
    probes = {"NCHW": probe_teacher, "NHWC": prepare_model(frozen_teacher(checkpoint, device), device)}
    layouts = {v: ("NCHW" if v == "reference" else memory_layout(probes["NHWC"]) or "NCHW") for v in args.variants}
    floor: dict[str, list[float]] = {layout: [] for layout in set(layouts.values())}
    init, targets = initial_batch(config, checkpoint, device)
    # One short untimed run of each first: oneDNN / cuDNN build their kernels for a shape on first use, which would
    # otherwise land on whichever variant runs first (with --repeats 1, all of it).
    warm = config.replace(iterations=2, snapshot_every=0)
    run_reference(checkpoint, warm, device)
    run_engine(checkpoint, warm, device)
    inputs = {layout: prepare_input(init, device) if layout == "NHWC" else init for layout in floor}
    pair = device.type == "cpu" and args.paired_floor
    for repeat in range(args.repeats):
        loads.append(os.getloadavg()[0])
        order = args.variants[repeat % len(args.variants):] + args.variants[:repeat % len(args.variants)]
        for variant in order:
            layout = layouts[variant]
            paired = PairedFloor(probes[layout], inputs[layout]) if pair else None
            elapsed, finals[variant] = runners[variant](paired)
            seconds[variant].append(elapsed)
            if paired is not None:
                floor[layout] += paired.passes
                overheads[variant].append(elapsed / args.iterations / statistics.median(paired.passes))
        if not pair:
            for layout in floor:
                floor[layout].append(teacher_pass_seconds(probes[layout], inputs[layout], device))
    loads.append(os.getloadavg()[0])
    pass_s = {layout: statistics.median(times) for layout, times in floor.items()}
    rows = []
    for variant in args.variants:
        median = statistics.median(seconds[variant])
        bn, accuracy = quality(probe_teacher, finals[variant], targets)
        reference = finals.get("reference")
        rows.append({"variant": variant, "layout": layouts[variant], "batch": batch_size, "seconds": median,
                     "images_per_s": batch_size / median, "step_ms": 1000 * median / args.iterations,
                     "overhead": (statistics.median(overheads[variant]) if overheads[variant] else
                                  median / args.iterations / pass_s[layouts[variant]]), "bn_distance": bn,
                     "accuracy": accuracy,
                     "max_dx": float((finals[variant] - reference).abs().max()) if reference is not None else None,
                     "compile_s": compile_s if variant == "compiled" else None,
                     "load": f"{min(loads):.1f}–{max(loads):.1f}", "pass_ms": 1000 * pass_s[layouts[variant]],
                     "floor_passes": len(floor[layouts[variant]])})
    base = next((r["images_per_s"] for r in rows if r["variant"] == "reference"), None)
    for r in rows:
        r["ratio"] = r["images_per_s"] / base if base else None
    if args.profile and device.type == "cuda":
        short = config.replace(iterations=20, snapshot_every=0)
        profiled = {"reference": lambda: run_reference(checkpoint, short, device),
                    "engine": lambda: run_engine(checkpoint, short, device),
                    "compiled": lambda: run_engine(checkpoint, short, device, objective)}
        for variant in args.variants:
            print(f"batch {batch_size:,}, {variant}: {gpu_busy(profiled[variant], 20)}")
    return rows


def gpu_busy(run, steps: int) -> str:
    """Share of `run()`'s wall time the GPU spends in kernels, and kernels per step (torch profiler; `run` is
    called once before, to warm the allocator and cuDNN's choices)."""
    from torch.profiler import ProfilerActivity, profile
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_s = sum(getattr(e, "device_time", 0.0) for e in kernels) / 1e6
    return f"GPU busy {100 * busy_s / wall:.0f}% of {wall:.2f} s, {len(kernels) / steps:.0f} kernels per step"


def print_table(rows: list[dict]) -> None:
    print("| variant | layout | batch | images/s | × reference | step ms | floor ms | overhead | BN distance | "
          "teacher acc | max \\|Δx\\| | compile s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def fmt(value, spec):
            return "–" if value is None else format(value, spec)
        print(f"| {r['variant']} | {r['layout']} | {r['batch']:,} | {r['images_per_s']:.1f} | "
              f"{fmt(r['ratio'], '.2f')} | {r['step_ms']:.1f} | {r['pass_ms']:.1f} | {r['overhead']:.2f} | "
              f"{r['bn_distance']:.4f} | {r['accuracy']:.3f} | "
              f"{fmt(r['max_dx'], '.1e')} | {fmt(r['compile_s'], '.1f')} | {r['load']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[200])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot-every", type=int, default=10, help="as `dfkd synthesize` (0: none)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", nargs="+", default=["reference", "engine", "compiled"],
                   choices=["reference", "engine", "compiled"])
    p.add_argument("--profile", action="store_true", help="CUDA: GPU busy share and kernels per step")
    p.add_argument("--no-paired-floor", dest="paired_floor", action="store_false",
                   help="CPU: measure the floor between runs, not after every step (the pre-12-07 way)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(RunStore().resolve_checkpoint(args.teacher))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"teacher {checkpoint.name} on {checkpoint.dataset.name}; {args.iterations} iterations, seed {args.seed}, "
          f"{args.repeats} interleaved repeats; {describe_machine(device)}, {thread_policy()}")
    rows = []
    for batch_size in args.batch_sizes:
        rows += benchmark_batch(checkpoint, batch_size, args, device)
        print_table(rows[-len(args.variants):])
    if len(args.batch_sizes) > 1:
        print("\nall batches:")
        print_table(rows)


if __name__ == "__main__":
    main()
