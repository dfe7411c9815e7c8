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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.case_checks import check_overlap, check_units, sampled_percentiles
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


def _slot_cases(root: Path, weight_kg: float | None) -> CaseList | None:
    """Grand-challenge's `inputs.json`: the PET and CT from its image slots, the click file
    from its click socket."""
    slots = read_slots(root)
    if slots is None:
        return None
    folders = image_slot_folders(slots, root)
    for folder in folders:
        if not image_files(folder):
            raise PetsegError(f"{folder}: no image (.mha, .nii.gz, .nrrd) in this slot of "
                              f"{root / 'inputs.json'}; put the slot's image there")
    cases = _with_clicks(root, _pair(root, *map(image_files, folders)), click_slot_file(slots))
    return CaseList(cases, single=len(cases) == 1)


def _challenge_cases(root: Path, weight_kg: float | None) -> CaseList | None:
    """One grand-challenge case (`images/pet/` + `images/ct/`, PET and CT paired by name)."""
    if not _challenge_layout(root):
        return None
    cases = _pair(root, image_files(root.joinpath(*GC_PET)), image_files(root.joinpath(*GC_CT)))
    return CaseList(_with_clicks(root, cases), single=len(cases) == 1)


def _case_folders(root: Path, weight_kg: float | None) -> CaseList | None:
    """Case folders, each in the grand-challenge layout; a bad one is recorded as its
    case's error."""
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and _challenge_layout(p))
    if not subfolders:
        return None
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


def _autopet_layout(root: Path, weight_kg: float | None) -> CaseList | None:
    """The autoPET layout: `<case>/<date>/SUV.nii.gz` + `CTres.nii.gz`."""
    cases = _autopet_cases(root)
    return CaseList(cases, single=False) if cases else None


def _dicom_layout(root: Path, weight_kg: float | None) -> CaseList | None:
    """DICOM files of PET/CT studies, one case per study."""
    cases = _dicom_cases(root, weight_kg)
    return CaseList(cases, single=False) if cases else None


CaseReader = Callable[[Path, "float | None"], "CaseList | None"]
"""(input folder, stand-in patient weight in kg) -> the cases of one input layout, or None
when the folder is not in that layout."""

CASE_READERS: list[CaseReader] = [_slot_cases, _challenge_cases, _case_folders,
                                  _autopet_layout, _dicom_layout]
"""The input layouts, asked in this order; the first that recognises the folder reads it.
A new layout is one reader added here (`LAYOUTS_HELP` names them for users)."""


def _find_cases(root: Path, weight_kg: float | None) -> CaseList:
    if not root.is_dir():
        raise PetsegError(f"{root}: input folder not found; check --input")
    for reader in CASE_READERS:
        cases = reader(root, weight_kg)
        if cases is not None:
            return cases
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
    check_value_ranges(tuple(sampled_percentiles(pet, [1, 99.9])),  # type: ignore[arg-type]
                       tuple(sampled_percentiles(ct, [1, 99.9])), pet_path, ct_path)
    return Case(files=files, pet=pet, ct=ct)
