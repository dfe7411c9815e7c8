"""The fused sampler against MONAI's transforms: same geometry, same parameter distributions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from monai.networks.layers import GaussianFilter
from monai.transforms import (
    AdjustContrast,
    Affine,
    Rand3DElastic,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
)
from scipy.ndimage import gaussian_filter
from scipy.stats import ks_2samp

from petseg.training.augment import (
    SampleParams,
    adjust_intensity,
    augment_sample,
    crop_start,
    draw_params,
    gaussian_smooth,
    resample_patch,
    source_box,
)
from petseg.training.config import AugmentationConfig, TrainingConfig

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """A smooth 2-channel volume `[2, 40, 44, 48]` and a thresholded label."""
    rng = np.random.default_rng(1)
    image = np.stack([gaussian_filter(rng.random((40, 44, 48)), 2.0) for _ in range(2)])
    image = image.astype(np.float32)
    label = (image[0] > np.quantile(image[0], 0.85)).astype(np.uint8)
    return image, label


def test_identity_draw_is_an_exact_crop(volume) -> None:
    image, label = volume
    config = AugmentationConfig(patch_size=(24, 28, 32))
    out, out_label = augment_sample(image, label, SampleParams(start=(3, 5, 7)), config, CPU)
    np.testing.assert_allclose(out.numpy(), image[:, 3:27, 5:33, 7:39], atol=1e-6)
    np.testing.assert_array_equal(out_label.numpy(), label[3:27, 5:33, 7:39])


def test_float16_cache_gives_the_float16_values(volume) -> None:
    image, label = volume
    config = AugmentationConfig(patch_size=(8, 8, 8))
    half = image.astype(np.float16)
    out, _ = augment_sample(half, label, SampleParams(start=(1, 2, 3)), config, CPU)
    np.testing.assert_allclose(out.numpy(), half[:, 1:9, 2:10, 3:11].astype(np.float32),
                               atol=1e-6, rtol=0)


def test_affine_matches_monai_affine(volume) -> None:
    image, _ = volume
    params = SampleParams(start=(0, 0, 0), rotation=0.2, scale=(1.05, 0.93, 1.08),
                          translation=(2.5, -3.0, 1.5))
    ours, _ = resample_patch(torch.from_numpy(image), None, (0, 0, 0), params, image.shape[1:])
    # axial rotation = MONAI's rotation about the first spatial axis of a [z, y, x] array
    monai = Affine(rotate_params=(0.2, 0.0, 0.0), scale_params=(1.05, 0.93, 1.08),
                   translate_params=(2.5, -3.0, 1.5), padding_mode="zeros", mode="bilinear",
                   image_only=True)(torch.from_numpy(image))
    np.testing.assert_allclose(ours.numpy(), np.asarray(monai), atol=2e-5)


def test_affine_plus_elastic_matches_monai_rand3delastic(volume) -> None:
    """MONAI's Rand3DElastic displaces the grid, then applies its affine: our composition."""
    image, _ = volume
    shape = image.shape[1:]
    elastic = Rand3DElastic(sigma_range=(0.7, 0.7), magnitude_range=(0.9, 0.9), prob=1.0,
                            rotate_range=(0.2, 0, 0), translate_range=(3, 3, 3),
                            scale_range=(0.1, 0.1, 0.1), padding_mode="zeros")
    elastic.set_random_state(3)
    elastic.randomize(shape)
    monai = elastic(torch.from_numpy(image), spatial_size=shape, randomize=False)
    grid = elastic.rand_affine_grid  # its affine is drawn inside the call
    offsets = GaussianFilter(3, elastic.sigma, 3.0)(
        torch.as_tensor(elastic.rand_offset)[None])[0] * elastic.magnitude
    params = SampleParams(start=(0, 0, 0), rotation=float(grid.rotate_params[0]),
                          scale=tuple(grid.scale_params), translation=tuple(grid.translate_params),
                          sigma=elastic.sigma, magnitude=elastic.magnitude)
    assert params.rotation != 0.0 and params.scale != (1.0, 1.0, 1.0)
    ours, _ = resample_patch(torch.from_numpy(image), None, (0, 0, 0), params, shape,
                             offsets=offsets)
    np.testing.assert_allclose(ours.numpy(), np.asarray(monai), atol=2e-5)


