"""Small synthetic PET/CT cases with real-world geometry for the inference tests.

Everything is defined in physical space (mm, LPS) and sampled on each image's own grid,
so the PET, the CT (possibly on a finer, differently oriented grid) and the lesion mask
agree physically whatever the direction matrices are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from petseg.io.geometry import LAS_DIRECTION, Geometry

PET_SPACING = (2.0364, 2.0364, 3.0)
LESION_SIGMA_MM = 8.0
LESION_PEAK_SUV = 8.0
BACKGROUND_SUV = 1.0
LESION_THRESHOLD_SUV = 2.5
TABLE_GAP_MM = 14.0


def oblique_direction(degrees: float = 20.0) -> tuple[float, ...]:
    """A rotation about z by `degrees` then about x by half of it (row-major 3x3)."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rx @ rz).reshape(-1))


def grid_points(geometry: Geometry) -> np.ndarray:
    """Physical coordinates (mm) of every voxel centre, shape `[z, y, x, 3]`."""
    zi, yi, xi = np.meshgrid(*(np.arange(n) for n in reversed(geometry.size)), indexing="ij")
    index = np.stack([xi, yi, zi], axis=-1).astype(float)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + (index * np.asarray(geometry.spacing)) @ direction.T


@dataclasses.dataclass(frozen=True)
class Phantom:
    """A body (ellipsoid, lungs), a table below it and Gaussian lesions, in mm."""

    centre: tuple[float, float, float]
    body_radii: tuple[float, float, float] = (38.0, 28.0, 50.0)
    lesions: tuple[tuple[float, float, float], ...] = ((-15.0, 0.0, -15.0), (14.0, 5.0, 20.0))

    def inside_body(self, points: np.ndarray) -> np.ndarray:
        rel = (points - np.asarray(self.centre)) / np.asarray(self.body_radii)
        return (rel**2).sum(-1) <= 1.0

    def hu(self, points: np.ndarray) -> np.ndarray:
        """CT in HU: air -1000, soft tissue 40, lungs -800, a table slab 14 mm below the body."""
        c = np.asarray(self.centre)
        ct = np.full(points.shape[:-1], -1000.0, dtype=np.float32)
        ct[self.inside_body(points)] = 40.0
        for side in (-1, 1):
            lung = (points - (c + np.array([side * 16.0, -4.0, 15.0]))) / [10.0, 10.0, 18.0]
            ct[(lung**2).sum(-1) <= 1.0] = -800.0
        # table: posterior (+y in LPS) of the body, separated by an air gap
        y0 = c[1] + self.body_radii[1] + TABLE_GAP_MM
        table = (points[..., 1] >= y0) & (points[..., 1] <= y0 + 6.0)
        table &= np.abs(points[..., 0] - c[0]) <= 45.0
        ct[table] = 300.0
        return ct

    def suv(self, points: np.ndarray) -> np.ndarray:
        """PET in SUV: 0.05 in air, 1 in the body, Gaussian lesions peaking at 8 SUV."""
        suv = np.where(self.inside_body(points), BACKGROUND_SUV, 0.05).astype(np.float32)
        for lesion in self.lesions:
            r2 = ((points - (np.asarray(self.centre) + lesion)) ** 2).sum(-1)
            suv += (LESION_PEAK_SUV - BACKGROUND_SUV) * np.exp(-r2 / (2 * LESION_SIGMA_MM**2))
        return suv.astype(np.float32)


def image_on(geometry: Geometry, values_zyx: np.ndarray) -> sitk.Image:
    """A SimpleITK image with `geometry` from a `[z, y, x]` array."""
    return geometry.image_from_array(np.ascontiguousarray(values_zyx))


def make_case(
    size: tuple[int, int, int] = (48, 48, 44),
    spacing: tuple[float, float, float] = PET_SPACING,
    origin: tuple[float, float, float] = (-31.7, 140.25, -612.5),
    direction: tuple[float, ...] = LAS_DIRECTION,
    ct_geometry: Geometry | None = None,
) -> tuple[sitk.Image, sitk.Image, sitk.Image, Phantom]:
    """PET (SUV, float32), CT (HU, int16), lesion mask (uint8, SUV > 2.5 on the PET grid).

    The phantom sits at the PET grid's centre. `ct_geometry` puts the CT on its own grid
    (default: the PET grid).
    """
    pet_geometry = Geometry(size, spacing, origin, direction)
    centre = tuple(float(v) for v in grid_points(pet_geometry).reshape(-1, 3).mean(0))
    phantom = Phantom(centre=centre)
    pet_points = grid_points(pet_geometry)
    suv = phantom.suv(pet_points)
    pet = image_on(pet_geometry, suv)
    seg = image_on(pet_geometry, lesion_truth(suv))
    ct_grid = ct_geometry or pet_geometry
    ct = image_on(ct_grid, phantom.hu(grid_points(ct_grid)).astype(np.int16))
    return pet, ct, seg, phantom


def lesion_truth(suv_zyx: np.ndarray) -> np.ndarray:
    """The reference mask: SUV above the lesion threshold (uint8 0/1)."""
    return (suv_zyx > LESION_THRESHOLD_SUV).astype(np.uint8)


def finer_ct_geometry(pet: sitk.Image, spacing: tuple[float, float, float] = (1.3, 1.3, 1.5),
                      margin_mm: float = 10.0) -> Geometry:
    """An identity-direction CT grid, finer than the PET, covering the PET box plus a margin."""
    extent = Geometry.of(pet).physical_extent_mm()
    low = extent[0] - margin_mm
    size = np.ceil((extent[1] - extent[0] + 2 * margin_mm) / np.asarray(spacing)).astype(int)
    return Geometry(tuple(int(s) for s in size), spacing, tuple(float(v) for v in low))


DECIDED_MARGIN = 1e-3
"""Two paths that agree on a probability to this (a session's update against a full rerun)
must give the same mask wherever the probability lies farther than this from the
threshold; nearer, float rounding on another machine may decide either way."""


def assert_masks_agree(mask: np.ndarray, expected: np.ndarray, probability: np.ndarray,
                       threshold: float, margin: float = DECIDED_MARGIN) -> None:
    """`mask` equals `expected` wherever `probability` (the one `expected` was thresholded
    from, same grid) lies more than `margin` (at least the two paths' largest probability
    difference) from `threshold`, which must be almost every voxel (over 99 %)."""
    decided = np.abs(np.asarray(probability) - threshold) > margin
    assert decided.mean() > 0.99, f"only {decided.mean():.1%} of the voxels are decided"
    np.testing.assert_array_equal(np.asarray(mask)[decided], np.asarray(expected)[decided])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary arrays."""
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
