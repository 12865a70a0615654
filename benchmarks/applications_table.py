"""The data-free applications of methods.md#applications on one teacher (issue 16): the three markdown tables, each
accuracy with its 95% bootstrap interval over the test images and each comparison with its paired interval, plus the
targets over seeds (min / mean). Every number comes from a `dfkd` command, printed beside its table.

    # Fashion-MNIST (teacher: `dfkd train-teacher --dataset fashion-mnist --model bncnn6_w32 --epochs 3`); the settings
    # of the measured tables (about 65 minutes with one thread on the shared 2-core machine)
    python benchmarks/applications_table.py --teacher <teacher run id> --seeds 0 1 2 --threads 1 --cl-model bncnn6_w16
    # digits, in about a minute
    python benchmarks/applications_table.py --teacher <digits teacher run id> --images 400 --inv-iterations 60

One DeepInversion pool is synthesized (by the first `dfkd quantize`) and reused by every other quantization and
pruning run (`--pool`); the seeds vary what is drawn from it and from the real data (calibration subsets, noise,
fine-tuning batches). Continual learning synthesizes from its own old model in every seed. The first seed sweeps
every FLOPs target; the other seeds repeat only the target the issue names (half the FLOPs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys

import torch

from dfkd_core.applications.quantization import OBSERVERS
from dfkd_core.applications.report import format_results
from dfkd_core.cli import main as dfkd
from dfkd_core.runs import RunStore


def run(home: str, argv: list[str]) -> dict:
    """Run one `dfkd` command (quiet) and return the results.json of the run it made."""
    store = RunStore(home)
    before = {r.id for r in store.list()}
    with contextlib.redirect_stdout(sys.stderr):   # the command's own report: stdout keeps only the tables
        code = dfkd(["--home", home, "--quiet", *argv])
    made = [r for r in store.list(argv[0]) if r.id not in before and made_here(store, r)]   # others share the store
    if code != 0 or len(made) != 1:
        raise SystemExit(f"`dfkd {shlex.join(argv)}` exited {code}")
    results = json.loads((made[0].dir / "results.json").read_text())
    results["run"], results["command"] = made[0].id, "dfkd " + shlex.join(argv)
    return results


def made_here(store: RunStore, record) -> bool:
    """Whether this process created the run (run.json records its creator's pid): another process's run of the same
    kind, made while this command ran, is not this command's."""
    return store.get(record.id).load_json("run.json").get("pid") == os.getpid()


def difference(results: dict, label: str) -> float:
    """A paired comparison's estimate, in percentage points."""
    return 100 * next(c for c in results["comparisons"] if c["comparison"] == label)["difference_ci"]["estimate"]


def spread(values: list[float], unit: str) -> str:
    return f"min {min(values):+.2f}{unit}, mean {statistics.mean(values):+.2f}{unit} over {len(values)} seed(s)"


def inversion_flags(args) -> list[str]:
    return ["--inv-iterations", str(args.inv_iterations), "--inv-batch-size", str(args.inv_batch_size)]


def quantization(args, pool: str | None) -> tuple[list[dict], str, str]:
    """Every seed at every activation observer and width; the first run synthesizes the pool when none is given."""
    runs, lines = [], []
    for observer in args.observers:
        for bits in args.activation_bits:
            model = "int8" if bits == 8 else f"int8, {bits}-bit activations"
            for seed in args.seeds:
                source = ["--pool", pool] if pool else ["--images", str(args.images), *inversion_flags(args)]
                runs.append(run(args.home, ["quantize", "--teacher", args.teacher, *source, "--seed", str(seed),
                                            "--calibration-images", str(args.calibration_images),
                                            "--activation-bits", str(bits), "--observer", observer]))
                pool = pool or runs[0]["run"]
            done = runs[-len(args.seeds):]
            real = [difference(r, f"{model}: synthetic − real") for r in done]
            noise = [difference(r, f"{model}: synthetic − noise") for r in done]
            lines.append(f"{model} ({observer}): synthetic − real {spread(real, ' pt')}; "
                         f"synthetic − noise {spread(noise, ' pt')}")
    return runs, "; ".join(lines), pool


def pruning(args, pool: str) -> tuple[list[dict], str]:
    runs = []
    for i, seed in enumerate(args.seeds):
        keep = args.keep_flops if i == 0 else str(args.target_keep)
        runs.append(run(args.home, ["prune", "--teacher", args.teacher, "--pool", pool, "--seed", str(seed),
                                    "--keep-flops", keep, "--finetune-steps", str(args.finetune_steps)]))
    lines = []
    for criterion in ("taylor", "bn_scale"):
        label = f"{criterion}-keep{round(100 * args.target_keep)}: synthetic KD − real KD"
        lines.append(f"{label}: {spread([difference(r, label) for r in runs], ' pt')}")
    return runs, "; ".join(lines)


def continual(args, dataset: str) -> tuple[list[dict], str]:
    model = ["--model", args.cl_model] if args.cl_model else []
    feature = [] if args.feature_weight is None else ["--feature-weight", str(args.feature_weight)]
    runs = [run(args.home, ["continual", "--dataset", dataset, *model, "--seed", str(seed), "--images",
                            str(args.cl_images), "--inv-iterations", str(args.cl_inv_iterations), "--inv-batch-size",
                            str(args.inv_batch_size), "--old-steps", str(args.old_steps),
                            "--new-steps", str(args.new_steps), *feature]) for seed in args.seeds]

    def rows(variant: str) -> list[dict]:
        return [next(r for r in res["rows"] if r["model"] == variant) for res in runs]
    kept = {v: [100 * r["old_retention"] for r in rows(v)] for v in ("replay", "naive")}
    summary = "; ".join(f"{v} keeps {min(k):.1f}% (min) / {statistics.mean(k):.1f}% (mean) of the old model's "
                        "old-class accuracy" for v, k in kept.items())
    for part in ("new", "all"):
        values = [100 * r[part]["accuracy"] for r in rows("replay")]
        summary += f"; replay's {part}-class accuracy {min(values):.2f}% (min) / {statistics.mean(values):.2f}% (mean)"
    return runs, summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher run id or model.pt (its dataset is used throughout)")
    p.add_argument("--home", help="run store (default $DFKD_HOME or ~/.dfkd)")
    p.add_argument("--pool", help="reuse this run's images.pt instead of synthesizing a pool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (latencies are measured with these)")
    p.add_argument("--only", nargs="+", choices=["quantize", "prune", "continual"],
                   default=["quantize", "prune", "continual"])
    p.add_argument("--images", type=int, default=1000, help="DeepInversion pool size")
    p.add_argument("--inv-iterations", type=int, default=200)
    p.add_argument("--inv-batch-size", type=int, default=200)
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--activation-bits", type=int, nargs="+", default=[8, 4],
                   help="int8 at 8; fewer activation levels show where the calibration images matter")
    p.add_argument("--observers", nargs="+", choices=OBSERVERS, default=list(OBSERVERS),
                   help="activation observers: minmax (the papers' calibration) and histogram (torch's default)")
    p.add_argument("--keep-flops", default="0.75,0.5,0.25")
    p.add_argument("--target-keep", type=float, default=0.5)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--cl-model", help="continual learning's model (default: the dataset's teacher architecture)")
    p.add_argument("--cl-images", type=int, default=600, help="images synthesized from the old model")
    p.add_argument("--cl-inv-iterations", type=int, default=200)
    p.add_argument("--old-steps", type=int, default=600)
    p.add_argument("--new-steps", type=int, default=600)
    p.add_argument("--feature-weight", type=float, help="replay's λ_feat (default: dfkd continual's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.home = str(RunStore(args.home).home)
    from dfkd_core.models import load_checkpoint
    dataset = load_checkpoint(RunStore(args.home).resolve_checkpoint(args.teacher)).dataset.name
    pool, sections = args.pool, []
    if "quantize" in args.only or ("prune" in args.only and not pool):
        runs, summary, pool = quantization(args, pool)
        sections.append(("Quantization calibration", runs, summary))
    if "prune" in args.only:
        sections.append(("Pruning", *pruning(args, pool)))
    if "continual" in args.only:
        sections.append(("Continual learning", *continual(args, dataset)))
    for title, runs, summary in sections:
        print(f"## {title} ({dataset}, {args.threads} torch thread(s))\n")
        for results in runs:
            print(f"```bash\n{results['command']}   # run {results['run']}\n```\n")
            print(format_results(results) + "\n")
        print(f"**Over seeds {args.seeds}:** {summary}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
