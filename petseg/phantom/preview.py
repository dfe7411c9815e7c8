"""Preview picture of a case: coronal PET MIP with lesion outlines, and a coronal CT slice.

numpy + pillow only. Images are reoriented to LPS first, so the picture is upright (head
at the top) and in radiological convention (patient's right on the left) whatever the
direction matrix (LAS, RAS, ...). Pixels are resampled to a square physical aspect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from petseg.clinical.pictures import (
    axis_aligned_lps,
    grey_rgb,
    mip_views,
    outline,
    resize_view,
    view_size_px,
)
from petseg.io.geometry import Geometry
from petseg.io.images import atomic_path

SUV_RANGE: tuple[float, float] = (0.0, 10.0)
CT_WINDOW_HU: tuple[float, float] = (-900.0, 500.0)
TRUTH_RGB: tuple[int, int, int] = (230, 20, 20)
PRED_RGB: tuple[int, int, int] = (0, 170, 255)
MIN_HEIGHT_PX: int = 480


def _on_grid(image: sitk.Image, reference: sitk.Image, fill: float,
             interpolator: int = sitk.sitkLinear) -> sitk.Image:
    if Geometry.of(image) == Geometry.of(reference):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, fill,
                         image.GetPixelID())


def render_preview(pet: sitk.Image, seg: sitk.Image | None, ct: sitk.Image | None,
                   pred: sitk.Image | None = None) -> np.ndarray:
    """The preview as an RGB array `[rows, columns, 3]` uint8 (MIP left, CT right).

    The projection, orientation and drawing helpers are `petseg.clinical.pictures`'; outlines
    are the one-pixel ring just outside each mask's projection.

    Args:
        pet: SUV image.
        seg: truth lesion mask on the PET grid (outlined in red), or None.
        ct: CT on any grid (resampled onto the PET grid), or None.
        pred: predicted mask on the PET grid (outlined in blue), or None.
    """
    pet_lps = axis_aligned_lps(sitk.Cast(pet, sitk.sitkFloat32))
    views = mip_views(pet_lps)
    sx, _, sz = views.spacing_mm
    rows = views.coronal.shape[0]
    # square pixels of the x spacing, finer when needed to reach MIN_HEIGHT_PX rows
    size = view_size_px(views.coronal.shape, (sz, sx), min(sx, rows * sz / MIN_HEIGHT_PX))
    mip_rgb = grey_rgb(resize_view(views.coronal, size), SUV_RANGE)
    for mask_image, colour in ((pred, PRED_RGB), (seg, TRUTH_RGB)):
        if mask_image is None:
            continue
        on_pet = _on_grid(mask_image, pet, 0, sitk.sitkNearestNeighbor) > 0
        mask_views = mip_views(axis_aligned_lps(sitk.Cast(on_pet, sitk.sitkUInt8), label=True))
        mip_rgb[outline(resize_view(mask_views.coronal, size, label=True))] = colour
    if ct is not None:
        ct_lps = axis_aligned_lps(sitk.Cast(_on_grid(ct, pet, -1024.0), sitk.sitkFloat32),
                                  fill=-1024.0)
        ct_arr = sitk.GetArrayViewFromImage(ct_lps)
        body = sitk.GetArrayViewFromImage(pet_lps) > 0.2
        ys = np.flatnonzero(body.any(axis=(0, 2)))
        y_mid = int(0.5 * (ys[0] + ys[-1])) if ys.size else ct_arr.shape[1] // 2
        slab = ct_arr[:, y_mid, :][::-1]
        ct_rgb = grey_rgb(resize_view(slab, size), CT_WINDOW_HU, invert=False)
    else:
        ct_rgb = np.zeros_like(mip_rgb)
    gap = np.full((size[1], 4, 3), 255, np.uint8)
    return np.concatenate([mip_rgb, gap, ct_rgb], axis=1)


def preview_png(pet: sitk.Image, seg: sitk.Image | None, ct: sitk.Image | None,
                path: str | Path, pred: sitk.Image | None = None) -> Path:
    """Write the preview (coronal PET MIP with outlines | coronal CT) as a PNG, atomically.

    Args:
        pet: SUV image (any direction matrix).
        seg: truth mask on the PET grid, outlined in red; None for no outline.
        ct: CT on the PET grid or its own grid; None leaves that panel black.
        path: output file (.png).
        pred: optional predicted mask on the PET grid, outlined in blue.

    Returns:
        `path`.
    """
    path = Path(path)
    rgb = render_preview(pet, seg, ct, pred)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
