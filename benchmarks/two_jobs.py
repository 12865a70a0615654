"""Two jobs at once on the CPU: each job's wall time side by side against its time alone (issue 18).

    python benchmarks/two_jobs.py --teacher <fashion ckpt|run id> [--digits-teacher <ckpt|run id>] [--repeats 2]
        [--conditions spin passive]

Each job is a separate `dfkd` process of this checkout, as a user starts them from two terminals:
`dfkd synthesize --batch-size 200 --iterations 40` on the teacher, and (with --digits-teacher) a digits
`dfkd train-teacher` beside one. Conditions:
- `spin`: what every run had before issue 18: OpenMP's default wait policy (threads spin before they sleep;
  OMP_WAIT_POLICY set to an empty value, which OpenMP reads as unset) and every process with all its threads
  ($DFKD_CPU_SHARE=0);
- `passive`: the passive wait policy alone (OMP_WAIT_POLICY=PASSIVE), every process with all its threads;
- `passive+share`: what runs got from issue 18 until 2026-12-07: passive waiting, and each job takes its share of
  the threads (`CPUShare`);
- `default`: what a run gets now: OpenMP's default wait policy and the shared threads.
Alone and paired runs alternate, condition by condition, so a change of load hits all alike; the table gives
medians of wall and CPU (user + system) seconds per process, and the slowdown = paired wall ÷ alone wall.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = {"spin": {"OMP_WAIT_POLICY": "", "DFKD_CPU_SHARE": "0"},
              "passive": {"OMP_WAIT_POLICY": "PASSIVE", "DFKD_CPU_SHARE": "0"},
              "passive+share": {"OMP_WAIT_POLICY": "PASSIVE"}, "default": {}}


def job_command(kind: str, teacher: str, home: str) -> list[str]:
    base = [sys.executable, "-m", "dfkd_core.cli", "--home", home, "--quiet"]
    if kind == "synthesize":
        return base + ["synthesize", "--teacher", teacher, "--batch-size", "200", "--iterations", "40",
                       "--device", "cpu"]
    return base + ["train-teacher", "--dataset", "digits", "--device", "cpu"]


def run_together(commands: list[list[str]], env: dict) -> list[tuple[float, float]]:
    """Start every command at once; (wall s, CPU s) of each, from its own resource usage."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in commands]
    results: dict[int, tuple[float, float]] = {}
    while len(results) < len(procs):
        pid, status, usage = os.wait4(-1, 0)
        proc = next((p for p in procs if p.pid == pid), None)
        if proc is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(proc.args)} failed: {proc.stderr.read().decode()[-2000:]}")
        results[pid] = (time.perf_counter() - start, usage.ru_utime + usage.ru_stime)
        proc.returncode = 0
    return [results[p.pid] for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="Fashion-MNIST teacher: checkpoint path or run id")
    p.add_argument("--digits-teacher", help="also time a digits train-teacher beside a synthesis")
    p.add_argument("--home", help="run store of the teachers (default $DFKD_HOME)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    args = p.parse_args()
    home = args.home or os.environ.get("DFKD_HOME") or str(Path.home() / ".dfkd")
    scratch = tempfile.mkdtemp(prefix="dfkd-two-jobs-")
    teacher = args.teacher if Path(args.teacher).exists() else str(next(Path(home).glob(f"runs/{args.teacher}*/model.pt")))
    pairs = {"synthesize + synthesize": ["synthesize", "synthesize"]}
    if args.digits_teacher:
        pairs["synthesize + train-teacher (digits)"] = ["synthesize", "train-teacher"]
    # (condition, pair, job) -> {"alone": [...], "alone_cpu": [...], "paired": [...], "paired_cpu": [...]}
    rows: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    loads = []
    for _ in range(args.repeats):
        for condition in args.conditions:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DFKD_CPU_SHARE")}
            env.update(PYTHONPATH=str(ROOT), **CONDITIONS[condition])
            for pair, kinds in pairs.items():
                loads.append(os.getloadavg()[0])
                alone = {kind: run_together([job_command(kind, teacher, scratch)], env)[0]
                         for kind in dict.fromkeys(kinds)}
                paired = run_together([job_command(kind, teacher, scratch) for kind in kinds], env)
                for i, (kind, (wall, cpu)) in enumerate(zip(kinds, paired)):
                    job = kind if kinds.count(kind) == 1 else f"{kind} #{i + 1}"
                    entry = rows.setdefault((condition, pair, job), {"alone": [], "alone_cpu": [], "paired": [],
                                                                     "paired_cpu": []})
                    entry["alone"].append(alone[kind][0])
                    entry["alone_cpu"].append(alone[kind][1])
                    entry["paired"].append(wall)
                    entry["paired_cpu"].append(cpu)
    loads.append(os.getloadavg()[0])
    print(f"{os.cpu_count()} CPU cores, {args.repeats} repeats, load average {min(loads):.1f}–{max(loads):.1f}; "
          "synthesize = Fashion-MNIST teacher, batch 200, 40 iterations")
    print("| condition | pair | job | alone s | alone CPU s | side by side s | side by side CPU s | slowdown |")
    print("|---|---|---|---|---|---|---|---|")
    for (condition, pair, job), r in rows.items():
        alone, paired = statistics.median(r["alone"]), statistics.median(r["paired"])
        print(f"| {condition} | {pair} | {job} | {alone:.1f} | {statistics.median(r['alone_cpu']):.1f} | "
              f"{paired:.1f} | {statistics.median(r['paired_cpu']):.1f} | {paired / alone:.2f}× |")


if __name__ == "__main__":
    main()
