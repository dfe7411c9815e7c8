"""Lesion report values against hand-built cases, body regions, uncertainty, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.clinical.report import (
    CSV_COLUMNS,
    BodyModel,
    lesion_report,
    peak_kernel,
    write_extras,
)
from petseg.clinical.uncertainty import fold_std
from petseg.errors import PetsegError
from petseg.io.geometry import LAS_DIRECTION
from petseg.io.images import read_image, write_image

RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def make_image(size, spacing, origin, direction, fill=0.0) -> sitk.Image:
    """A float32 image of constant `fill` with the given geometry (x, y, z order)."""
    image = sitk.GetImageFromArray(np.full(size[::-1], fill, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def physical_grid(image: sitk.Image) -> np.ndarray:
    """Physical position (mm) of every voxel centre, `[z, y, x, 3]` with (x, y, z) last."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return index @ direction.T + np.asarray(image.GetOrigin())


def like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


# ----------------------------------------------------------------------------- values

@pytest.fixture(scope="module")
def sphere_case():
    """Fine anisotropic LAS grid: a parabolic-profile sphere (R 15 mm) and a cube.

    Sphere: SUV(r) = 10 - 6 (r/R)^2 on background 1, centred on a voxel centre, so
    SUVmax 10, SUVmean 10 - 6 * 3/5 = 6.4, SUVpeak (6.2 mm ball) 10 - 6 * 3/5 (6.2/15)^2,
    volume 4/3 pi R^3. Cube: 10 x 10 x 8 voxels of SUV 3.
    """
    spacing = (0.5, 0.5, 0.6)
    pet = make_image((72, 72, 110), spacing, (12.0, -30.0, 400.0), LAS_DIRECTION, fill=1.0)
    points = physical_grid(pet)
    centre = np.asarray(pet.TransformIndexToPhysicalPoint((36, 36, 30)))
    r = np.linalg.norm(points - centre, axis=-1)
    suv = np.where(r <= 15.0, 10.0 - 6.0 * (r / 15.0) ** 2, 1.0).astype(np.float32)
    mask = (r <= 15.0).astype(np.uint8)
    suv[85:93, 30:40, 30:40] = 3.0
    mask[85:93, 30:40, 30:40] = 1
    return like(suv, pet), like(mask, pet), centre


def test_sphere_and_cube_values_match_hand_computation(sphere_case) -> None:
    pet, mask, centre = sphere_case
    report = lesion_report(mask, pet)
    assert report["n_lesions"] == 2
    sphere, cube = report["lesions"]  # largest first
    volume = 4.0 / 3.0 * math.pi * 15.0**3 / 1000.0
    assert sphere["lesion"] == 1 and cube["lesion"] == 2
    assert sphere["volume_ml"] == pytest.approx(volume, rel=0.02)
    assert sphere["suv_max"] == pytest.approx(10.0, rel=1e-6)
    assert sphere["suv_mean"] == pytest.approx(6.4, rel=0.02)
    assert sphere["suv_peak"] == pytest.approx(10.0 - 6.0 * 0.6 * (6.2 / 15.0) ** 2, rel=0.02)
    assert sphere["tlg"] == pytest.approx(6.4 * volume, rel=0.02)
    np.testing.assert_allclose(sphere["centroid_mm"], centre, atol=0.05)
    np.testing.assert_allclose(sphere["suv_max_position_mm"], centre, atol=1e-6)
    cube_ml = 10 * 10 * 8 * 0.5 * 0.5 * 0.6 / 1000.0
    assert cube["volume_ml"] == pytest.approx(cube_ml, rel=1e-9)
    assert cube["suv_max"] == pytest.approx(3.0) and cube["suv_mean"] == pytest.approx(3.0)
    cube_centre = pet.TransformContinuousIndexToPhysicalPoint((34.5, 34.5, 88.5))
    np.testing.assert_allclose(cube["centroid_mm"], cube_centre, atol=1e-6)
    assert report["tmtv_ml"] == pytest.approx(sphere["volume_ml"] + cube_ml, rel=1e-12)
    assert report["tlg"] == pytest.approx(sphere["tlg"] + 3.0 * cube_ml, rel=1e-12)
    assert report["suv_max"] == pytest.approx(10.0)


