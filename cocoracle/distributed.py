"""Data-parallel training across processes launched by torchrun: one process per GPU, gloo on CPU."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """value summed over all processes (itself when alone)."""
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest value over all processes (itself when alone): `any` for flags."""
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def broadcast(self, obj: T) -> T:
        """The first process's obj (picklable) in every process."""
        if self.world > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0, device=self.device)
            obj = box[0]
        return obj

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


@contextlib.contextmanager
def data_parallel(device: torch.device) -> Iterator[DataParallel]:
    """Join the process group torchrun set up (WORLD_SIZE > 1): nccl on cuda:LOCAL_RANK, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield DataParallel(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    try:
        yield DataParallel(dist.get_rank(), world, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()