@pytest.mark.parametrize("sigma", [0.05, 0.4, 0.7, 0.99])
def test_gaussian_smooth_equals_monai_filter(sigma: float) -> None:
    field = torch.rand(3, 9, 10, 11) * 2 - 1
    expected = GaussianFilter(3, sigma, 3.0)(field[None])[0]
    torch.testing.assert_close(gaussian_smooth(field, sigma), expected, atol=1e-6, rtol=0)


def test_source_box_is_enough(volume) -> None:
    """Sampling from the copied box equals sampling from the whole volume."""
    image, label = volume
    patch = (16, 16, 16)
    rng = np.random.default_rng(5)
    config = AugmentationConfig(patch_size=patch, affine_prob=1.0, elastic_prob=1.0)
    for _ in range(5):
        params = draw_params(rng, label.shape, config)
        lo, hi = source_box(params, patch, label.shape)
        assert all(h - lo_ < s for lo_, h, s in zip(lo, hi, label.shape, strict=True))
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        generator = torch.Generator().manual_seed(1)
        from_box, lab_box = resample_patch(torch.from_numpy(image[(slice(None), *box)]),
                                           torch.from_numpy(label[box]), lo, params, patch,
                                           generator)
        generator = torch.Generator().manual_seed(1)
        full, lab_full = resample_patch(torch.from_numpy(image), torch.from_numpy(label),
                                        (0, 0, 0), params, patch, generator)
        torch.testing.assert_close(from_box, full, atol=1e-5, rtol=0)
        assert torch.equal(lab_box, lab_full)


def test_small_volume_is_padded_symmetrically() -> None:
    image = np.ones((2, 10, 12, 6), np.float32)
    label = np.ones((10, 12, 6), np.uint8)
    config = AugmentationConfig(patch_size=(16, 16, 16))
    start = crop_start(np.random.default_rng(0), label.shape, config.patch_size)
    assert start == (-3, -2, -5)  # MONAI SpatialPad "symmetric": (16 - n) // 2 before
    out, out_label = augment_sample(image, label, SampleParams(start=start), config, CPU)
    assert out.shape == (2, 16, 16, 16)
    assert int(out_label.sum()) == 10 * 12 * 6
    assert out_label[3:13, 2:14, 5:11].all() and float(out[:, :3].abs().max()) < 1e-5


def test_crop_starts_are_uniform_over_valid_positions() -> None:
    rng = np.random.default_rng(0)
    starts = np.array([crop_start(rng, (20, 16, 30), (16, 16, 16)) for _ in range(4000)])
    assert set(starts[:, 0]) == set(range(5)) and set(starts[:, 1]) == {0}
    counts = np.bincount(starts[:, 2], minlength=15)
    assert counts.min() > 180 and counts.max() < 360  # 15 values, ~267 each


def test_label_volume_is_preserved_without_scaling() -> None:
    """Rotation, translation and elastic offsets (scale 1.0) keep a lesion's volume."""
    zz, yy, xx = np.mgrid[:64, :64, :64]
    label = ((zz - 32) ** 2 + (yy - 30) ** 2 + (xx - 34) ** 2 <= 10**2).astype(np.uint8)
    image = np.stack([label, label]).astype(np.float32)
    config = AugmentationConfig(patch_size=(48, 48, 48), affine_prob=1.0, elastic_prob=1.0,
                                scale_range=0.0, translate_voxels=3.0)
    rng = np.random.default_rng(2)
    for _ in range(6):
        params = dataclasses.replace(draw_params(rng, label.shape, config), start=(8, 8, 8))
        _, out_label = augment_sample(image, label, params, config, CPU)
        assert int(out_label.sum()) == pytest.approx(int(label.sum()), rel=0.03)


def test_scaling_changes_the_volume_by_the_scale_product() -> None:
    zz, yy, xx = np.mgrid[:64, :64, :64]
    label = ((zz - 32) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2 <= 12**2).astype(np.uint8)
    params = SampleParams(start=(8, 8, 8), scale=(1.1, 1.1, 1.1))
    _, out_label = augment_sample(label[None].astype(np.float32), label, params,
                                  AugmentationConfig(patch_size=(48, 48, 48)), CPU)
    # the grid samples 1.1x further apart: the lesion shrinks by 1.1^3
    assert int(out_label.sum()) == pytest.approx(label.sum() / 1.1**3, rel=0.03)


def _draws(config: AugmentationConfig, n: int) -> list[SampleParams]:
    rng = np.random.default_rng(11)
    return [draw_params(rng, (300, 300, 300), config) for _ in range(n)]


