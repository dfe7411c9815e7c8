"""Small synthetic data for the training tests: cached volumes and raw autoPET-layout studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.config import InferenceConfig, ModelConfig, NetworkConfig
from petseg.io.geometry import LAS_DIRECTION
from petseg.training.cache import check_cache_config, write_entry
from petseg.training.config import (
    AugmentationConfig,
    OptimizerConfig,
    TrainingConfig,
    ValidationConfig,
)
from petseg.training.splits import SplitEntry, Splits, save_splits

TINY_MODEL = ModelConfig(network=NetworkConfig(channels=(4, 8, 16), strides=(2, 2),
                                               num_res_units=1))


def tiny_config(epochs: int = 2, patch: int = 24, **changes) -> TrainingConfig:
    """A tiny-width CPU config: 24^3 patches, batch 2, validation every epoch."""
    return TrainingConfig(
        model=TINY_MODEL,
        augmentation=AugmentationConfig(patch_size=(patch, patch, patch)),
        optimizer=OptimizerConfig(epochs=epochs, batch_size=2, lr=3e-3),
        validation=ValidationConfig(every=1, inference=InferenceConfig(
            roi_size=(patch, patch, patch), windows_per_batch=4)),
        in_memory=True, loader_threads=1, **changes)


def synthetic_volume(rng: np.random.Generator, shape=(32, 28, 28)) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """`[2, D, H, W]` image (PET ~1 SUV with hot spheres, CT ~0.5) and its 0/1 lesion mask."""
    image = np.empty((2, *shape), np.float32)
    image[0] = 1.0 + 0.1 * rng.standard_normal(shape)
    image[1] = 0.5 + 0.02 * rng.standard_normal(shape)
    label = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(2):
        centre = [rng.integers(6, s - 6) for s in shape]
        radius = rng.uniform(2.5, 4.5)
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        label[inside] = 1
        image[0][inside] += 6.0
    return image, label


def synthetic_cache(root: Path, n: int = 6, folds: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A cache of `n` synthetic studies (one per patient) and a split file; returns both."""
    rng = np.random.default_rng(seed)
    cache = root / "cache"
    check_cache_config(cache, TINY_MODEL.preprocessing, create=True)
    entries = []
    for i in range(n):
        image, label = synthetic_volume(rng)
        key = f"PETCT_{i:02d}/01-01-2001-NA-x"
        write_entry(cache, key, image, label, {"spacing_mm": [2.0, 2.0, 2.0]})
        entries.append(SplitEntry(key=key, patient=f"PETCT_{i:02d}", cohort="ALL",
                                  fold=i % folds))
    splits = save_splits(Splits(folds=folds, seed=0, entries=tuple(entries)),
                         root / "splits.json")
    return cache, splits


def write_study(folder: Path, rng: np.random.Generator, size=(36, 32, 20)) -> None:
    """PET (SUV), CTres (HU) and SEG of a small body with two lesions, LAS, 2.0364 x 3 mm."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y, z = size
    zz, yy, xx = np.mgrid[:z, :y, :x]
    body = ((xx - x / 2) / (x * 0.4)) ** 2 + ((yy - y / 2) / (y * 0.35)) ** 2 <= 1.0
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    pet = np.where(body, 1.0, 0.05).astype(np.float32) + 0.05 * rng.random((z, y, x))
    seg = np.zeros((z, y, x), np.uint8)
    for _ in range(2):
        c = (rng.integers(5, z - 5), rng.integers(12, y - 12), rng.integers(12, x - 12))
        lesion = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 9
        seg[lesion] = 1
        pet[lesion] = 9.0
    for name, array in (("SUV", pet), ("CTres", ct), ("SEG", seg)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0364, 2.0364, 3.0))
        image.SetOrigin((400.0, -200.0, -900.0))
        image.SetDirection(LAS_DIRECTION)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))


def train_epochs(config: TrainingConfig, cache: Path, splits: Path, run_dir: Path,
                 stop_after: int, **options) -> None:
    """Run fold 0 of `config` (`train` keyword `options` added) but stop after `stop_after`
    epochs, as an interrupted run would; `run_dir/last.pt` keeps epoch `stop_after`."""
    import pytest

    import petseg.training.loop as loop

    original = loop.EpochLoader

    class InterruptError(Exception):
        pass

    class Stopping(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if self.epoch >= stop_after:
                raise InterruptError

    loop.EpochLoader = Stopping
    try:
        with pytest.raises(InterruptError):
            loop.train(config, cache, splits, 0, run_dir, device="cpu", progress=False,
                       **options)
    finally:
        loop.EpochLoader = original
