"""PET/CT -> network input: CT window, body crop, isotropic grid, label."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import (
    TABLE_GAP_MM,
    finer_ct_geometry,
    grid_points,
    image_on,
    make_case,
    oblique_direction,
)

from benchmarks.cpu_stages import (
    lesion_probability,
    previous_preprocess_case,
    previous_probability_on_pet_grid,
)
from petseg.config import PreprocessingConfig
from petseg.errors import PetsegError
from petseg.evaluation.metrics import dice
from petseg.inference.postprocessing import probability_on_pet_grid
from petseg.io.geometry import LAS_DIRECTION, CropBox, Geometry
from petseg.phantom import generate_case
from petseg.preprocessing import (
    CtOnPetGrid,
    body_mask,
    fill_holes,
    locate_body,
    mask_box,
    preprocess_case,
    scale_ct,
    search_step,
)

CONFIG = PreprocessingConfig()


def test_scale_ct_clips_and_scales_to_unit_range() -> None:
    hu = np.array([-3000.0, -1024.0, 0.0, 512.0, 1024.0, 3071.0])
    np.testing.assert_allclose(scale_ct(hu, (-1024.0, 1024.0)), [0, 0, 0.5, 0.75, 1, 1])
    assert scale_ct(hu, (-1024.0, 1024.0)).dtype == np.float32
    with pytest.raises(PetsegError, match="upper bound"):
        scale_ct(hu, (100.0, -100.0))


def test_fill_holes_fills_enclosed_cavities_only() -> None:
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    mask[3:6, 3:6, 3:6] = False  # enclosed cavity
    mask[4, 4, 0:2] = False  # a dent from the border into the shell (not a hole)
    filled = fill_holes(mask)
    assert filled[4, 4, 4]
    assert not filled[4, 4, 1]
    assert filled.sum() == mask.sum() + 27


def test_body_mask_keeps_the_body_fills_lungs_and_drops_the_table() -> None:
    _, ct, _, phantom = make_case()
    hu = sitk.GetArrayFromImage(ct)
    mask = body_mask(hu, CONFIG.body_threshold_hu)
    points = grid_points(Geometry.of(ct))
    np.testing.assert_array_equal(mask, phantom.inside_body(points))
    assert (hu[mask] == -800).sum() > 100  # lungs are inside
    assert (hu == 300).sum() > 100 and not mask[hu == 300].any()  # table is out


def test_mask_box_adds_margin_in_mm_and_clips_to_the_grid() -> None:
    mask = np.zeros((20, 30, 40), bool)  # [z, y, x]
    mask[5:8, 0:4, 10:12] = True
    box = mask_box(mask, (2.0, 2.5, 3.0), margin_mm=6.0)  # margins x 3, y 3, z 2 voxels
    assert box == CropBox(index=(7, 0, 3), size=(8, 7, 7))
    assert mask_box(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0), 5.0) is None


def test_prepared_case_shapes_channels_and_values() -> None:
    pet, ct, seg, phantom = make_case()
    case = preprocess_case(pet, ct, CONFIG, seg=seg)
    d, h, w = reversed(case.grid.size)
    assert case.image.shape == (2, d, h, w) and case.image.dtype == np.float32
    assert case.label is not None and case.label.shape == (d, h, w)
    assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1}
    assert case.grid.spacing == (2.0, 2.0, 2.0)
    assert case.grid.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert case.pet_geometry == Geometry.of(pet)

    # channel 0 is PET in SUV, sampled at the grid's points
    expected_suv = phantom.suv(grid_points(case.grid))
    body = phantom.inside_body(grid_points(case.grid))
    assert np.abs(case.image[0] - expected_suv)[body].mean() < 0.05
    assert case.image[0].max() == pytest.approx(8.0, abs=0.4)
    # channel 1 is CT scaled: air 0, soft tissue (40 HU) 0.5195
    assert case.image[1].min() >= 0.0 and case.image[1].max() <= 1.0
    assert np.median(case.image[1][body]) == pytest.approx((40 + 1024) / 2048, abs=1e-3)
    # label volume matches the reference mask's volume
    seg_ml = sitk.GetArrayViewFromImage(seg).sum() * Geometry.of(pet).voxel_volume_ml
    assert case.label.sum() * 0.008 == pytest.approx(seg_ml, rel=0.1)


def test_crop_is_the_body_box_plus_margin() -> None:
    pet, ct, _, phantom = make_case()
    case = preprocess_case(pet, ct, CONFIG)
    body = phantom.inside_body(grid_points(Geometry.of(pet)))
    expected = mask_box(body, Geometry.of(pet).spacing, CONFIG.body_margin_mm)
    assert case.crop_box == expected
    # the table (posterior, +y) lies outside the crop on the PET grid
    cropped_points = grid_points(case.crop_geometry)
    table_start = phantom.centre[1] + phantom.body_radii[1] + TABLE_GAP_MM
    assert cropped_points[..., 1].max() < table_start
    # and the box is smaller than the image
    assert np.prod(case.crop_box.size) < 0.8 * np.prod(Geometry.of(pet).size)


def test_channel_order_follows_the_config() -> None:
    pet, ct, _, _ = make_case()
    a = preprocess_case(pet, ct, CONFIG)
    b = preprocess_case(pet, ct, PreprocessingConfig(channel_order=("ct", "pet")))
    np.testing.assert_array_equal(a.image[::-1], b.image)
    with pytest.raises(PetsegError, match=r"unknown channel\(s\) \['mri'\]"):
        preprocess_case(pet, ct, PreprocessingConfig(channel_order=("pet", "mri")))


def test_ct_on_a_finer_differently_oriented_grid_gives_the_same_input() -> None:
    pet, ct, _, phantom = make_case()
    ct_fine = make_case(ct_geometry=finer_ct_geometry(pet))[1]
    assert Geometry.of(ct_fine).direction != Geometry.of(pet).direction
    for case in (preprocess_case(pet, ct, CONFIG), preprocess_case(pet, ct_fine, CONFIG)):
        expected_ct = scale_ct(phantom.hu(grid_points(case.grid)), CONFIG.ct_clip_hu)
        # CT differs from the analytic phantom only at tissue borders
        assert np.mean(np.abs(case.image[1] - expected_ct) > 0.1) < 0.05
        assert case.grid.spacing == (2.0, 2.0, 2.0)
    same, fine = (preprocess_case(pet, c, CONFIG).crop_box for c in (ct, ct_fine))
    assert np.abs(np.subtract(same.index, fine.index)).max() <= 1
    assert np.abs(np.subtract(same.size, fine.size)).max() <= 2


def test_ct_partly_outside_the_pet_field_is_filled_with_air() -> None:
    pet, _, _, _ = make_case()
    small = Geometry.of(pet)
    half = Geometry((small.size[0], small.size[1], small.size[2] // 2), small.spacing,
                    small.origin, small.direction)
    ct = make_case(ct_geometry=half)[1]
    case = preprocess_case(pet, ct, CONFIG)
    points = grid_points(case.grid)
    beyond = (points[..., 2] - small.origin[2]) > (half.size[2] + 1) * small.spacing[2]
    assert beyond.any()
    assert np.all(case.image[1][beyond] == 0.0)


def test_no_body_keeps_the_whole_image_with_a_warning(caplog) -> None:
    pet, _, _, _ = make_case(size=(20, 18, 16))
    air = Geometry.of(pet).image_from_array(np.full((16, 18, 20), -1000, np.int16))
    with caplog.at_level(logging.WARNING, logger="petseg.preprocessing"):
        case = preprocess_case(pet, air, CONFIG)
    assert case.crop_box == CropBox((0, 0, 0), (20, 18, 16))
    assert "no body found" in caplog.text


WHOLE_BODY_SIZE = (90, 80, 50)
"""A PET grid (x, y, z) of 183 x 163 x 150 mm around the phantom (body 76 x 56 x 100 mm,
table below), at autoPET's voxel size."""


