"""From the lesion probability on the network grid to a 0/1 mask on the original PET grid.

Probability resampled (linear) onto the cropped PET grid, pasted into a zero volume of the
PET's size (outside the body box nothing is predicted), thresholded; optionally lesion
components smaller than a volume removed. The result carries exactly the PET's size,
spacing, origin and direction.
"""

from __future__ import annotations

import cc3d
import numpy as np
import SimpleITK as sitk

from petseg.io.geometry import CropBox, Geometry, resample_parallel, uncrop

CONNECTIVITY = 18
"""Lesion components use 18-connectivity, as the challenge's evaluation."""


def probability_on_pet_grid(
    probability: np.ndarray, grid: Geometry, crop_box: CropBox, pet_geometry: Geometry
) -> np.ndarray:
    """Probability `[D, H, W]` on `grid` -> float32 `[z, y, x]` on the full PET grid.

    Linear interpolation onto the cropped PET region (`crop_box`), zeros outside it; the
    grids' axes are parallel (`isotropic_grid`), so separable (`resample_parallel`).
    """
    cropped = resample_parallel(probability, grid, crop_box.geometry(pet_geometry), 0.0)
    return uncrop(cropped, crop_box, pet_geometry, fill=0.0)


def threshold_mask(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 0/1 mask: 1 where `probability > threshold`."""
    return (probability > threshold).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_volume_ml: float,
                            voxel_volume_ml: float) -> np.ndarray:
    """Drop 18-connected components smaller than `min_volume_ml` from a 0/1 uint8 mask."""
    if min_volume_ml <= 0 or not mask.any():
        return mask
    min_voxels = int(np.ceil(min_volume_ml / voxel_volume_ml - 1e-9))
    kept = cc3d.dust(mask.astype(bool), threshold=min_voxels, connectivity=CONNECTIVITY,
                     in_place=False)
    return kept.astype(np.uint8)


def mask_image(mask_zyx: np.ndarray, pet_geometry: Geometry) -> sitk.Image:
    """uint8 SimpleITK image with exactly the PET's size, spacing, origin and direction."""
    return pet_geometry.image_from_array(np.ascontiguousarray(mask_zyx, dtype=np.uint8))


def probability_to_mask(
    probability_zyx: np.ndarray,
    pet_geometry: Geometry,
    threshold: float = 0.5,
    min_component_ml: float = 0.0,
) -> sitk.Image:
    """Threshold a PET-grid probability and (optionally) remove small components."""
    mask = threshold_mask(probability_zyx, threshold)
    mask = remove_small_components(mask, min_component_ml, pet_geometry.voxel_volume_ml)
    return mask_image(mask, pet_geometry)
