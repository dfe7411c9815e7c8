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

from petseg.geometry import Geometry
from petseg.io import atomic_path

SUV_RANGE: tuple[float, float] = (0.0, 10.0)
CT_WINDOW_HU: tuple[float, float] = (-900.0, 500.0)
TRUTH_RGB: tuple[int, int, int] = (230, 20, 20)
PRED_RGB: tuple[int, int, int] = (0, 170, 255)
MIN_HEIGHT_PX: int = 480


def _lps_array(image: sitk.Image) -> np.ndarray:
    """`[z, y, x]` array with z towards the head, y posterior, x patient-left."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _on_grid(image: sitk.Image, reference: sitk.Image, fill: float,
             interpolator: int = sitk.sitkLinear) -> sitk.Image:
    if Geometry.of(image) == Geometry.of(reference):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, fill,
                         image.GetPixelID())


def _outline(mask: np.ndarray) -> np.ndarray:
    """Border pixels of a 2D boolean mask (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_preview(pet: sitk.Image, seg: sitk.Image | None, ct: sitk.Image | None,
                   pred: sitk.Image | None = None) -> np.ndarray:
    """The preview as an RGB array `[rows, columns, 3]` uint8 (MIP left, CT right).

    Args:
        pet: SUV image.
        seg: truth lesion mask on the PET grid (outlined in red), or None.
        ct: CT on any grid (resampled onto the PET grid), or None.
        pred: predicted mask on the PET grid (outlined in blue), or None.
    """
    spacing = np.asarray(pet.GetSpacing(), float)
    direction = np.abs(np.asarray(pet.GetDirection(), float).reshape(3, 3))
    # Spacing along the LPS axes after reorientation.
    sp_lps = direction @ spacing
    pet_arr = _lps_array(pet).astype(np.float32)
    mip = pet_arr.max(axis=1)[::-1]  # [z, x], head at the top
    lo, hi = SUV_RANGE
    grey = 255.0 * (1.0 - np.clip((mip - lo) / (hi - lo), 0.0, 1.0))
    rows, cols = mip.shape
    scale = max(1.0, MIN_HEIGHT_PX / (rows * sp_lps[2] / sp_lps[0]))
    width = round(cols * scale)
    height = round(rows * scale * sp_lps[2] / sp_lps[0])

    def up(a: np.ndarray, nearest: bool = False) -> np.ndarray:
        im = Image.fromarray(a.astype(np.uint8) if nearest else a.astype(np.float32), mode=None)
        if nearest:
            return np.asarray(im.resize((width, height), Image.NEAREST)) > 0
        return np.asarray(im.resize((width, height), Image.BILINEAR))

    mip_rgb = np.repeat(np.clip(up(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    for mask_image, colour in ((pred, PRED_RGB), (seg, TRUTH_RGB)):
        if mask_image is None:
            continue
        m = _lps_array(_on_grid(mask_image, pet, 0, sitk.sitkNearestNeighbor)) > 0
        border = _outline(up(m.any(axis=1)[::-1], nearest=True))
        mip_rgb[border] = colour
    if ct is not None:
        ct_arr = _lps_array(_on_grid(ct, pet, -1024.0)).astype(np.float32)
        body = pet_arr > 0.2
        ys = np.flatnonzero(body.any(axis=(0, 2)))
        y_mid = int(0.5 * (ys[0] + ys[-1])) if ys.size else ct_arr.shape[1] // 2
        slab = ct_arr[:, y_mid, :][::-1]
        wlo, whi = CT_WINDOW_HU
        ct_grey = 255.0 * np.clip((slab - wlo) / (whi - wlo), 0.0, 1.0)
        ct_rgb = np.repeat(np.clip(up(ct_grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        ct_rgb = np.zeros_like(mip_rgb)
    gap = np.full((height, 4, 3), 255, np.uint8)
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
