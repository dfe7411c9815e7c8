"""Where the networks run: the one reading of a device name, for inference and training."""

from __future__ import annotations

import torch

from petseg.errors import PetsegError


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
