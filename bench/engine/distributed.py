"""Small helpers for one run over several processes (torchrun / DDP).

A process is part of a distributed run when torchrun's ``WORLD_SIZE`` > 1 is set
(or a process group was initialised by the caller, as the tests do). Everything
here degrades to a no-op in a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "gather_objects",
    "info",
    "init_from_env",
    "launch_torchrun",
    "shutdown",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    """Rank and world size of the current process group (single process if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        )
    return DistInfo()


def init_from_env(device: str) -> tuple[DistInfo, bool]:
    """Join the process group torchrun describes; returns (info, whether we created it).

    gloo on CPU, nccl on CUDA; each rank takes GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return info(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info(), True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place and return it (CPU tensors work with nccl too)."""
    if info().enabled:
        if dist.get_backend() == "nccl" and t.device.type == "cpu":
            on_gpu = t.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers before each training forward, but each rank then updates
    them from its own batch; evaluation must use one set everywhere.
    """
    if info().enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list in a single process)."""
    d = info()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Re-run ``segbench <argv>`` under ``torch.distributed.run`` with ``nproc`` processes."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bench.cli",
        *argv,
    ]
    return subprocess.call(cmd)
