"""DistributedDataParallel helpers: one process per GPU (or CPU process with gloo) under
``torchrun``. Rank 0 writes all files; every rank computes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_rows(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a (n_i, ...) tensor from every rank (n_i may differ) on every rank."""
    if not info.enabled:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    buf = [torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(info.world_size)]
    dist.all_gather(buf, torch.cat([x, pad]))
    return torch.cat([b[: int(s.item())] for b, s in zip(buf, sizes)])


def broadcast_flag(value: bool, info: DistInfo) -> bool:
    """Rank 0's boolean decision on every rank (e.g. early stop)."""
    if not info.enabled:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if value else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
