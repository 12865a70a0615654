"""Scaling out (issue 15): the same work in 1 process and in N torchrun processes, and what ImageNet would cost.

    python benchmarks/scaling.py --teacher <fashion ckpt|run id> [--processes 1 2] [--batches 4] [--batch-size 200]
        [--iterations 40] [--distill-steps 400] [--repeats 2] [--imagenet-probe]

Each row runs `dfkd synthesize --batches K` (or a `dfkd distill` of the noise method, whose steps are all student
steps) as a user starts it: 1 process with every core, or `torchrun --nproc_per_node N` (torchrun gives each process
one thread per core share: OMP_NUM_THREADS = cores / N here). Wall time is the command's, start-up included (torch
imports, process group), and the images/s (or steps/s) come from the run's own summary, which counts the work only.
Configurations alternate (1, N, 1, N ...) so a change of load hits all alike; medians over the repeats.

`--imagenet-probe` times one inversion step of a torchvision ResNet-50 (random weights, 224×224, batch 16) on this
machine's CPU with the engine's objective, for the paper-scale cost model in the README (images/s per device × devices
→ hours for 140k images of 2k iterations).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(processes: int, home: str, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "dfkd_core.cli", "--home", home, "--quiet", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "dfkd_core.cli", "--home", home, "--quiet", *args]


def timed(processes: int, home: str, args: list[str]) -> tuple[float, dict]:
    """(wall seconds, the run's summary) of one command in a fresh run store."""
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command(processes, home, args), cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command(processes, home, args))} failed:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    runs = sorted((Path(home) / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(runs[-1].read_text())["summary"]


def imagenet_probe() -> None:
    import dfkd_core  # noqa: F401  (before torch: its OpenMP wait policy)
    import torch
    import torchvision

    from dfkd_core.synthesis.engine import InversionObjective
    torch.set_num_threads(os.cpu_count() or 1)
    teacher = torchvision.models.resnet50(weights=None).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    objective = InversionObjective(teacher)
    x = torch.randn(16, 3, 224, 224, requires_grad=True)
    targets, weights = torch.arange(16) % 1000, torch.tensor([1.0, 1e-4, 1e-5, 0.01, 0.0, 10.0])
    times = []
    for _ in range(4):
        start = time.perf_counter()
        with objective.recorder:
            total, _, _ = objective(x, torch.tensor([1, -1, 1]), targets, weights)
        total.backward()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    print(f"\n### ResNet-50 inversion step, 224×224, batch 16, {torch.get_num_threads()} CPU threads\n")
    print(f"{step:.2f} s per step = {16 / step:.1f} image-iterations/s; 2,000 iterations per image → "
          f"{16 / step / 2000 * 3600:.1f} images per hour on this machine")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    p.add_argument("--home", help="run store of the teacher (default $DFKD_HOME or ~/.dfkd)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--distill-steps", type=int, default=400, help="0: no distillation rows")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--imagenet-probe", action="store_true")
    args = p.parse_args()
    home = args.home or os.environ.get("DFKD_HOME") or str(Path.home() / ".dfkd")
    teacher = args.teacher if Path(args.teacher).exists() else \
        str(next(Path(home).glob(f"runs/{args.teacher}*/model.pt")))
    work = {"synthesize": ["synthesize", "--teacher", teacher, "--batches", str(args.batches), "--batch-size",
                           str(args.batch_size), "--iterations", str(args.iterations), "--device", "cpu"]}
    if args.distill_steps:
        work["distill (noise KD)"] = ["distill", "--teacher", teacher, "--method", "noise", "--steps",
                                      str(args.distill_steps), "--batch-size", "128", "--device", "cpu",
                                      "--eval-every", str(args.distill_steps)]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, cli in work.items():
            for n in args.processes:
                wall, summary = timed(n, tempfile.mkdtemp(prefix="dfkd-scaling-"), cli)
                rate = (summary["images_per_second"] if name == "synthesize"
                        else summary["student_steps"] / (60 * summary["wall_minutes"]))
                results.setdefault((name, n), []).append((wall, rate))
                loads.append(os.getloadavg()[0])
    print(f"{os.cpu_count()} CPU cores; load average {min(loads):.1f}–{max(loads):.1f} during the runs; "
          f"synthesis: {args.batches} batches of {args.batch_size}, {args.iterations} iterations; medians of "
          f"{args.repeats}\n")
    print("| work | processes | threads each | wall s (start-up included) | rate (work only) | speed-up (rate) |")
    print("|---|---|---|---|---|---|")
    for name in work:
        base = statistics.median(r for _, r in results[(name, args.processes[0])])
        for n in args.processes:
            wall = statistics.median(w for w, _ in results[(name, n)])
            rate = statistics.median(r for _, r in results[(name, n)])
            unit = "images/s" if name == "synthesize" else "student steps/s"
            print(f"| {name} | {n} | {max(1, (os.cpu_count() or 1) // n)} | {wall:.1f} | {rate:.1f} {unit} | "
                  f"{rate / base:.2f}× |")
    if args.imagenet_probe:
        imagenet_probe()


if __name__ == "__main__":
    main()