def test_peak_kernel_holds_one_ml_on_the_challenge_grid() -> None:
    offsets, weights = peak_kernel((2.0364, 2.0364, 3.0))
    volume_mm3 = weights.sum() * 2.0364 * 2.0364 * 3.0
    assert volume_mm3 == pytest.approx(4.0 / 3.0 * math.pi * 6.2**3, rel=0.01)
    # symmetric, centre voxel fully inside, reaches 6.2 mm on each axis and no further
    assert {tuple(o) for o in offsets} == {tuple(-o) for o in offsets}
    assert weights[np.flatnonzero((offsets == 0).all(axis=1))[0]] == 1.0
    assert np.abs(offsets[:, 0]).max() == 2 and np.abs(offsets[:, 2]).max() == 3


def test_uniform_lesion_peak_includes_its_surroundings() -> None:
    """A tiny uniform lesion: the 1 ml sphere reaches the background, SUVpeak < SUVmax."""
    pet = make_image((30, 30, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS_DIRECTION, fill=1.0)
    suv = sitk.GetArrayFromImage(pet)
    mask = np.zeros(suv.shape, np.uint8)
    suv[14:17, 14:17, 14:17] = 5.0
    mask[14:17, 14:17, 14:17] = 1
    report = lesion_report(like(mask, pet), like(suv, pet))
    (lesion,) = report["lesions"]
    offsets, weights = peak_kernel((1.0, 1.0, 1.0))
    centre = np.array([14, 14, 14])  # first hottest voxel in array order
    hot = np.all((offsets + centre >= 14) & (offsets + centre <= 16), axis=1)
    expected = (5.0 * weights[hot].sum() + weights[~hot].sum()) / weights.sum()
    assert lesion["suv_peak"] == pytest.approx(expected, rel=1e-9)
    assert lesion["suv_max"] == 5.0 and lesion["suv_peak"] < 2.0


def test_components_use_18_connectivity() -> None:
    pet = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION, fill=1.0)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 1] = 1  # share an edge: one lesion
    mask[5, 5, 5] = mask[6, 6, 6] = 1  # share only a corner: two lesions
    report = lesion_report(like(mask, pet), pet)
    assert report["n_lesions"] == 3
    assert [item["n_voxels"] for item in report["lesions"]] == [2, 1, 1]
    assert report["tmtv_ml"] == pytest.approx(4 * 0.008)


def test_empty_mask_gives_an_empty_report() -> None:
    pet = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION, fill=1.0)
    report = lesion_report(like(np.zeros((8, 8, 8), np.uint8), pet), pet)
    assert report["n_lesions"] == 0 and report["lesions"] == []
    assert report["tmtv_ml"] == 0 and report["tlg"] == 0 and report["suv_max"] is None


def test_mask_on_another_grid_is_refused() -> None:
    pet = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION)
    mask = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.5, 0.0, 0.0), LAS_DIRECTION)
    with pytest.raises(PetsegError, match=r"^mask: not on the grid of the PET \(origin "):
        lesion_report(mask, pet)


# ----------------------------------------------------------------------------- regions

def body_phantom(direction, legs: bool = True) -> sitk.Image:
    """A standing body (SUV 1 in air 0) with adult proportions, LPS mm, 8 mm voxels.

    Vertex at z 1750, chin 1550, narrowest neck 1490, shoulders 1440, crotch 820; arms
    beside the trunk. With `legs`, two legs down to z 300; without, the scan ends at
    z 650 in thighs that touch, and a hot bladder (SUV 30) sits at z 880.
    """
    image = make_image((75, 38, 188), (8.0, 8.0, 8.0), (0.0, 0.0, 0.0), direction)
    centre_index = (np.asarray(image.GetSize()) - 1) / 2.0
    offset = np.asarray(direction).reshape(3, 3) @ (centre_index * 8.0)
    image.SetOrigin(tuple(np.array([0.0, 0.0, 1050.0]) - offset))
    p = physical_grid(image)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    neck_radius = 45.0 + 15.0 * np.abs(z - 1490.0) / 60.0
    body = (x / 80) ** 2 + (y / 95) ** 2 + ((z - 1650) / 100) ** 2 <= 1
    body |= (x**2 + y**2 <= neck_radius**2) & (z > 1430) & (z < 1560)
    body |= ((x / 170) ** 2 + (y / 110) ** 2 <= 1) & (z > 820) & (z <= 1440)
    for side in (-1, 1):
        body |= (((x - side * 215) / 35) ** 2 + (y / 40) ** 2 <= 1) & (z > 950) & (z < 1420)
        if legs:
            body |= (((x - side * 85) / 70) ** 2 + (y / 75) ** 2 <= 1) & (z > 300) & (z <= 830)
    if not legs:
        body |= ((x / 160) ** 2 + (y / 80) ** 2 <= 1) & (z > 650) & (z <= 830)
    suv = body.astype(np.float32)
    if not legs:
        suv[np.linalg.norm(p - np.array([0.0, 0.0, 880.0]), axis=-1) <= 35.0] = 30.0
    return like(suv, image)


