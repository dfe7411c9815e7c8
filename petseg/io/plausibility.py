"""What a PET/CT study can be, and what a result can be: checks by principle.

Inputs (called by `petseg.io.cases.read_case`, after the header checks of
`petseg.io.images` and beside the unit checks of `check_units`):
- physical extent along each image axis (`check_extent`): refused where no network can see
  a body, warned where the image is smaller than any PET/CT field of view;
- dynamic range and value range of the PET in SUV and the CT in HU
  (`check_value_ranges`, on the 1st and 99.9th percentiles).

Results (called by `petseg.runs.writers`): a lesion volume no patient has
(`implausible_result`). The thresholds and their reasons are tabled in docs/inference.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError

log = logging.getLogger(__name__)

MIN_EXTENT_MM = 16.0
"""Refused below this along any axis: the 2 mm working grid then holds fewer than 8 voxels,
and the network halves each axis four times, so its deepest levels see padding only (a
PET two slices thick is 6 mm)."""
WARN_SLICE_EXTENT_MM = 150.0
"""Warned below this along the slice axis: shorter than one PET bed position (15-26 cm);
a limited study such as head and neck spans at least one."""
WARN_TRANSAXIAL_EXTENT_MM = 250.0
"""Warned below this across the slices: narrower than any PET or CT reconstruction's field
of view (brain 25 cm, body 50-70 cm); the image was cropped to a part of the body."""
MAX_SLICE_EXTENT_MM = 2500.0
"""Refused above this along the slice axis: longer than a body and than any scanner's
couch travel; a spacing in the wrong unit."""
MAX_TRANSAXIAL_EXTENT_MM = 1200.0
"""Refused above this across the slices: wider than any scanner's bore (at most 80 cm)."""

MIN_PET_RANGE_SUV = 0.5
"""PET refused when its 99.9th minus 1st percentile is below this: air is about 0 SUV and
tissue about 1, brain and bladder far above, so less is a blank or constant image."""
WARN_PET_PEAK_SUV = 2.0
"""PET warned when its 99.9th percentile is below this: FDG in brain, heart, kidneys or
bladder exceeds 2 SUV in every study, so the image is scaled too low or is not FDG."""
MIN_CT_RANGE_HU = 100.0
"""CT refused when its 99.9th minus 1st percentile is below this: fat (-100 HU) and soft
tissue (+40 HU) alone differ by 140 HU, air and bone by far more."""
MIN_CT_HU = -3100.0
"""CT refused when its 1st percentile is below this: scanners write at least -3024 HU, the
padding outside their reconstruction circle; lower is another unit or scale."""
MAX_CT_HU = 4000.0
"""CT refused when its 99.9th percentile is above this: bone stays below 2000 HU and metal,
above the 12-bit +3071 HU, fills far less than 0.1 % of a body's image."""

IMPLAUSIBLE_LESION_ML = 10_000.0
"""A lesion volume above this is flagged: ten litres is well beyond the largest total
metabolic tumour volumes reported (bulky lymphoma, a few litres)."""
IMPLAUSIBLE_BODY_FRACTION = 0.5
"""A mask covering more than this fraction of the body (PET voxels of at least `BODY_SUV`)
is flagged: most of a body is not tumour."""
BODY_SUV = 0.2
"""PET voxels at or above this count as body: tissue takes up FDG (0.5-1.5 SUV), air stays
at noise level."""


def axis_extents_mm(image: sitk.Image) -> np.ndarray:
    """Physical length of the image along each index axis (x, y, slices), mm: voxels x
    spacing (the voxels' boxes, not their centres)."""
    return np.asarray(image.GetSize(), float) * np.asarray(image.GetSpacing(), float)


