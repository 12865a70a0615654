"""What each lever of the synthesis engine gives, one at a time (issue 18); `synthesis_speed.py` has the totals.

    python benchmarks/synthesis_levers.py --teacher <ckpt|run id> [--batch-size 200] [--repeats 5]
        [--sections statistics augment metrics batch resolution schedule]

- statistics: one teacher forward + backward with R_feature, per way of getting the BN statistics (floor: the plain
  pass without them), interleaved, median ms and × floor;
- augment: jitter + flip and its backward, `torch.roll` + `torch.flip` against one gather with tensor offsets;
- metrics: the engine reading its metrics every step against once at the end (on a CPU nothing waits);
- batch: images/s of the engine, eager and compiled, per batch size (40 iterations);
- resolution: the first k of 200 iterations at half resolution: seconds, BN distance, teacher accuracy;
- schedule: fewer iterations (each with its own cosine schedule) and higher learning rates: the same three.
Timed comparisons are interleaved (A B C, B C A, ...); quality runs use the same seed and initial noise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import dfkd_core  # noqa: E402,F401  (before torch: its OpenMP wait policy)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from deepinversion_reference import FeatureHook  # noqa: E402
from synthesis_speed import frozen_teacher, quality, run_engine  # noqa: E402

from dfkd_core.device import thread_policy  # noqa: E402
from dfkd_core.hooks import BNStatisticsRecorder, channel_mean_and_variance  # noqa: E402
from dfkd_core.losses import bn_feature_loss  # noqa: E402
from dfkd_core.models import load_checkpoint  # noqa: E402
from dfkd_core.runs import RunStore  # noqa: E402
from dfkd_core.synthesis import SynthesisConfig  # noqa: E402
from dfkd_core.synthesis.engine import InversionObjective, shift_and_flip  # noqa: E402


def interleaved(candidates: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in rotating order, after one warm-up call each."""
    names = list(candidates)
    for name in names:
        candidates[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def old_engine_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine before issue 18: a mean and a variance reduction per layer."""
    dims = [0, 2, 3]
    return x.float().mean(dim=dims), x.float().var(dim=dims, unbiased=False)


def var_mean_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x.float(), dim=[0, 2, 3], unbiased=False)
    return mean, var


class StatisticRecorder(BNStatisticsRecorder):
    """The hooked recorder with another way of computing each layer's (mean, variance)."""

    def __init__(self, model: nn.Module, statistic):
        super().__init__(model)
        self.statistic = statistic

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._captured[name] = self.statistic(inputs[0])
        return record


def statistics_section(checkpoint, args) -> None:
    teacher = frozen_teacher(checkpoint, torch.device("cpu"))
    size, channels = checkpoint.dataset.image_size, checkpoint.dataset.in_channels
    x0 = torch.randn(args.batch_size, channels, size, size)
    bn_layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]

    def plain() -> None:
        teacher(x0.clone().requires_grad_(True)).sum().backward()

    def reference() -> None:
        hooks = [FeatureHook(m) for m in bn_layers]
        batch = x0.clone().requires_grad_(True)
        out = teacher(batch)
        (out.sum() + sum(h.r_feature for h in hooks)).backward()
        for h in hooks:
            h.close()

    def recorded(fused: bool, statistic=None):
        recorder = StatisticRecorder(teacher, statistic) if statistic else BNStatisticsRecorder(teacher, fused=fused)

        def run() -> None:
            batch = x0.clone().requires_grad_(True)
            with recorder:
                out = teacher(batch)
                loss, _ = bn_feature_loss(recorder.statistics(), 10.0)
            (out.sum() + loss).backward()
        return run

    times = interleaved({"plain forward + backward (floor)": plain,
                         "DeepInversion hooks (reference loop)": reference,
                         "hooks, mean + var (engine before)": recorded(False, old_engine_statistics),
                         "hooks, one var_mean": recorded(False, var_mean_statistics),
                         "hooks, Σx and Σx² (channel_mean_and_variance)": recorded(False, channel_mean_and_variance),
                         "fused BatchNorm layer (engine)": recorded(True)}, args.repeats)
    floor = times["plain forward + backward (floor)"]
    print(f"\n### BN statistics: teacher forward + backward with R_feature, batch {args.batch_size}")
    print("| how | ms | × floor |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / floor:.2f} |")


