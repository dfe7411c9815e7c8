"""Maximum-intensity-projection (MIP) pictures of a PET with its lesions outlined.

Every picture is drawn in the patient's frame, whatever the image's direction matrix:
the volume is first brought onto an axis-aligned LPS grid (`axis_aligned_lps`), whose
numpy array `[z, y, x]` has z growing towards the head, y towards the back and x towards
the patient's left. Coronal views then show the patient's right on the viewer's left
(radiological convention) and sagittal views show anterior on the left; the head is at
the top of both. Pixels are square in millimetres, so the aspect ratio follows the voxel
spacing. Only numpy and pillow draw (no plotting library). The helpers
(`axis_aligned_lps`, `mip_views`, `view_size_px`, `resize_view`, `grey_rgb`, `outline`)
are the one implementation of these projections; the phantom preview uses them too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from petseg.io.images import atomic_path

OUTLINE_RGB: tuple[int, int, int] = (255, 0, 0)
"""Colour of the lesion outlines; nothing else in a picture uses it."""
DISAGREEMENT_RGB: tuple[int, int, int] = (255, 150, 0)
"""Colour of high ensemble disagreement, blended over the grey PET."""
TEXT_RGB: tuple[int, int, int] = (20, 40, 120)
HEADER_PX: int = 14
"""Height of the strip above the views holding the orientation letters (R L, A P)."""
FOOTER_PX: int = 14
"""Height of the caption strip below the views."""
VIEW_GAP_PX: int = 6
"""White gap between the coronal and the sagittal view of one panel."""
PANEL_GAP_PX: int = 16
"""White gap between the PET panel and the disagreement panel."""
MAX_VIEW_PX: int = 1200
"""Longest side of one view; coarser pixels are used for very large fields of view."""

_IDENTITY = np.eye(3)


def axis_aligned_lps(image: sitk.Image, label: bool = False, fill: float = 0.0) -> sitk.Image:
    """The same volume on a grid whose axes point to patient Left, Posterior, Superior.

    Axis permutations and flips (LAS, RAS, LPS, ...) are exact (`sitk.DICOMOrient`); an
    oblique direction is then resampled onto an identity-direction grid that covers the
    image (linear for images, nearest neighbour for labels, `fill` outside).

    Args:
        image: any 3D image.
        label: True for masks (nearest-neighbour resampling if needed).
        fill: value outside the image when an oblique one is resampled (e.g. -1024 HU).

    Returns:
        An image with identity direction; its numpy array is `[S, P, L]`-ordered `[z, y, x]`.
    """
    oriented = sitk.DICOMOrient(image, "LPS")
    direction = np.asarray(oriented.GetDirection()).reshape(3, 3)
    if np.allclose(direction, _IDENTITY, atol=1e-6):
        return oriented
    size = np.asarray(oriented.GetSize(), dtype=float)
    spacing = np.asarray(oriented.GetSpacing(), dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    corners = (corners * (size - 1.0)) * spacing @ direction.T + np.asarray(oriented.GetOrigin())
    low, high = corners.min(axis=0), corners.max(axis=0)
    new_size = [int(n) for n in np.floor((high - low) / spacing + 1e-6) + 1]
    reference = sitk.Image(new_size, oriented.GetPixelID())
    reference.SetSpacing(tuple(spacing))
    reference.SetOrigin(tuple(low))
    reference.SetDirection(tuple(_IDENTITY.ravel()))
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(oriented, reference, sitk.Transform(), interpolator, fill)


@dataclasses.dataclass(frozen=True)
class MipViews:
    """Coronal and sagittal projections of an LPS-oriented volume, head at row 0.

    Attributes:
        coronal: `[rows = superior->inferior, cols = patient right->left]`.
        sagittal: `[rows = superior->inferior, cols = anterior->posterior]`.
        spacing_mm: (column spacing coronal, column spacing sagittal, row spacing) in mm.
    """

    coronal: np.ndarray
    sagittal: np.ndarray
    spacing_mm: tuple[float, float, float]


def mip_views(image_lps: sitk.Image) -> MipViews:
    """Coronal (over y) and sagittal (over x) maximum projections of an LPS image.

    Args:
        image_lps: an image from `axis_aligned_lps` (identity direction).
    """
    array = sitk.GetArrayViewFromImage(image_lps)  # [z (to head), y (to back), x (to left)]
    coronal = array.max(axis=1)[::-1]
    sagittal = array.max(axis=2)[::-1]
    sx, sy, sz = (float(s) for s in image_lps.GetSpacing())
    return MipViews(np.ascontiguousarray(coronal), np.ascontiguousarray(sagittal), (sx, sy, sz))


def display_pixel_mm(views: MipViews) -> float:
    """Display pixel size (mm): the finest spacing, coarser only beyond `MAX_VIEW_PX`."""
    sx, sy, sz = views.spacing_mm
    rows, cols_c = views.coronal.shape
    cols_s = views.sagittal.shape[1]
    longest_mm = max(rows * sz, cols_c * sx, cols_s * sy)
    return max(min(sx, sy, sz), longest_mm / MAX_VIEW_PX)


def view_size_px(shape: tuple[int, int], spacing_rc_mm: tuple[float, float],
                 pixel_mm: float) -> tuple[int, int]:
    """(width, height) in pixels of a `[rows, cols]` view with square `pixel_mm` pixels."""
    rows, cols = shape
    return (max(1, round(cols * spacing_rc_mm[1] / pixel_mm)),
            max(1, round(rows * spacing_rc_mm[0] / pixel_mm)))


def resize_view(array: np.ndarray, size: tuple[int, int], label: bool = False) -> np.ndarray:
    """Resize a 2D view to `size` (width, height): bilinear float32, or nearest -> bool."""
    if label:
        resized = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).resize(
            size, Image.Resampling.NEAREST)
        return np.asarray(resized) > 0
    resized = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize(
        size, Image.Resampling.BILINEAR)
    return np.asarray(resized)


def grey_rgb(values: np.ndarray, window: tuple[float, float],
             invert: bool = True) -> np.ndarray:
    """`[H, W]` values -> `[H, W, 3]` uint8 grey over `window` (low, high).

    Inverted (PET): `window[0]` white, `window[1]` black; else (CT) the other way round.
    """
    low, high = window
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    grey = np.round(255.0 * (1.0 - scaled if invert else scaled)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel ring just outside a 2D bool mask (8-neighbourhood)."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(padded)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            grown |= np.roll(np.roll(padded, dr, axis=0), dc, axis=1)
    return (grown & ~padded)[1:-1, 1:-1]


def _draw_view(values: np.ndarray, mask: np.ndarray | None, overlay: np.ndarray | None,
               size: tuple[int, int], window: tuple[float, float],
               overlay_range: tuple[float, float]) -> np.ndarray:
    """One `[H, W, 3]` view: inverted grey, optional overlay blend, then outlines."""
    rgb = grey_rgb(resize_view(values, size), window).astype(np.float32)
    if overlay is not None:
        low, high = overlay_range
        alpha = np.clip((resize_view(overlay, size) - low) / (high - low), 0.0, 1.0)
        colour = np.asarray(DISAGREEMENT_RGB, dtype=np.float32)
        rgb = rgb * (1.0 - 0.85 * alpha[..., None]) + colour * (0.85 * alpha[..., None])
        rgb = np.minimum(rgb, 254.0)  # a blend must never reach the outline colour
    rgb = np.round(rgb).astype(np.uint8)
    if mask is not None:
        rgb[outline(resize_view(mask, size, label=True))] = OUTLINE_RGB
    return rgb


def _lay_out(views: list[np.ndarray], height: int) -> tuple[np.ndarray, list[int]]:
    """Paste `views` (RGB `[h, w, 3]`, coronal/sagittal pairs, one pair per panel) on a
    white canvas `[height, width, 3]` uint8 below `HEADER_PX` rows, `VIEW_GAP_PX` within
    a panel and `PANEL_GAP_PX` between panels; returns the canvas and each view's left x."""
    widths = [v.shape[1] for v in views]
    n_panels = len(views) // 2
    width = sum(widths) + n_panels * VIEW_GAP_PX + (n_panels - 1) * PANEL_GAP_PX
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    positions: list[int] = []
    x = 0
    for index, view in enumerate(views):
        positions.append(x)
        canvas[HEADER_PX:HEADER_PX + view.shape[0], x:x + view.shape[1]] = view
        x += view.shape[1] + (VIEW_GAP_PX if index % 2 == 0 else PANEL_GAP_PX)
    return canvas, positions