def _whole_grid_body(pet: sitk.Image, ct: sitk.Image) -> tuple[CropBox, np.ndarray]:
    """The oracle: the CT on the whole PET grid by plain SimpleITK, the box of the full body
    mask (largest component, holes filled) plus the margin; with that CT (HU)."""
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear,
                                              CONFIG.ct_fill_hu, sitk.sitkFloat32))
    body = body_mask(hu, CONFIG.body_threshold_hu)
    return mask_box(body, Geometry.of(pet).spacing, CONFIG.body_margin_mm), hu


@pytest.mark.parametrize(("ct_grid", "direction"), [
    ("pet", LAS_DIRECTION), ("finer", LAS_DIRECTION), ("finer", oblique_direction())])
def test_locate_body_gives_the_whole_grid_box_and_ct(ct_grid: str, direction, caplog) -> None:
    pet = make_case(size=WHOLE_BODY_SIZE, direction=direction)[0]
    pet, ct, _, _ = make_case(size=WHOLE_BODY_SIZE, direction=direction,
                              ct_geometry=None if ct_grid == "pet" else finer_ct_geometry(pet))
    assert search_step(Geometry.of(pet).spacing) == (3, 3, 2)
    with caplog.at_level(logging.DEBUG, logger="petseg.preprocessing"):
        box, hu = locate_body(CtOnPetGrid(ct, Geometry.of(pet), CONFIG.ct_fill_hu), CONFIG)
    assert "whole grid" not in caplog.text  # settled by the coarse search and its refinement
    expected_box, expected_hu = _whole_grid_body(pet, ct)
    assert box == expected_box
    assert np.prod(box.size) < 0.3 * np.prod(WHOLE_BODY_SIZE)
    if ct_grid == "pet":  # sliced, not resampled: exactly the stored values
        np.testing.assert_array_equal(hu, expected_hu[box.slices_zyx])
    else:  # the same physical points resampled: float32 rounding apart
        np.testing.assert_allclose(hu, expected_hu[box.slices_zyx], rtol=0, atol=1e-3)


