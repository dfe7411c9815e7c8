"""The one place that builds the segmentation network from its config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from petseg.config import NetworkConfig

if TYPE_CHECKING:  # torch and MONAI load with the first network, not with the divisor
    import torch
    from monai.networks.nets import UNet


def build_network(config: NetworkConfig) -> UNet:
    """MONAI 3D residual UNet (PReLU, MONAI's default activation).

    Input `[B, in_channels, D, H, W]`, output logits `[B, out_channels, D, H, W]`; every
    spatial size must be divisible by the product of `strides` (16 for the paper's).
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
        num_res_units=config.num_res_units,
        norm=config.norm,
    )


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def size_divisor(source: NetworkConfig | Any) -> int:
    """Spatial sizes fed to the network must be multiples of this: the product of the
    `strides` of a `NetworkConfig` or of a network that has them (MONAI's UNet; a stride
    per axis counts with its largest), 1 for anything without strides."""
    divisor = 1
    for stride in getattr(source, "strides", None) or ():
        divisor *= int(np.max(stride))
    return divisor
