"""Sliding-window inference and the fold ensemble.

Each network sees the whole prepared image through overlapping `roi_size` windows
(MONAI's `sliding_window_inference`, Gaussian or constant blending); only the lesion
probability (softmax channel 1) is kept and averaged over the networks, plainly or
weighted (e.g. by each fold's validation Dice).
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


def _as_batch(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(image)
    if tensor.ndim != 4:
        raise ValueError(f"image must be [C, D, H, W], got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.float32)[None]


def network_probabilities(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield each network's lesion probability `[D, H, W]` (float32, on `device`).

    `image` is `[C, D, H, W]` (any size: smaller than a window is padded with 0 and cropped
    back). Networks must already live on `device`. On CUDA the forward runs under fp16
    autocast; softmax and blending stay float32.
    """
    from monai.inferers import sliding_window_inference

    device = resolve_device(device)
    batch = _as_batch(image, device)
    use_fp16 = device.type == "cuda"

    for network in networks:
        if isinstance(network, torch.nn.Module):
            network.eval()

        def lesion_probability(window: torch.Tensor, network: Network = network) -> torch.Tensor:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_fp16):
                logits = network(window)
            return torch.softmax(logits.float(), dim=1)[:, 1:2]

        with torch.inference_mode():
            probability = sliding_window_inference(
                batch,
                roi_size=tuple(config.roi_size),
                sw_batch_size=config.windows_per_batch,
                predictor=lesion_probability,
                overlap=config.overlap,
                mode=config.blend,
                padding_mode="constant",
                cval=0.0,
                sw_device=device,
                device=device,
            )
        yield torch.as_tensor(probability)[0, 0].float()


def sliding_window_probability(
    networks: Sequence[Network],
    image: np.ndarray | torch.Tensor,
    config: InferenceConfig,
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Ensemble lesion probability of `image`.

    Args:
        networks: the fold networks (on `device`), outputs 2-channel logits.
        image: `[C, D, H, W]` float32 on the network grid (PET in SUV, CT in [0, 1]).
        config: `roi_size`, `overlap`, `blend`, `windows_per_batch`.
        weights: per-network weights (normalised to sum 1); None = plain mean.
        device: where the windows run ("auto", "cpu", "cuda").

    Returns:
        Lesion probability `[D, H, W]`, float32 on the CPU, in [0, 1].
    """
    factors = normalized_weights(len(networks), weights)
    return weighted_mean(network_probabilities(networks, image, config, device), factors)


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
