"""Window arithmetic: where the windows of one image go, how many run per batch, where the
stitching buffers live, and the next smaller plan after an out-of-memory error.

Pure: nothing here runs a network or reads the device; memory enters as numbers (a budget
and a measured activation cost per voxel, see `petseg.inference.memory`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from petseg.config import MAX_FLIP_PASSES

log = logging.getLogger(__name__)

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
assert len(FLIP_AXES) == MAX_FLIP_PASSES

MAX_AUTO_BATCH = 8
"""`windows_per_batch="auto"` never exceeds this: beyond it a GPU gains nothing."""


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


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value` (at least `multiple`)."""
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
        min(round_up(m, size_divisor), p)
        for m, p in zip(min_window, padded_shape, strict=True)
    ]
    min_overlap = min(min_overlap, min(floor) // 2)

    def window_for(c: list[int]) -> list[int]:
        sizes = []
        for length, n, low in zip(padded_shape, c, floor, strict=True):
            size = round_up(math.ceil((length + (n - 1) * min_overlap) / n), size_divisor)
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


def window_slices(start: Sequence[int], window: Sequence[int]) -> tuple[slice, ...]:
    """Index of the window at corner `start` of size `window` in a `[D, H, W]` volume."""
    return tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))


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
        precision: "fp16" or "bf16" (autocast), or "fp32".
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
    precision: Literal["fp32", "fp16", "bf16"]
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

    @property
    def inside(self) -> tuple[slice, ...]:
        """Index of the unpadded image in the padded `[D, H, W]` volume."""
        return tuple(slice(a, a + s) for s, (a, _b) in zip(self.shape, self.pad, strict=True))

    def describe(self) -> str:
        """One line for logs and benchmark output."""
        return (
            f"{len(self.starts)} window(s) of {'x'.join(map(str, self.window))}"
            f" ({self.skipped} skipped), {self.windows_per_batch}/batch, {self.precision},"
            f" {self.blend} blend, stitch on {self.stitch}, ~{self.estimated_bytes / 2**30:.2f} GiB"
        )


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """What the memory arithmetic of one plan needs (`make_plan`'s arguments, resolved)."""

    voxels: int
    in_channels: int
    out_channels: int
    in_bytes: int
    maps: int
    bytes_per_voxel: float
    stitch: Literal["device", "cpu"]
    device_type: str

    def buffers(self, weighted: bool) -> int:
        """Device bytes of the padded input and accumulators (+ weight sum when `weighted`):
        0 when they live on the CPU while the networks run on CUDA."""
        if self.stitch == "cpu" and self.device_type == "cuda":
            return 0
        return _buffer_bytes(self.voxels, self.in_channels, self.in_bytes, weighted, self.maps)

    @property
    def per_voxel(self) -> float:
        """Bytes per window voxel of a forward: activations, the input copy, float logits
        and probabilities."""
        extra = 4 * (self.maps - 1)  # the window's per-network probabilities
        return self.bytes_per_voxel + self.in_channels * 4 + self.out_channels * 4 + 8 + extra

    def window(self, voxels: int) -> int:
        """Bytes of the forward of one window of `voxels` voxels."""
        return int(voxels * self.per_voxel)


def _buffer_bytes(voxels: int, in_channels: int, in_bytes: int, weighted: bool,
                  maps: int = 1) -> int:
    # padded input + `maps` float32 accumulators (+ float32 weight sum when windows overlap)
    return voxels * (in_channels * in_bytes + 4 * maps + (4 if weighted else 0))


