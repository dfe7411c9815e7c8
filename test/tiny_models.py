"""Test networks shared by the inference, pipeline and checkpoint tests: a tiny saved
ensemble, and two exact stand-ins whose lesion probability is known voxel by voxel."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from petseg.checkpoint import DSC_KEY, save_checkpoint, write_manifest
from petseg.config import ModelConfig, NetworkConfig
from petseg.model import build_network

TINY = ModelConfig(network=NetworkConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1))
"""A residual UNet of a few thousand parameters with the paper's preprocessing."""
DSCS = (0.61, 0.64, 0.58, 0.66, 0.60)
"""Validation DSC recorded in fold i's checkpoint of `tiny_ensemble`."""


def tiny_ensemble(folder: Path, config: ModelConfig = TINY, folds: int = 5,
                  dtype: torch.dtype | None = None, dscs: tuple[float, ...] = DSCS) -> list[Path]:
    """Write `folds` randomly initialised checkpoints (seed = fold) and their manifest; fold
    i records validation DSC `dscs[i]`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for fold in range(folds):
        torch.manual_seed(fold)
        net = build_network(config.network)
        files.append(save_checkpoint(folder / f"fold_{fold}.safetensors", net.state_dict(),
                                     config, {DSC_KEY: dscs[fold], "loss": 0.3},
                                     extra={"epoch": 10 + fold}, dtype=dtype))
    write_manifest(folder, files)
    return files


class SuvThreshold(torch.nn.Module):
    """Logits (0, x0 - 2.5): lesion probability sigmoid(SUV - 2.5), voxel by voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 2.5], dim=1)


class Constant(torch.nn.Module):
    """Lesion probability `p` everywhere."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), torch.full_like(x[:, :1], self.logit)], 1)