def check_extent(image: sitk.Image, path: Path, modality: str, smallest: bool = True) -> None:
    """Refuse an image larger than any body (`MAX_SLICE_EXTENT_MM`,
    `MAX_TRANSAXIAL_EXTENT_MM`); with `smallest` (the PET; a CT's is measured against the
    PET by `petseg.io.case_checks.check_overlap`) also one thinner than `MIN_EXTENT_MM` along an
    axis, and warn below one bed position (`WARN_SLICE_EXTENT_MM`) or a field of view
    (`WARN_TRANSAXIAL_EXTENT_MM`)."""
    extent = axis_extents_mm(image)
    shown = " x ".join(f"{v:.0f}" for v in extent)
    what = f"{path}: {modality} of {shown} mm (x, y, slices)"
    if smallest and extent.min() < MIN_EXTENT_MM:
        raise PetsegError(
            f"{what} is thinner than {MIN_EXTENT_MM:g} mm along an axis, too little of a "
            f"body for any whole-body network; give the whole study ({image.GetSize()[2]} "
            "slices may be a single bed or a partial export)")
    if extent[2] > MAX_SLICE_EXTENT_MM or extent[:2].max() > MAX_TRANSAXIAL_EXTENT_MM:
        raise PetsegError(
            f"{what} is larger than any body or scanner (up to {MAX_TRANSAXIAL_EXTENT_MM:g} mm "
            f"across, {MAX_SLICE_EXTENT_MM:g} mm long); write the image with its voxel size "
            "in mm")
    if not smallest:
        return
    if extent[2] < WARN_SLICE_EXTENT_MM:
        log.warning("%s is shorter than one PET bed position (%g mm); lesions near its ends "
                    "may be missed", what, WARN_SLICE_EXTENT_MM)
    if extent[:2].min() < WARN_TRANSAXIAL_EXTENT_MM:
        log.warning("%s is narrower than any scanner's field of view (%g mm): cropped; "
                    "lesions near its edges may be missed", what, WARN_TRANSAXIAL_EXTENT_MM)


def check_value_ranges(pet_low_high: tuple[float, float], ct_low_high: tuple[float, float],
                       pet_path: Path, ct_path: Path) -> None:
    """Refuse a PET or CT without contrast (`MIN_PET_RANGE_SUV`, `MIN_CT_RANGE_HU`) or a CT
    outside any Hounsfield range (`MIN_CT_HU`, `MAX_CT_HU`); warn about a PET that never
    reaches `WARN_PET_PEAK_SUV`. Arguments are the 1st and 99.9th percentiles."""
    pet_low, pet_high = pet_low_high
    ct_low, ct_high = ct_low_high
    if pet_high - pet_low < MIN_PET_RANGE_SUV:
        raise PetsegError(
            f"{pet_path}: no contrast (1st to 99.9th percentile {pet_low:.3g} to {pet_high:.3g} "
            f"SUV, less than {MIN_PET_RANGE_SUV:g} apart); a PET has air near 0 and organs above "
            "1 SUV: give the study's reconstructed PET in SUV")
    if ct_high - ct_low < MIN_CT_RANGE_HU:
        raise PetsegError(
            f"{ct_path}: no contrast (1st to 99.9th percentile {ct_low:.4g} to {ct_high:.4g}, "
            f"less than {MIN_CT_RANGE_HU:g} HU apart); a body's CT holds fat, soft tissue and "
            "bone: give the study's CT in HU")
    if ct_low < MIN_CT_HU or ct_high > MAX_CT_HU:
        raise PetsegError(
            f"{ct_path}: values {ct_low:.4g} to {ct_high:.4g} (1st to 99.9th percentile) lie "
            f"outside any Hounsfield range ({MIN_CT_HU:g} to {MAX_CT_HU:g}); apply the CT's "
            "rescale slope and intercept to get HU")
    if pet_high < WARN_PET_PEAK_SUV:
        log.warning("%s: 99.9th percentile %.2f SUV, below the %g SUV that brain, heart or "
                    "bladder reach in any FDG study; check the SUV scaling", pet_path, pet_high,
                    WARN_PET_PEAK_SUV)


def implausible_result(mask: sitk.Image, pet: sitk.Image) -> str | None:
    """Why the lesion mask (uint8 0/1 on the PET grid) is a result no patient can have
    (`IMPLAUSIBLE_LESION_ML`, `IMPLAUSIBLE_BODY_FRACTION`), or None."""
    lesion = sitk.GetArrayViewFromImage(mask).astype(bool)
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    lesion_ml = float(lesion.sum()) * voxel_ml
    body = sitk.GetArrayViewFromImage(pet) >= BODY_SUV
    body_ml = float((body | lesion).sum()) * voxel_ml
    if lesion_ml > IMPLAUSIBLE_LESION_ML:
        return (f"{lesion_ml:.1f} ml of lesion is more than any reported tumour burden "
                f"({IMPLAUSIBLE_LESION_ML:g} ml); check the weights (an untrained fold?)")
    if body_ml > 0 and lesion_ml > IMPLAUSIBLE_BODY_FRACTION * body_ml:
        return (f"{lesion_ml:.1f} ml of lesion is {100 * lesion_ml / body_ml:.0f}% of the body "
                f"({body_ml:.1f} ml at or above {BODY_SUV:g} SUV), more than "
                f"{100 * IMPLAUSIBLE_BODY_FRACTION:.0f}%; check the weights and the PET's SUV")
    return None
