"""Ensemble sliding-window engine: every fold on each batch of windows, one accumulation buffer.

The engine turns a preprocessed image `[C, D, H, W]` into the ensemble's lesion probability
`[D, H, W]` (softmax channel 1, float32, on the CPU). Compared with running MONAI's
`sliding_window_inference` once per fold and averaging, it

- runs every fold on each batch of windows, so a window is read and sent to the device once;
- blends only the lesion probability (one channel) into a single float32 accumulation buffer
  that lives on the device when it fits, and on the CPU otherwise;
- uses fp16 autocast and `channels_last_3d` on CUDA (and `channels_last_3d` on the CPU,
  where oneDNN runs 3D convolutions faster in that layout);
- skips windows that hold no voxel of an optional body mask;
- in `fast` mode uses windows as large as the memory allows, up to the whole volume in one
  forward (the network is fully convolutional), which removes the repeated work of the
  reference mode's 50 % overlap;
- plans window size and windows per batch from the free memory and a measured activation
  cost per voxel, and on an out-of-memory error halves the batch, then the window, then moves
  stitching to the CPU before giving up;
- optionally averages flipped passes (test-time augmentation), as many as a time budget allows.

`reference` mode is the paper's: 192^3 windows, overlap 0.5, Gaussian blending, with
MONAI's window positions and importance map, so its result equals the stock per-fold
`sliding_window_inference` average up to float rounding.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from petseg.config import InferenceConfig, PreprocessingConfig
from petseg.errors import PetsegError
from petseg.progress import window_progress

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""A network or any callable: `[B, C, d, h, w]` -> logits `[B, K, d, h, w]` (K = 2, or 1 for a
sigmoid output)."""

Mode = Literal["reference", "fast"]
Stitch = Literal["auto", "device", "cpu"]
Blend = Literal["gaussian", "constant"]

FLIP_AXES: tuple[tuple[int, ...], ...] = (
    (),
    (2,),
    (1,),
    (0,),
    (1, 2),
    (0, 2),
    (0, 1),
    (0, 1, 2),
)
"""Spatial axes of `[D, H, W]` flipped by each test-time-augmentation pass, in the order the
passes run: none, left-right (W), then H, D, the pairs and all three."""

MAX_AUTO_BATCH = 8
"""`windows_per_batch="auto"` never exceeds this: beyond it a GPU gains nothing."""

COST_SAFETY = {"cuda": 1.25, "cpu": 1.5}
"""Measured activation bytes per voxel are multiplied by this when planning: the CUDA caching
allocator fragments and cuDNN's workspace grows with the input; on the CPU, oneDNN keeps
reordered copies that the per-tensor count does not see (peak RSS was 1.2-1.9x the count)."""

DEVICE_MEMORY_FRACTION = 0.9
"""Share of the free device memory the planner may use when no budget is given."""

HOST_MEMORY_FRACTION = 0.5
"""Share of the available RAM the planner may use on the CPU when no budget is given."""


# --------------------------------------------------------------------------------------------
# Window geometry
# --------------------------------------------------------------------------------------------


