"""How one PET/CT case becomes the network's input tensor, and what is needed to go back.

Steps (the paper's, in this order): CT onto the PET grid (linear, fill `ct_fill_hu`) when
the grids differ; a body mask from the CT (threshold, largest connected component, holes
filled) whose bounding box plus a margin is the crop; CT clipped to `ct_clip_hu` and
min-max scaled to [0, 1]; PET kept in SUV; both resampled (linear) onto an isotropic
`target_spacing_mm` grid over the crop, the label (nearest) too.

The isotropic grid keeps the PET's axes but reorders/flips them to the closest match of
`PreprocessingConfig.orientation` ("RAS": axis 0 of `[x, y, z]` points to the patient's
Right, axis 1 Anterior, axis 2 Superior; numpy `[D, H, W]` = `[z, y, x]`), so the
network always sees bodies the same way round whatever direction matrix the input file
carries (MONAI's `Orientationd("RAS")` in the authors' pipeline has the same purpose).

Speed: the CT is put on the PET grid only where it is needed (`CtOnPetGrid`): the body is
located on a grid of about 8 mm, its box found exactly on the full grid around it
(`locate_body`), and only that region is resampled; the crop box is the one the
whole-grid search (`body_box`) gives. The crop goes to the isotropic grid one axis at a
time (`resample_parallel`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import cc3d
import numpy as np
import SimpleITK as sitk

from petseg.config import CLICK_CHANNELS, IMAGE_CHANNELS, PreprocessingConfig
from petseg.errors import PetsegError
from petseg.io.geometry import (
    CropBox,
    Geometry,
    isotropic_grid,
    resample,
    resample_parallel,
    same_grid,
)

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = IMAGE_CHANNELS
"""Image channel names `PreprocessingConfig.channel_order` may use (besides `CLICK_CHANNELS`,
which are not images: the click maps are appended later, see `petseg.interactive.maps`)."""


@dataclasses.dataclass(frozen=True)
class PreparedCase:
    """A case on the network's grid, and the geometry needed to map results back.

    Attributes:
        image: float32 `[C, D, H, W]` (`[C, z, y, x]` of `grid`), channels in
            `config.image_channels` order: PET in SUV, CT scaled to [0, 1] (no click maps).
        label: uint8 `[D, H, W]` 0/1 lesion mask on `grid`, or None.
        pet_geometry: the original PET grid (output masks go there).
        crop_box: the body's box on the PET grid, (x, y, z) voxel index and size.
        grid: the isotropic network grid, physically aligned to the cropped PET region.
    """

    image: np.ndarray
    label: np.ndarray | None
    pet_geometry: Geometry
    crop_box: CropBox
    grid: Geometry

    @property
    def crop_geometry(self) -> Geometry:
        """The grid of the cropped PET region."""
        return self.crop_box.geometry(self.pet_geometry)


def ct_on_pet_grid(ct: sitk.Image, pet_geometry: Geometry, fill_hu: float) -> sitk.Image:
    """CT (HU) as float32 on the PET grid; resampled (linear, `fill_hu` outside) if needed."""
    if same_grid(Geometry.of(ct), pet_geometry):
        out = sitk.Cast(ct, sitk.sitkFloat32)
        return pet_geometry.apply(out)
    return resample(ct, pet_geometry, sitk.sitkLinear, fill_hu, sitk.sitkFloat32)


class CtOnPetGrid:
    """The CT (HU) on the PET grid, produced only for the parts asked for (`region`).

    A CT already on the PET grid (autoPET's CTres) is sliced; another is resampled (linear,
    `fill_hu` outside) onto the asked part only: the same physical points as
    `ct_on_pet_grid`, so the same values up to float32 rounding.
    """

    def __init__(self, ct: sitk.Image, pet_geometry: Geometry, fill_hu: float) -> None:
        self.ct = ct
        self.pet_geometry = pet_geometry
        self.fill_hu = float(fill_hu)
        self._array = (sitk.GetArrayViewFromImage(ct)
                       if same_grid(Geometry.of(ct), pet_geometry) else None)

    def region(self, box: CropBox, step: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
        """float32 `[z, y, x]`: the CT on every `step`-th voxel (x, y, z) of `box`."""
        if self._array is not None:
            sx, sy, sz = step
            return self._array[box.slices_zyx][::sz, ::sy, ::sx].astype(np.float32)
        grid = box.geometry(self.pet_geometry).every(step)
        image = resample(self.ct, grid, sitk.sitkLinear, self.fill_hu, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(image)


def scale_ct(ct_hu: np.ndarray, clip_hu: tuple[float, float]) -> np.ndarray:
    """CT in HU -> float32 in [0, 1]: clipped to `clip_hu`, then min-max scaled."""
    low, high = float(clip_hu[0]), float(clip_hu[1])
    if not high > low:
        raise PetsegError(f"ct_clip_hu {clip_hu}: the upper bound must exceed the lower one")
    out = np.clip(ct_hu, low, high).astype(np.float32, copy=False)  # a new array
    np.subtract(out, np.float32(low), out=out)  # in place: the same float32 operations
    np.divide(out, np.float32(high - low), out=out)
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions of a 3D bool mask that do not touch the volume's border.

    Works inside the mask's bounding box only (holes lie within it, and background on the
    box's faces touches the empty outside), which keeps it fast on whole-body volumes.
    """
    box = mask_box(mask, (1.0, 1.0, 1.0), 0.0)
    if box is None:
        return mask
    region = mask[box.slices_zyx]
    background, count = cc3d.connected_components(~region, connectivity=6, return_N=True)
    touches_border = np.zeros(count + 1, dtype=bool)
    for face in (background[0], background[-1], background[:, 0], background[:, -1],
                 background[:, :, 0], background[:, :, -1]):
        touches_border[face] = True
    touches_border[0] = True  # label 0 is the mask itself
    out = mask.copy()
    out[box.slices_zyx] |= ~touches_border[background]
    return out


