"""The fold ensemble as one object: a case's PET + CT in, a mask on the PET grid out.

    preprocess_case [+ extra input channels] -> run_ensemble (every fold, one pass)
      -> probability_on_pet_grid -> probability_to_mask

The Predictor knows input channels, not clicks: a click-aware network's click maps come
from `petseg.interactive.session.InteractiveSession`, which also applies the click rule.

`Predictor(networks, model_config, config, weights, device)` reads nothing from disk;
`Predictor.from_weights_dir` loads and verifies the checkpoints listed in a manifest and
settles the threshold (`petseg.config.resolve_inference_config`) first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from petseg.checkpoint import Checkpoint, calibrated_threshold, dsc_weights, load_ensemble
from petseg.config import InferenceConfig, ModelConfig, resolve_inference_config
from petseg.device import resolve_device
from petseg.errors import PetsegError
from petseg.inference.engine import EngineResult, Network, normalized_weights, run_ensemble
from petseg.inference.postprocessing import (
    probability_on_pet_grid,
    probability_to_mask,
    threshold_mask,
)
from petseg.io.geometry import Geometry
from petseg.model import build_network, size_divisor
from petseg.preprocessing import PreparedCase, body_mask_for_windows, preprocess_case
from petseg.progress import CaseProgress

log = logging.getLogger(__name__)

ExtraChannels = Callable[[Geometry], np.ndarray]
"""network grid -> float32 `[E, D, H, W]`: the input channels not made from the images
(`ModelConfig.extra_channels`, e.g. click maps), drawn on the case's network grid."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A case's result on the PET grid.

    Attributes:
        mask: uint8 0/1, exactly the PET's size/spacing/origin/direction.
        probability: float32 ensemble lesion probability on the PET grid, if requested.
        fold_probabilities: float32 per-network probabilities on the PET grid, if requested.
    """

    mask: sitk.Image
    probability: sitk.Image | None = None
    fold_probabilities: list[sitk.Image] | None = None


def settled_config(config: InferenceConfig, weights_dir: str | Path) -> InferenceConfig:
    """The inference settings with the threshold settled: `config`'s, else the one
    calibrated for the ensemble in `weights_dir`'s manifest, else 0.5."""
    calibrated = (calibrated_threshold(weights_dir, config.ensemble)
                  if config.threshold is None else None)
    return resolve_inference_config(config, calibrated)