def augment_section(checkpoint, args) -> None:
    size, channels = checkpoint.dataset.image_size, checkpoint.dataset.in_channels
    x0, grad = torch.randn(args.batch_size, channels, size, size), torch.randn(args.batch_size, channels, size, size)

    def rolled() -> None:
        x = x0.clone().requires_grad_(True)
        torch.flip(torch.roll(x, shifts=(1, -2), dims=(2, 3)), dims=(3,)).backward(grad)

    def gathered() -> None:
        x = x0.clone().requires_grad_(True)
        shift_and_flip(x, torch.tensor([1, -2, 1])).backward(grad)

    times = interleaved({"torch.roll + torch.flip (Python offsets)": rolled,
                         "shift_and_flip (tensor offsets)": gathered}, args.repeats * 10)
    print(f"\n### Jitter + flip, forward + backward, batch {args.batch_size}")
    print("| how | ms |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds:.2f} |")


def config_for(checkpoint, args, **overrides) -> SynthesisConfig:
    values = {"batch_size": args.batch_size, "iterations": 40, "seed": args.seed, "device": "cpu",
              "snapshot_every": 0, **overrides}
    return SynthesisConfig.preset("deepinversion", checkpoint.dataset.name, **values)


def metrics_section(checkpoint, args) -> None:
    def engine(every_s: float):
        def run() -> None:
            config = config_for(checkpoint, args)
            from dfkd_core.synthesis import ModelInversion
            job = ModelInversion(frozen_teacher(checkpoint, torch.device("cpu")), checkpoint.dataset, config)
            job.metrics_every_s = every_s
            job.run()
        return run
    times = interleaved({"read every step": engine(0.0), "read once, at the end": engine(3600.0)}, args.repeats)
    print(f"\n### Metric reads, 40 iterations, batch {args.batch_size} (CPU)")
    print("| how | s |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} |")


def batch_section(checkpoint, args) -> None:
    device = torch.device("cpu")
    print("\n### Images/s by batch size, 40 iterations")
    print("| batch | engine images/s | compiled images/s | compile s |\n|---|---|---|---|")
    for batch in args.batch_sweep:
        config = config_for(checkpoint, args, batch_size=batch)
        objective = InversionObjective(frozen_teacher(checkpoint, device), compile=True)
        start = time.perf_counter()
        run_engine(checkpoint, config.replace(iterations=2), device, objective)
        compile_s = time.perf_counter() - start
        times = interleaved({"engine": lambda: run_engine(checkpoint, config, device),
                             "compiled": lambda: run_engine(checkpoint, config, device, objective)},
                            max(1, args.repeats // 2))
        print(f"| {batch} | {batch / times['engine']:.1f} | {batch / times['compiled']:.1f} | {compile_s:.1f} |")


def quality_rows(checkpoint, args, title: str, settings: list[tuple[str, dict]]) -> None:
    device = torch.device("cpu")
    print(f"\n### {title}, batch {args.batch_size}, seed {args.seed}")
    print("| setting | s | BN distance | teacher acc |\n|---|---|---|---|")
    teacher = frozen_teacher(checkpoint, device)
    for name, overrides in settings:
        seconds, x, job = run_engine(checkpoint, config_for(checkpoint, args, **overrides), device)
        bn, accuracy = quality(teacher, x, job.targets)
        print(f"| {name} | {seconds:.1f} | {bn:.3f} | {accuracy:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--batch-sweep", type=int, nargs="+", default=[100, 200, 400, 800])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--sections", nargs="+",
                   default=["statistics", "augment", "metrics", "batch", "resolution", "schedule"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(RunStore().resolve_checkpoint(args.teacher))
    print(f"teacher {checkpoint.name} on {checkpoint.dataset.name}; {os.cpu_count()} CPU cores, {thread_policy()}; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    sections = {"statistics": statistics_section, "augment": augment_section, "metrics": metrics_section,
                "batch": batch_section,
                "resolution": lambda c, a: quality_rows(c, a, "Multi-resolution: first k of 200 iterations at half "
                                                             "size", [(f"k = {k}", {"iterations": 200,
                                                                                    "multi_resolution_iterations": k})
                                                                      for k in (0, 50, 100)]),
                "schedule": lambda c, a: quality_rows(c, a, "Iterations and learning rate",
                                                      [(f"{n} iterations, lr {lr}", {"iterations": n, "lr": lr})
                                                       for n, lr in ((200, 0.25), (150, 0.25), (100, 0.25),
                                                                     (100, 0.5), (150, 0.4))])}
    for name in args.sections:
        sections[name](checkpoint, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