def z_mm(body: BodyModel, index: float) -> float:
    return body.reference.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(index)))[2]


SITES = {
    (0.0, 0.0, 1640.0): "head/neck",
    (0.0, 0.0, 1480.0): "head/neck",
    (60.0, 20.0, 1330.0): "thorax",
    (-40.0, 0.0, 1130.0): "abdomen",
    (50.0, -30.0, 900.0): "pelvis",
    (85.0, 0.0, 500.0): "extremities",
    (-215.0, 0.0, 1200.0): "extremities",
}


@pytest.mark.parametrize("direction", [LAS_DIRECTION, RAS_DIRECTION], ids=["LAS", "RAS"])
def test_body_regions_follow_the_documented_rule(direction) -> None:
    body = BodyModel.of(body_phantom(direction))
    assert body.legs
    assert z_mm(body, body.top) == pytest.approx(1750, abs=16)
    assert z_mm(body, body.neck) == pytest.approx(1490, abs=12)
    assert z_mm(body, body.crotch) == pytest.approx(830, abs=16)
    assert {site: body.region(site) for site in SITES} == SITES


def test_without_legs_the_bladder_places_the_crotch() -> None:
    body = BodyModel.of(body_phantom(LAS_DIRECTION, legs=False))
    assert not body.legs
    # 0.12 of neck-to-bladder below the bladder: 880 - 0.12 * (1490 - 880)
    assert z_mm(body, body.crotch) == pytest.approx(807, abs=16)
    sites = {**{site: region for site, region in SITES.items() if site[2] > 830},
             (85.0, 0.0, 690.0): "extremities", (85.0, 0.0, 790.0): "pelvis"}
    assert {site: body.region(site) for site in sites} == sites


def test_report_names_each_lesions_region() -> None:
    pet = body_phantom(LAS_DIRECTION)
    points = physical_grid(pet)
    suv = sitk.GetArrayFromImage(pet)
    mask = np.zeros(suv.shape, np.uint8)
    for site in SITES:
        near = np.linalg.norm(points - np.asarray(site), axis=-1) <= 12.0
        mask[near], suv[near] = 1, 6.0
    report = lesion_report(like(mask, pet), like(suv, pet))
    assert report["n_lesions"] == len(SITES)
    found = {site: [item["region"] for item in report["lesions"]
                    if np.linalg.norm(np.subtract(item["centroid_mm"], site)) < 8.0]
             for site in SITES}
    assert found == {site: [region] for site, region in SITES.items()}
    assert report["regions"] == {"head/neck": 2, "thorax": 1, "abdomen": 1, "pelvis": 1,
                                 "extremities": 2}


def test_no_body_gives_unknown_region() -> None:
    pet = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION, fill=0.0)
    assert BodyModel.of(pet).region((4.0, 4.0, 4.0)) == "unknown"


ROBUST_SITE_REGIONS = {
    "lung": "thorax", "node_hilum": "thorax", "node_mediastinum": "thorax",
    "liver": "abdomen", "spleen": "abdomen", "adrenal": "abdomen",
    "node_paraaortic": "abdomen", "node_iliac": "pelvis", "node_inguinal": "pelvis",
}


@pytest.mark.parametrize(("seed", "cohort"), [(1, "LYMPHOMA"), (10, "LUNG_CANCER")])
def test_phantom_lesions_agree_with_the_phantoms_own_numbers(seed, cohort) -> None:
    """Each phantom lesion alone: its volume, SUVmax, SUVmean; a site-consistent region."""
    from petseg.phantom import generate_case

    case = generate_case(seed, "small", cohort=cohort)
    instances = sitk.GetArrayFromImage(case.instances)
    assert len(case.lesions) >= 3
    for info in case.lesions:
        alone = like((instances == info.index).astype(np.uint8), case.pet)
        report = lesion_report(alone, case.pet)
        assert report["tmtv_ml"] == pytest.approx(info.volume_ml, rel=1e-4)
        assert report["suv_max"] == pytest.approx(info.suvmax, rel=1e-4)
        largest = report["lesions"][0]
        if report["n_lesions"] == 1:
            assert largest["suv_mean"] == pytest.approx(info.suvmean, rel=1e-4)
            np.testing.assert_allclose(largest["centroid_mm"], info.centre_mm, atol=0.1)
        expected = ROBUST_SITE_REGIONS.get(info.site, largest["region"])
        assert largest["region"] == expected, info.site