def _label_panels(canvas: np.ndarray, positions: list[int], captions: list[tuple[str, str]],
                  size_c: tuple[int, int], size_s: tuple[int, int]) -> Image.Image:
    """`canvas` as a picture with orientation letters (R/L over the coronal view, A/P over
    the sagittal) and each panel's caption below it: the long one (`captions[p][0]`) when
    it fits the panel's width, else the short one; `size_c`, `size_s` are the views'
    (width, height) in pixels."""
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for p in range(len(positions) // 2):
        x_cor, x_sag = positions[2 * p], positions[2 * p + 1]
        draw.text((x_cor + 2, 2), "R", fill=TEXT_RGB, font=font)
        draw.text((x_cor + size_c[0] - 8, 2), "L", fill=TEXT_RGB, font=font)
        draw.text((x_sag + 2, 2), "A", fill=TEXT_RGB, font=font)
        draw.text((x_sag + size_s[0] - 8, 2), "P", fill=TEXT_RGB, font=font)
        long, short = captions[p]
        panel_width = size_c[0] + VIEW_GAP_PX + size_s[0] - 2
        caption = long if draw.textlength(long, font=font) <= panel_width else short
        draw.text((x_cor + 2, HEADER_PX + size_c[1] + 1), caption, fill=TEXT_RGB, font=font)
    return picture


def mip_png(pet: sitk.Image, mask: sitk.Image | None, path: str | Path,
            uncertainty: sitk.Image | None = None,
            suv_window: tuple[float, float] = (0.0, 10.0),
            uncertainty_range: tuple[float, float] = (0.05, 0.3)) -> Path:
    """Write coronal + sagittal PET MIPs with lesions outlined (and disagreement) as PNG.

    Layout: `HEADER_PX` rows of orientation letters, the views, `FOOTER_PX` rows of
    captions; panel 1 is
    [coronal | `VIEW_GAP_PX` | sagittal] of the PET in inverted grey, lesions outlined in
    `OUTLINE_RGB` one pixel outside their projection; with `uncertainty`, panel 2 follows
    after `PANEL_GAP_PX`: the same views in lighter grey with the maximum disagreement
    along each ray blended in `DISAGREEMENT_RGB` from `uncertainty_range[0]` (invisible)
    to `uncertainty_range[1]` (full), plus the outlines.

    Args:
        pet: PET in SUV, any direction matrix.
        mask: lesion mask on the PET grid (> 0 is lesion), or None.
        path: output `.png`, written atomically.
        uncertainty: voxel-wise fold standard deviation on the PET grid, or None.
        suv_window: SUV shown white .. black.
        uncertainty_range: standard deviations shown transparent .. fully coloured.

    Returns:
        `path`.
    """
    pet_views = mip_views(axis_aligned_lps(sitk.Cast(pet, sitk.sitkFloat32)))
    mask_views = (mip_views(axis_aligned_lps(sitk.Cast(mask > 0, sitk.sitkUInt8), label=True))
                  if mask is not None else None)
    pixel_mm = display_pixel_mm(pet_views)
    sx, sy, sz = pet_views.spacing_mm
    size_c = view_size_px(pet_views.coronal.shape, (sz, sx), pixel_mm)
    size_s = view_size_px(pet_views.sagittal.shape, (sz, sy), pixel_mm)

    def panel(overlay: MipViews | None, window: tuple[float, float]) -> list[np.ndarray]:
        return [
            _draw_view(pet_views.coronal, mask_views.coronal if mask_views else None,
                       overlay.coronal if overlay else None, size_c, window, uncertainty_range),
            _draw_view(pet_views.sagittal, mask_views.sagittal if mask_views else None,
                       overlay.sagittal if overlay else None, size_s, window, uncertainty_range),
        ]

    views = panel(None, suv_window)
    captions = [("PET MIP, SUV {:g}-{:g}".format(*suv_window), "PET")]
    if uncertainty is not None:
        unc_views = mip_views(axis_aligned_lps(sitk.Cast(uncertainty, sitk.sitkFloat32)))
        # a wider window keeps the grey pale so the disagreement colour stands out
        views += panel(unc_views, (suv_window[0], suv_window[0] + 2.5 * (suv_window[1]
                                                                         - suv_window[0])))
        captions.append(("ensemble disagreement (SD {:g}-{:g})".format(*uncertainty_range),
                         "SD"))

    canvas, positions = _lay_out(views, HEADER_PX + size_c[1] + FOOTER_PX)
    picture = _label_panels(canvas, positions, captions, size_c, size_s)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
