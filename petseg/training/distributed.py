"""Multi-process training with DistributedDataParallel (`torchrun --nproc_per_node N`).

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single
process and every helper here is a no-op. The backend is NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def process_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """This process's device: `requested` (None: "auto"), CUDA pinned to `local_rank`."""
    from petseg.device import resolve_device

    device = resolve_device(requested or "auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(requested_device: str | None = None) -> DistributedContext:
    """Join the process group when started by `torchrun`; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = process_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              device=device)


def shutdown(context: DistributedContext, together: bool = False) -> None:
    """Leave the process group (if any).

    Everything still holding the group (a finished DDP wrapper, pending work) is
    collected first, so the group is torn down here and not by the interpreter's exit
    (gloo aborts a process whose worker threads outlive it). With `together` (a run
    that ended normally on every process) all processes first pass a barrier, so that
    none closes its connections while another still talks to it; after an error there
    is no barrier, which the failed process could otherwise hang in.
    """
    if not (context.distributed and dist.is_initialized()):
        return
    gc.collect()
    try:
        if together:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap_model(network: torch.nn.Module, context: DistributedContext,
               sync_batchnorm: bool = False) -> torch.nn.Module:
    """`network` wrapped in DDP when distributed (optionally with synchronised BatchNorm)."""
    if not context.distributed:
        return network
    if sync_batchnorm:
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DDP wrapper."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) \
        else network


def barrier(context: DistributedContext) -> None:
    """Wait for all processes."""
    if context.distributed:
        dist.barrier()


def mean_over_processes(value: float, context: DistributedContext) -> float:
    """The mean of a per-process scalar over all processes."""
    if not context.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(context))
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather_objects(items: list[Any], context: DistributedContext) -> list[Any]:
    """All processes' lists concatenated (rank order), on every process."""
    if not context.distributed:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(context.world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Rank 0's `value` on every process."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device(context: DistributedContext) -> torch.device:
    return context.device if context.device.type == "cuda" else torch.device("cpu")