# ----------------------------------------------------------------------------- uncertainty

def test_fold_std_is_the_population_standard_deviation() -> None:
    reference = make_image((5, 4, 3), (2.0, 2.0, 3.0), (1.0, 2.0, 3.0), LAS_DIRECTION)
    rng = np.random.default_rng(3)
    arrays = [rng.random((3, 4, 5)).astype(np.float32) for _ in range(5)]
    std = fold_std([like(a, reference) for a in arrays])
    assert std.GetPixelID() == sitk.sitkFloat32
    assert std.GetOrigin() == reference.GetOrigin()
    assert std.GetDirection() == reference.GetDirection()
    np.testing.assert_allclose(sitk.GetArrayFromImage(std), np.std(arrays, axis=0), atol=1e-6)
    half = fold_std([like(np.zeros((3, 4, 5), np.float32), reference),
                     like(np.ones((3, 4, 5), np.float32), reference)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(half), 0.5)


def test_fold_std_needs_two_folds_on_one_grid() -> None:
    a = make_image((5, 4, 3), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), LAS_DIRECTION)
    b = make_image((5, 4, 4), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), LAS_DIRECTION)
    with pytest.raises(PetsegError, match="needs at least two fold models"):
        fold_std([a])
    with pytest.raises(PetsegError, match=r"^fold probability 1: not on the grid .*size"):
        fold_std([a, b])


def test_write_extras_writes_consistent_files(tmp_path, sphere_case) -> None:
    pet, mask, _ = sphere_case
    mask_zyx = sitk.GetArrayFromImage(mask)
    folds = [like(np.where(mask_zyx > 0, p, 0.0).astype(np.float32), pet)
             for p in (0.2, 0.6, 1.0)]
    paths = write_extras("case7", pet, mask, tmp_path, fold_probabilities=folds)
    assert set(paths) == {"json", "csv", "png", "uncertainty"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "case7_lesions.csv", "case7_lesions.json", "case7_mip.png", "case7_uncertainty.mha"]
    expected_sd = float(np.std([0.2, 0.6, 1.0]))
    unc = read_image(paths["uncertainty"])
    assert sitk.GetArrayFromImage(unc).max() == pytest.approx(expected_sd, rel=1e-6)
    report = json.loads(paths["json"].read_text())
    assert report["case"] == "case7" and report["n_lesions"] == 2
    assert [item["uncertainty_mean"] for item in report["lesions"]] == pytest.approx(
        [expected_sd, expected_sd], rel=1e-5)
    direct = lesion_report(mask, pet)
    assert report["tmtv_ml"] == pytest.approx(direct["tmtv_ml"], rel=1e-5)
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [*CSV_COLUMNS, "uncertainty_mean"]
    assert [row["lesion"] for row in rows] == ["1", "2"] and rows[0]["case"] == "case7"
    assert float(rows[0]["suv_peak"]) == pytest.approx(direct["lesions"][0]["suv_peak"],
                                                       rel=1e-5)
    assert float(rows[1]["centroid_z_mm"]) == pytest.approx(
        direct["lesions"][1]["centroid_mm"][2], abs=1e-3)


