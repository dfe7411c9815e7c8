"""The paper's loss: MONAI's Generalized Dice Focal loss, configured from `LossConfig`."""

from __future__ import annotations

import torch

from petseg.training.config import LossConfig


def build_loss(config: LossConfig) -> torch.nn.Module:
    """MONAI `GeneralizedDiceFocalLoss`: softmax over the logits, one-hot labels.

    Called as `loss(logits [B, K, D, H, W], labels [B, 1, D, H, W] integer)`; returns the
    mean loss (scalar). Compute it in float32 (cast the logits) under mixed precision.
    """
    from monai.losses import GeneralizedDiceFocalLoss

    return GeneralizedDiceFocalLoss(
        include_background=config.include_background,
        to_onehot_y=True,
        softmax=True,
        w_type=config.w_type,
        smooth_nr=config.smooth_nr,
        smooth_dr=config.smooth_dr,
        batch=config.batch,
        gamma=config.gamma,
        weight=list(config.focal_weight),
        lambda_gdl=config.lambda_gdl,
        lambda_focal=config.lambda_focal,
    )
