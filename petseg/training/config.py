"""Training configuration: frozen dataclasses with a JSON round trip; defaults are the paper's
recipe, plus mixed precision ("auto") and gradient clipping that keep it finite on GPUs.

The paper (Ahamed & Rahmim, autoPET 2023) names the augmentation ranges but not the
probabilities; those come from the authors' public MONAI training code of the same
pipeline (affine 0.5, elastic 0.5, gamma 0.3, noise 0.5). See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from petseg.config import InferenceConfig, ModelConfig, from_dict, load_json, to_dict
from petseg.errors import PetsegError
from petseg.model import size_divisor
from petseg.training.click_simulation import ClickTrainingConfig, check_click_training_config


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Random patch sampling and augmentation; array axes are [z, y, x] (D, H, W).

    Spatial parameters follow MONAI's `RandAffined` / `Rand3DElasticd` semantics, so one
    config describes both the fused sampler and the stock MONAI chain it replaces.

    Attributes:
        patch_size: training patch (D, H, W) in voxels; volumes smaller than it are
            zero-padded (physically: air, SUV 0).
        positive_fraction: share of patches centred on a random lesion voxel (as MONAI's
            `RandCropByPosNegLabeld`) in studies with lesions; 0 = the paper's plain random
            crops. Helps small patches (CPU demo) see lesions.
        hot_fraction: share of patches centred on a random voxel of physiological uptake
            (PET above `hot_suv` outside the lesion mask: brain, heart, kidneys, bladder...),
            drawn after the positive share; 0 = off (the paper). Small patches otherwise
            rarely show the organs a lesion must be told apart from.
        hot_suv: SUV threshold of those voxels.
        affine_prob: probability of the affine part (translation, rotation, scaling).
        translate_voxels: translation drawn from uniform(-t, t) voxels per axis.
        rotate_axial_rad: rotation about the body (z) axis, uniform(-r, r) radians.
        scale_range: per-axis scale factor drawn from 1 + uniform(-s, s).
        elastic_prob: probability of the 3D elastic deformation.
        elastic_sigma: the smoothing sigma (voxels) of the offset field, uniform in range.
        elastic_magnitude: offset magnitude (voxels), uniform in range.
        gamma_prob: probability of the gamma (contrast) change.
        gamma_range: gamma drawn uniformly from this range; one gamma for all channels,
            min/max taken per channel (as MONAI's `RandAdjustContrastd` on CT and PET keys).
        noise_prob: probability of additive Gaussian noise (one field added to all channels,
            as MONAI's `RandGaussianNoised` on the CT and PET keys).
        noise_mean: mean of the noise.
        noise_std: the noise's standard deviation; with `noise_sample_std` it is the upper
            bound of a uniform draw (MONAI's default behaviour).
        noise_sample_std: draw the standard deviation from uniform(0, noise_std) per sample.
    """

    patch_size: tuple[int, int, int] = (192, 192, 192)
    positive_fraction: float = 0.0
    hot_fraction: float = 0.0
    hot_suv: float = 3.0
    affine_prob: float = 0.5
    translate_voxels: float = 10.0
    rotate_axial_rad: float = math.pi / 12
    scale_range: float = 0.1
    elastic_prob: float = 0.5
    elastic_sigma: tuple[float, float] = (0.0, 1.0)
    elastic_magnitude: tuple[float, float] = (0.0, 1.0)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.5
    noise_mean: float = 0.0
    noise_std: float = 0.1
    noise_sample_std: bool = True


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """MONAI `GeneralizedDiceFocalLoss` (Generalized Dice + focal), the paper's settings.

    Attributes:
        focal_weight: per-class focal weights (background, lesion).
        gamma: focal exponent.
        w_type: Generalized Dice class weighting ("square": 1 / (sum g)^2).
        smooth_nr, smooth_dr: the Generalized Dice's epsilon and eta.
        include_background: background class included in both terms.
        batch: Generalized Dice summed over the batch before dividing (MONAI's `batch`).
        lambda_gdl, lambda_focal: weights of the two terms.
    """

    focal_weight: tuple[float, ...] = (1.0, 100.0)
    gamma: float = 2.0
    w_type: Literal["square", "simple", "uniform"] = "square"
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    include_background: bool = True
    batch: bool = False
    lambda_gdl: float = 1.0
    lambda_focal: float = 1.0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Adam with cosine annealing per epoch from `lr` to `lr_min` over `epochs`.

    Attributes:
        epochs: training epochs; one epoch draws one patch per training study.
        batch_size: patches per step and process (under `torchrun` every process
            takes its own batch, as the authors' DDP code).
        lr, lr_min: learning rate at epoch 0 and at the end of the cosine.
        weight_decay: Adam's L2 weight decay.
        grad_clip_norm: the gradients' global L2 norm is clipped to this value before
            each update (after unscaling under fp16; 12 as nnU-Net); null: no clipping.
    """

    epochs: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    lr_min: float = 0.0
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 12.0


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Validation on the held-out fold's whole volumes with the inference code.

    Attributes:
        every: validate after every `every` epochs (and after the last one).
        inference: sliding-window settings; the same engine as `petseg predict`.
    """

    every: int = 2
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything `petseg train` needs besides the data; stored in every run folder.

    Attributes:
        model: network and preprocessing (stored in the checkpoints).
        augmentation, loss, optimizer, validation: see their classes.
        clicks: the simulated clicks of each sample, used only when `model` takes clicks
            (`petseg.training.click_simulation.ClickTrainingConfig`).
        seed: base seed; each epoch's patch order and augmentation derive from
            (seed, fold, epoch, sample index), so a resumed run continues identically.
        amp: mixed precision of the training step: "auto" (bf16 on CUDA GPUs with native
            bf16, i.e. Ampere and later; fp16 with the loss scaler on older GPUs; off on
            the CPU), "bf16", "fp16" (with the loss scaler) or "off" (fp32). An explicit
            "bf16" or "fp16" also applies on the CPU.
        channels_last: `channels_last_3d` memory format on CUDA (faster convolutions).
        in_memory: load the cached volumes into RAM (else memory-mapped from the cache).
        loader_threads: threads preparing batches ahead of the training step.
        prefetch_batches: batches prepared ahead.
        sync_batchnorm: synchronise BatchNorm statistics across processes under DDP.
        num_threads: torch CPU threads (0: torch's default).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = AugmentationConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    validation: ValidationConfig = ValidationConfig()
    clicks: ClickTrainingConfig = dataclasses.field(default_factory=ClickTrainingConfig)
    seed: int = 0
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    channels_last: bool = True
    in_memory: bool = False
    loader_threads: int = 2
    prefetch_batches: int = 2
    sync_batchnorm: bool = False
    num_threads: int = 0

    def __post_init__(self) -> None:
        check_training_config(self)


def check_training_config(config: TrainingConfig) -> None:
    """Raise `PetsegError` for settings that cannot work, naming the field."""
    aug, opt = config.augmentation, config.optimizer
    divisor = size_divisor(config.model.network)
    if len(aug.patch_size) != 3 or any(p % divisor for p in aug.patch_size):
        raise PetsegError(
            f"augmentation.patch_size {tuple(aug.patch_size)}: needs 3 sizes, each a multiple "
            f"of {divisor} (product of the network strides); change the config"
        )
    if aug.positive_fraction + aug.hot_fraction > 1.0:
        raise PetsegError(
            f"augmentation.positive_fraction + hot_fraction = "
            f"{aug.positive_fraction + aug.hot_fraction}: must be at most 1"
        )
    for name in ("positive_fraction", "hot_fraction", "affine_prob", "elastic_prob", "gamma_prob",
                 "noise_prob"):
        value = getattr(aug, name)
        if not 0.0 <= value <= 1.0:
            raise PetsegError(f"augmentation.{name} = {value}: must be in [0, 1]")
    if opt.epochs < 1 or opt.batch_size < 1:
        raise PetsegError("optimizer.epochs and optimizer.batch_size must be >= 1")
    if opt.grad_clip_norm is not None and not opt.grad_clip_norm > 0:
        raise PetsegError(f"optimizer.grad_clip_norm = {opt.grad_clip_norm}: must be > 0, or "
                          "null to turn clipping off")
    if config.validation.every < 1:
        raise PetsegError("validation.every must be >= 1 (validation picks the best epoch)")
    if len(config.loss.focal_weight) != config.model.network.out_channels:
        raise PetsegError(
            f"loss.focal_weight has {len(config.loss.focal_weight)} values for "
            f"{config.model.network.out_channels} output channels; give one per class"
        )
    for problem in check_click_training_config(config.clicks):
        raise PetsegError(f"{problem}; change the config")
    if config.loader_threads < 1 or config.prefetch_batches < 1:
        raise PetsegError("loader_threads and prefetch_batches must be >= 1")


def load_training_config(path: str | Path | None) -> TrainingConfig:
    """The config in `path` (JSON; missing fields keep the paper's defaults), or the defaults."""
    if path is None:
        return TrainingConfig()
    return load_json(TrainingConfig, path)


def load_run_config(path: str | Path) -> TrainingConfig:
    """A run folder's `config.json`. Runs saved before `optimizer.grad_clip_norm` existed
    trained without clipping, so a missing field reads as null there (not the default 12):
    resuming them keeps their recipe unless `--set` changes it."""
    from petseg.io.images import read_json

    data = read_json(path, "run config", "restore it, or start again in a new --out")
    if isinstance(data, dict) and isinstance(data.get("optimizer"), dict):
        data["optimizer"].setdefault("grad_clip_norm", None)
    return training_config_from_dict(data)


def training_config_from_dict(data: dict) -> TrainingConfig:
    """Plain dict (as stored in a run folder) -> `TrainingConfig`."""
    return from_dict(TrainingConfig, data, where="training config")


def training_config_to_dict(config: TrainingConfig) -> dict:
    """`TrainingConfig` -> plain JSON-compatible dict."""
    return to_dict(config)