def body_mask(ct_hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Body mask `[z, y, x]` bool from a CT in HU.

    Voxels above `threshold_hu`, the largest 6-connected component (drops the table, arms
    of the scanner, noise), enclosed holes (lungs, bowel gas) filled. Empty if nothing
    exceeds the threshold.
    """
    above = ct_hu > threshold_hu
    if not above.any():
        return above
    largest = cc3d.largest_k(above, k=1, connectivity=6) > 0
    return fill_holes(largest)


def margin_voxels(spacing: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Voxels `[z, y, x]` that cover `margin_mm` on a grid of `spacing` (x, y, z) mm."""
    return np.array([math.ceil(margin_mm / spacing[axis] - 1e-6) for axis in (2, 1, 0)])


def largest_component_bounds(mask_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first voxel, last voxel + 1), each `[z, y, x]`, of the largest 6-connected component
    of a bool mask (`cc3d.largest_k`'s component); None when the mask is empty."""
    labels, count = cc3d.connected_components(mask_zyx, connectivity=6, return_N=True)
    if count == 0:
        return None
    stats = cc3d.statistics(labels, no_slice_conversion=True)
    largest = 1 + int(np.argmax(stats["voxel_counts"][1:]))
    bounds = np.asarray(stats["bounding_boxes"][largest], dtype=int)  # z0, z1, y0, y1, x0, x1
    return bounds[0::2], bounds[1::2] + 1


def mask_box(mask_zyx: np.ndarray, spacing: tuple[float, float, float],
             margin_mm: float) -> CropBox | None:
    """Bounding box of a `[z, y, x]` mask plus `margin_mm`, clipped to the grid; None if empty.

    `spacing` is (x, y, z) in mm, the returned box is in (x, y, z) voxel order.
    """
    starts, sizes = [], []
    shape = mask_zyx.shape
    margins = margin_voxels(spacing, margin_mm)
    for axis_zyx in range(3):
        other = tuple(a for a in range(3) if a != axis_zyx)
        hits = np.flatnonzero(mask_zyx.any(axis=other))
        if hits.size == 0:
            return None
        margin = int(margins[axis_zyx])
        lo = max(0, int(hits[0]) - margin)
        hi = min(shape[axis_zyx], int(hits[-1]) + 1 + margin)
        starts.append(lo)
        sizes.append(hi - lo)
    return CropBox(index=tuple(reversed(starts)), size=tuple(reversed(sizes)))


def body_box(ct_hu: np.ndarray, pet_geometry: Geometry, config: PreprocessingConfig) -> CropBox:
    """The crop box: the body's bounding box on the PET grid plus `body_margin_mm`.

    `ct_hu` is `[z, y, x]` on the PET grid. Without any body voxel the whole grid is kept
    (with a warning) rather than failing.
    """
    box = mask_box(body_mask(ct_hu, config.body_threshold_hu), pet_geometry.spacing,
                   config.body_margin_mm)
    if box is None:
        log.warning("no CT voxel above %s HU: no body found, the whole image is used",
                    config.body_threshold_hu)
        return CropBox.full(pet_geometry)
    return box


BODY_SEARCH_MM = 8.0
"""`locate_body` first looks for the body on every n-th PET voxel, n the whole number of
voxels within this many mm (at least 1): 3 x 3 x 2 on autoPET's 2.04 x 2.04 x 3 mm grid,
1/18 of the voxels to resample and label. Any body is far thicker."""


def search_step(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Voxel step (x, y, z) of `locate_body`'s coarse search on a grid of `spacing` mm."""
    return tuple(max(1, int(BODY_SEARCH_MM / s + 1e-6)) for s in spacing)


def locate_body(ct: CtOnPetGrid, config: PreprocessingConfig) -> tuple[CropBox, np.ndarray]:
    """`body_box`'s crop box, and the CT in HU (float32 `[z, y, x]`) inside it.

    The largest component above `body_threshold_hu` is found on every `search_step`-th
    voxel, then again on the full grid within its box grown by one step and twice the margin.
    Found there away from that region's inner sides, it is a whole component of the full
    grid, the one `body_box` picks (the body outweighs anything else above the threshold by
    far), and its box plus the margin lies in the region. Otherwise (a part the coarse
    search missed, nothing found) the whole grid is searched with `body_box`.
    """
    geometry, threshold = ct.pet_geometry, config.body_threshold_hu
    shape = np.array(geometry.size[::-1])
    step_xyz = search_step(geometry.spacing)
    coarse = largest_component_bounds(ct.region(CropBox.full(geometry), step_xyz) > threshold)
    if coarse is not None:
        step = np.array(step_xyz[::-1])
        margin = margin_voxels(geometry.spacing, config.body_margin_mm)
        reach = step + 2 * np.maximum(margin, 1)
        first = np.maximum(coarse[0] * step - reach, 0)
        end = np.minimum((coarse[1] - 1) * step + 1 + reach, shape)
        region = CropBox.between(first, end)
        hu = ct.region(region)
        fine = largest_component_bounds(hu > threshold)
        keep_off = np.maximum(margin, 1)
        if fine is not None and np.all((fine[0] >= keep_off) | (first == 0)) and np.all(
                (fine[1] <= end - first - keep_off) | (end == shape)):
            box = CropBox.between(np.maximum(first + fine[0] - margin, 0),
                                  np.minimum(first + fine[1] + margin, shape))
            inside = CropBox(tuple(int(a - b) for a, b in zip(box.index, region.index,
                                                              strict=True)), box.size)
            return box, hu[inside.slices_zyx]
    log.debug("body not settled on every %s-th voxel: the whole grid is searched", step_xyz)
    hu = ct.region(CropBox.full(geometry))
    box = body_box(hu, geometry, config)
    return box, hu[box.slices_zyx]


def preprocess_case(
    pet: sitk.Image,
    ct: sitk.Image,
    config: PreprocessingConfig,
    seg: sitk.Image | None = None,
) -> PreparedCase:
    """PET (SUV) + CT (HU) [+ lesion mask] -> `PreparedCase` on the isotropic network grid.

    Args:
        pet: PET in SUV, any 3D grid; its grid is the reference for everything.
        ct: CT in HU, on the PET grid or any overlapping grid.
        config: the checkpoint's preprocessing settings.
        seg: optional lesion mask (any integer image, > 0 is lesion) on an overlapping grid.

    Returns:
        `PreparedCase` with `image` float32 `[C, D, H, W]` and `label` uint8 `[D, H, W]`.
    """
    unknown = [name for name in config.channel_order if name not in CHANNELS + CLICK_CHANNELS]
    if unknown:
        raise PetsegError(
            f"channel_order {config.channel_order}: unknown channel(s) {unknown}; use "
            f"{CHANNELS + CLICK_CHANNELS}"
        )
    box, ct_hu = locate_body(CtOnPetGrid(ct, Geometry.of(pet), config.ct_fill_hu), config)
    return crop_to_grid(pet, box, ct_hu, config, seg)


def crop_to_grid(pet: sitk.Image, box: CropBox, ct_hu: np.ndarray, config: PreprocessingConfig,
                 seg: sitk.Image | None = None) -> PreparedCase:
    """The body box of the PET (SUV) and of the CT (HU, float32 `[z, y, x]` on the box, as
    `locate_body` gives it) -> `PreparedCase` on the isotropic network grid over the box.

    Cropped first (the paper's order), so scaling and resampling touch only the body box.
    """
    pet_geometry = Geometry.of(pet)
    crop_geometry = box.geometry(pet_geometry)
    grid = isotropic_grid(crop_geometry, config.target_spacing_mm, config.orientation)
    fill_scaled = float(scale_ct(np.array([config.ct_fill_hu]), config.ct_clip_hu)[0])
    crops = {  # the grids' axes are parallel (`isotropic_grid`): separable resampling
        "pet": (sitk.GetArrayViewFromImage(pet)[box.slices_zyx], 0.0),
        "ct": (scale_ct(ct_hu, config.ct_clip_hu), fill_scaled),
    }
    image = np.empty((len(config.image_channels), *reversed(grid.size)), np.float32)
    for channel, name in enumerate(config.image_channels):
        values, fill = crops[name]
        image[channel] = resample_parallel(values, crop_geometry, grid, fill)

    label = None
    if seg is not None:
        seg_grid = resample(seg, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkFloat32)
        label = (sitk.GetArrayViewFromImage(seg_grid) > 0).astype(np.uint8)
    return PreparedCase(image=image, label=label, pet_geometry=pet_geometry, crop_box=box,
                        grid=grid)


SKIP_THRESHOLD_HU = -900.0
"""CT above this counts as body for window skipping: everything denser than air, lung
parenchyma included, so a window inside a lung is never skipped."""


def body_mask_for_windows(image: np.ndarray | Any,
                          preprocessing: PreprocessingConfig) -> np.ndarray | None:
    """`[D, H, W]` bool: voxels of the CT channel denser than air (`SKIP_THRESHOLD_HU`).

    `image` is the network input `[C, D, H, W]` (numpy or torch) with the CT clipped and
    scaled as `preprocessing` says; None when the channels hold no CT.
    """
    if "ct" not in preprocessing.channel_order:
        return None
    channel = preprocessing.channel_order.index("ct")
    threshold = float(scale_ct(np.array([SKIP_THRESHOLD_HU]), preprocessing.ct_clip_hu)[0])
    mask = image[channel] > threshold
    return mask.cpu().numpy() if hasattr(mask, "cpu") else np.asarray(mask)
