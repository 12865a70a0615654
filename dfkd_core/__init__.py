"""dfkd studio: data-free knowledge distillation as a plain PyTorch library (the app and the CLI sit on top).

Importing it sets OpenMP's wait policy to PASSIVE unless the environment already names one. Threads that spin
while they wait for work burn the cores another job needs: two `dfkd synthesize` runs side by side took 60 s each
with the default policy and 24-25 s with passive waiting, while one run alone is as fast either way (issue 18). The
OpenMP runtime reads the variable once, when torch loads it, so it takes effect only where dfkd_core is imported
before torch (the CLI, the benchmarks); `dfkd_core.device.thread_policy()` says what this process runs with.
"""
import os
import sys

_named = os.environ.get("OMP_WAIT_POLICY")
# What this process's OpenMP runtime reads: None for its default (spin a while, then sleep), which it keeps when
# torch was loaded before this module and the environment named no policy.
OMP_WAIT_POLICY_IN_EFFECT = (_named.strip().upper() or None) if _named is not None else (
    None if "torch" in sys.modules else "PASSIVE")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # also for every process this one starts
