"""Validation of one fold's network on whole held-out volumes, and its summary.

Masks come from the inference package's `Predictor` (the same windows, overlap, blending and
threshold as `petseg predict`); the metrics from `petseg.evaluation.metrics.case_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from petseg.checkpoint import DSC_KEY
from petseg.training.cache import Volume
from petseg.training.config import TrainingConfig

COLLAPSE_FROM_DSC = 0.1
"""A validation mean DSC of 0 after a best above this value is logged as a collapse."""


def collapse_warning(epoch: int, mean_dsc: float, best_score: float,
                     best_epoch: int) -> str | None:
    """The warning for a validation mean DSC that fell to 0 after a best above
    `COLLAPSE_FROM_DSC` (None when it did not)."""
    if mean_dsc == 0.0 and best_score > COLLAPSE_FROM_DSC:
        return (f"epoch {epoch}: validation mean DSC fell to 0 after {best_score:.4f} at "
                f"epoch {best_epoch}; the network has collapsed (see skipped_steps and "
                "grad_norm_max in history.csv)")
    return None


def summarise_validation(cases: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean DSC over cases with lesions (autoPET convention), mean FPV and FNV over all."""
    dsc = [c["dsc"] for c in cases if c.get("n_true_lesions", 0) > 0 and math.isfinite(c["dsc"])]
    return {
        DSC_KEY: float(np.mean(dsc)) if dsc else float("nan"),
        "mean_fpv_ml": float(np.mean([c["fpv_ml"] for c in cases])) if cases else float("nan"),
        "mean_fnv_ml": float(np.mean([c["fnv_ml"] for c in cases])) if cases else float("nan"),
        "cases": float(len(cases)),
    }


def validate(network: torch.nn.Module, volumes: Sequence[Volume], config: TrainingConfig,
             device: torch.device) -> list[dict[str, Any]]:
    """Per-case metrics of `network` on whole volumes, as `petseg predict` would segment them.

    A one-network `petseg.inference.predictor.Predictor` with `validation.inference` (the
    same windows, overlap, blending and thresholding as `petseg predict`; a null threshold
    is 0.5, as without a calibrated manifest) gives each mask on the 2 mm grid; metrics
    come from `petseg.evaluation.metrics.case_metrics`. A click-aware network is validated
    at zero clicks (empty click maps), so the kept epoch still works without clicks. Each case's
    `probability_finite` says whether every voxel's probability was finite.
    """
    from petseg.config import resolve_inference_config
    from petseg.evaluation.metrics import case_metrics
    from petseg.inference.predictor import Predictor

    was_training = network.training
    predictor = Predictor([network], config.model,
                          resolve_inference_config(config.validation.inference), device=device)
    results = []
    try:
        for volume in volumes:
            image = torch.from_numpy(np.asarray(volume.image, dtype=np.float32))
            if config.model.takes_clicks:  # validated at zero clicks, the automatic case
                image = torch.cat([image, image.new_zeros((2, *image.shape[1:]))])
            mask, probability = predictor.segment_volume(image)
            metrics = case_metrics(np.asarray(volume.label), mask.astype(bool),
                                   volume.spacing_mm)
            results.append({"key": volume.key, **metrics.as_dict(),
                            "probability_finite": bool(torch.isfinite(probability).all())})
    finally:
        # the engine may switch the weights to channels_last_3d; training keeps its own layout
        channels_last = device.type == "cuda" and config.channels_last
        network.to(memory_format=torch.channels_last_3d if channels_last
                   else torch.contiguous_format)  # type: ignore[call-arg]
        network.train(was_training)
    return results
