"""Device selection and the CUDA fast paths (AMP, channels_last); everything degrades to plain CPU. On the CPU: how
many threads a job uses while other dfkd jobs run on the same machine (`CPUShare`)."""
from __future__ import annotations

import functools
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from dfkd_core.runs import process_alive, process_start_ticks


def device_kind(name: str | None) -> str:
    """'cuda' or 'cpu' for a config's device setting, without checking it: 'auto' (the app's) and the device the
    CLI resolved it to compare equal when a run's pace is looked up."""
    if not name or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available on this machine; use 'cpu'")
    return device


# bfloat16 on the CPU, asked for by a config's `cpu_bf16` (whose default $DFKD_CPU_BF16=1 sets) and used only where the
# CPU computes bf16 natively (AVX512-BF16 or AMX): there oneDNN's bf16 convolutions make a Fashion-MNIST KD step about
# 1.5-1.75x faster and an inversion step 1.2-1.4x (benchmarks/cpu_paths.py --switch precision), but the one
# fashion-best student measured lost 0.39 points [0.08, 0.72] to bf16 KD on the same pool and 0.74 [0.38, 1.11] with
# the pool synthesized in bf16 too (docs/results.md), so float32 stays the CPU default; recipe fashion-5min asks for
# bf16 because its budget needs the speed. Without those instructions bf16 is emulated: slower, not used, and a run
# that asked for it says so (`precision`).
CPU_BF16 = os.environ.get("DFKD_CPU_BF16", "0") == "1"


def cpu_bf16_default() -> bool:
    """The default of a config's `cpu_bf16`: what $DFKD_CPU_BF16 said when dfkd_core was imported."""
    return CPU_BF16


@functools.cache   # asked every KD and inversion step of a run that asks for bf16; the hardware does not change
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX tiles)."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def uses_bf16(device: torch.device, enabled: bool = True, cpu: bool = False) -> bool:
    """Whether `autocast(device, enabled, cpu)` computes in bfloat16: on CUDA whenever `enabled` (a config's amp); on
    the CPU when also `cpu` (a config's cpu_bf16) asks for it and the CPU computes bf16 natively."""
    device = torch.device(device)
    if not enabled:
        return False
    return device.type == "cuda" or (cpu and device.type == "cpu" and cpu_computes_bf16())


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bfloat16 autocast where `uses_bf16` says so (no loss scaling needed), else a no-op. Only the steps bf16 was
    measured on (KD and inversion) pass their config's `cpu_bf16` as `cpu`; teacher training stays float32."""
    if uses_bf16(device, enabled, cpu):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def precision(device: torch.device, enabled: bool = True, cpu: bool = False) -> str:
    """What `autocast(device, enabled, cpu)` computes in, in words (a run's summary keeps it), including a bf16 request
    this CPU could not honour."""
    device = torch.device(device)
    if not uses_bf16(device, enabled, cpu):
        if enabled and cpu and device.type == "cpu":
            return "float32 (bf16 asked for, but this CPU has no native bf16)"
        return "float32"
    where = "" if device.type == "cuda" else " (CPU with native bf16)"
    return f"bfloat16 autocast{where}"


# NHWC on the CPU too: oneDNN's convolutions run faster on it (benchmarks/cpu_paths.py). $DFKD_CPU_CHANNELS_LAST=0
# keeps the CPU in NCHW (the layout every run before this setting used; results agree to float rounding).
CPU_CHANNELS_LAST = os.environ.get("DFKD_CPU_CHANNELS_LAST", "1") != "0"


def channels_last(device: torch.device) -> bool:
    """Whether models and batches on `device` use the NHWC memory layout."""
    return device.type == "cuda" or (device.type == "cpu" and CPU_CHANNELS_LAST)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to device, in NHWC where convolutions run faster in it (`channels_last`)."""
    model = model.to(device)
    # Both ways, so a model another job already prepared in the other layout follows this switch too.
    layout = torch.channels_last if channels_last(torch.device(device)) else torch.contiguous_format
    return model.to(memory_format=layout)


def memory_layout(model: nn.Module) -> str | None:
    """'NHWC' or 'NCHW': how the model's convolution weights sit in memory (None without convolutions). The widest
    convolution tells, since a 1-channel first convolution is both layouts at once."""
    weight = max((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda w: w.shape[1],
                 default=None)
    if weight is None:
        return None
    return "NHWC" if weight.is_contiguous(memory_format=torch.channels_last) else "NCHW"


def prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dim() == 4 and channels_last(torch.device(device)):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def describe_machine(device: torch.device | None = None) -> str:
    """The machine a figure was measured on, in one line: CPU model and vector ISA (float results and speed differ
    between an AVX2 and an AVX-512 CPU: the same teacher seed trains to a different teacher), cores, torch, and the
    GPU when `device` is one."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        import platform
        cpu = platform.processor() or cpu
    where = f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, torch {torch.__version__}"
    if device is not None and torch.device(device).type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}; host {where}"
    return where


