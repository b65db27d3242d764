"""Process-group set-up from torchrun's environment: NCCL on usable CUDA, gloo on CPU otherwise."""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("orch.job")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(local_rank: int, force_cpu: bool = False) -> torch.device:
    """CUDA when it really works; a node that lends GPUs CUDA can't use falls back to CPU, loudly."""
    if force_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible not in (None, "", "-1", "NoDevFiles"):
        log.warning("CUDA_VISIBLE_DEVICES=%s but CUDA is not usable here: running on CPU with gloo", visible)
    return torch.device("cpu")


def init_distributed(force_cpu: bool = False, timeout_s: int = 600) -> DistInfo:
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = choose_device(local_rank, force_cpu)
    backend = None
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s))
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world_size, local_rank, device, backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise max over ranks (one collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def all_gather_objects(obj):
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
