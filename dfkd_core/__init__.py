"""dfkd studio: data-free knowledge distillation as a plain PyTorch library (the app and the CLI sit on top).

OpenMP's wait policy is what the environment names (OMP_WAIT_POLICY); dfkd sets none. It used to set PASSIVE
(threads sleep at once instead of spinning a while), because two jobs side by side with spinning threads took 60 s
each against 24-25 s. Since jobs share the cores (`dfkd_core.device.CPUShare`: two jobs on 2 cores run one thread
each, so no team of threads spins), passive waiting only slows a job that runs alone: on 2 cores (AMD EPYC, AVX512)
a Fashion-MNIST synthesis of 200 images × 40 iterations took 7.3 s with OpenMP's default against 9.3 s passive, a
`fashion-best` KD step 87 against 112 ms (bf16: 56-61 against 71-75 ms), and two jobs side by side took the same
either way (benchmarks/two_jobs.py, docs/results.md). OMP_WAIT_POLICY=PASSIVE still helps where dfkd shares the
machine with another program's threads; `dfkd_core.device.thread_policy()` says what this process runs with.
"""
import os

_named = os.environ.get("OMP_WAIT_POLICY")
# What this process's OpenMP runtime reads (it reads the variable once, when torch loads it); None: its default.
OMP_WAIT_POLICY_IN_EFFECT = (_named or "").strip().upper() or None