def _symmetric_pad(shape: Sequence[int], target: Sequence[int]) -> tuple[tuple[int, int], ...]:
    pads = []
    for size, want in zip(shape, target, strict=True):
        diff = max(want - size, 0)
        pads.append((diff // 2, diff - diff // 2))
    return tuple(pads)


def make_plan(
    shape: Sequence[int], *, mode: Mode, roi_size: Sequence[int], overlap: float, blend: Blend,
    windows_per_batch: int | Literal["auto"], precision: Literal["fp32", "fp16", "bf16"],
    stitch: Stitch, budget_bytes: float, bytes_per_voxel: float, in_channels: int,
    out_channels: int = 2, size_divisor: int = 1, fast_overlap: int = 32,
    body_mask: np.ndarray | torch.Tensor | None = None, device_type: str = "cuda",
    maps: int = 1,
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
        maps: float32 accumulators stitched (1, or 1 + networks with per-network maps).

    Returns:
        The `Plan`; its `estimated_bytes` may exceed the budget only when even the smallest
        allowed window does not fit (the engine's out-of-memory fallback takes over then).
    """
    shape = tuple(int(s) for s in shape)
    if mode == "reference":
        target = [max(s, r) for s, r in zip(shape, roi_size, strict=True)]
    else:
        target = [round_up(s, size_divisor) for s in shape]
    pad = _symmetric_pad(shape, target)
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pad, strict=True))
    in_bytes = 2 if precision in ("fp16", "bf16") else 4
    voxels = math.prod(padded)
    if stitch == "auto":
        fits = _buffer_bytes(voxels, in_channels, in_bytes, True, maps) <= budget_bytes / 2
        stitch = "device" if fits else "cpu"
    sizes = _Sizes(voxels, in_channels, out_channels, in_bytes, maps, bytes_per_voxel,
                   stitch if device_type == "cuda" else "cpu", device_type)
    if mode == "reference":
        window = tuple(int(r) for r in roi_size)
        starts = reference_window_starts(padded, window, overlap)
        blend_used: Literal["gaussian", "constant", "ramp"] = blend
        ramp = 0
    else:
        window, starts = _fast_windows(padded, roi_size, budget_bytes, sizes, size_divisor,
                                       fast_overlap)
        blend_used = "ramp"
        ramp = min(fast_overlap, min(window) // 2)
    total, skipped = len(starts), 0
    if body_mask is not None:
        starts, skipped = _drop_empty_windows(starts, window, body_mask, shape, pad)
    fixed = sizes.buffers(not (len(starts) == 1 and tuple(window) == padded))
    one_window = sizes.window(math.prod(window))
    batch = _batch_size(windows_per_batch, len(starts), budget_bytes - fixed, one_window,
                        device_type)
    log.debug("plan: %d of %d windows kept", len(starts), total)
    return Plan(shape=shape, pad=pad, window=tuple(window), starts=tuple(starts),  # type: ignore[arg-type]
                skipped=skipped, windows_per_batch=batch, stitch=sizes.stitch,
                blend=blend_used, ramp=ramp, precision=precision, buffer_bytes=int(fixed),
                window_bytes=int(one_window), estimated_bytes=int(fixed + batch * one_window))


def _fast_windows(padded: tuple[int, ...], roi_size: Sequence[int], budget_bytes: float,
                  sizes: _Sizes, size_divisor: int, fast_overlap: int
                  ) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """Fast mode's window and its corners: as large as the budget left by the buffers allows
    (at least `roi_size`), tiles spread evenly."""
    per_voxel = sizes.per_voxel
    free_for_window = budget_bytes - sizes.buffers(False)
    if free_for_window < sizes.voxels * per_voxel:
        free_for_window = budget_bytes - sizes.buffers(True)
    floor = [min(r, p) for r, p in zip(roi_size, padded, strict=True)]
    window, counts = fast_window(
        padded, max(free_for_window, 0) / per_voxel, size_divisor, fast_overlap, floor
    )
    axis_starts = [tile_starts(p, w, n) for p, w, n in zip(padded, window, counts, strict=True)]
    starts = [(a, b, c) for a in axis_starts[0] for b in axis_starts[1] for c in axis_starts[2]]
    return window, starts


def _batch_size(setting: int | Literal["auto"], windows: int, free_bytes: float,
                window_bytes: int, device_type: str) -> int:
    """Windows per forward: the setting (at most the windows there are), or with "auto" as
    many as fit `free_bytes` on CUDA (up to `MAX_AUTO_BATCH`) and 1 on the CPU."""
    if setting != "auto":
        return max(1, min(int(setting), max(windows, 1)))
    if device_type != "cuda":
        return 1  # on the CPU a larger batch buys no speed, only memory
    fit = int(max(free_bytes, 0) // max(window_bytes, 1))
    return max(1, min(MAX_AUTO_BATCH, fit, max(windows, 1)))


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


def fallback(
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
