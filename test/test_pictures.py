"""MIP pictures: size, orientation (head up, patient right on the left), outlines in place."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from petseg.clinical.pictures import (
    FOOTER_PX,
    HEADER_PX,
    OUTLINE_RGB,
    PANEL_GAP_PX,
    VIEW_GAP_PX,
    axis_aligned_lps,
    mip_png,
)
from petseg.io.geometry import LAS_DIRECTION

SPACING = (2.0, 2.4, 3.0)
SIZE = (40, 30, 50)  # x, y, z voxels
ORIGIN = (10.0, -20.0, 300.0)
# lesion index boxes (x, y, z) inclusive: A on the patient's left and high, B right and low
BOX_A = ((2, 5), (4, 8), (40, 44))
BOX_B = ((30, 34), (20, 25), (5, 9))


def build_case(direction=LAS_DIRECTION):
    """PET (body SUV 1, lesions SUV 6) and mask; returns (pet, mask)."""
    suv = np.zeros(SIZE[::-1], np.float32)
    suv[2:-2, 2:-2, 2:-2] = 1.0
    mask = np.zeros(SIZE[::-1], np.uint8)
    for (x0, x1), (y0, y1), (z0, z1) in (BOX_A, BOX_B):
        suv[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 6.0
        mask[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 1
    images = []
    for array in (suv, mask):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(direction)
        images.append(image)
    return images[0], images[1]


def box_corners_mm(image: sitk.Image, box) -> np.ndarray:
    """Physical positions `[8, 3]` of the outer voxel corners of an index box."""
    corners = []
    for i in (box[0][0] - 0.5, box[0][1] + 0.5):
        for j in (box[1][0] - 0.5, box[1][1] + 0.5):
            for k in (box[2][0] - 0.5, box[2][1] + 0.5):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((i, j, k)))
    return np.asarray(corners)


def expected_boxes(pet: sitk.Image, box, pixel_mm: float):
    """Pixel boxes (row0, row1, col0, col1) of a lesion in the coronal and sagittal view.

    The frame is the axis-aligned LPS grid: columns grow with x (coronal, to the
    patient's left) or y (sagittal, to posterior), rows shrink with z (head at top).
    """
    frame = axis_aligned_lps(pet)
    low = np.asarray(frame.GetOrigin()) - np.asarray(frame.GetSpacing()) / 2
    high = low + np.asarray(frame.GetSize()) * np.asarray(frame.GetSpacing())
    corners = box_corners_mm(pet, box)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    rows = ((high[2] - hi[2]) / pixel_mm, (high[2] - lo[2]) / pixel_mm)
    coronal = (*rows, (lo[0] - low[0]) / pixel_mm, (hi[0] - low[0]) / pixel_mm)
    sagittal = (*rows, (lo[1] - low[1]) / pixel_mm, (hi[1] - low[1]) / pixel_mm)
    return coronal, sagittal


def red_pixels(path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.all(rgb == np.asarray(OUTLINE_RGB), axis=2)


def check_outlines(red: np.ndarray, pet: sitk.Image, coronal_w: int, tolerance: float) -> None:
    """Red pixels lie only in rings around the lesions' projections, and every ring is drawn."""
    allowed = np.zeros_like(red)
    for box in (BOX_A, BOX_B):
        for view, offset in zip(expected_boxes(pet, box, 2.0), (0, coronal_w + VIEW_GAP_PX),
                                strict=True):
            r0, r1, c0, c1 = view
            rows = slice(HEADER_PX + math.floor(r0 - tolerance),
                         HEADER_PX + math.ceil(r1 + tolerance))
            cols = slice(offset + math.floor(c0 - tolerance), offset + math.ceil(c1 + tolerance))
            ring = red[rows, cols]
            assert ring.sum() >= 2 * ((r1 - r0) + (c1 - c0)), (box, view)
            # the lesion's inside is not painted over
            inner = red[HEADER_PX + math.ceil(r0 + tolerance):
                        HEADER_PX + math.floor(r1 - tolerance),
                        offset + math.ceil(c0 + tolerance):
                        offset + math.floor(c1 - tolerance)]
            assert not inner.any()
            allowed[rows, cols] = True
    assert red.any() and not (red & ~allowed).any()


def test_size_orientation_and_outlines_for_las_input(tmp_path) -> None:
    pet, mask = build_case()
    path = mip_png(pet, mask, tmp_path / "mip.png")
    picture = Image.open(path)
    # coronal 40 x 2.0 mm wide, sagittal 30 x 2.4 mm; 50 x 3 mm high; 2 mm pixels
    assert picture.size == (40 + VIEW_GAP_PX + 36, HEADER_PX + 75 + FOOTER_PX)
    red = red_pixels(path)
    check_outlines(red, pet, coronal_w=40, tolerance=1.5)
    # lesion A (patient's left, high) right of B (patient's right, low) and above it
    coronal = red[:, :40]
    rows, cols = np.nonzero(coronal)
    a = cols > 20
    assert a.any() and (~a).any()
    assert rows[a].max() < rows[~a].min()
    # grey level: lesion SUV 6 of window 0..10 -> 102; body SUV 1 -> 230
    rgb = np.asarray(picture.convert("RGB")).astype(int)
    (r0, r1, c0, c1), _ = expected_boxes(pet, BOX_A, 2.0)
    centre = rgb[HEADER_PX + int((r0 + r1) / 2), int((c0 + c1) / 2)]
    assert np.all(np.abs(centre - 102) <= 2)
    assert np.all(np.abs(rgb[HEADER_PX + 40, 20] - 230) <= 2)
    assert np.all(rgb[HEADER_PX + 1, 1] == 255)  # air


def test_oblique_direction_is_resampled_upright(tmp_path) -> None:
    angle = math.radians(20.0)
    c, s = math.cos(angle), math.sin(angle)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    pet, mask = build_case(direction)
    frame = axis_aligned_lps(pet)
    assert frame.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # values survive the resampling at a lesion centre
    centre = pet.TransformContinuousIndexToPhysicalPoint((3.5, 6.0, 42.0))
    index = frame.TransformPhysicalPointToIndex(centre)
    assert frame.GetPixel(index) == pytest.approx(6.0, abs=1e-4)
    path = mip_png(pet, mask, tmp_path / "oblique.png")
    coronal_w = frame.GetSize()[0]  # 2.0 mm columns at 2.0 mm pixels
    assert Image.open(path).size[0] == coronal_w + VIEW_GAP_PX + round(
        frame.GetSize()[1] * 2.4 / 2.0)
    check_outlines(red_pixels(path), pet, coronal_w=coronal_w, tolerance=2.5)


def test_disagreement_panel_shows_where_folds_disagree(tmp_path) -> None:
    pet, mask = build_case()
    spread = np.zeros(SIZE[::-1], np.float32)
    (x0, x1), (y0, y1), (z0, z1) = BOX_B
    spread[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 0.4
    uncertainty = sitk.GetImageFromArray(spread)
    uncertainty.CopyInformation(pet)
    path = mip_png(pet, mask, tmp_path / "unc.png", uncertainty=uncertainty)
    picture = Image.open(path)
    panel_w = 40 + VIEW_GAP_PX + 36
    assert picture.size == (2 * panel_w + PANEL_GAP_PX, HEADER_PX + 75 + FOOTER_PX)
    rgb = np.asarray(picture.convert("RGB")).astype(int)
    offset = panel_w + PANEL_GAP_PX
    for box, coloured in ((BOX_B, True), (BOX_A, False)):
        (r0, r1, c0, c1), _ = expected_boxes(pet, box, 2.0)
        row, col = HEADER_PX + int((r0 + r1) / 2), int((c0 + c1) / 2)
        first, second = rgb[row, col], rgb[row, offset + col]
        assert first[0] == first[1] == first[2]  # panel 1 is grey
        if coloured:
            assert second[0] - second[2] > 100 and second[0] > second[1] > second[2]
        else:
            assert second[0] == second[1] == second[2]
    # the outlines are drawn in both panels, at the same places
    red = red_pixels(path)
    np.testing.assert_array_equal(red[:, :panel_w], red[:, offset:offset + panel_w])
