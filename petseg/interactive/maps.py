"""Click maps: each click drawn as a small 3D Gaussian or ball of fixed physical size.

The autoPET IV organisers' nnU-Net baseline feeds PET, CT and two click maps (tumour,
background), each click a 3D Gaussian of sigma 3 voxels on the PET grid (about 6 mm for
their 2.04 x 2.04 x 3 mm voxels). Here the size is physical, so it does not depend on the
grid: sigma `radius_mm / 3`, cut to zero beyond `radius_mm`, peak 1 at the click; where
clicks overlap the larger value is kept, so a map lies in [0, 1] whatever the number of
clicks. Each click touches only the box of `radius_mm` around it: the cost grows with the
number of clicks, not with the volume. A "ball" click is 1 within `radius_mm` of the click
and 0 beyond (the small balls of the best autoPET IV entries).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from petseg.config import CLICK_SHAPES, DEFAULT_CLICK_ENCODING, ClickEncoding
from petseg.interactive.clicks import Clicks, clicks_on_grid
from petseg.io.geometry import Geometry

CLICK_RADIUS_MM = DEFAULT_CLICK_ENCODING.radius_mm
"""Default radius (mm) of a drawn click; the Gaussian's sigma is a third of it (6 mm). A
model's own is its `ModelConfig.clicks`."""


def _draw_point(volume: np.ndarray, point_zyx: np.ndarray, spacing_zyx_mm: np.ndarray,
                radius_mm: float, click_shape: str) -> None:
    """Draw one Gaussian or ball into `volume` `[D, H, W]` in place (maximum with what is
    there)."""
    reach = radius_mm / spacing_zyx_mm
    lo = np.maximum(np.floor(point_zyx - reach).astype(int), 0)
    hi = np.minimum(np.ceil(point_zyx + reach).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    sigma = radius_mm / 3.0
    distance_sq = np.zeros(tuple(hi - lo), float)
    for axis in range(3):
        offsets_mm = (np.arange(lo[axis], hi[axis]) - point_zyx[axis]) * spacing_zyx_mm[axis]
        shape = [1, 1, 1]
        shape[axis] = -1
        distance_sq = distance_sq + (offsets_mm ** 2).reshape(shape)
    blob = (np.ones_like(distance_sq) if click_shape == "ball"
            else np.exp(-distance_sq / (2.0 * sigma * sigma)))
    blob[distance_sq > radius_mm * radius_mm] = 0.0
    box = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.maximum(box, blob.astype(np.float32), out=box)


def render_click_maps(tumour_zyx: np.ndarray, background_zyx: np.ndarray,
                      shape: tuple[int, int, int],
                      spacing_zyx_mm: tuple[float, float, float],
                      radius_mm: float = CLICK_RADIUS_MM,
                      click_shape: str = DEFAULT_CLICK_ENCODING.shape) -> np.ndarray:
    """Tumour and background click maps, float32 `[2, D, H, W]` in [0, 1].

    Args:
        tumour_zyx, background_zyx: points `[N, 3]` as continuous (z, y, x) array indices
            of the target grid (may be empty; points outside it draw only their part inside).
        shape: `(D, H, W)` of the target grid.
        spacing_zyx_mm: voxel size (mm) along z, y, x.
        radius_mm: physical radius of a drawn click (sigma = radius / 3).
        click_shape: "gaussian" or "ball" (`petseg.config.CLICK_SHAPES`).
    """
    if not (radius_mm > 0 and math.isfinite(radius_mm)):
        raise ValueError(f"radius_mm {radius_mm}: must be a positive number")
    if click_shape not in CLICK_SHAPES:
        raise ValueError(f"click shape {click_shape!r}: use one of {CLICK_SHAPES}")
    spacing = np.asarray(spacing_zyx_mm, float)
    maps = np.zeros((2, *(int(s) for s in shape)), np.float32)
    for channel, points in enumerate((tumour_zyx, background_zyx)):
        for point in np.asarray(points, float).reshape(-1, 3):
            _draw_point(maps[channel], point, spacing, float(radius_mm), click_shape)
    return maps


def click_maps_on_grid(clicks: Clicks | None, pet: sitk.Image | Geometry, grid: Geometry,
                       encoding: ClickEncoding = DEFAULT_CLICK_ENCODING) -> np.ndarray:
    """The click maps float32 `[2, D, H, W]` of PET-index `clicks` on `grid` (e.g. the
    network grid `PreparedCase.grid`; `[D, H, W]` = its `[z, y, x]`), drawn as `encoding`
    says (a model's `ModelConfig.clicks`); zeros without clicks."""
    tumour, background = clicks_on_grid(clicks or Clicks(), pet, grid)
    return render_click_maps(tumour, background, tuple(reversed(grid.size)),
                             tuple(reversed(grid.spacing)), encoding.radius_mm, encoding.shape)