def test_affine_parameters_follow_monai_randaffined() -> None:
    config = AugmentationConfig()
    ours = [p for p in _draws(config, 3000) if p.scale != (1.0, 1.0, 1.0)]
    assert len(ours) / 3000 == pytest.approx(config.affine_prob, abs=0.04)
    transform = RandAffined(keys="x", prob=config.affine_prob,
                            translate_range=(config.translate_voxels,) * 3,
                            rotate_range=(config.rotate_axial_rad, 0, 0),
                            scale_range=(config.scale_range,) * 3)
    transform.set_random_state(0)
    grid = transform.rand_affine.rand_affine_grid
    rotations, scales, translations = [], [], []
    for _ in range(1500):
        grid.randomize()
        rotations.append(grid.rotate_params[0])
        scales.extend(grid.scale_params)
        translations.extend(grid.translate_params)
    assert ks_2samp([p.rotation for p in ours], rotations).pvalue > 1e-3
    assert ks_2samp([s for p in ours for s in p.scale], scales).pvalue > 1e-3
    assert ks_2samp([t for p in ours for t in p.translation], translations).pvalue > 1e-3
    assert max(abs(p.rotation) for p in ours) <= math.pi / 12
    assert max(abs(t) for p in ours for t in p.translation) <= 10.0


def test_elastic_parameters_follow_monai_rand3delastic() -> None:
    config = AugmentationConfig()
    ours = [p for p in _draws(config, 3000) if p.magnitude > 0]
    assert len(ours) / 3000 == pytest.approx(config.elastic_prob, abs=0.04)
    elastic = Rand3DElastic(sigma_range=config.elastic_sigma,
                            magnitude_range=config.elastic_magnitude, prob=1.0)
    elastic.set_random_state(0)
    sigmas, magnitudes = [], []
    for _ in range(1500):
        elastic.randomize((1, 1, 1))
        sigmas.append(elastic.sigma)
        magnitudes.append(elastic.magnitude)
    assert ks_2samp([p.sigma for p in ours], sigmas).pvalue > 1e-3
    assert ks_2samp([p.magnitude for p in ours], magnitudes).pvalue > 1e-3


def test_gamma_and_noise_follow_monai_dict_transforms() -> None:
    config = AugmentationConfig()
    draws = _draws(config, 3000)
    gammas = [p.gamma for p in draws if p.gamma is not None]
    stds = [p.noise_std for p in draws if p.noise_std is not None]
    assert len(gammas) / 3000 == pytest.approx(config.gamma_prob, abs=0.04)
    assert len(stds) / 3000 == pytest.approx(config.noise_prob, abs=0.04)
    contrast = RandAdjustContrastd(keys="x", prob=1.0, gamma=config.gamma_range)
    contrast.set_random_state(0)
    noise = RandGaussianNoised(keys="x", prob=1.0, mean=config.noise_mean, std=config.noise_std)
    noise.set_random_state(0)
    monai_gammas, monai_stds = [], []
    for _ in range(1500):
        contrast.adjuster.randomize(None)
        monai_gammas.append(contrast.adjuster.gamma_value)
        monai_stds.append(noise.rand_gaussian_noise.R.uniform(0, noise.rand_gaussian_noise.std))
    assert ks_2samp(gammas, monai_gammas).pvalue > 1e-3
    assert ks_2samp(stds, monai_stds).pvalue > 1e-3


def test_gamma_equals_monai_adjust_contrast_per_channel() -> None:
    image = torch.rand(2, 6, 7, 8) * torch.tensor([5.0, 1.0]).view(2, 1, 1, 1)
    ours = adjust_intensity(image, SampleParams(start=(0, 0, 0), gamma=1.3))
    for channel in range(2):
        expected = AdjustContrast(1.3)(image[channel : channel + 1])
        torch.testing.assert_close(ours[channel : channel + 1], torch.as_tensor(expected),
                                   atol=1e-5, rtol=1e-5)


def test_noise_is_one_field_for_all_channels_with_the_drawn_std() -> None:
    image = torch.zeros(2, 40, 40, 40)
    params = SampleParams(start=(0, 0, 0), noise_std=0.25, noise_mean=0.1)
    out = adjust_intensity(image, params, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], out[1])
    assert float(out.std()) == pytest.approx(0.25, rel=0.02)
    assert float(out.mean()) == pytest.approx(0.1, abs=0.005)