class Predictor:
    """The fold ensemble on one device, predicting many cases.

    Args:
        networks: the fold networks (moved to `device`, eval mode) or callables mapping
            `[B, C, d, h, w]` to 2-channel logits.
        model_config: the preprocessing and network the weights were trained with.
        config: settled sliding-window/ensemble settings (`resolve_inference_config`: the
            threshold is a number).
        weights: per-network ensemble weights (normalised to sum 1); None = plain mean.
        device: "auto", "cpu" or "cuda".
        min_component_ml: remove predicted components smaller than this (0 = off).
        folds: a name per network (default `network_<i>`).
    """

    def __init__(self, networks: Sequence[Network], model_config: ModelConfig,
                 config: InferenceConfig, weights: Sequence[float] | None = None,
                 device: str | torch.device = "auto", *, min_component_ml: float = 0.0,
                 folds: Sequence[str] | None = None) -> None:
        divisor = size_divisor(model_config.network)
        if any(int(s) % divisor for s in config.roi_size):
            raise PetsegError(
                f"roi_size {tuple(config.roi_size)}: must be multiples of {divisor} for this "
                "network; fix the inference config"
            )
        if config.threshold is None:
            raise ValueError("config.threshold is None: settle it first with "
                             "petseg.config.resolve_inference_config")
        self.device = resolve_device(device)
        self.networks = [n.to(self.device).eval() if isinstance(n, torch.nn.Module) else n
                         for n in networks]
        self.model_config = model_config
        self.config = config
        self.threshold = float(config.threshold)
        self.weights = normalized_weights(len(self.networks), weights)
        self.min_component_ml = float(min_component_ml)
        self.folds = list(folds) if folds is not None else [
            f"network_{i}" for i in range(len(self.networks))]

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Checkpoint], config: InferenceConfig,
                         device: str | torch.device = "auto",
                         min_component_ml: float = 0.0) -> Predictor:
        """Networks built from loaded `checkpoints` (`load_ensemble`), DSC-weighted when
        `config.ensemble` is "weighted"; `config` settled."""
        model_config = checkpoints[0].model_config
        networks = []
        for checkpoint in checkpoints:
            network = build_network(model_config.network)
            network.load_state_dict(checkpoint.state_dict, strict=True)
            networks.append(network)
        weights = dsc_weights(checkpoints) if config.ensemble == "weighted" else None
        return cls(networks, model_config, config, weights, device,
                   min_component_ml=min_component_ml,
                   folds=[str(c.meta["fold"]) for c in checkpoints])

    @classmethod
    def from_weights_dir(cls, weights_dir: str | Path, config: InferenceConfig | None = None,
                         device: str | torch.device = "auto", allow_missing: bool = False,
                         min_component_ml: float = 0.0) -> Predictor:
        """The ensemble of `weights_dir` (fold checkpoints + `manifest.json`, verified), its
        threshold settled: `config`'s, else the manifest's for the ensemble, else 0.5."""
        checkpoints = load_ensemble(weights_dir, allow_missing=allow_missing)
        config = settled_config(config or InferenceConfig(), weights_dir)
        predictor = cls.from_checkpoints(checkpoints, config, device, min_component_ml)
        log.info("ensemble of %d fold(s) %s from %s on %s (%s average, threshold %.2f)",
                 len(predictor.networks), ", ".join(predictor.folds), weights_dir,
                 predictor.device, config.ensemble, predictor.threshold)
        return predictor

    def probability(self, image: np.ndarray | torch.Tensor, *,
                    body_mask: np.ndarray | torch.Tensor | None = None,
                    per_network: bool = False,
                    config: InferenceConfig | None = None) -> EngineResult:
        """The engine on a prepared `[C, D, H, W]` volume on the network grid: ensemble
        probability `[D, H, W]` (float32, CPU, clamped to [0, 1]) and, with `per_network`,
        each network's from the same pass; `config` overrides the settings for this call."""
        result = run_ensemble(self.networks, image, config or self.config, weights=self.weights,
                              body_mask=body_mask, device=self.device,
                              size_divisor=size_divisor(self.model_config.network),
                              per_network=per_network)
        result.probability.clamp_(0.0, 1.0)
        return result

    def segment_volume(self, image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 0/1 mask `[D, H, W]` thresholded as postprocessing does, ensemble
        probability `[D, H, W]`) of a prepared `[C, D, H, W]` volume, on the network grid."""
        probability = self.probability(image).probability
        return threshold_mask(probability.numpy(), self.threshold), probability

    def predict(self, pet: sitk.Image, ct: sitk.Image, probability: bool = False,
                fold_probabilities: bool = False, progress: CaseProgress | None = None,
                extra_channels: ExtraChannels | None = None) -> Prediction:
        """Mask (and on request probabilities) on the PET grid for one PET (SUV) + CT (HU);
        stages and window batches are reported to `progress`. The fold maps come from the
        same engine pass as the ensemble.

        A network with input channels beyond the images (`ModelConfig.extra_channels`)
        gets `extra_channels(network grid)`, or zeros without it."""
        started = time.perf_counter()
        progress = progress or CaseProgress("-")
        progress.stage("preprocessing")
        case = preprocess_case(pet, ct, self.model_config.preprocessing)
        config = self.config
        if config.time_budget_s is not None:  # what preprocessing left of the case's budget
            left = max(config.time_budget_s - (time.perf_counter() - started), 1e-3)
            config = dataclasses.replace(config, time_budget_s=left)
        body = (body_mask_for_windows(case.image, self.model_config.preprocessing)
                if config.skip_empty_windows else None)
        progress.stage(f"{len(self.networks)} network(s) on {tuple(case.image.shape[1:])} voxels")
        with progress.listening():
            result = self.probability(self.network_input(case, extra_channels),
                                      body_mask=body, config=config,
                                      per_network=fold_probabilities)
        progress.stage("probability to the PET grid, mask")
        mask, on_pet = self.mask_on_pet_grid(result.probability, case)
        as_image = case.pet_geometry.image_from_array
        folds = result.fold_probabilities
        return Prediction(
            mask=mask,
            probability=as_image(on_pet) if probability else None,
            fold_probabilities=[as_image(self._on_pet_grid(f, case)) for f in folds]
            if folds is not None else None,
        )

    def mask_on_pet_grid(self, probability: torch.Tensor, case: PreparedCase
                         ) -> tuple[sitk.Image, np.ndarray]:
        """(uint8 0/1 mask image, float32 probability `[z, y, x]`) on the PET grid of a
        probability `[D, H, W]` on `case.grid`: thresholded, small components removed."""
        on_pet = self._on_pet_grid(probability, case)
        return probability_to_mask(on_pet, case.pet_geometry, self.threshold,
                                   self.min_component_ml), on_pet

    def network_input(self, case: PreparedCase,
                      extra_channels: ExtraChannels | None = None) -> np.ndarray:
        """The network's input `[C, D, H, W]`: `case.image`, with the extra channels
        appended when the network takes any (zeros without `extra_channels`)."""
        extra = self.model_config.extra_channels
        if not extra:
            return case.image
        if extra_channels is None:
            maps = np.zeros((len(extra), *case.image.shape[1:]), np.float32)
        else:
            maps = np.asarray(extra_channels(case.grid), np.float32)
            if maps.shape != (len(extra), *case.image.shape[1:]):
                raise ValueError(f"extra channels {maps.shape}: the network wants "
                                 f"{(len(extra), *case.image.shape[1:])} ({', '.join(extra)})")
        return np.concatenate([case.image, maps])

    @staticmethod
    def _on_pet_grid(probability: torch.Tensor, case: PreparedCase) -> np.ndarray:
        return probability_on_pet_grid(probability.numpy(), case.grid, case.crop_box,
                                       case.pet_geometry)
