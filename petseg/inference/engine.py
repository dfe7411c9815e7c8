"""Running a plan: every fold on each batch of windows, one accumulation buffer.

The engine turns a preprocessed image `[C, D, H, W]` into the ensemble's lesion probability
`[D, H, W]` (softmax channel 1, float32, on the CPU) and, on request, each network's map
from the same pass. Compared with running MONAI's `sliding_window_inference` once per fold
and averaging, it

- runs every fold on each batch of windows, so a window is read and sent to the device once;
- blends only the lesion probability (one channel per map) into float32 accumulation
  buffers that live on the device when they fit, and on the CPU otherwise;
- uses fp16 autocast and `channels_last_3d` on CUDA (and `channels_last_3d` on the CPU,
  where oneDNN runs 3D convolutions faster in that layout);
- skips windows that hold no voxel of an optional body mask;
- in `fast` mode uses windows as large as the memory allows, up to the whole volume in one
  forward (the network is fully convolutional), which removes the repeated work of the
  reference mode's 50 % overlap;
- plans window size and windows per batch from the free memory and a measured activation
  cost per voxel (`plan`, `memory`), and on an out-of-memory error halves the batch, then
  the window, then moves stitching to the CPU before giving up;
- reruns in fp32 when an fp16 pass gives a non-finite probability (an activation beyond
  fp16's 65,504), which it checks on the device without an extra synchronisation;
- optionally averages flipped passes (test-time augmentation), as many as a time budget allows.

`reference` mode is the paper's: 192^3 windows, overlap 0.5, Gaussian blending, with
MONAI's window positions and importance map, so its result equals the stock per-fold
`sliding_window_inference` average up to float rounding.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from petseg.config import InferenceConfig
from petseg.device import resolve_device
from petseg.errors import PetsegError
from petseg.inference.memory import autocast, memory_budget, planning_cost
from petseg.inference.plan import FLIP_AXES, Plan, edge_ramp_map, fallback, make_plan, window_slices
from petseg.model import size_divisor as network_size_divisor
from petseg.progress import window_progress

log = logging.getLogger(__name__)

Network = Callable[[torch.Tensor], torch.Tensor]
"""A network or any callable: `[B, C, d, h, w]` -> logits `[B, K, d, h, w]` (K = 2, or 1 for a
sigmoid output)."""


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
        fallbacks: fallbacks taken, in order: out-of-memory steps, and `precision=fp32`
            after an fp16 overflow.
        fold_probabilities: with `per_network`, each network's lesion probability
            `[D, H, W]` (float32, CPU) from the same windows and passes, in order; else None.
    """

    probability: torch.Tensor
    plan: Plan
    passes: int
    seconds: float
    pass_seconds: float
    peak_device_bytes: int | None
    fallbacks: tuple[str, ...]
    fold_probabilities: tuple[torch.Tensor, ...] | None = None


@dataclasses.dataclass(frozen=True)
class _Run:
    """The fixed part of one `run_ensemble` call: what every plan it tries runs with."""

    networks: Sequence[Network]
    weights: Sequence[float]
    device: torch.device
    precision: Literal["fp32", "fp16", "bf16"]
    channels_last: bool
    flips: Sequence[tuple[int, ...]]
    per_network: bool
    time_budget_s: float | None
    started: float

    @property
    def maps(self) -> int:
        """Probability maps stitched: the ensemble, plus one per network with `per_network`."""
        return 1 + len(self.networks) if self.per_network else 1

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format


def normalized_weights(count: int, weights: Sequence[float] | None = None) -> list[float]:
    """Ensemble weights summing to 1: equal if `weights` is None, else `weights / sum`."""
    if count == 0:
        raise PetsegError("the ensemble is empty: at least one network is needed")
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ValueError(f"{len(values)} ensemble weights for {count} networks")
    if any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise PetsegError(
            f"ensemble weights {values} must be finite, >= 0 and not all 0; use --ensemble mean"
        )
    total = sum(values)
    return [w / total for w in values]


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