def test_a_one_fold_rerun_removes_the_earlier_uncertainty_map(tmp_path, sphere_case) -> None:
    pet, mask, _ = sphere_case
    folds = [like(np.full(pet.GetSize()[::-1], p, np.float32), pet) for p in (0.2, 0.6)]
    assert "uncertainty" in write_extras("case7", pet, mask, tmp_path, fold_probabilities=folds)
    paths = write_extras("case7", pet, mask, tmp_path, fold_probabilities=folds[:1])
    assert set(paths) == {"json", "csv", "png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "case7_lesions.csv", "case7_lesions.json", "case7_mip.png"]
    assert "uncertainty_mean" not in json.loads(paths["json"].read_text())["lesions"][0]


# ----------------------------------------------------------------------------- CLI

def test_report_command_writes_three_files(tmp_path, sphere_case, capsys) -> None:
    pet, mask, _ = sphere_case
    write_image(pet, tmp_path / "in" / "pet.mha")
    write_image(sitk.Cast(mask, sitk.sitkUInt8), tmp_path / "in" / "abc.nii.gz")
    code = main(["report", "--mask", str(tmp_path / "in" / "abc.nii.gz"),
                 "--pet", str(tmp_path / "in" / "pet.mha"), "--out", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "abc_lesions.csv", "abc_lesions.json", "abc_mip.png"]
    report = json.loads((tmp_path / "out" / "abc_lesions.json").read_text())
    assert report["case"] == "abc" and report["n_lesions"] == 2
    assert report["lesions"][0]["suv_max"] == pytest.approx(10.0, rel=1e-5)
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_report_command_refuses_a_mask_on_another_grid(tmp_path, capsys) -> None:
    pet = make_image((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION)
    write_image(pet, tmp_path / "pet.mha")
    write_image(make_image((8, 8, 9), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), LAS_DIRECTION),
                tmp_path / "mask.mha")
    code = main(["report", "--mask", str(tmp_path / "mask.mha"),
                 "--pet", str(tmp_path / "pet.mha"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"petseg report: error: {tmp_path / 'mask.mha'}: not on the grid of "
                   f"{tmp_path / 'pet.mha'} (size (8, 8, 9) vs (8, 8, 8)); "
                   f"resample it onto that grid first\n")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- predict --extras

def _predict_with_extras(tmp_path: Path, exit_code: int = 0) -> tuple[sitk.Image, Path, Path]:
    """`petseg predict --extras` on one synthetic case with three tiny folds, exiting with
    `exit_code`; returns the PET, the output and the extras folders."""
    from inference_synthetic import make_case
    from tiny_models import tiny_ensemble

    from petseg.config import InferenceConfig, save_json

    tiny_ensemble(tmp_path / "weights", folds=3)
    save_json(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25), tmp_path / "inf.json")
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    for kind, image in (("pet", pet), ("ct", ct)):
        write_image(image, tmp_path / "in" / "images" / kind / f"c1-{kind}.mha")
    out, extras = tmp_path / "out", tmp_path / "extras"
    code = main(["predict", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--weights", str(tmp_path / "weights"), "--config", str(tmp_path / "inf.json"),
                 "--device", "cpu", "--allow-missing-folds", "--extras", str(extras)])
    assert code == exit_code  # failed extras leave the mask but count as an error
    return pet, out, extras


def test_extras_that_fail_midway_leave_none_of_the_case_behind(tmp_path, monkeypatch) -> None:
    import petseg.clinical.report

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(petseg.clinical.report, "mip_png", full)  # after uncertainty, JSON and CSV
    _, out, extras = _predict_with_extras(tmp_path, exit_code=1)
    assert list(extras.iterdir()) == []
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["extras_error"] == "OSError: [Errno 28] No space left on device"
    assert entry["error_messages"] == [
        "extras not written: OSError: [Errno 28] No space left on device"]
    assert (out / "images" / "automated-petct-lesion-segmentation" / "c1-pet.mha").is_file()


def test_predict_extras_writes_report_picture_and_uncertainty(tmp_path) -> None:
    import cc3d

    pet, out, extras = _predict_with_extras(tmp_path)
    masks = list((out / "images" / "automated-petct-lesion-segmentation").iterdir())
    assert [p.name for p in masks] == ["c1-pet.mha"]
    assert sorted(p.name for p in extras.iterdir()) == [
        "c1-pet_lesions.csv", "c1-pet_lesions.json", "c1-pet_mip.png",
        "c1-pet_uncertainty.mha"]
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["extras"]["json"] == str(extras / "c1-pet_lesions.json")
    mask = read_image(masks[0])
    report = json.loads((extras / "c1-pet_lesions.json").read_text())
    mask_zyx = sitk.GetArrayFromImage(mask)
    assert report["n_lesions"] == cc3d.connected_components(mask_zyx, connectivity=18,
                                                            return_N=True)[1]
    assert report["tmtv_ml"] == pytest.approx(
        mask_zyx.sum() * np.prod(pet.GetSpacing()) / 1000.0, rel=1e-5)
    uncertainty = read_image(extras / "c1-pet_uncertainty.mha")
    assert uncertainty.GetSize() == pet.GetSize() and uncertainty.GetOrigin() == pytest.approx(
        pet.GetOrigin())
    spread = sitk.GetArrayFromImage(uncertainty)
    assert spread.min() >= 0.0 and spread.max() <= 0.5 and spread.max() > 0.0


def test_predict_refuses_extras_inside_the_mask_folder(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    inside = out / "images" / "automated-petct-lesion-segmentation" / "x"
    code = main(["predict", "--input", str(tmp_path), "--output", str(out),
                 "--extras", str(inside)])
    assert code == 1
    assert capsys.readouterr().err == (
        f"petseg predict: error: --extras {inside}: lies in the challenge mask folder "
        f"{inside.parent.resolve()}, which must hold only masks; choose another folder\n")
    assert not out.exists()
