"""Sliding-window inference and the fold ensemble.

Each network sees the whole prepared image through overlapping windows (Gaussian or
constant blending, MONAI's window positions in the paper's reference mode); only the lesion
probability (softmax channel 1) is kept and averaged over the networks, plainly or
weighted (e.g. by each fold's validation Dice). The work is done by `petseg.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from petseg.config import InferenceConfig
from petseg.errors import PetsegError

Network = Callable[[torch.Tensor], torch.Tensor]
"""Anything mapping `[B, C, d, h, w]` inputs to `[B, 2, d, h, w]` logits."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA if available else CPU; asking for CUDA without one is a `PetsegError`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PetsegError(f"--device {device}: no CUDA device is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PetsegError(f"--device {device}: unknown device; use auto, cpu or cuda") from None


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


def network_probabilities(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    device: str | torch.device = "cpu",
    body_mask: np.ndarray | torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each network's lesion probability `[D, H, W]` (float32, CPU).

    `image` is `[C, D, H, W]` (any size: smaller than a window is padded with 0 and cropped
    back). Each network runs alone through `petseg.engine.run_ensemble` with `config`.
    """
    from petseg.engine import run_ensemble

    for network in networks:
        yield run_ensemble([network], image, config, body_mask=body_mask,
                           device=device).probability


def sliding_window_probability(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    body_mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Ensemble lesion probability of `image` (the engine `petseg.engine.run_ensemble`).

    Args:
        networks: the fold networks, outputs 2-channel logits.
        image: `[C, D, H, W]` float32 on the network grid (PET in SUV, CT in [0, 1]).
        config: windows (`mode`, `roi_size`, `overlap`, `blend`, `windows_per_batch`),
            precision, memory and test-time-augmentation settings.
        weights: per-network weights (normalised to sum 1); None = plain mean.
        device: where the windows run ("auto", "cpu", "cuda").
        body_mask: optional `[D, H, W]` bool; windows without a body voxel are skipped.

    Returns:
        Lesion probability `[D, H, W]`, float32 on the CPU, in [0, 1].
    """
    from petseg.engine import run_ensemble

    result = run_ensemble(networks, image, config, weights=weights, body_mask=body_mask,
                          device=device)
    return result.probability.clamp_(0.0, 1.0)


def weighted_mean(probabilities: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Sum of `weights[i] * probabilities[i]` (`weights` sum to 1), clamped to [0, 1], on CPU.

    `probabilities` may be a generator, so only one map beyond the running sum is alive.
    """
    total: torch.Tensor | None = None
    for factor, probability in zip(weights, probabilities, strict=True):
        total = probability * factor if total is None else total.add_(probability, alpha=factor)
    if total is None:
        raise PetsegError("the ensemble is empty: at least one network is needed")
    return total.clamp_(0.0, 1.0).cpu()
