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
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_S = 120


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
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return world


def shutdown(world: Distributed) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def agree_to_stop(world: Distributed, wants_to_stop: bool) -> bool:
    """True on every rank as soon as any rank wants to stop (a Ctrl-C, a cancel, a failure it survived)."""
    if not world.active:
        return wants_to_stop
    flag = torch.tensor([1.0 if wants_to_stop else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def gather_units(world: Distributed, mine: dict[int, Any]) -> dict[int, Any]:
    """Every rank's {unit index: result} on every rank, as one dict (results are CPU tensors or plain data)."""
    if not world.active:
        return dict(mine)
    parts: list[dict[int, Any]] = [{} for _ in range(world.world)]
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
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = ["COLLECTIVE_TIMEOUT_S", "Distributed", "agree_to_stop", "broadcast_object", "environment_world",
           "gather_units", "init_from_environment", "shutdown"]
