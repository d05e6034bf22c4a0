"""Distributed setup in one place: torchrun's environment -> process group, device, rank.

``torchrun --nproc_per_node N -m training ...`` (and multi-node rendezvous) set RANK,
WORLD_SIZE and LOCAL_RANK; a plain ``python -m training`` is a world of one. The backend is
NCCL on GPUs and gloo on CPU.
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipelines.provenance import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_shared_dir(path: str, info: DistInfo) -> None:
    """Refuse a run dir that the ranks do not share (a node-local path on several nodes): rank 0
    writes a token file there and every rank must see it. Checkpoints and resume rely on one
    shared run dir (rank 0 writes, every rank reads on --resume)."""
    from pipelines import io as pio

    if not info.distributed or not pio.is_local(path):
        return
    token = os.path.join(path, f".shared-check-{broadcast_object(uuid.uuid4().hex if info.is_main else None, info)}")
    if info.is_main:
        os.makedirs(path, exist_ok=True)
        with open(token, "w") as f:
            f.write(socket.gethostname())
    barrier(info)
    seen: list = [None] * info.world_size
    dist.all_gather_object(seen, (os.path.exists(token), socket.gethostname(), info.rank))
    barrier(info)
    if info.is_main:
        os.unlink(token)
    missing = [f"rank {r} on {host}" for ok, host, r in seen if not ok]
    if missing:
        raise ValueError(f"--run-dir {path} is not shared between nodes: {', '.join(missing)} cannot see rank 0's files there; "
                         f"give every node the same shared path (network filesystem)")


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
