"""Memory: what one window's forward costs per voxel (measured) and how much the engine
may plan for (free device memory, available RAM or a configured budget)."""

from __future__ import annotations

import os
import weakref
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode

from petseg.inference.plan import round_up

COST_SAFETY = {"cuda": 1.25, "cpu": 1.5}
"""Measured activation bytes per voxel are multiplied by this when planning: the CUDA caching
allocator fragments and cuDNN's workspace grows with the input; on the CPU, oneDNN keeps
reordered copies that the per-tensor count does not see (peak RSS was 1.2-1.9x the count)."""

DEVICE_MEMORY_FRACTION = 0.9
"""Share of the free device memory the planner may use when no budget is given."""

HOST_MEMORY_FRACTION = 0.5
"""Share of the available RAM the planner may use on the CPU when no budget is given."""


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a torch function's result: a tensor, or nested tuples / lists of them."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, tuple | list):
            stack.extend(item)
    return found


class _LiveTensorBytes:
    """Counts the bytes of tensor storages alive during a forward; keeps the peak.

    A `TorchFunctionMode` (public, unlike the dispatch-level mode) sees the result of every
    torch function and tensor method the forward calls; each new storage is counted until
    its last tensor dies (a finalizer on the storage, whose Python object lives as long as
    the storage), so views and in-place results are not counted twice.
    """

    def __init__(self) -> None:
        counter = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                for tensor in _tensors(out):
                    counter.add(tensor)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def autocast(device: torch.device, precision: str) -> Any:
    """fp16 autocast on CUDA when `precision` is "fp16", bf16 autocast on any device when
    it is "bf16", else a disabled autocast."""
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _probe_peak_bytes(
    network: Any,
    size: int,
    in_channels: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> int:
    """Peak bytes allocated by one forward of a `[1, C, size, size, size]` zero window."""
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.zeros(1, in_channels, size, size, size, device=device)
            x = x.contiguous(memory_format=memory_format)
            with autocast(device, precision):
                out = network(x)
            del x, out
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base)
        counter = _LiveTensorBytes()
        with counter.mode:
            x = torch.zeros(1, in_channels, size, size, size, device=device)
            x = x.contiguous(memory_format=memory_format)
            out = network(x)
            del x, out
        return counter.peak


_COST_CACHE: dict[tuple[Any, ...], float] = {}


def activation_bytes_per_voxel(
    network: Any,
    in_channels: int,
    device: torch.device | str,
    precision: Literal["fp32", "fp16", "bf16"] = "fp32",
    channels_last: bool = True,
    size_divisor: int = 16,
) -> float:
    """Measured peak memory of one forward per window voxel (bytes), before safety factors.

    Two small zero windows are run and the slope of peak memory against voxel count is taken,
    so fixed costs (weights, cuDNN handles) drop out. On CUDA the caching allocator's peak is
    read; on the CPU the bytes of live tensors are counted during the forward. Networks of
    the same class and parameter shapes share one measurement.
    """
    device = torch.device(device)
    key: tuple[Any, ...] | None = None
    if isinstance(network, torch.nn.Module):
        shapes = tuple(tuple(p.shape) for p in network.parameters())
        key = (type(network).__name__, shapes, device.type, precision, channels_last, in_channels)
        if key in _COST_CACHE:
            return _COST_CACHE[key]
    small = round_up(32 if device.type == "cpu" else 64, size_divisor)
    large = round_up(small + max(16, small // 2), size_divisor)
    peak_small = _probe_peak_bytes(network, small, in_channels, device, precision, channels_last)
    peak_large = _probe_peak_bytes(network, large, in_channels, device, precision, channels_last)
    cost = max(peak_large - peak_small, 0) / (large**3 - small**3)
    cost = max(cost, peak_large / large**3 * 0.5, 1.0)
    if key is not None:
        _COST_CACHE[key] = cost
    return cost


def planning_cost(network: Any, in_channels: int, device: torch.device,
                  precision: Literal["fp32", "fp16", "bf16"], channels_last: bool,
                  size_divisor: int) -> float:
    """Activation bytes per window voxel the planner assumes: measured, times `COST_SAFETY`."""
    measured = activation_bytes_per_voxel(network, in_channels, device, precision,
                                          channels_last, size_divisor)
    return measured * COST_SAFETY["cuda" if device.type == "cuda" else "cpu"]


def available_memory_bytes(device: torch.device | str) -> int:
    """Memory the engine may still allocate: free device memory (plus what PyTorch has cached
    but not handed out) on CUDA, `MemAvailable` from /proc/meminfo on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_budget(budget_gb: float | None, device: torch.device) -> float:
    """Bytes the planner may use: `budget_gb` when set, else `DEVICE_MEMORY_FRACTION` of the
    free CUDA memory or `HOST_MEMORY_FRACTION` of the available RAM."""
    if budget_gb is not None:
        return budget_gb * 1e9
    if device.type == "cuda":
        return available_memory_bytes(device) * DEVICE_MEMORY_FRACTION
    return available_memory_bytes(device) * HOST_MEMORY_FRACTION
