"""Finding a folder's cases and reading one case with its plausibility checks.

`find_cases` pairs each PET with its CT in the grand-challenge layout, folders of such
cases, the autoPET layout or DICOM studies; `read_case` reads both images
(`petseg.io.images.read_image`) and refuses a PET that cannot be SUV, a CT that cannot be HU or
a CT that misses the PET.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.geometry import Geometry
from petseg.io.images import image_stem, image_suffix, read_images
from petseg.io.interfaces import (
    CLICK_FILE_NAME,
    click_slot_file,
    image_slot_folders,
    read_slots,
)
from petseg.io.plausibility import check_extent, check_value_ranges

if TYPE_CHECKING:
    from petseg.io.dicom_study import DicomStudy

log = logging.getLogger(__name__)

GC_PET = ("images", "pet")
GC_CT = ("images", "ct")
GC_CLICKS = CLICK_FILE_NAME
"""A case folder holding this click file (beside `images/`) is an interactive case."""
INTERACTIVE_ENV = "PETSEG_INTERACTIVE"
"""Set to 1 (the image built or run as the interactive algorithm), every case is
interactive: its mask goes to the interactive slug, with or without a click file."""
AUTOPET_PET = "SUV"
AUTOPET_CT = "CTres"
_MODALITY_TOKEN = re.compile(r"(?:^|[_.\-])(?:pet|suv|ctres|ct|0000|0001)(?=$|[_.\-])")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")
LAYOUTS_HELP = (
    "expected images/pet/ + images/ct/ (one case, or pairs with matching file names), "
    "case folders in that layout, the autoPET layout <case>/<date>/SUV.nii.gz + CTres.nii.gz, "
    "or DICOM files of PET/CT studies"
)


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """One case's input files.

    Attributes:
        name: output name (`<name>.mha`): the PET file's stem in the challenge layout, the
            case folder's name or the autoPET `PETCT_<id>_<date>` path otherwise.
        pet: PET (SUV) image file, None if not found.
        ct: CT (HU) image file, None if not found.
        error: why the case cannot run (found while pairing), else None.
        dicom: for DICOM input, the study and its chosen series (`pet`, `ct` are None).
        clicks: the case's click file (`petseg.interactive.clicks`), None for automatic.
    """

    name: str
    pet: Path | None
    ct: Path | None
    error: str | None = None
    dicom: DicomStudy | None = None
    clicks: Path | None = None


@dataclasses.dataclass(frozen=True)
class CaseList:
    """Cases found under an input folder.

    Attributes:
        cases: in a stable (sorted) order.
        single: True for one case in the grand-challenge layout (the container's contract:
            any problem is fatal); False for a folder of cases (a bad case is reported and
            the others still run).
    """

    cases: list[CaseFiles]
    single: bool


def image_files(folder: Path) -> list[Path]:
    """Image files (known suffixes, not hidden) directly in `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and image_suffix(p))


def pairing_key(path: Path) -> str:
    """Name used to pair a PET with its CT: the stem without modality tokens (pet, ct, ...)."""
    return _MODALITY_TOKEN.sub("", image_stem(path).lower()) or image_stem(path).lower()


def safe_name(text: str) -> str:
    """`text` with characters other than letters, digits, '.', '_', '-' replaced by '_'."""
    return _UNSAFE.sub("_", text).strip("_.") or "case"


def _pair(folder: Path, pets: list[Path], cts: list[Path]) -> list[CaseFiles]:
    """Pair the PET and CT files of one `images/` folder; raises `PetsegError` if impossible."""
    pet_dir, ct_dir = folder.joinpath(*GC_PET), folder.joinpath(*GC_CT)
    if not pets:
        raise PetsegError(
            f"{pet_dir}: no PET image (.mha, .nii.gz, .nrrd); put the SUV image there"
        )
    if not cts:
        raise PetsegError(f"{ct_dir}: no CT image (.mha, .nii.gz, .nrrd); put the CT image there")
    if len(pets) == 1 and len(cts) == 1:
        return [CaseFiles(safe_name(image_stem(pets[0])), pets[0], cts[0])]
    for match in (image_stem, pairing_key):
        pet_keys = {match(p): p for p in pets}
        ct_keys = {match(p): p for p in cts}
        if (len(pet_keys) == len(pets) == len(cts) == len(ct_keys)
                and set(pet_keys) == set(ct_keys)):
            return [CaseFiles(safe_name(image_stem(pet_keys[k])), pet_keys[k], ct_keys[k])
                    for k in sorted(pet_keys)]
    raise PetsegError(
        f"{folder / 'images'}: {len(pets)} PET and {len(cts)} CT image(s) cannot be paired; "
        "give each PET and its CT the same file name, or put each case in its own folder "
        "(<case>/images/pet/, <case>/images/ct/)"
    )


def interactive_forced() -> bool:
    """Whether `INTERACTIVE_ENV` makes every case interactive."""
    return os.environ.get(INTERACTIVE_ENV, "").strip().lower() in {"1", "true", "yes"}


def is_interactive(files: CaseFiles) -> bool:
    """Whether the case's mask goes to the interactive slug: it has a click file (or
    `inputs.json` lists one), or `INTERACTIVE_ENV` is set."""
    return files.clicks is not None or interactive_forced()


def _with_clicks(folder: Path, cases: list[CaseFiles], listed: Path | None = None
                 ) -> list[CaseFiles]:
    """`cases` of one challenge-layout `folder`, the one case given `folder`'s click file,
    or the click file `inputs.json` lists (`listed`, given even when absent)."""
    path = listed or folder / GC_CLICKS
    if not path.exists() and listed is None:
        return cases
    if len(cases) != 1:
        raise PetsegError(f"{path}: one click file for {len(cases)} cases; put each case "
                          "with its click file in its own folder")
    return [dataclasses.replace(cases[0], clicks=path)]


def with_click_file(cases: CaseList, path: Path) -> CaseList:
    """The single case of `cases` with click file `path` (`petseg predict --clicks`)."""
    if len(cases.cases) != 1:
        raise PetsegError(f"--clicks {path}: the input holds {len(cases.cases)} cases; give "
                          f"--clicks for a single case, or put a {GC_CLICKS} into each case "
                          "folder")
    if not path.is_file():
        raise PetsegError(f"--clicks {path}: not found; pass the case's click file")
    return CaseList([dataclasses.replace(cases.cases[0], clicks=path)], cases.single)


def _challenge_layout(folder: Path) -> bool:
    return folder.joinpath(*GC_PET).is_dir() or folder.joinpath(*GC_CT).is_dir()


def autopet_case_name(pet: Path, root: Path) -> str:
    """`PETCT_<id>_<date>` for `<root>/.../PETCT_<id>/<date>/SUV.nii.gz`: the folders from
    `root` down to the image, and at least the patient and study folders even when `root`
    is one of them, so a case is named as `petseg.evaluation.pairing` names its truth and
    a person finds the patient."""
    relative = pet.parent.relative_to(root).parts
    above = pet.parent.resolve().parts[1:]  # without the file system's root
    parts = relative if len(relative) >= 2 else above[-2:]
    return safe_name("_".join(parts) if parts else root.resolve().name)


def _autopet_cases(root: Path) -> list[CaseFiles]:
    cases = []
    for pet in sorted(root.rglob(f"{AUTOPET_PET}.*")):
        if image_stem(pet) != AUTOPET_PET or not image_suffix(pet):
            continue
        cts = [p for p in image_files(pet.parent) if image_stem(p) == AUTOPET_CT]
        name = autopet_case_name(pet, root)
        if not cts:
            cases.append(CaseFiles(name, pet, None, f"{pet.parent}: no {AUTOPET_CT} image "
                                   f"beside {pet.name}; add the CT resampled to the PET grid"))
        else:
            cases.append(CaseFiles(name, pet, cts[0]))
    return cases


def _dicom_cases(root: Path, weight_kg: float | None) -> list[CaseFiles]:
    """One `CaseFiles` per DICOM study under `root` (`files.dicom` set); [] without DICOM.

    The choices of a usable study are logged, by case name and series only (an unusable
    study's error is logged when its case fails).
    """
    from petseg.io.dicom_study import find_dicom_studies, holds_dicom, study_error, study_name

    if not holds_dicom(root):
        return []
    cases = []
    for study in find_dicom_studies(root, weight_kg):
        name, error = study_name(study.study_uid), study_error(study)
        if error is None:
            log.info("%s: %s", name, "; ".join(study.choices))
        cases.append(CaseFiles(name, None, None, error, dicom=study))
    return cases


def find_cases(input_dir: str | Path, weight_kg: float | None = None) -> CaseList:
    """Find the cases under `input_dir` (see `LAYOUTS_HELP`).

    A single case in the grand-challenge layout gives `single=True`; problems with it
    (missing PET or CT, unpairable files) raise `PetsegError`. In a folder of cases a
    problem with one case is recorded in its `error` instead. A folder of DICOM files
    gives one case per study (`petseg.io.dicom_study`); `weight_kg` stands in for a missing
    PatientWeight there.
    """
    cases = _find_cases(Path(input_dir), weight_kg)
    _check_unique_names(cases.cases)
    return cases


def _check_unique_names(cases: list[CaseFiles]) -> None:
    """Two cases writing the same output name (`case 1` and `case_1` both give `case_1`)
    would overwrite each other's mask: refuse them, naming both inputs."""
    first: dict[str, CaseFiles] = {}
    for files in cases:
        other = first.setdefault(files.name, files)
        if other is not files:
            raise PetsegError(
                f"{_input_of(other)} and {_input_of(files)}: both would write the output "
                f"{files.name!r}; rename one of them")


def _input_of(files: CaseFiles) -> str:
    """The input a case was found at, for messages."""
    if files.pet is not None:
        return str(files.pet)
    return str(files.dicom.folder) if files.dicom is not None else f"case {files.name}"


def _find_cases(root: Path, weight_kg: float | None) -> CaseList:
    if not root.is_dir():
        raise PetsegError(f"{root}: input folder not found; check --input")
    slots = read_slots(root)  # grand-challenge's inputs.json: its slots, not fixed folders
    if slots is not None:
        folders = image_slot_folders(slots, root)
        for folder in folders:
            if not image_files(folder):
                raise PetsegError(f"{folder}: no image (.mha, .nii.gz, .nrrd) in this slot of "
                                  f"{root / 'inputs.json'}; put the slot's image there")
        cases = _with_clicks(root, _pair(root, *map(image_files, folders)),
                             click_slot_file(slots))
        return CaseList(cases, single=len(cases) == 1)
    if _challenge_layout(root):
        cases = _pair(root, image_files(root.joinpath(*GC_PET)), image_files(root.joinpath(*GC_CT)))
        return CaseList(_with_clicks(root, cases), single=len(cases) == 1)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and _challenge_layout(p))
    if subfolders:
        cases = []
        for folder in subfolders:
            try:
                found = _with_clicks(folder, _pair(folder, image_files(folder.joinpath(*GC_PET)),
                                                   image_files(folder.joinpath(*GC_CT))))
            except PetsegError as exc:
                cases.append(CaseFiles(safe_name(folder.name), None, None, str(exc)))
                continue
            if len(found) > 1:
                cases.append(CaseFiles(safe_name(folder.name), None, None,
                                       f"{folder}: {len(found)} PET/CT pairs; put one case per "
                                       "folder"))
            else:
                cases.append(dataclasses.replace(found[0], name=safe_name(folder.name)))
        return CaseList(cases, single=False)
    cases = _autopet_cases(root)
    if cases:
        return CaseList(cases, single=False)
    cases = _dicom_cases(root, weight_kg)
    if cases:
        return CaseList(cases, single=False)
    raise PetsegError(f"{root}: no cases found; {LAYOUTS_HELP}")


# --------------------------------------------------------------------------- reading a case


@dataclasses.dataclass(frozen=True)
class Case:
    """A case read from disk: PET (SUV, float32) and CT (HU) with their files."""

    files: CaseFiles
    pet: sitk.Image
    ct: sitk.Image

    @property
    def pet_geometry(self) -> Geometry:
        """The PET's grid (the output mask's grid)."""
        return Geometry.of(self.pet)


def clean_non_finite(image: sitk.Image, path: Path, fill: float) -> sitk.Image:
    """Replace NaN/inf voxels by `fill` (with a warning naming the file and the count)."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    array = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count == 0:
        return image
    log.warning("%s: %d non-finite voxel(s) (NaN/inf) set to %g", path, count, fill)
    clean = np.where(bad, np.asarray(fill, array.dtype), array)
    out = sitk.GetImageFromArray(clean)
    out.CopyInformation(image)
    return out


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


def _percentiles(image: sitk.Image, q: list[float]) -> list[float]:
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
    pet_low, pet_high = _percentiles(pet, [1, 99.9])
    ct_low, ct_high = _percentiles(ct, [1, 99.9])
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


def read_case(files: CaseFiles, ct_fill_hu: float = -1024.0) -> Case:
    """Read and check one case: both 3D and readable with plausible headers (or a DICOM
    study's chosen series converted, `petseg.io.dicom_study`), NaNs cleaned, the PET plausibly
    in SUV and the CT in HU (`check_units`), the CT covering the PET (`check_overlap`), both
    of a plausible extent, dynamic range and value range (`petseg.io.plausibility`).

    The PET comes back as float32 SUV with non-finite voxels set to 0; the CT keeps its
    pixel type, non-finite voxels set to `ct_fill_hu`.
    """
    if files.error:
        raise PetsegError(files.error)
    if files.dicom is not None:
        from petseg.io.dicom_study import read_study_images

        pet_raw, ct_raw, pet_path, ct_path = read_study_images(files.dicom)
    elif files.pet is None or files.ct is None:
        raise PetsegError(f"case {files.name}: PET or CT file missing; {LAYOUTS_HELP}")
    else:
        pet_path, ct_path = files.pet, files.ct
        pet_raw, ct_raw = read_images(pet_path, ct_path)
    check_extent(pet_raw, pet_path, "PET")
    check_extent(ct_raw, ct_path, "CT", smallest=False)  # the PET's: `check_overlap`
    pet = (pet_raw if pet_raw.GetPixelID() == sitk.sitkFloat32  # as read: no copy
           else sitk.Cast(pet_raw, sitk.sitkFloat32))
    pet = clean_non_finite(pet, pet_path, 0.0)
    ct = clean_non_finite(ct_raw, ct_path, ct_fill_hu)
    check_units(pet, ct, pet_path, ct_path, pet_raw.GetPixelIDTypeAsString())
    check_overlap(pet, ct, pet_path, ct_path)
    check_value_ranges(tuple(_percentiles(pet, [1, 99.9])),  # type: ignore[arg-type]
                       tuple(_percentiles(ct, [1, 99.9])), pet_path, ct_path)
    return Case(files=files, pet=pet, ct=ct)