def thread_policy() -> str:
    """How this process's CPU threads behave, in words: the torch thread count and OpenMP's wait policy (the
    environment's OMP_WAIT_POLICY, see `dfkd_core/__init__.py`)."""
    from dfkd_core import OMP_WAIT_POLICY_IN_EFFECT as policy
    waiting = (f"OMP_WAIT_POLICY={policy}" if policy else
               "OpenMP's default wait policy (threads spin a while before they sleep)")
    return f"{torch.get_num_threads()} torch threads, {waiting}"


def running_jobs_directory() -> Path:
    """Where the running jobs of this user find each other: $DFKD_RUNNING_DIR, else a folder in the temp dir."""
    return Path(os.environ.get("DFKD_RUNNING_DIR") or Path(tempfile.gettempdir()) / f"dfkd-running-{os.getuid()}")


class CPUShare:
    """The machine's cores shared by the dfkd jobs running on it, in this process or another (issue 18).

    While a job runs it holds a file named by its process (pid and start time) in `running_jobs_directory()`; between
    steps, at most every `refresh_every_s`, it sets the torch threads of its own thread to its share: the threads its
    process had when it started, divided by the jobs running, at least 1. Two Fashion-MNIST syntheses (batch 200, 40
    iterations) on 2 cores took 19 s each side by side with 2 threads each, 13.5 s each with 1 (9.1 s alone with 2).
    $DFKD_CPU_SHARE=0 turns it off (every job keeps its process's threads). torch's thread setting holds for the
    thread that sets it, so jobs in threads of one process (the app) each set their own.
    """

    refresh_every_s = 1.0

    def __init__(self, job_id: str, directory: Path | None = None):
        self.directory = directory or running_jobs_directory()
        pid = os.getpid()
        self.path = self.directory / f"{pid}-{process_start_ticks(pid)}-{job_id}"
        self.enabled = os.environ.get("DFKD_CPU_SHARE", "1") != "0"
        self.budget = torch.get_num_threads()
        self.unavailable: str | None = None   # why the share could not be taken
        self._refreshed_at = float("-inf")
        self.used: set[int] = set()   # torch thread counts the job computed with: its numbers depend on them

    def __enter__(self) -> "CPUShare":
        self.budget = torch.get_num_threads()
        self.used = set() if self.enabled else {self.budget}
        if self.enabled:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.path.touch()
            except OSError as e:   # a read-only temp dir: the job runs with its process's threads, and says so
                self.enabled, self.unavailable = False, f"{type(e).__name__}: {e}"
                self.used = {self.budget}
                return self
            self.refresh(force=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)
            torch.set_num_threads(self.budget)

    def running(self) -> int:
        """Jobs running on this machine now (this one included); files of processes that ended are removed."""
        count = 0
        for entry in self.directory.iterdir():
            pid, _, rest = entry.name.partition("-")
            ticks = rest.partition("-")[0]
            if not pid.isdigit():
                continue
            if process_alive(int(pid), int(ticks) if ticks.isdigit() else None):
                count += 1
            else:
                entry.unlink(missing_ok=True)
        return max(count, 1)

    def threads(self) -> int:
        return max(1, self.budget // self.running())

    def refresh(self, force: bool = False) -> None:
        """Set this thread's torch threads to the job's share (cheap: a clock read between refreshes)."""
        if not self.enabled or (not force and time.monotonic() - self._refreshed_at < self.refresh_every_s):
            return
        self._refreshed_at = time.monotonic()
        share = self.threads()
        if share != torch.get_num_threads():
            torch.set_num_threads(share)
        self.used.add(share)

    def reproducibility_note(self) -> str:
        """'' when the job computed with its process's thread count throughout; else why a seeded rerun run alone
        may differ (float sums depend on the thread count)."""
        if not self.used or self.used == {self.budget}:
            return ""
        counts = sorted(self.used)
        used = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        return (f"computed with {used} of {self.budget} torch threads while other dfkd jobs ran (CPU sharing): float "
                f"sums depend on the thread count, so a seeded rerun with {self.budget} can differ in the last digits; "
                "$DFKD_CPU_SHARE=0 keeps every job at its process's count")

    def describe(self) -> str:
        if not self.enabled:
            why = self.unavailable or "$DFKD_CPU_SHARE=0"
            return f"{self.budget} torch threads, not shared with other jobs ({why})"
        return f"{torch.get_num_threads()} of {self.budget} torch threads ({self.running()} dfkd jobs running)"
