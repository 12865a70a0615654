"""CKA speed on this machine (methods.md#cka): one-shot linear / debiased / RBF CKA, and the two batch-wise
estimators, for n inputs × p features (float32 features, as captured from a network); and the cost of the
bootstrap interval of a 4 × 4 layer matrix (`--intervals`).

    python benchmarks/cka_speed.py                 # n ∈ {1000, 10000} × p ∈ {512, 4096}, 2 threads
    python benchmarks/cka_speed.py --threads 1 --sizes 10000x512
    python benchmarks/cka_speed.py --threads 1 --intervals 360 1000 2000 3000

Prints the median of `--repeats` runs per cell. Target (issue): linear CKA of 10,000 × 512 in < 1 s.
The RBF kernel needs two n×n float64 matrices (1.6 GB at n = 10,000); `--skip-rbf-above N` skips it beyond N.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dfkd_core.analysis.cka import center_gram, debiased_linear_cka, gram_linear, linear_cka, rbf_cka
from dfkd_core.analysis.cka_accumulators import LinearCKAAccumulator, MinibatchCKA
from dfkd_core.analysis.cka_intervals import CKA_RESAMPLES, cka_with_draws


def timed(fn, repeats: int) -> tuple[float, float]:
    times, value = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def streaming(x, y, batch=500):
    acc = LinearCKAAccumulator()
    for a in range(0, len(x), batch):
        acc.update(x[a:a + batch], y[a:a + batch])
    return float(acc.value()[0, 0])


def minibatch(x, y, batch=500):
    acc = MinibatchCKA("debiased")   # it estimates debiased CKA: compare it with the 'debiased' column
    for a in range(0, len(x), batch):
        acc.update(x[a:a + batch], y[a:a + batch])
    return float(acc.value()[0, 0])


def time_intervals(sizes: list[int], repeats: int, layers: int = 4, dim: int = 256) -> None:
    """Seconds for the draws of a full-estimator CKA matrix (estimate + CKA_RESAMPLES resamples, every cell)."""
    print(f"bootstrap interval of a {layers} x {layers} CKA matrix, {CKA_RESAMPLES} resamples, "
          f"{torch.get_num_threads()} threads, median of {repeats} runs")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        grams = [center_gram(gram_linear(torch.randn(n, dim, generator=g, dtype=torch.float64)))
                 for _ in range(2 * layers)]
        seconds, _ = timed(lambda: cka_with_draws(iter(grams[:layers]), grams[layers:], False, CKA_RESAMPLES), repeats)
        print(f"n = {n:>6}: {seconds:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=["1000x512", "1000x4096", "10000x512", "10000x4096"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-rbf-above", type=int, default=10000)
    p.add_argument("--intervals", nargs="+", type=int, metavar="N",
                   help="time only the bootstrap interval of a 4 x 4 layer CKA matrix on N inputs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.intervals:
        time_intervals(args.intervals, args.repeats)
        return
    methods = {"linear": linear_cka, "debiased": debiased_linear_cka, "rbf": rbf_cka,
               "streaming (b=500)": streaming, "minibatch (b=500)": minibatch}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs, seconds")
    print(f"{'n x p':>12} " + " ".join(f"{m:>18}" for m in methods) + f" {'|streaming-linear|':>19}")
    for size in args.sizes:
        n, dim = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, dim, generator=g)
        y = torch.relu(x @ torch.randn(dim, dim, generator=g) / dim ** 0.5) + 0.5 * torch.randn(n, dim, generator=g)
        linear_cka(x[:64], y[:64])  # warm-up
        cells, values = [], {}
        for name, fn in methods.items():
            if name == "rbf" and n > args.skip_rbf_above:
                cells.append(f"{'skipped':>18}")
                continue
            seconds, values[name] = timed(lambda: fn(x, y), 1 if n * dim > 2e7 and name == "rbf" else args.repeats)
            cells.append(f"{seconds:>9.3f} ({values[name]:.3f})")
        err = abs(values["streaming (b=500)"] - values["linear"])
        print(f"{size:>12} " + " ".join(cells) + f" {err:>19.1e}")


if __name__ == "__main__":
    main()
