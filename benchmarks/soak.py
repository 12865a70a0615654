"""Soak: N minutes of starting and stopping short syntheses and distillations on digits through the job API, the way
the app does it (`JobManager.submit` / `cancel`, each job on its own copy of the teacher), then a table of what
leaked, if anything: jobs started / done / cancelled / failed, resident memory (start, a quarter and half way, end,
max, its trend over the second half, and what is left after glibc returns freed heap pages to the system), threads,
open file descriptors, and hooks left on the models after their jobs ended.

Bounded: at most `--max-running` jobs at once (the app's limit on 2 cores), each a few seconds long; each finished
run is deleted from the run store (exercising delete under load) except the last few, so the disk use stays flat.
No server, no network: everything runs in this process, on a run store in a temporary directory.

    nice -n 10 python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --minutes 1 --teacher <digits model.pt>     # a quick check

Prints markdown tables; progress lines go to stderr every `--report-every-s` seconds.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import gc
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dfkd_core.distill import DistillConfig, DistillJob  # noqa: E402
from dfkd_core.job_manager import JobManager  # noqa: E402
from dfkd_core.jobs import Job  # noqa: E402
from dfkd_core.models import Checkpoint, load_checkpoint  # noqa: E402
from dfkd_core.runs import RunStore  # noqa: E402
from dfkd_core.synthesis import ModelInversion, SynthesisConfig  # noqa: E402
from dfkd_core.training import TeacherConfig, train_teacher  # noqa: E402

KEEP_RUNS = 8          # finished runs kept (newest); older ones are deleted


def process_status(field: str) -> int:
    """A number from /proc/self/status (VmRSS and VmHWM in kB, Threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def sample() -> dict:
    return {"time": time.monotonic(), "rss_mb": process_status("VmRSS") / 1024,
            "os_threads": process_status("Threads"), "python_threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd"))}


