"""What a PET/CT pair's values and extents must be before a case runs: the PET in SUV, the
CT in HU (not swapped, not in Bq/ml, no offset), the CT covering the PET.

`petseg.io.cases.read_case` applies them (with `petseg.io.plausibility`'s extent and range
checks); each refusal is one line naming the file, what was found and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.geometry import Geometry

log = logging.getLogger(__name__)


MIN_AXIAL_COVERAGE = 0.5
"""A CT covering less of the PET's axial length than this is refused: the attenuation-
correction CT of a PET/CT study spans the whole PET (autoPET's CTres: 100 %), so less
than half is another study, a cropped export or a broken header."""
WARN_AXIAL_COVERAGE = 0.95
"""Below this axial coverage the uncovered slices are treated as air: warned."""
MIN_TRANSAXIAL_COVERAGE = 0.25
"""Refused below this fraction of the PET's width in x or y: a CT's 50 cm field of view
covers 70 % or more of a 70 cm PET field of view."""


def check_overlap(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path) -> None:
    """Refuse a CT that covers too little of the PET (`MIN_AXIAL_COVERAGE`,
    `MIN_TRANSAXIAL_COVERAGE`), warn below `WARN_AXIAL_COVERAGE`.

    Extents are the voxels' physical boxes (centres +- half a voxel), so boxes that only
    touch in a plane cover 0 %.
    """
    def box(image: sitk.Image) -> np.ndarray:
        geometry = Geometry.of(image)
        centres = geometry.physical_extent_mm()
        half = 0.5 * np.abs(np.asarray(geometry.direction).reshape(3, 3)) @ geometry.spacing
        return np.stack([centres[0] - half, centres[1] + half])

    pet_box, ct_box = box(pet), box(ct)
    covered = np.minimum(pet_box[1], ct_box[1]) - np.maximum(pet_box[0], ct_box[0])
    fraction = np.clip(covered / (pet_box[1] - pet_box[0]), 0.0, 1.0)
    span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*ct_box, strict=True))
    pet_span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*pet_box, strict=True))
    if fraction[2] < MIN_AXIAL_COVERAGE or min(fraction[:2]) < MIN_TRANSAXIAL_COVERAGE:
        raise PetsegError(
            f"{ct_path}: covers {100 * fraction[0]:.0f}% x {100 * fraction[1]:.0f}% x "
            f"{100 * fraction[2]:.0f}% (x, y, z) of the PET {pet_path.name} (CT {span} mm, "
            f"PET {pet_span} mm); check both images come from the same study and their "
            "headers (spacing, origin, direction)"
        )
    if fraction[2] < WARN_AXIAL_COVERAGE:
        log.warning("%s: covers only %.0f%% of the PET's axial length; the rest is treated as "
                    "air and lesions there may be missed", ct_path, 100 * fraction[2])


MAX_PLAUSIBLE_SUV = 500.0
"""A PET whose 99.9th percentile is above this is not in SUV (Bq/ml runs to thousands)."""
AIR_HU = -500.0
"""A whole-body CT in HU has air (about -1000 HU) around the body, below this."""
MIN_SUV_REFUSED = -0.5
"""1st percentile of a PET below this is refused: OSEM reconstructions are non-negative
and filtered ones dip a few hundredths of an SUV below 0 in air, so it is an offset."""
MIN_SUV_WARNED = -0.1
"""1st percentile below this (above `MIN_SUV_REFUSED`) is warned about."""
MIN_PET_LIKE, MAX_PET_LIKE = 1.0, 100.0
"""A 'CT' without air whose 99.9th percentile lies between these looks like an SUV image
(brain and bladder put a PET's above 1 SUV; bone puts a CT's above 100 HU)."""


UNIT_CHECK_VOXELS = 500_000
"""The unit checks' percentiles read every n-th voxel per axis, n = int(cube root of
voxels / this): every 4th of a 400 x 400 x 326 PET, every voxel below 4 million."""


def sampled_percentiles(image: sitk.Image, q: list[float]) -> list[float]:
    """Percentiles of every n-th voxel along each axis, n chosen so that about
    `UNIT_CHECK_VOXELS` are read (a whole-body volume has tens of millions)."""
    values = sitk.GetArrayViewFromImage(image)
    step = max(1, int((values.size / UNIT_CHECK_VOXELS) ** (1 / 3)))
    return [float(v) for v in np.percentile(values[::step, ::step, ::step], q)]


def check_units(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path,
                pet_pixel: str = "32-bit float") -> None:
    """Refuse a PET that cannot be SUV or a CT that cannot be HU; warn where it may suffer.

    Refused: PET and CT swapped (air in HU in the "PET"), a "CT" that looks like SUV, a
    PET in Bq/ml (`MAX_PLAUSIBLE_SUV`), a PET stored as integers (`pet_pixel`, SUV's
    decimals lost), SUV offset below 0 (`MIN_SUV_REFUSED`). Warned: slightly negative SUV
    (`MIN_SUV_WARNED`), a CT without air (`AIR_HU`).
    """
    pet_low, pet_high = sampled_percentiles(pet, [1, 99.9])
    ct_low, ct_high = sampled_percentiles(ct, [1, 99.9])
    ct_is_pet_like = ct_low > MIN_SUV_REFUSED and MIN_PET_LIKE < ct_high < MAX_PET_LIKE
    if pet_low < AIR_HU:
        if ct_is_pet_like or ct_low > AIR_HU:
            raise PetsegError(
                f"{pet_path}: looks like a CT (1st percentile {pet_low:.0f}, air in HU) and "
                f"{ct_path.name} like a PET; the PET and CT folders look swapped: put the "
                "SUV image under images/pet and the CT under images/ct"
            )
        raise PetsegError(
            f"{pet_path}: looks like a CT (1st percentile {pet_low:.0f}, air in HU), not an "
            "SUV PET; put the PET (SUV) there"
        )
    if ct_is_pet_like:
        raise PetsegError(
            f"{ct_path}: looks like a PET (values {ct_low:.2g} to {ct_high:.2g}, no air), not "
            "a CT in HU; put the study's CT there"
        )
    if pet_high > MAX_PLAUSIBLE_SUV:
        raise PetsegError(
            f"{pet_path}: 99.9th percentile {pet_high:.0f}, far above any SUV (Bq/ml?); convert "
            "the PET to body-weight SUV first (`petseg suv` does it from DICOM)"
        )
    if "int" in pet_pixel:
        raise PetsegError(
            f"{pet_path}: stored as {pet_pixel} values, which lose SUV's decimals; write the "
            "PET as float32 SUV (`petseg suv` does it from DICOM)"
        )
    if pet_low < MIN_SUV_REFUSED:
        raise PetsegError(
            f"{pet_path}: 1st percentile {pet_low:.2f} SUV; SUV is not negative beyond "
            f"reconstruction noise (>= {MIN_SUV_REFUSED:g}), so an offset or a wrong rescale "
            "was applied; write the PET as body-weight SUV"
        )
    if pet_low < MIN_SUV_WARNED:
        log.warning("%s: 1st percentile %.2f SUV, more negative than reconstruction noise; "
                    "the mask may suffer", pet_path, pet_low)
    if ct_low > AIR_HU:
        log.warning("%s: no air in the CT (1st percentile %.0f HU, above %.0f HU); if it is "
                    "not in HU, apply its rescale slope and intercept first",
                    ct_path, ct_low, AIR_HU)