def test_positive_crops_are_centred_on_lesions() -> None:
    from petseg.training.cache import lesion_voxels

    label = np.zeros((60, 50, 70), np.uint8)
    label[50:53, 4:7, 60:63] = 1  # one small lesion near a corner
    image = label[None].astype(np.float32)
    config = AugmentationConfig(patch_size=(16, 16, 16), positive_fraction=1.0)
    rng = np.random.default_rng(0)
    voxels = lesion_voxels(label)
    assert voxels.size == 27
    for _ in range(20):
        params = dataclasses.replace(draw_params(rng, label.shape, config, voxels),
                                     rotation=0.0, scale=(1.0, 1.0, 1.0),
                                     translation=(0.0, 0.0, 0.0), magnitude=0.0)
        assert all(0 <= s <= n - 16 for s, n in zip(params.start, label.shape, strict=True))
        _, out_label = augment_sample(image, label, params, config, CPU)
        assert int(out_label.sum()) == 27
    plain = dataclasses.replace(config, positive_fraction=0.0)
    hits = sum(int(augment_sample(image, label, dataclasses.replace(
        draw_params(rng, label.shape, plain, voxels), magnitude=0.0), plain, CPU)[1].sum()) > 0
        for _ in range(20))
    assert hits < 10


def test_hot_voxels_are_high_uptake_outside_lesions() -> None:
    from petseg.training.cache import hot_voxels

    pet = np.full((10, 12, 14), 0.5, np.float32)
    label = np.zeros(pet.shape, np.uint8)
    pet[2, 3, 4] = pet[5, 6, 7] = 8.0  # bladder-like hot spots
    label[5, 6, 7] = 1  # ... one of them is a lesion
    pet[8, 8, 8] = 2.9  # below the threshold
    found = hot_voxels(pet, label, suv=3.0)
    assert found.tolist() == [int(np.ravel_multi_index((2, 3, 4), pet.shape))]


def test_crops_split_between_lesions_hot_spots_and_random_as_configured() -> None:
    from petseg.training.augment import centred_start

    shape, patch = (80, 60, 90), (16, 16, 16)
    lesion_at, hot_at = (70, 5, 80), (10, 50, 10)
    lesions = np.array([np.ravel_multi_index(lesion_at, shape)])
    hot = np.array([np.ravel_multi_index(hot_at, shape)])
    config = AugmentationConfig(patch_size=patch, positive_fraction=0.3, hot_fraction=0.4)
    lesion_start = centred_start(np.asarray(lesion_at), shape, patch)
    hot_start = centred_start(np.asarray(hot_at), shape, patch)
    rng = np.random.default_rng(1)
    starts = [draw_params(rng, shape, config, lesions, hot).start for _ in range(2000)]
    share_lesion = sum(s == lesion_start for s in starts) / len(starts)
    share_hot = sum(s == hot_start for s in starts) / len(starts)
    assert share_lesion == pytest.approx(0.3, abs=0.04)
    assert share_hot == pytest.approx(0.4, abs=0.04)
    # without hot voxels (or with hot_fraction 0) those draws become random crops
    no_hot = [draw_params(rng, shape, config, lesions, None).start for _ in range(500)]
    assert sum(s == hot_start for s in no_hot) < 10


def test_positive_plus_hot_fraction_above_one_is_refused() -> None:
    from petseg.errors import PetsegError

    with pytest.raises(PetsegError, match=r"positive_fraction \+ hot_fraction = 1\.2"):
        TrainingConfig(augmentation=AugmentationConfig(positive_fraction=0.6, hot_fraction=0.6))


def test_a_memory_mapped_cache_gives_no_warning_and_stays_untouched(volume, tmp_path) -> None:
    """The cache is memory-mapped read-only: a sample from it gives the in-RAM sample's
    values without PyTorch's "NumPy array is not writable" warning."""
    import warnings

    image, label = volume
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "label.npy", label)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    mapped_label = np.load(tmp_path / "label.npy", mmap_mode="r")
    # whole rows and columns: the label's box is a contiguous view of the memory map
    config = AugmentationConfig(patch_size=(24, 44, 48))
    params = SampleParams(start=(3, 0, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, out_label = augment_sample(mapped, mapped_label, params, config, CPU)
    reference, reference_label = augment_sample(image, label, params, config, CPU)
    np.testing.assert_array_equal(out.numpy(), reference.numpy())
    np.testing.assert_array_equal(out_label.numpy(), reference_label.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "image.npy"), image)