def reference_scan_interval(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> tuple[int, ...]:
    """Window step per axis, exactly as MONAI's `sliding_window_inference` computes it."""
    interval = []
    for size, roi in zip(image_size, roi_size, strict=True):
        if roi == size:
            interval.append(int(roi))
        else:
            interval.append(max(int(roi * (1 - overlap)), 1))
    return tuple(interval)


def reference_window_starts(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[tuple[int, int, int]]:
    """Window corners (voxels) of MONAI's sliding window over an image at least `roi_size` big."""
    from monai.data.utils import dense_patch_slices

    interval = reference_scan_interval(image_size, roi_size, overlap)
    slices = dense_patch_slices(image_size, roi_size, interval)
    return [tuple(int(s.start) for s in window) for window in slices]  # type: ignore[misc]


def tile_starts(length: int, window: int, count: int) -> list[int]:
    """`count` window starts spread evenly so that `count` windows of `window` cover `length`."""
    if count <= 1 or window >= length:
        return [0]
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def fast_window(
    padded_shape: Sequence[int],
    max_window_voxels: float,
    size_divisor: int,
    min_overlap: int,
    min_window: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The largest windows (fewest tiles) that fit `max_window_voxels`.

    Starts with the whole padded volume as one window; while that is too big, adds a tile on
    the axis whose window is longest. Tiles of one axis overlap by at least `min_overlap`
    voxels (at most half the smallest `min_window`); window sizes stay multiples of
    `size_divisor` and never go below `min_window` (clipped to the volume), whatever the
    budget says.

    Returns:
        (window size `(d, h, w)`, tiles per axis).
    """
    counts = [1, 1, 1]
    floor = [
        min(_round_up(m, size_divisor), p)
        for m, p in zip(min_window, padded_shape, strict=True)
    ]
    min_overlap = min(min_overlap, min(floor) // 2)

    def window_for(c: list[int]) -> list[int]:
        sizes = []
        for length, n, low in zip(padded_shape, c, floor, strict=True):
            size = _round_up(math.ceil((length + (n - 1) * min_overlap) / n), size_divisor)
            sizes.append(min(max(size, low), length))
        return sizes

    window = window_for(counts)
    while math.prod(window) > max_window_voxels:
        shrinkable = [a for a in range(3) if window[a] > floor[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: window[a])
        counts[axis] += 1
        window = window_for(counts)
        if counts[axis] > padded_shape[axis]:
            break
    # rounding up to the divisor may have made the last added tile needless
    counts = [_tiles_needed(p, w, min_overlap) for p, w in zip(padded_shape, window, strict=True)]
    return tuple(window), tuple(counts)  # type: ignore[return-value]


def _tiles_needed(length: int, window: int, min_overlap: int) -> int:
    """Fewest windows of `window` voxels, overlapping by >= `min_overlap`, covering `length`."""
    if window >= length:
        return 1
    step = window - min_overlap
    if step <= 0:
        return math.ceil(length / window) + 1
    return max(1, math.ceil((length - min_overlap) / step))


def edge_ramp_map(window: Sequence[int], ramp: int) -> torch.Tensor:
    """Blending weights `[d, h, w]`: 1 inside, falling linearly over `ramp` voxels at each face.

    Used for the few large windows of `fast` mode: where two windows overlap by `ramp` voxels
    their weights cross-fade, so each voxel is mostly taken from the window in which it lies
    farther from a border. (A Gaussian of a 300-voxel window is already at its floor across
    the whole overlap and would mix both windows equally.)
    """
    profiles = []
    for size in window:
        i = torch.arange(size, dtype=torch.float32)
        edge = torch.minimum(i, size - 1 - i)
        profiles.append(((edge + 1) / (ramp + 1)).clamp(1e-3, 1.0))
    return profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class _LiveTensorBytes:
    """Counts the bytes of tensor storages alive during a forward; keeps the peak.

    A `TorchDispatchMode` sees every operator's outputs; each new storage is counted until
    its last tensor dies (a finalizer on the storage), so views and in-place results are not
    counted twice.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(out):
                    if isinstance(leaf, torch.Tensor):
                        counter.add(leaf)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
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


def _autocast(device: torch.device, precision: str) -> Any:
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def _probe_peak_bytes(
    network: Predictor,
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
            with _autocast(device, precision):
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
    network: Predictor,
    in_channels: int,
    device: torch.device | str,
    precision: Literal["fp32", "fp16"] = "fp32",
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
    small = _round_up(32 if device.type == "cpu" else 64, size_divisor)
    large = _round_up(small + max(16, small // 2), size_divisor)
    peak_small = _probe_peak_bytes(network, small, in_channels, device, precision, channels_last)
    peak_large = _probe_peak_bytes(network, large, in_channels, device, precision, channels_last)
    cost = max(peak_large - peak_small, 0) / (large**3 - small**3)
    cost = max(cost, peak_large / large**3 * 0.5, 1.0)
    if key is not None:
        _COST_CACHE[key] = cost
    return cost


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


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one image is cut into windows and where the pieces live.

    Attributes:
        shape: input spatial shape `(D, H, W)`, voxels.
        pad: `(before, after)` zero padding per axis.
        window: window size `(d, h, w)`, voxels.
        starts: corners of the windows that run, in padded coordinates.
        skipped: windows left out because they hold no body voxel.
        windows_per_batch: windows stacked into one forward.
        stitch: where the accumulation buffers live ("device" or "cpu").
        blend: "gaussian" or "constant" (MONAI's maps), or "ramp" (`edge_ramp_map`).
        ramp: ramp width in voxels for "ramp" blending.
        precision: "fp16" (autocast) or "fp32".
        buffer_bytes: device memory of the padded input and accumulation buffers (0 when
            they live on the CPU while the networks run on CUDA).
        window_bytes: estimated memory of one window's forward.
        estimated_bytes: memory the plan expects to use on the device (buffers + batch).
    """

    shape: tuple[int, int, int]
    pad: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    window: tuple[int, int, int]
    starts: tuple[tuple[int, int, int], ...]
    skipped: int
    windows_per_batch: int
    stitch: Literal["device", "cpu"]
    blend: Literal["gaussian", "constant", "ramp"]
    ramp: int
    precision: Literal["fp32", "fp16"]
    buffer_bytes: int
    window_bytes: int
    estimated_bytes: int

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """Spatial shape after padding."""
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pad, strict=True))  # type: ignore[return-value]

    @property
    def single_window(self) -> bool:
        """True when one window covers the whole padded volume."""
        return len(self.starts) == 1 and self.window == self.padded_shape

    def describe(self) -> str:
        """One line for logs and benchmark output."""
        return (
            f"{len(self.starts)} window(s) of {'x'.join(map(str, self.window))}"
            f" ({self.skipped} skipped), {self.windows_per_batch}/batch, {self.precision},"
            f" {self.blend} blend, stitch on {self.stitch}, ~{self.estimated_bytes / 2**30:.2f} GiB"
        )


def _symmetric_pad(shape: Sequence[int], target: Sequence[int]) -> tuple[tuple[int, int], ...]:
    pads = []
    for size, want in zip(shape, target, strict=True):
        diff = max(want - size, 0)
        pads.append((diff // 2, diff - diff // 2))
    return tuple(pads)


def _buffer_bytes(voxels: int, in_channels: int, in_bytes: int, weighted: bool) -> int:
    # padded input + float32 accumulator (+ float32 weight sum when windows overlap)
    return voxels * (in_channels * in_bytes + 4 + (4 if weighted else 0))


def _window_bytes(voxels: int, in_channels: int, out_channels: int, cost: float) -> int:
    # activations + the window's input copy, float logits and probabilities
    return int(voxels * (cost + in_channels * 4 + out_channels * 4 + 8))


def make_plan(
    shape: Sequence[int],
    *,
    mode: Mode,
    roi_size: Sequence[int],
    overlap: float,
    blend: Blend,
    windows_per_batch: int | Literal["auto"],
    precision: Literal["fp32", "fp16"],
    stitch: Stitch,
    budget_bytes: float,
    bytes_per_voxel: float,
    in_channels: int,
    out_channels: int = 2,
    size_divisor: int = 1,
    fast_overlap: int = 32,
    body_mask: np.ndarray | torch.Tensor | None = None,
    device_type: str = "cuda",
) -> Plan:
    """Choose windows, batch size and buffer placement for a `[C, *shape]` image.

    Args:
        shape: spatial shape `(D, H, W)` in voxels.
        mode: "reference" (`roi_size` windows at `overlap`, MONAI's positions) or "fast"
            (windows as large as `budget_bytes` allows, overlapping by `fast_overlap` voxels).
        budget_bytes: device memory the plan may use.
        bytes_per_voxel: activation cost of one forward per window voxel, safety included.
        body_mask: optional `[D, H, W]` mask; windows holding none of it are skipped.
        device_type: "cuda" or "cpu"; buffers on a CPU device always count as "cpu".

    Returns:
        The `Plan`; its `estimated_bytes` may exceed the budget only when even the smallest
        allowed window does not fit (the engine's out-of-memory fallback takes over then).
    """
    shape = tuple(int(s) for s in shape)
    in_bytes = 2 if precision == "fp16" else 4
    if mode == "reference":
        target = [max(s, r) for s, r in zip(shape, roi_size, strict=True)]
    else:
        target = [_round_up(s, size_divisor) for s in shape]
    pad = _symmetric_pad(shape, target)
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pad, strict=True))
    voxels = math.prod(padded)

    if stitch == "auto":
        weighted_guess = True
        on_device = _buffer_bytes(voxels, in_channels, in_bytes, weighted_guess) <= budget_bytes / 2
        stitch_at: Literal["device", "cpu"] = "device" if on_device else "cpu"
    else:
        stitch_at = stitch  # type: ignore[assignment]
    if device_type != "cuda":
        stitch_at = "cpu"

    def buffers(weighted: bool) -> int:
        if stitch_at == "cpu" and device_type == "cuda":
            return 0
        return _buffer_bytes(voxels, in_channels, in_bytes, weighted)

    if mode == "reference":
        window = tuple(int(r) for r in roi_size)
        starts = reference_window_starts(padded, window, overlap)
        blend_used: Literal["gaussian", "constant", "ramp"] = blend
        ramp = 0
    else:
        per_voxel = bytes_per_voxel + in_channels * 4 + out_channels * 4 + 8
        free_for_window = budget_bytes - buffers(False)
        if free_for_window < voxels * per_voxel:
            free_for_window = budget_bytes - buffers(True)
        floor = [min(r, p) for r, p in zip(roi_size, padded, strict=True)]
        window, counts = fast_window(
            padded, max(free_for_window, 0) / per_voxel, size_divisor, fast_overlap, floor
        )
        axis_starts = [tile_starts(p, w, n) for p, w, n in zip(padded, window, counts, strict=True)]
        starts = [
            (a, b, c) for a in axis_starts[0] for b in axis_starts[1] for c in axis_starts[2]
        ]
        blend_used = "ramp"
        ramp = min(fast_overlap, min(window) // 2)

    total = len(starts)
    if body_mask is not None:
        starts, skipped = _drop_empty_windows(starts, window, body_mask, shape, pad)
    else:
        skipped = 0

    weighted = not (len(starts) == 1 and tuple(window) == padded)
    fixed = buffers(weighted)
    one_window = _window_bytes(math.prod(window), in_channels, out_channels, bytes_per_voxel)
    if windows_per_batch == "auto":
        if device_type == "cuda":
            fit = int(max(budget_bytes - fixed, 0) // max(one_window, 1))
            batch = max(1, min(MAX_AUTO_BATCH, fit, max(len(starts), 1)))
        else:
            batch = 1  # on the CPU a larger batch buys no speed, only memory
    else:
        batch = max(1, min(int(windows_per_batch), max(len(starts), 1)))
    log.debug("plan: %d of %d windows kept", len(starts), total)
    return Plan(
        shape=shape,  # type: ignore[arg-type]
        pad=pad,  # type: ignore[arg-type]
        window=tuple(window),  # type: ignore[arg-type]
        starts=tuple(starts),  # type: ignore[arg-type]
        skipped=skipped,
        windows_per_batch=batch,
        stitch=stitch_at,
        blend=blend_used,
        ramp=ramp,
        precision=precision,
        buffer_bytes=int(fixed),
        window_bytes=int(one_window),
        estimated_bytes=int(fixed + batch * one_window),
    )


def _drop_empty_windows(
    starts: Sequence[tuple[int, int, int]],
    window: Sequence[int],
    body_mask: np.ndarray | torch.Tensor,
    shape: Sequence[int],
    pad: Sequence[tuple[int, int]],
) -> tuple[list[tuple[int, int, int]], int]:
    mask = body_mask.cpu().numpy() if isinstance(body_mask, torch.Tensor) else body_mask
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"body mask shape {mask.shape} != image shape {tuple(shape)}")
    kept = []
    for start in starts:
        # the window's part inside the image (padding holds no body)
        box = tuple(
            slice(max(s - p[0], 0), max(min(s - p[0] + w, n), 0))
            for s, p, w, n in zip(start, pad, window, shape, strict=True)
        )
        if mask[box].any():  # no extra memory: one read of each window
            kept.append(start)
    return kept, len(starts) - len(kept)


# --------------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineResult:
    """What `run_ensemble` returns.

    Attributes:
        probability: ensemble lesion probability `[D, H, W]`, float32, CPU.
        plan: the plan that finally ran (after any out-of-memory fallback).
        passes: forward passes averaged (1 + test-time flips).
        seconds: wall time of the whole call.
        pass_seconds: wall time of the first pass.
        peak_device_bytes: CUDA peak allocated during the call, None on the CPU.
        fallbacks: out-of-memory fallbacks taken, in order.
    """

    probability: torch.Tensor
    plan: Plan
    passes: int
    seconds: float
    pass_seconds: float
    peak_device_bytes: int | None
    fallbacks: tuple[str, ...]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # oneDNN / the CPU allocator report exhaustion as a plain RuntimeError
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate" in str(exc)


def _lesion_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax channel 1 of `[B, K, ...]` logits as float32 `[B, ...]` (sigmoid if K = 1)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0].float())
    if logits.shape[1] == 2:
        # softmax over two channels is sigmoid(l1 - l0): one float32 temporary, not three
        return torch.sigmoid_(logits[:, 1].float() - logits[:, 0].float())
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _window_probability(
    networks: Sequence[Predictor],
    weights: Sequence[float],
    x: torch.Tensor,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """Weighted ensemble lesion probability `[B, d, h, w]` (float32) of a window batch."""
    total: torch.Tensor | None = None
    with _autocast(device, precision):
        for network, weight in zip(networks, weights, strict=True):
            probability = _lesion_probability(network(x))
            if total is None:
                total = probability.mul_(weight)
            else:
                total.add_(probability, alpha=weight)
    assert total is not None
    return total


def _importance_map(plan: Plan, device: torch.device) -> torch.Tensor | None:
    if plan.single_window:
        return None
    if plan.blend == "ramp":
        return edge_ramp_map(plan.window, plan.ramp).to(device)
    from monai.data.utils import compute_importance_map

    return compute_importance_map(plan.window, mode=plan.blend, sigma_scale=0.125, device=device)


def _run_plan(
    networks: Sequence[Predictor],
    weights: Sequence[float],
    image: torch.Tensor,
    plan: Plan,
    device: torch.device,
    channels_last: bool,
    flips: Sequence[tuple[int, ...]],
    time_budget_s: float | None,
    started: float,
) -> tuple[torch.Tensor, int, float]:
    """Run every pass of `plan`; returns (probability `[D, H, W]` as a view of the
    accumulator on the store device, passes, seconds of the first pass)."""
    store = device if plan.stitch == "device" else torch.device("cpu")
    in_dtype = torch.float16 if (plan.precision == "fp16" and store.type == "cuda") else None
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    inside = tuple(slice(a, a + s) for s, (a, _b) in zip(plan.shape, plan.pad, strict=True))
    dtype = in_dtype or torch.float32
    if any(a or b for a, b in plan.pad):
        # zeros, then the image copied (and cast) into the middle: one volume on the store
        padded = torch.zeros((image.shape[0], *plan.padded_shape), dtype=dtype, device=store)
        padded[(slice(None), *inside)].copy_(image)
    else:
        padded = image.to(store, dtype=dtype)

    importance = _importance_map(plan, device)
    importance_store = importance.to(store) if importance is not None else None
    accumulator = torch.zeros(plan.padded_shape, dtype=torch.float32, device=store)
    weight_sum: torch.Tensor | None = None
    if importance_store is not None:
        weight_sum = torch.zeros_like(accumulator)
        for start in plan.starts:
            weight_sum[_window_slices(start, plan.window)] += importance_store

    passes = 0
    first_pass = 0.0
    pass_start = time.perf_counter()
    for flip in flips:
        spatial = [a + 2 for a in flip]
        for first in range(0, len(plan.starts), plan.windows_per_batch):
            batch_starts = plan.starts[first : first + plan.windows_per_batch]
            x = torch.stack([padded[(slice(None), *_window_slices(s, plan.window))]
                             for s in batch_starts])
            x = x.to(device, non_blocking=True)
            if spatial:
                x = x.flip(spatial)
            x = x.contiguous(memory_format=memory_format)
            probability = _window_probability(networks, weights, x, device, plan.precision)
            del x
            if spatial:
                probability = probability.flip([a + 1 for a in flip])
            if importance is not None:
                probability.mul_(importance)
            probability = probability.to(store)
            for index, start in enumerate(batch_starts):
                accumulator[_window_slices(start, plan.window)] += probability[index]
            del probability
            if (report := window_progress.get()) is not None:
                report(passes * len(plan.starts) + first + len(batch_starts),
                       len(flips) * len(plan.starts))
        passes += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if passes == 1:
            first_pass = now - pass_start
        if time_budget_s is not None and passes < len(flips):
            remaining = time_budget_s - (now - started)
            if remaining < first_pass:
                break
    del padded

    if weight_sum is not None:
        accumulator.div_(weight_sum.mul_(passes).clamp_(min=torch.finfo(torch.float32).tiny))
        del weight_sum
    elif passes > 1:
        accumulator.div_(passes)
    return accumulator[inside], passes, first_pass


def _window_slices(start: Sequence[int], window: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))


def _prepare(networks: Sequence[Predictor], device: torch.device, channels_last: bool) -> None:
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for network in networks:
        if isinstance(network, torch.nn.Module):
            network.eval()
            network.to(device=device, memory_format=memory_format)  # type: ignore[call-arg]


def _infer_size_divisor(networks: Sequence[Predictor]) -> int:
    divisor = 1
    for network in networks:
        strides = getattr(network, "strides", None)
        if strides:
            product = math.prod(int(np.max(s)) for s in strides)
            divisor = max(divisor, product)
    return divisor


def run_ensemble(
    networks: Sequence[Predictor],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig | None = None,
    *,
    weights: Sequence[float] | None = None,
    body_mask: np.ndarray | torch.Tensor | None = None,
    device: torch.device | str = "auto",
    size_divisor: int | None = None,
    channels_last: bool = True,
    bytes_per_voxel: float | None = None,
) -> EngineResult:
    """Ensemble lesion probability of one preprocessed image.

    Args:
        networks: fold networks (moved to `device`, set to eval mode and `channels_last_3d`
            in place) or plain callables; each maps `[B, C, d, h, w]` to logits
            `[B, K, d, h, w]`; the lesion probability is softmax channel 1 (sigmoid if K = 1).
        image: `[C, D, H, W]` float (PET in SUV, CT scaled to [0, 1], ...), any device.
        config: window, ensemble, precision, memory and test-time-augmentation settings
            (`InferenceConfig`, default: the paper's reference mode).
        weights: per-network ensemble weights (normalised to sum 1); None for the plain mean.
        body_mask: optional `[D, H, W]` bool mask; windows without a body voxel are skipped
            and voxels that no kept window covers get probability 0.
        device: where the networks run: "auto" (CUDA if available), "cpu", "cuda".
        size_divisor: spatial sizes the networks accept are multiples of this; default from
            the networks' `strides` (MONAI UNet), else 1.
        channels_last: run in `channels_last_3d` layout (faster on CUDA and with oneDNN).
        bytes_per_voxel: activation cost per window voxel; default measured on the networks.

    Returns:
        `EngineResult` with the probability `[D, H, W]` (float32, CPU) and run statistics.

    Raises:
        PetsegError: bad ensemble weights or settings, or out of memory even with one
            smallest window and the buffers on the CPU.
    """
    from petseg.inference import normalized_weights, resolve_device

    started = time.perf_counter()
    config = config or InferenceConfig()
    image = torch.as_tensor(image)
    if image.ndim != 4:
        raise ValueError(f"image must be [C, D, H, W], got shape {tuple(image.shape)}")
    weights_used = normalized_weights(len(networks), weights)
    batch_setting = check_settings(config)
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision: Literal["fp32", "fp16"] = "fp16" if device.type == "cuda" else "fp32"
    if config.precision != "auto" and device.type == "cuda":
        precision = config.precision
    divisor = size_divisor or _infer_size_divisor(networks)
    in_channels = int(image.shape[0])
    _prepare(networks, device, channels_last)
    if config.time_budget_s is not None:
        flips = list(FLIP_AXES)
    else:
        flips = list(FLIP_AXES[: max(1, min(int(config.tta), len(FLIP_AXES)))])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cost = bytes_per_voxel
    if cost is None:
        measured = activation_bytes_per_voxel(
            networks[0], in_channels, device, precision, channels_last, divisor
        )
        cost = measured * COST_SAFETY["cuda" if device.type == "cuda" else "cpu"]
    if config.memory_budget_gb is not None:
        budget = config.memory_budget_gb * 1e9
    elif device.type == "cuda":
        budget = available_memory_bytes(device) * DEVICE_MEMORY_FRACTION
    else:
        budget = available_memory_bytes(device) * HOST_MEMORY_FRACTION

    stitch: Stitch = config.stitch
    fallbacks: list[str] = []
    with torch.inference_mode():
        while True:
            plan = make_plan(
                image.shape[1:],
                mode=config.mode,
                roi_size=config.roi_size,
                overlap=config.overlap,
                blend=config.blend,
                windows_per_batch=batch_setting,
                precision=precision,
                stitch=stitch,
                budget_bytes=budget,
                bytes_per_voxel=cost,
                in_channels=in_channels,
                size_divisor=divisor,
                fast_overlap=config.fast_overlap,
                body_mask=body_mask,
                device_type=device.type,
            )
            log.debug("engine plan: %s", plan.describe())
            out_of_memory = False
            try:
                probability, passes, first_pass = _run_plan(
                    networks, weights_used, image, plan, device, channels_last, flips,
                    config.time_budget_s, started,
                )
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                out_of_memory = True
            if not out_of_memory:
                break
            # leave the except block first so the failed frames (and their tensors) are freed
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            step = _fallback(plan, config.mode, config.roi_size, device)
            if step is None:
                raise PetsegError(
                    f"out of memory on {device} even with one {plan.window} window and the"
                    " buffers on the CPU; free the device, lower roi_size or use --device cpu"
                )
            name, value = step
            fallbacks.append(f"{name}={value}")
            log.warning("out of memory with %s; retrying with %s=%s", plan.describe(), name, value)
            if name == "windows_per_batch":
                batch_setting = int(value)
            elif name == "budget_gb":
                budget = float(value) * 1e9
                batch_setting = 1
            else:
                stitch = "cpu"
                batch_setting = 1

    # copied outside inference mode: an ordinary, contiguous CPU tensor
    result = torch.empty(probability.shape, dtype=torch.float32).copy_(probability)
    del probability
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return EngineResult(
        probability=result,
        plan=plan,
        passes=passes,
        seconds=time.perf_counter() - started,
        pass_seconds=first_pass,
        peak_device_bytes=peak,
        fallbacks=tuple(fallbacks),
    )


def check_settings(config: InferenceConfig) -> int | Literal["auto"]:
    """Raise `PetsegError` for settings the JSON loader cannot check; returns windows_per_batch."""
    batch = config.windows_per_batch
    if batch != "auto" and not (isinstance(batch, int) and batch >= 1):
        raise PetsegError(
            f"windows_per_batch {batch!r}: must be a positive integer or \"auto\";"
            " fix the inference config"
        )
    if not 1 <= int(config.tta) <= len(FLIP_AXES):
        raise PetsegError(f"tta {config.tta}: must be 1 to {len(FLIP_AXES)} flip passes")
    if config.threshold is not None and not 0 < config.threshold < 1:
        raise PetsegError(f"threshold {config.threshold}: must be between 0 and 1 (exclusive)"
                          " or null for the weights' calibrated one")
    if not 0 <= config.overlap < 1:
        raise PetsegError(f"overlap {config.overlap}: must be >= 0 and < 1")
    if config.time_budget_s is not None and config.time_budget_s <= 0:
        raise PetsegError(f"time budget {config.time_budget_s} s: must be positive")
    return batch


SKIP_THRESHOLD_HU = -900.0
"""CT above this counts as body for window skipping: everything denser than air, lung
parenchyma included, so a window inside a lung is never skipped."""


def body_mask_for_windows(
    image: np.ndarray | torch.Tensor, preprocessing: PreprocessingConfig
) -> np.ndarray | None:
    """`[D, H, W]` bool: voxels of the CT channel denser than air (`SKIP_THRESHOLD_HU`).

    `image` is the network input `[C, D, H, W]` with the CT clipped and scaled as
    `preprocessing` says; None when the channels hold no CT.
    """
    from petseg.preprocessing import scale_ct

    if "ct" not in preprocessing.channel_order:
        return None
    channel = preprocessing.channel_order.index("ct")
    threshold = float(scale_ct(np.array([SKIP_THRESHOLD_HU]), preprocessing.ct_clip_hu)[0])
    ct = image[channel]
    mask = ct > threshold
    return mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)


def _fallback(
    plan: Plan, mode: Mode, roi_size: Sequence[int], device: torch.device
) -> tuple[str, float | int | str] | None:
    """Next, smaller configuration after an out-of-memory error, or None when none is left.

    Order: halve the windows per batch; in fast mode, halve the window's voxels (down to
    `roi_size`); move the stitching buffers to the CPU (CUDA only).
    """
    if plan.windows_per_batch > 1:
        return "windows_per_batch", plan.windows_per_batch // 2
    floor = [min(r, p) for r, p in zip(roi_size, plan.padded_shape, strict=True)]
    if mode == "fast" and any(w > f for w, f in zip(plan.window, floor, strict=True)):
        # a budget that fits about half the current window (buffers stay where they are)
        return "budget_gb", (plan.buffer_bytes + plan.window_bytes / 2) / 1e9
    if plan.stitch == "device" and device.type == "cuda":
        return "stitch", "cpu"
    return None
