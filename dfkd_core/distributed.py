"""Scale-out with torch.distributed: the work of one job spread over the processes `torchrun` starts.

`torchrun --nproc_per_node N -m dfkd_core.cli synthesize|distill ...` starts N copies of the command, each with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in its environment; multi-node is the same with
`--nnodes` and a rendezvous endpoint. Each process calls `init_from_environment()`, which joins the process group
(gloo on CPU, NCCL on CUDA) when there is more than one process, and does nothing in a plain single-process run.

The rules every distributed job here follows:
- **Same work whatever N.** Units of work (synthesis batches, pool rounds) are numbered and each has its own seed;
  rank r does the units i with i ≡ r (mod N) (`my_units`), so the images made do not depend on N, only their order,
  which `gather_units` restores.
- **One writer.** Only rank 0 creates and writes the run; the other ranks compute and send.
- **Stop together.** A collective hangs if one rank leaves it early, so before every step all ranks agree whether to go
  on (`agree_to_stop`): a Ctrl-C or a cancel on any rank stops them all at the same step. A rank that dies makes the
  next collective fail within `COLLECTIVE_TIMEOUT_S` (torchrun also stops the others), and the run is marked failed
  with what was finished.
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 120
# How long a finished rank waits at the closing barrier for the others (the leader may still be evaluating and
# writing the run): as long as any collective may take.
SHUTDOWN_BARRIER_S = COLLECTIVE_TIMEOUT_S
_peer_lost = threading.Event()   # set when a collective failed: no closing barrier then, nobody would come


class RankLostError(RuntimeError):
    """A collective failed: another process of the job died, was killed or lost its connection."""


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job: rank r of `world` processes (world 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes the run and prints."""
        return self.rank == 0

    def my_units(self, count: int) -> list[int]:
        """The units of work (0..count-1) this rank does: i ≡ rank (mod world)."""
        return list(range(self.rank, count, self.world))

    def seed(self, seed: int) -> int:
        """This rank's seed for a random stream that must differ between ranks (minibatches, augmentations); rank 0's
        is `seed` itself, so a one-process run draws what it always drew. Kept within 32 bits: torch's CPU generator
        keeps only the low 32 bits of a seed, so `seed + (rank << 32)` would give every rank the same stream."""
        return (seed + self.rank * 0x9E3779B1) % 2**32

    def split_batch(self, batch_size: int) -> int:
        """Each rank's share of a global batch (gradients are averaged over ranks, so the student sees
        `batch_size` images a step whatever the number of processes)."""
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {self.world} processes; choose a "
                             f"multiple of {self.world}")
        return batch_size // self.world

    def device_name(self, requested: str) -> str:
        """The CUDA device of this local rank when running on GPUs, else the requested device."""
        if requested in ("auto", "cuda") and torch.cuda.is_available() and self.active:
            return f"cuda:{self.local_rank}"
        return requested


def environment_world() -> Distributed:
    """The rank and world size torchrun put in the environment (a plain run: rank 0 of 1)."""
    return Distributed(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))


def init_from_environment(device: str = "auto") -> Distributed:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on CUDA); a single process joins nothing."""
    world = environment_world()
    if world.active and not dist.is_initialized():
        use_cuda = device not in ("cpu",) and torch.cuda.is_available()
        if use_cuda:
            gpus = torch.cuda.device_count()
            if world.local_rank >= gpus:   # NCCL refuses two processes on one GPU: say so before it hangs
                raise SystemExit(f"error: process {world.local_rank} of this machine has no GPU of its own "
                                 f"({gpus} visible); NCCL needs one GPU per process: use --nproc_per_node {gpus}, "
                                 "or --device cpu (gloo)")
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return world


def shutdown(world: Distributed, synchronize: bool = True) -> None:
    """Leave the process group. With `synchronize` (a job that ran), every rank first waits at a barrier for the
    others: a rank that tore its group down while a peer was still finishing the last collective was seen to die
    with SIGABRT ("terminate called without an active exception") after its run was written. No barrier after a
    collective failed (the peer is gone) or when the job never started (`synchronize=False`: a refused setting
    exits at once, and torchrun stops the others)."""
    if not (world.active and dist.is_initialized()):
        return
    if synchronize and not _peer_lost.is_set():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=SHUTDOWN_BARRIER_S))
            else:
                dist.barrier(device_ids=[torch.cuda.current_device()])
        except (RuntimeError, dist.DistError):
            pass   # a peer left first: there is nothing left to wait for
    dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def lost_rank_is_explained(world: Distributed) -> Iterator[None]:
    """A collective that fails because a peer is gone raises `RankLostError` with one sentence, not gloo's trace."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        _peer_lost.set()
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RankLostError(f"another process of this {world.world}-process job stopped or lost its connection "
                            f"(rank {world.rank} saw: {detail}); the finished part of the run was kept") from e


def agree_to_stop(world: Distributed, wants_to_stop: bool) -> bool:
    """True on every rank as soon as any rank wants to stop (a Ctrl-C, a cancel, a failure it survived)."""
    if not world.active:
        return wants_to_stop
    with lost_rank_is_explained(world):
        flag = torch.tensor([1.0 if wants_to_stop else 0.0], device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def gather_units(world: Distributed, mine: dict[int, Any]) -> dict[int, Any]:
    """Every rank's {unit index: result} on every rank, as one dict (results are CPU tensors or plain data)."""
    if not world.active:
        return dict(mine)
    parts: list[dict[int, Any]] = [{} for _ in range(world.world)]
    with lost_rank_is_explained(world):
        dist.all_gather_object(parts, dict(mine))
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def broadcast_object(world: Distributed, value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. the run id the leader created)."""
    if not world.active:
        return value
    box = [value if world.leader else None]
    with lost_rank_is_explained(world):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def data_parallel(module: torch.nn.Module, world: Distributed) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel when the job runs in several processes (its backward averages the
    gradients over ranks), else `module` itself. The replicas start from rank 0's parameters and buffers."""
    if not world.active:
        return module
    from torch.nn.parallel import DistributedDataParallel
    device = next(module.parameters()).device
    # Gradients as views of DDP's buckets: no copy into them, and a 1-channel conv's weight (whose strides are
    # ambiguous) does not warn about a layout mismatch every step.
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


def stop_signals(world: Distributed) -> tuple[signal.Signals, ...]:
    """The signals that ask a CLI job to stop after its step: Ctrl-C, and in a multi-process job also SIGTERM (what
    torchrun sends every rank on a Ctrl-C of the launcher or when one rank dies), so no rank is killed
    mid-collective and the leader saves what was finished."""
    return (signal.SIGINT, signal.SIGTERM) if world.active else (signal.SIGINT,)


@contextmanager
def signals_request_cancel(job, signals: tuple[signal.Signals, ...] = (signal.SIGINT,), message: str = ""
                           ) -> Iterator[None]:
    """While the block runs, the first of `signals` cancels `job` (it stops before its next step, on every rank of
    a multi-process job) and prints `message`; a second one interrupts at once (KeyboardInterrupt). Off the main
    thread (a server, a test runner's worker) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_cancel(signum, frame):
        if job.cancel_requested:
            raise KeyboardInterrupt
        if message:
            print(message, file=sys.stderr)
        job.cancel()

    previous = {s: signal.signal(s, request_cancel) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["COLLECTIVE_TIMEOUT_S", "Distributed", "RankLostError", "agree_to_stop", "broadcast_object",
           "data_parallel", "environment_world", "gather_units", "init_from_environment", "lost_rank_is_explained",
           "shutdown", "signals_request_cancel", "stop_signals"]