def hooks_on(*models: nn.Module | None) -> int:
    """Forward, forward-pre and backward hooks registered on any module of these models."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for model in models if model is not None for m in model.modules())


def make_job(kind: str, teacher: Checkpoint, store: RunStore, rng: random.Random) -> Job:
    """A short synthesis or distillation on a private copy of the teacher (as the app's fresh_model gives)."""
    model = copy.deepcopy(teacher.model)
    seed = rng.randrange(1000)
    if kind == "synthesis":
        config = SynthesisConfig.preset(rng.choice(["deepinversion", "deepdream"]), "digits", batch_size=50,
                                        iterations=rng.choice([30, 60, 120, 200]), seed=seed, snapshot_every=5)
        run = store.create("synthesis", config.to_dict(), method=config.method, dataset="digits")
        return ModelInversion(model, teacher.dataset, config, run=run)
    config = DistillConfig(method="deepinversion", images=rng.choice([40, 80]),
                           synthesis={"batch_size": 20, "iterations": 20}, kd_steps_per_round=5,
                           steps=rng.choice([20, 60]), batch_size=32, eval_every=20, eval_samples=200, seed=seed)
    run = store.create("distill", config.to_dict(), method=config.method, dataset="digits")
    return DistillJob(dataclasses.replace(teacher, model=model), config, run=run)


@dataclasses.dataclass
class Tally:
    started: Counter = dataclasses.field(default_factory=Counter)
    ended: Counter = dataclasses.field(default_factory=Counter)   # (kind, status)
    cancel_requested: int = 0
    hooks_left: int = 0
    errors: Counter = dataclasses.field(default_factory=Counter)
    deleted: int = 0


def settle(job: Job, tally: Tally, store: RunStore, kept: list[str]) -> None:
    """Count a finished job, check its models carry no hooks, and keep the run store bounded."""
    tally.ended[(job.kind, job.status)] += 1
    tally.hooks_left += hooks_on(getattr(job, "teacher", None), getattr(job, "student", None))
    if job.status == "failed":
        tally.errors[(job.error or "")[:160]] += 1
    kept.append(job.run_record.id)
    while len(kept) > KEEP_RUNS:
        store.delete(kept.pop(0))
        tally.deleted += 1


def soak(minutes: float, teacher: Checkpoint, store: RunStore, max_running: int, seed: int,
         report_every_s: float) -> tuple[Tally, list[dict]]:
    rng = random.Random(seed)
    manager = JobManager(max_running=max_running)
    manager.configure_torch_threads()
    tally, kept, samples = Tally(), [], [sample()]
    live: dict[str, tuple[Job, float | None]] = {}   # job id -> (job, when to cancel it or None)
    deadline = time.monotonic() + minutes * 60
    next_report = time.monotonic() + report_every_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        for job_id, (job, cancel_at) in list(live.items()):
            if not job.running:
                job.wait()
                settle(job, tally, store, kept)
                del live[job_id]
            elif cancel_at is not None and now >= cancel_at:
                manager.cancel(job_id)
                tally.cancel_requested += 1
                live[job_id] = (job, None)
        while len(manager.active()) < max_running:
            kind = rng.choice(["synthesis", "distill"])
            job = manager.submit(make_job(kind, teacher, store, rng), label=f"soak {kind}",
                                 snapshot_interval_s=0.15)
            tally.started[kind] += 1
            live[job.id] = (job, now + rng.uniform(0.2, 4.0) if rng.random() < 0.5 else None)
        if now >= next_report:
            samples.append(sample())
            next_report = now + report_every_s
            print(f"[{(now - samples[0]['time']) / 60:5.1f} min] started {sum(tally.started.values())}, "
                  f"ended {sum(tally.ended.values())}, RSS {samples[-1]['rss_mb']:.0f} MB, "
                  f"threads {samples[-1]['os_threads']}, fds {samples[-1]['fds']}", file=sys.stderr, flush=True)
        time.sleep(0.05)
    manager.shutdown(timeout=60)
    for job, _ in live.values():
        settle(job, tally, store, kept)
    gc.collect()
    samples.append(sample())
    return tally, samples


def memory_trend_mb_per_hour(samples: list[dict]) -> float:
    """Least-squares slope of RSS over the second half of the run (0 if too few samples): the first minutes are
    torch and the allocator settling (their growth is returned by malloc_trim, see `rss_after_malloc_trim`)."""
    t0, half = samples[0]["time"], (samples[-1]["time"] - samples[0]["time"]) / 2
    points = [((s["time"] - t0) / 3600, s["rss_mb"]) for s in samples if s["time"] - t0 >= half]
    if len(points) < 3:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / var if var else 0.0


def rss_after_malloc_trim() -> float | None:
    """RSS (MB) once glibc has returned its free heap pages to the system: what is left is memory in use, so growth
    that disappears here was allocator fragmentation across job threads, not a leak. None without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return process_status("VmRSS") / 1024


def at_fraction(samples: list[dict], fraction: float) -> dict:
    t0, t1 = samples[0]["time"], samples[-1]["time"]
    return next(s for s in samples if s["time"] - t0 >= fraction * (t1 - t0))


def print_tables(minutes: float, tally: Tally, samples: list[dict], teacher_hooks: int, store: RunStore) -> None:
    start, quarter, half, end = samples[0], at_fraction(samples, 0.25), at_fraction(samples, 0.5), samples[-1]
    statuses = Counter()
    for (_, status), count in tally.ended.items():
        statuses[status] += count
    left = Counter(r.status for r in store.list())
    print(f"\n### Soak: {minutes:g} min of start/stop through JobManager (digits), load {os.getloadavg()[0]:.1f}\n")
    print("| kind | started | done | cancelled | failed |\n|---|---|---|---|---|")
    for kind in ("synthesis", "distill"):
        print(f"| {kind} | {tally.started[kind]} | {tally.ended[(kind, 'done')]} | "
              f"{tally.ended[(kind, 'cancelled')]} | {tally.ended[(kind, 'failed')]} |")
    print(f"| all | {sum(tally.started.values())} | {statuses['done']} | {statuses['cancelled']} | "
          f"{statuses['failed']} |")
    print(f"\nStop pressed {tally.cancel_requested} times; {tally.deleted} runs deleted on the way; the run store "
          f"ends with {dict(left)} (none should be 'running').\n")
    print("| measure | start | ¼ of the time | ½ of the time | end | max |\n|---|---|---|---|---|---|")
    print(f"| RSS (MB) | {start['rss_mb']:.0f} | {quarter['rss_mb']:.0f} | {half['rss_mb']:.0f} | "
          f"{end['rss_mb']:.0f} | {max(s['rss_mb'] for s in samples):.0f} |")
    for key, name in (("os_threads", "OS threads"), ("python_threads", "Python threads"), ("fds", "open fds")):
        print(f"| {name} | {start[key]} | {quarter[key]} | {half[key]} | {end[key]} | "
              f"{max(s[key] for s in samples)} |")
    trimmed = rss_after_malloc_trim()
    print(f"\nRSS trend over the second half: {memory_trend_mb_per_hour(samples):+.1f} MB/hour; RSS at the end "
          f"after malloc_trim: {f'{trimmed:.0f} MB' if trimmed else 'n/a (no glibc)'}. Hooks left on the models "
          f"of ended jobs: {tally.hooks_left}; on the shared teacher: {teacher_hooks}.")
    for error, count in tally.errors.most_common(5):
        print(f"- failed ×{count}: {error}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--teacher", help="a digits teacher model.pt (default: train one, ~5 s)")
    p.add_argument("--max-running", type=int, default=2, help="jobs at once (the app's default on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-every-s", type=float, default=30.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="dfkd-soak-") as home:
        store = RunStore(home)
        if args.teacher:
            teacher = load_checkpoint(args.teacher)
        else:
            teacher = load_checkpoint(train_teacher(TeacherConfig(dataset="digits", epochs=5), store)
                                      .result["checkpoint"])
        tally, samples = soak(args.minutes, teacher, store, args.max_running, args.seed, args.report_every_s)
        print_tables(args.minutes, tally, samples, hooks_on(teacher.model), store)


if __name__ == "__main__":
    main()
