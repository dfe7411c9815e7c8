"""One case end to end: exact geometry round trips, Dice of a trivial predictor, ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_synthetic import (
    dice,
    finer_ct_geometry,
    lesion_truth,
    make_case,
    oblique_direction,
)
from tiny_models import DSCS, TINY, Constant, SuvThreshold, tiny_ensemble

from petseg.checkpoint import find_weights_dir
from petseg.config import InferenceConfig, resolve_inference_config
from petseg.errors import PetsegError
from petseg.inference.postprocessing import (
    probability_on_pet_grid,
    probability_to_mask,
    remove_small_components,
)
from petseg.inference.predictor import Predictor
from petseg.io.geometry import LAS_DIRECTION, CropBox, Geometry

RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"LAS": LAS_DIRECTION, "RAS": RAS_DIRECTION, "oblique": oblique_direction()}
SMALL = InferenceConfig(roi_size=(32, 32, 32), overlap=0.25)
SETTLED = resolve_inference_config(SMALL)  # threshold 0.5: no manifest


def _assert_same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()


@pytest.mark.parametrize("ct_grid", ["pet", "finer"])
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_trivial_predictor_round_trip_has_exact_geometry_and_high_dice(name, ct_grid) -> None:
    pet, ct, seg, _ = make_case(direction=DIRECTIONS[name])
    if ct_grid == "finer":
        ct = make_case(direction=DIRECTIONS[name], ct_geometry=finer_ct_geometry(pet))[1]
    predictor = Predictor([SuvThreshold()], TINY, SETTLED, device="cpu")
    mask = predictor.predict(pet, ct).mask
    _assert_same_geometry(mask, pet)
    assert mask.GetPixelID() == sitk.sitkUInt8
    values = sitk.GetArrayFromImage(mask)
    assert set(np.unique(values)) == {0, 1}
    truth = lesion_truth(sitk.GetArrayFromImage(pet))
    np.testing.assert_array_equal(truth, sitk.GetArrayFromImage(seg))
    assert dice(values, truth) >= 0.97


def test_ensemble_probability_is_the_weighted_mean_of_the_folds(tmp_path) -> None:
    tiny_ensemble(tmp_path / "weights", dtype=torch.float16)
    pet, ct, _, _ = make_case(size=(30, 30, 24))
    weighted = Predictor.from_weights_dir(tmp_path / "weights", SMALL, device="cpu")
    assert weighted.folds == [f"fold_{i}" for i in range(5)]
    assert weighted.weights == pytest.approx([d / sum(DSCS) for d in DSCS])
    result = weighted.predict(pet, ct, probability=True, fold_probabilities=True)
    _assert_same_geometry(result.mask, pet)
    _assert_same_geometry(result.probability, pet)
    folds = np.stack([sitk.GetArrayFromImage(f) for f in result.fold_probabilities])
    assert folds.shape[0] == 5
    ensemble = sitk.GetArrayFromImage(result.probability)
    expected = np.tensordot(np.asarray(DSCS) / sum(DSCS), folds, axes=1)
    np.testing.assert_allclose(ensemble, expected, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.mask), ensemble > 0.5)
    # the plain path (no fold maps kept) gives the same probability
    plain_path = weighted.predict(pet, ct, probability=True)
    np.testing.assert_allclose(sitk.GetArrayFromImage(plain_path.probability), ensemble,
                               atol=1e-6)
    mean = Predictor.from_weights_dir(tmp_path / "weights", InferenceConfig(
        roi_size=(32, 32, 32), overlap=0.25, ensemble="mean"), device="cpu")
    assert mean.weights == [0.2] * 5
    mean_probability = sitk.GetArrayFromImage(mean.predict(pet, ct, probability=True).probability)
    np.testing.assert_allclose(mean_probability, folds.mean(0), atol=1e-5)


def test_constant_predictors_weighted_and_plain_on_the_pet_grid() -> None:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    nets = [Constant(0.3), Constant(0.9)]
    plain = Predictor(nets, TINY, SETTLED, device="cpu").predict(pet, ct, True)
    weighted = Predictor(nets, TINY, SETTLED, weights=[3.0, 1.0],
                                       device="cpu").predict(pet, ct, True)
    case_box = sitk.GetArrayFromImage(plain.probability) > 0
    assert case_box.any() and not case_box.all()  # zeros outside the body box
    np.testing.assert_allclose(sitk.GetArrayFromImage(plain.probability)[case_box], 0.6,
                               atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(weighted.probability)[case_box], 0.45,
                               atol=1e-6)
    assert sitk.GetArrayFromImage(plain.mask).sum() == case_box.sum()
    assert sitk.GetArrayFromImage(weighted.mask).sum() == 0


def test_an_image_smaller_than_a_window_works() -> None:
    pet, ct, _, _ = make_case(size=(12, 10, 9), spacing=(4.0, 4.0, 5.0))
    predictor = Predictor([SuvThreshold()], TINY, SETTLED, device="cpu")
    mask = predictor.predict(pet, ct).mask
    _assert_same_geometry(mask, pet)
    truth = lesion_truth(sitk.GetArrayFromImage(pet))
    assert truth.sum() > 0
    assert dice(sitk.GetArrayFromImage(mask), truth) > 0.8


def test_roi_must_suit_the_network() -> None:
    with pytest.raises(PetsegError, match=r"roi_size \(30, 32, 32\): must be multiples of 4"):
        Predictor([SuvThreshold()], TINY, InferenceConfig(roi_size=(30, 32, 32)))


def test_probability_goes_back_with_zeros_outside_the_box() -> None:
    pet_geometry = Geometry((20, 18, 16), (2.0364, 2.0364, 3.0), (5.0, -7.0, 100.0),
                            LAS_DIRECTION)
    box = CropBox((4, 3, 2), (10, 9, 8))
    grid = box.geometry(pet_geometry)  # the same grid: resampling is the identity
    probability = np.random.default_rng(0).uniform(size=(8, 9, 10)).astype(np.float32)
    back = probability_on_pet_grid(probability, grid, box, pet_geometry)
    assert back.shape == (16, 18, 20)
    np.testing.assert_allclose(back[box.slices_zyx], probability, atol=1e-6)
    outside = np.ones(back.shape, bool)
    outside[box.slices_zyx] = False
    assert not back[outside].any()
    mask = probability_to_mask(back, pet_geometry, threshold=0.5)
    assert sitk.GetArrayFromImage(mask).sum() == (probability > 0.5).sum()


def test_small_components_are_removed_by_volume() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # 8 voxels
    mask[10:15, 10:15, 10:15] = 1  # 125 voxels
    mask[5, 18, 18] = 1  # 1 voxel
    kept = remove_small_components(mask, min_volume_ml=0.05, voxel_volume_ml=0.008)  # >= 7 vox
    assert kept.sum() == 133 and kept[5, 18, 18] == 0
    kept = remove_small_components(mask, min_volume_ml=0.5, voxel_volume_ml=0.008)  # >= 63 vox
    assert kept.sum() == 125
    assert remove_small_components(mask, 0.0, 0.008) is mask


def test_weights_folder_lookup(tmp_path) -> None:
    (tmp_path / "model/inner").mkdir(parents=True)
    (tmp_path / "model/inner/manifest.json").write_text("{}")
    (tmp_path / "image_weights").mkdir()
    (tmp_path / "image_weights/manifest.json").write_text("{}")
    assert find_weights_dir([tmp_path / "absent", tmp_path / "model"]) == tmp_path / "model/inner"
    assert find_weights_dir([tmp_path / "absent", tmp_path / "image_weights"]) == (
        tmp_path / "image_weights")
    with pytest.raises(PetsegError, match=r"no manifest\.json found in .*absent; pass --weights"):
        find_weights_dir([tmp_path / "absent"])


def test_a_null_threshold_takes_the_one_calibrated_for_the_weights(tmp_path) -> None:
    import dataclasses

    from petseg.checkpoint import write_thresholds

    weights = tmp_path / "weights"
    tiny_ensemble(weights)
    pet, ct, _, _ = make_case(size=(30, 30, 24))
    uncalibrated = Predictor.from_weights_dir(weights, SMALL, device="cpu")
    assert SMALL.threshold is None and uncalibrated.config.threshold == 0.5
    probability = sitk.GetArrayFromImage(uncalibrated.predict(pet, ct, True).probability)
    calibrated = round(float(np.median(probability[probability > 0])), 4)
    write_thresholds(weights, {"weighted": calibrated, "mean": 0.99}, {"seed": 1})
    predictor = Predictor.from_weights_dir(weights, SMALL, device="cpu")
    assert predictor.config.threshold == calibrated
    mask = sitk.GetArrayFromImage(predictor.predict(pet, ct).mask)
    np.testing.assert_array_equal(mask, probability > calibrated)
    assert 0 < mask.sum() < (probability > 0).sum()
    mean = Predictor.from_weights_dir(weights, dataclasses.replace(SMALL, ensemble="mean"),
                                      device="cpu")
    assert mean.config.threshold == 0.99
    explicit = Predictor.from_weights_dir(weights, dataclasses.replace(SMALL, threshold=0.3),
                                      device="cpu")
    assert explicit.config.threshold == 0.3
    with pytest.raises(PetsegError, match=r"threshold 1\.5: must be between 0 and 1"):
        Predictor.from_weights_dir(weights, dataclasses.replace(SMALL, threshold=1.5),
                                      device="cpu")
