"""Grids: crop boxes, isotropic network grids, orientation and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import PET_SPACING, grid_points, oblique_direction

from petseg.io.geometry import (
    IDENTITY_DIRECTION,
    LAS_DIRECTION,
    CropBox,
    Geometry,
    closest_axis_permutation,
    isotropic_grid,
    orientation_direction,
    parallel_axes,
    resample,
    resample_parallel,
    same_grid,
    target_span,
    uncrop,
)

RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"LAS": LAS_DIRECTION, "RAS": RAS_DIRECTION, "oblique": oblique_direction()}


def _geometry(direction: tuple[float, ...]) -> Geometry:
    return Geometry((30, 26, 22), PET_SPACING, (-120.5, 33.0, -850.25), direction)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_crop_box_geometry_matches_simpleitk_region_of_interest(name: str) -> None:
    parent = _geometry(DIRECTIONS[name])
    box = CropBox(index=(3, 5, 2), size=(10, 12, 7))
    roi = sitk.RegionOfInterest(parent.reference_image(), box.size, box.index)
    expected = Geometry.of(roi)
    got = box.geometry(parent)
    assert got.size == expected.size
    assert got.spacing == expected.spacing
    assert got.direction == expected.direction
    np.testing.assert_allclose(got.origin, expected.origin, atol=1e-9)


def test_uncrop_puts_the_box_back_in_place_with_zeros_around() -> None:
    parent = _geometry(LAS_DIRECTION)
    box = CropBox(index=(3, 5, 2), size=(10, 12, 7))
    full = np.arange(np.prod(parent.size), dtype=np.float32).reshape(tuple(reversed(parent.size)))
    back = uncrop(full[box.slices_zyx], box, parent, fill=0.0)
    inside = np.zeros_like(full, dtype=bool)
    inside[2:9, 5:17, 3:13] = True
    np.testing.assert_array_equal(back[inside], full[inside])
    assert not back[~inside].any()
    with pytest.raises(ValueError, match="crop box shape"):
        uncrop(full, box, parent)


def test_orientation_codes() -> None:
    np.testing.assert_array_equal(orientation_direction("LPS"), np.eye(3))
    np.testing.assert_array_equal(orientation_direction("ras"), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(
        orientation_direction("SAR"), [[0, 0, -1], [0, -1, 0], [1, 0, 0]]
    )
    with pytest.raises(ValueError, match="names an axis twice"):
        orientation_direction("RLS")
    with pytest.raises(ValueError, match="three letters"):
        orientation_direction("RX")


@pytest.mark.parametrize("direction", [LAS_DIRECTION, RAS_DIRECTION, IDENTITY_DIRECTION,
                                       (0, 1, 0, 0, 0, -1, -1, 0, 0)])
def test_axis_aligned_directions_become_exactly_ras(direction: tuple[float, ...]) -> None:
    permutation = closest_axis_permutation(direction, "RAS")
    got = np.asarray(direction, float).reshape(3, 3) @ permutation
    np.testing.assert_array_equal(got, np.diag([-1.0, -1.0, 1.0]))
    assert sorted(np.abs(permutation).sum(0)) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_isotropic_grid_is_centred_covers_the_region_and_keeps_its_axes(name: str) -> None:
    region = _geometry(DIRECTIONS[name])
    grid = isotropic_grid(region, 2.0, "RAS")
    assert grid.spacing == (2.0, 2.0, 2.0)
    region_centre = grid_points(region).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(grid_points(grid).reshape(-1, 3).mean(0), region_centre,
                               atol=1e-6)
    D = np.asarray(region.direction).reshape(3, 3)
    G = np.asarray(grid.direction).reshape(3, 3)
    # same axes, reordered/flipped: D^T G is a signed permutation
    np.testing.assert_allclose(np.abs(D.T @ G).sum(0), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.abs(D.T @ G).max(0), 1.0, atol=1e-9)
    # every voxel centre of the region lies inside the grid's voxels
    corners = grid_points(region)[[0, -1]][:, [0, -1]][:, :, [0, -1]].reshape(-1, 3)
    continuous = (corners - np.asarray(grid.origin)) @ G / 2.0
    assert (continuous >= -0.5).all()
    assert (continuous <= np.asarray(grid.size) - 0.5).all()
    # extent: ceil(size * spacing / 2) along the matching axes
    expected = sorted(int(np.ceil(n * s / 2.0)) for n, s in zip(region.size, region.spacing,
                                                               strict=True))
    assert sorted(grid.size) == expected


def test_isotropic_grid_without_orientation_keeps_the_direction() -> None:
    region = _geometry(LAS_DIRECTION)
    grid = isotropic_grid(region, 2.0)
    assert grid.direction == LAS_DIRECTION
    assert grid.size == (31, 27, 33)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_linear_resampling_reproduces_a_linear_ramp(name: str) -> None:
    source = _geometry(DIRECTIONS[name])
    points = grid_points(source)
    coefficients = np.array([0.3, -0.2, 0.1])
    ramp = (points @ coefficients).astype(np.float32)
    image = source.image_from_array(ramp)
    target = isotropic_grid(CropBox((4, 4, 4), (20, 16, 12)).geometry(source), 2.0, "RAS")
    out = sitk.GetArrayFromImage(resample(image, target))
    expected = grid_points(target) @ coefficients
    np.testing.assert_allclose(out, expected, atol=2e-4)


def test_same_grid_tolerates_rounding_only() -> None:
    a = _geometry(LAS_DIRECTION)
    assert same_grid(a, Geometry(a.size, a.spacing, tuple(o + 1e-5 for o in a.origin),
                                 a.direction))
    assert not same_grid(a, Geometry(a.size, a.spacing, tuple(o + 0.5 for o in a.origin),
                                     a.direction))
    assert not same_grid(a, Geometry(a.size, a.spacing, a.origin, IDENTITY_DIRECTION))
    assert not same_grid(a, Geometry((30, 26, 21), a.spacing, a.origin, a.direction))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_every_nth_voxel_grid_holds_the_same_physical_points(name: str) -> None:
    parent = _geometry(DIRECTIONS[name])
    coarse = parent.every((3, 2, 4))
    assert coarse.size == (10, 13, 6)  # ceil(30 / 3), ceil(26 / 2), ceil(22 / 4)
    assert coarse.spacing == (3 * PET_SPACING[0], 2 * PET_SPACING[1], 4 * PET_SPACING[2])
    np.testing.assert_allclose(grid_points(coarse), grid_points(parent)[::4, ::2, ::3],
                               rtol=0, atol=1e-9)
    assert parent.every((1, 1, 1)) == parent


def test_crop_box_between_two_voxels() -> None:
    box = CropBox.between(np.array([2, 5, 3]), np.array([9, 17, 13]))  # [z, y, x], end excluded
    assert box == CropBox(index=(3, 5, 2), size=(10, 12, 7))
    assert box.slices_zyx == (slice(2, 9), slice(5, 17), slice(3, 13))


PERMUTED_DIRECTION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0)
"""Axes reordered and flipped against RAS: the isotropic grid transposes the array."""


@pytest.mark.parametrize("name", [*sorted(DIRECTIONS), "permuted"])
@pytest.mark.parametrize("spacing", [2.0, 4.0, 1.3])
def test_separable_resampling_equals_simpleitk_linear(name: str, spacing: float) -> None:
    parent = _geometry(DIRECTIONS.get(name, PERMUTED_DIRECTION))
    values = np.random.default_rng(1).standard_normal(tuple(reversed(parent.size)))
    values = values.astype(np.float32)
    grid = isotropic_grid(parent, spacing, "RAS")
    # shifted 7 mm along each axis, so a band of the grid lies outside the parent: fill
    shifted = Geometry(grid.size, grid.spacing,
                       tuple(o + 7.0 for o in grid.origin), grid.direction)
    for target in (grid, shifted):
        expected = sitk.GetArrayFromImage(
            resample(parent.image_from_array(values), target, sitk.sitkLinear, -7.0))
        got = resample_parallel(values, parent, target, -7.0)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got == -7.0, expected == -7.0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert (got == -7.0).any()
    # and back onto the parent grid, as the probability goes back to the PET grid
    expected_back = sitk.GetArrayFromImage(
        resample(grid.image_from_array(expected), parent, sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(resample_parallel(expected, grid, parent), expected_back,
                               rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", [*sorted(DIRECTIONS), "permuted"])
def test_a_box_of_the_resampling_is_the_whole_one_there(name: str) -> None:
    """A box of the target resampled alone equals the whole resampling there, bit for bit;
    a change of the source inside a box changes the target only inside `target_span`."""
    parent = _geometry(DIRECTIONS.get(name, PERMUTED_DIRECTION))
    grid = isotropic_grid(parent, 1.3, "RAS")
    shifted = Geometry(grid.size, grid.spacing, tuple(o + 7.0 for o in grid.origin),
                       grid.direction)
    values = np.random.default_rng(2).random(tuple(reversed(parent.size)), np.float32)
    whole = resample_parallel(values, parent, shifted, -1.0)
    for low, high in (([0, 0, 0], list(whole.shape)), ([3, 0, 5], [9, 4, 6]),
                      ([0, 11, 2], [whole.shape[0], whole.shape[1], 3])):
        got = resample_parallel(values, parent, shifted, -1.0, box=(low, high))
        np.testing.assert_array_equal(got, whole[tuple(map(slice, low, high))])
    low, high = np.array([5, 7, 20]), np.array([9, 12, 30])
    changed = values.copy()
    changed[tuple(map(slice, low, high))] += 1.0
    differ = np.argwhere(resample_parallel(changed, parent, shifted, -1.0) != whole)
    span_low, span_high = target_span(parent, shifted, low, high)
    assert np.all(differ.min(axis=0) >= span_low) and np.all(differ.max(axis=0) < span_high)
    # no wider than the voxels that read the box (a voxel may read it with weight 0)
    assert np.all(span_low >= differ.min(axis=0) - 1)
    assert np.all(span_high <= differ.max(axis=0) + 2)
    assert target_span(parent, shifted, np.array([0, 0, 0]), np.array([1, 1, 0])) is None


def test_separable_resampling_refuses_grids_whose_axes_are_not_parallel() -> None:
    parent = _geometry(LAS_DIRECTION)
    oblique = _geometry(oblique_direction())
    assert parallel_axes(parent, oblique) is None
    assert parallel_axes(parent, parent) == [(0, 1.0, 0.0), (1, 1.0, 0.0), (2, 1.0, 0.0)]
    with pytest.raises(ValueError, match="axes are not parallel; use resample"):
        resample_parallel(np.zeros((22, 26, 30), np.float32), parent, oblique)