def test_a_part_the_coarse_search_misses_sends_it_to_the_whole_grid(caplog) -> None:
    pet, ct, _, _ = make_case(size=WHOLE_BODY_SIZE)
    hu = sitk.GetArrayFromImage(ct)
    centre = np.array(hu.shape) // 2
    z = centre[0] | 1  # odd slice, odd row: between the coarse search's samples
    y = centre[1] - centre[1] % 3 + 1
    assert hu[z, y, centre[2]] == 40  # the wire starts in soft tissue
    hu[z, y, 3:centre[2]] = 40  # a 1-voxel wire from the body to 3 voxels off the grid's side
    wired = image_on(Geometry.of(pet), hu)
    with caplog.at_level(logging.DEBUG, logger="petseg.preprocessing"):
        box, ct_box = locate_body(CtOnPetGrid(wired, Geometry.of(pet), CONFIG.ct_fill_hu),
                                  CONFIG)
    assert "body not settled on every (3, 3, 2)-th voxel: the whole grid is searched" in caplog.text
    expected_box, expected_hu = _whole_grid_body(pet, wired)
    assert box == expected_box and box.index[0] == 0  # 3 voxels of wire + a 5-voxel margin
    np.testing.assert_array_equal(ct_box, expected_hu[box.slices_zyx])


INPUT_TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
"""Network input, current way vs SimpleITK's resampling: float32 rounding (SUV up to ~10,
CT scaled to [0, 1])."""


@pytest.mark.parametrize("ct_grid", ["pet", "finer"])
def test_preprocessing_equals_the_whole_grid_way(ct_grid: str) -> None:
    pet = make_case(size=WHOLE_BODY_SIZE)[0]
    pet, ct, _, _ = make_case(size=WHOLE_BODY_SIZE, ct_geometry=None if ct_grid == "pet"
                              else finer_ct_geometry(pet))
    new, old = preprocess_case(pet, ct, CONFIG), previous_preprocess_case(pet, ct, CONFIG)
    assert (new.crop_box, new.grid) == (old.crop_box, old.grid)
    np.testing.assert_allclose(new.image, old.image, **INPUT_TOLERANCE)


@pytest.mark.slow
def test_full_size_phantom_gives_the_previous_input_and_mask() -> None:
    phantom = generate_case(3, "full", cohort="LYMPHOMA")  # CT 512 x 512 on its own grid
    new = preprocess_case(phantom.pet, phantom.ct, CONFIG)
    old = previous_preprocess_case(phantom.pet, phantom.ct, CONFIG)
    assert (new.crop_box, new.grid) == (old.crop_box, old.grid)
    np.testing.assert_allclose(new.image, old.image, **INPUT_TOLERANCE)
    on_pet = [back(lesion_probability(case, CONFIG), case.grid, case.crop_box,
                   case.pet_geometry)
              for case, back in ((new, probability_on_pet_grid),
                                 (old, previous_probability_on_pet_grid))]
    masks = [p > 0.5 for p in on_pet]
    assert masks[0].sum() > 10_000
    assert dice(masks[0], masks[1]) >= 0.999
    # any voxel that differs lies within float noise of the threshold
    assert np.all(np.abs(on_pet[1][masks[0] != masks[1]] - 0.5) < 1e-5)