def _window_probability(run: _Run, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Lesion probabilities `[B, M, d, h, w]` (float32) of a window batch: the weighted
    ensemble, then with `per_network` each network's."""
    total: torch.Tensor | None = None
    maps = []
    with autocast(run.device, precision):
        for network, weight in zip(run.networks, run.weights, strict=True):
            probability = _lesion_probability(network(x))
            if run.per_network:
                maps.append(probability)
            if total is None:
                total = probability * weight if run.per_network else probability.mul_(weight)
            else:
                total.add_(probability, alpha=weight)
    assert total is not None
    return torch.stack([total, *maps], dim=1) if maps else total.unsqueeze(1)


def _importance_map(plan: Plan, device: torch.device) -> torch.Tensor | None:
    if plan.single_window:
        return None
    if plan.blend == "ramp":
        return edge_ramp_map(plan.window, plan.ramp).to(device)
    from monai.data.utils import compute_importance_map

    return compute_importance_map(plan.window, mode=plan.blend, sigma_scale=0.125, device=device)


def _padded_input(image: torch.Tensor, plan: Plan, store: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """`[C, *padded_shape]` on `store`: zeros with the image copied (and cast) into the middle."""
    if not any(a or b for a, b in plan.pad):
        return image.to(store, dtype=dtype)
    padded = torch.zeros((image.shape[0], *plan.padded_shape), dtype=dtype, device=store)
    padded[(slice(None), *plan.inside)].copy_(image)
    return padded


class _Fp16OverflowError(Exception):
    """An fp16 pass gave a non-finite probability: the plan must run in fp32."""


def _one_pass(run: _Run, padded: torch.Tensor, plan: Plan, flip: tuple[int, ...],
              importance: torch.Tensor | None, accumulator: torch.Tensor, done: int,
              non_finite: torch.Tensor | None) -> None:
    """Add one (flipped) pass over every window of `plan` to `accumulator` `[M, *padded]`;
    `done` windows of earlier passes were already reported. `non_finite` (a 0-d bool on
    the device, or None) is set when a window's probability is not finite."""
    spatial = [a + 2 for a in flip]
    for first in range(0, len(plan.starts), plan.windows_per_batch):
        batch_starts = plan.starts[first : first + plan.windows_per_batch]
        x = torch.stack([padded[(slice(None), *window_slices(s, plan.window))]
                         for s in batch_starts])
        x = x.to(run.device, non_blocking=True)
        if spatial:
            x = x.flip(spatial)
        x = x.contiguous(memory_format=run.memory_format)
        probability = _window_probability(run, x, plan.precision)
        del x
        if non_finite is not None:  # queued on the device: no synchronisation here
            non_finite.logical_or_(~torch.isfinite(probability).all())
        if spatial:
            probability = probability.flip(spatial)
        if importance is not None:
            probability.mul_(importance)
        probability = probability.to(accumulator.device)
        for index, start in enumerate(batch_starts):
            accumulator[(slice(None), *window_slices(start, plan.window))] += probability[index]
        del probability
        if (report := window_progress.get()) is not None:
            report(done + first + len(batch_starts), len(run.flips) * len(plan.starts))


def _run_plan(run: _Run, image: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, int, float]:
    """Run every pass of `plan`; returns (probabilities `[M, D, H, W]` as a view of the
    accumulator on the store device, passes, seconds of the first pass). `_Fp16OverflowError`
    when an fp16 pass gave a non-finite probability."""
    store = run.device if plan.stitch == "device" else torch.device("cpu")
    fp16 = plan.precision == "fp16" and store.type == "cuda"
    padded = _padded_input(image, plan, store, torch.float16 if fp16 else torch.float32)
    importance = _importance_map(plan, run.device)
    accumulator = torch.zeros((run.maps, *plan.padded_shape), dtype=torch.float32, device=store)
    weight_sum: torch.Tensor | None = None
    if importance is not None:
        weight_sum = torch.zeros(plan.padded_shape, dtype=torch.float32, device=store)
        importance_store = importance.to(store)
        for start in plan.starts:
            weight_sum[window_slices(start, plan.window)] += importance_store
    non_finite = (torch.zeros((), dtype=torch.bool, device=run.device)
                  if plan.precision == "fp16" else None)
    passes, first_pass, pass_start = 0, 0.0, time.perf_counter()
    for flip in run.flips:
        _one_pass(run, padded, plan, flip, importance, accumulator, passes * len(plan.starts),
                  non_finite)
        passes += 1
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        if non_finite is not None and bool(non_finite):
            raise _Fp16OverflowError
        now = time.perf_counter()
        if passes == 1:
            first_pass = now - pass_start
        left = None if run.time_budget_s is None else run.time_budget_s - (now - run.started)
        if left is not None and passes < len(run.flips) and left < first_pass:
            break
    del padded
    if weight_sum is not None:
        accumulator.div_(weight_sum.mul_(passes).clamp_(min=torch.finfo(torch.float32).tiny))
        del weight_sum
    elif passes > 1:
        accumulator.div_(passes)
    return accumulator[(slice(None), *plan.inside)], passes, first_pass


def _prepare(networks: Sequence[Network], device: torch.device, channels_last: bool) -> None:
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for network in networks:
        if isinstance(network, torch.nn.Module):
            network.eval()
            network.to(device=device, memory_format=memory_format)  # type: ignore[call-arg]


def _settings(networks: Sequence[Network], config: InferenceConfig, device: torch.device | str,
              channels_last: bool, per_network: bool, started: float,
              weights: Sequence[float] | None) -> _Run:
    """The device, precision and flips of one call; the networks prepared on the device."""
    weights_used = normalized_weights(len(networks), weights)
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision: Literal["fp32", "fp16", "bf16"] = "fp16" if device.type == "cuda" else "fp32"
    if config.precision == "bf16" or (config.precision != "auto" and device.type == "cuda"):
        precision = config.precision
    _prepare(networks, device, channels_last)
    flips = FLIP_AXES if config.time_budget_s is not None else FLIP_AXES[: int(config.tta)]
    return _Run(networks, weights_used, device, precision,
                channels_last, list(flips), per_network, config.time_budget_s, started)


def _plan_for(run: _Run, image: torch.Tensor, config: InferenceConfig,
              settings: dict[str, object], cost: float, divisor: int,
              body_mask: np.ndarray | torch.Tensor | None) -> Plan:
    """`make_plan` for `image` with `config`'s windows and `settings`' batch, budget and
    stitch (which out-of-memory fallbacks change)."""
    return make_plan(image.shape[1:], mode=config.mode, roi_size=config.roi_size,
                     overlap=config.overlap, blend=config.blend, precision=run.precision,
                     bytes_per_voxel=cost, in_channels=int(image.shape[0]),
                     size_divisor=divisor, fast_overlap=config.fast_overlap,
                     body_mask=body_mask, device_type=run.device.type, maps=run.maps,
                     **settings)  # type: ignore[arg-type]


def _next_changes(plan: Plan, config: InferenceConfig, run: _Run,
                  changes: dict[str, object]) -> tuple[str, dict[str, object]]:
    """After an out-of-memory error with `plan`: the fallback taken (`name=value`) and the
    plan changes that follow; `PetsegError` when none is left."""
    step = fallback(plan, config.mode, config.roi_size, run.device)
    if step is None:
        raise PetsegError(
            f"out of memory on {run.device} even with one {plan.window} window and the"
            " buffers on the CPU; free the device, lower roi_size or use --device cpu"
        )
    name, value = step
    log.warning("out of memory with %s; retrying with %s=%s", plan.describe(), name, value)
    if name == "windows_per_batch":
        return f"{name}={value}", {**changes, "windows_per_batch": int(value)}
    if name == "budget_gb":
        return f"{name}={value}", {**changes, "budget_bytes": float(value) * 1e9,
                                   "windows_per_batch": 1}
    return f"{name}={value}", {**changes, "stitch": "cpu", "windows_per_batch": 1}


def _run_with_fallbacks(run: _Run, image: torch.Tensor, config: InferenceConfig,
                        cost_of: Callable[[str], float], divisor: int,
                        body_mask: np.ndarray | torch.Tensor | None
                        ) -> tuple[torch.Tensor, int, float, Plan, list[str]]:
    """Plan and run, stepping down the fallback ladder after each out-of-memory error, and
    in fp32 after an fp16 overflow; `cost_of(precision)` is the activation bytes per window
    voxel. Returns (probabilities `[M, D, H, W]`, passes, first pass s, the plan run,
    fallbacks)."""
    changes: dict[str, object] = {
        "windows_per_batch": config.windows_per_batch, "stitch": config.stitch,
        "budget_bytes": memory_budget(config.memory_budget_gb, run.device)}
    fallbacks: list[str] = []
    while True:
        plan = _plan_for(run, image, config, changes, cost_of(run.precision), divisor,
                         body_mask)
        log.debug("engine plan: %s", plan.describe())
        try:
            return (*_run_plan(run, image, plan), plan, fallbacks)
        except _Fp16OverflowError:
            log.warning("fp16 overflow with %s (a probability was not finite); rerunning "
                        "in fp32", plan.describe())
            run = dataclasses.replace(run, precision="fp32")
            fallbacks.append("precision=fp32")
            continue
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
        # out of the except block first, so the failed frames (and their tensors) are freed
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        taken, changes = _next_changes(plan, config, run, changes)
        fallbacks.append(taken)


def run_ensemble(
    networks: Sequence[Network], image: np.ndarray | torch.Tensor,
    config: InferenceConfig | None = None, *, weights: Sequence[float] | None = None,
    body_mask: np.ndarray | torch.Tensor | None = None, device: torch.device | str = "auto",
    size_divisor: int | None = None, channels_last: bool = True,
    bytes_per_voxel: float | None = None, per_network: bool = False,
) -> EngineResult:
    """Ensemble lesion probability of one preprocessed image.

    Args:
        networks: fold networks (moved to `device`, set to eval mode and `channels_last_3d`
            in place) or plain callables; each maps `[B, C, d, h, w]` to logits
            `[B, K, d, h, w]`; the lesion probability is softmax channel 1 (sigmoid if K = 1).
        image: `[C, D, H, W]` float (PET in SUV, CT scaled to [0, 1], ...), any device.
        config: window, ensemble, precision, memory and test-time-augmentation settings
            (`InferenceConfig`, validated when built; default: the paper's reference mode).
        weights: per-network ensemble weights (normalised to sum 1); None for the plain mean.
        body_mask: optional `[D, H, W]` bool mask; windows without a body voxel are skipped
            and voxels that no kept window covers get probability 0.
        device: where the networks run: "auto" (CUDA if available), "cpu", "cuda".
        size_divisor: spatial sizes the networks accept are multiples of this; default
            `petseg.model.size_divisor` of the first network (1 without `strides`).
        channels_last: run in `channels_last_3d` layout (faster on CUDA and with oneDNN).
        bytes_per_voxel: activation cost per window voxel; default measured on the networks.
        per_network: also keep each network's probability from the same pass.

    Returns:
        `EngineResult` with the probability `[D, H, W]` (float32, CPU) and run statistics.

    Raises:
        PetsegError: bad ensemble weights, or out of memory even with one smallest window
            and the buffers on the CPU.
    """
    started = time.perf_counter()
    config = config or InferenceConfig()
    image = torch.as_tensor(image)
    if image.ndim != 4:
        raise ValueError(f"image must be [C, D, H, W], got shape {tuple(image.shape)}")
    run = _settings(networks, config, device, channels_last, per_network, started, weights)
    divisor = size_divisor or max(network_size_divisor(n) for n in networks)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)

    def cost_of(precision: str) -> float:
        return bytes_per_voxel if bytes_per_voxel is not None else planning_cost(
            networks[0], int(image.shape[0]), run.device, precision, channels_last, divisor)

    with torch.inference_mode():
        maps, passes, first_pass, plan, fallbacks = _run_with_fallbacks(
            run, image, config, cost_of, divisor, body_mask)
    # copied outside inference mode: an ordinary, contiguous CPU tensor
    result = torch.empty(maps.shape, dtype=torch.float32).copy_(maps)
    del maps
    peak = int(torch.cuda.max_memory_allocated(run.device)) if run.device.type == "cuda" else None
    return EngineResult(
        probability=result[0], plan=plan, passes=passes,
        seconds=time.perf_counter() - started, pass_seconds=first_pass,
        peak_device_bytes=peak, fallbacks=tuple(fallbacks),
        fold_probabilities=tuple(result[1:]) if per_network else None,
    )


def sliding_window_probability(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    body_mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Ensemble lesion probability `[D, H, W]` of `image` `[C, D, H, W]` (float32 on the
    network grid), clamped to [0, 1], float32 on the CPU: `run_ensemble` with `config`
    (`weights` None = plain mean; windows without a `body_mask` voxel skipped)."""
    result = run_ensemble(networks, image, config, weights=weights, body_mask=body_mask,
                          device=device)
    return result.probability.clamp_(0.0, 1.0)


def network_probabilities(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    device: str | torch.device = "cpu",
    body_mask: np.ndarray | torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Each network's lesion probability `[D, H, W]` (float32, CPU), in order, from one
    fused pass of `run_ensemble`."""
    result = run_ensemble(networks, image, config, body_mask=body_mask, device=device,
                          per_network=True)
    assert result.fold_probabilities is not None
    return result.fold_probabilities
