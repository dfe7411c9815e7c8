"""A folder of DICOM files -> one PET/CT case per study, with the series chosen by rule.

Any nesting and any file names; a DICOMDIR is skipped (the files it indexes lie in the
tree). Files are grouped by StudyInstanceUID, then SeriesInstanceUID (a file seen twice,
same SOPInstanceUID, counts once). In each study:

- PET: the series of Modality PT whose CorrectedImage (0028,0051) holds ATTN
  (attenuation corrected); non-corrected series beside it are skipped. When no PT series
  records CorrectedImage at all, every PT series is a candidate. Among candidates, the one
  with the most files, then the lowest SeriesNumber.
- CT: the series of Modality CT (localizers, ImageType LOCALIZER, skipped) that covers
  the PET's axial extent best: the share of the PET's slice range (along the PET's slice
  normal) that the CT's slice range covers, to 0.1 %; ties go to the CT in the PET's
  FrameOfReferenceUID, then the most files, then the lowest SeriesNumber.

Each case is named `study-<12 hex digits of sha256(StudyInstanceUID)>`: no patient data
in file names or the log; results.json (in the output folder) maps names to studies. A
study without a usable PET or CT becomes a case with its reason as the error, so it is
reported while the other studies run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from petseg.errors import PetsegError
from petseg.io.dicom import ct_series_hu, dicom_headers, pet_series_suv

log = logging.getLogger(__name__)

COVERAGE_DECIMALS: int = 3
"""CT coverage of the PET is compared rounded to 0.1 %."""
IDENTIFIERS: tuple[str, ...] = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                "StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDate",
                                "StudyTime")
"""The patient and study attributes a lesion report and the DICOM SEG carry over."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One DICOM series of a study.

    Attributes:
        uid: SeriesInstanceUID.
        modality: Modality (PT, CT, ...).
        number: SeriesNumber, None if absent.
        description: SeriesDescription ('' if absent).
        paths: its files, sorted by path.
        headers: their headers without pixel data, same order.
    """

    uid: str
    modality: str
    number: int | None
    description: str
    paths: tuple[Path, ...]
    headers: tuple[Dataset, ...] = dataclasses.field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """`PT series 3 'PET WB AC'` (no patient data)."""
        number = "?" if self.number is None else str(self.number)
        return f"{self.modality} series {number} '{self.description}'"

    def summary(self) -> dict[str, Any]:
        """Its results.json description."""
        return {"series_instance_uid": self.uid, "modality": self.modality,
                "series_number": self.number, "description": self.description,
                "files": len(self.paths)}


@dataclasses.dataclass(frozen=True)
class DicomStudy:
    """A study and the series chosen from it.

    Attributes:
        study_uid: StudyInstanceUID.
        folder: the deepest folder holding all its files (named in errors).
        pet, ct: the chosen series, None when there is none to use.
        choices: one line per decision (chosen or skipped series and why).
        weight_kg: body weight used only when the PET lacks PatientWeight.
    """

    study_uid: str
    folder: Path
    pet: Series | None
    ct: Series | None
    choices: tuple[str, ...]
    weight_kg: float | None = None

    def identifiers(self) -> dict[str, str]:
        """Patient and study identifiers (`IDENTIFIERS`) from the PET's first file."""
        series = self.pet or self.ct
        if series is None:
            return {"StudyInstanceUID": self.study_uid}
        first = series.headers[0]
        return {key: str(first.get(key, "")) for key in IDENTIFIERS}

    def inputs(self) -> list[dict[str, Any]]:
        """results.json `inputs`: the chosen series."""
        return [{"type": "dicom_series", **s.summary()} for s in (self.pet, self.ct)
                if s is not None]

    def summary(self) -> dict[str, Any]:
        """results.json `dicom` entry: study, chosen series and the reasons."""
        return {"study_instance_uid": self.study_uid,
                "pet_series": self.pet.summary() if self.pet else None,
                "ct_series": self.ct.summary() if self.ct else None,
                "choices": list(self.choices)}


def study_name(study_uid: str) -> str:
    """Case name of a study: `study-` + the first 12 hex digits of sha256(StudyInstanceUID)."""
    return "study-" + hashlib.sha256(study_uid.encode()).hexdigest()[:12]


def holds_dicom(root: Path) -> bool:
    """True if any file under `root` starts like DICOM Part 10 ('DICM' at byte 128)."""
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                with open(Path(folder) / name, "rb") as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def _group(root: Path) -> dict[str, dict[str, list[tuple[Path, Dataset]]]]:
    """study uid -> series uid -> [(path, header)], each SOPInstanceUID once."""
    studies: dict[str, dict[str, list[tuple[Path, Dataset]]]] = {}
    seen: set[str] = set()
    for path, ds in dicom_headers(root):
        sop = str(ds.get("SOPInstanceUID", "")) or str(path)
        if sop in seen:
            log.debug("%s: SOPInstanceUID seen before, skipped", path)
            continue
        seen.add(sop)
        study = studies.setdefault(str(ds.get("StudyInstanceUID", "")), {})
        study.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return studies


def _series(uid: str, files: list[tuple[Path, Dataset]]) -> Series:
    first = files[0][1]
    number = first.get("SeriesNumber")
    return Series(uid=uid, modality=str(first.get("Modality", "")),
                  number=None if number in (None, "") else int(number),
                  description=str(first.get("SeriesDescription", "")).strip(),
                  paths=tuple(p for p, _ in files), headers=tuple(ds for _, ds in files))


def _preference(series: Series) -> tuple[int, int, str]:
    """Most files first, then the lowest SeriesNumber, then the UID."""
    return (-len(series.paths), series.number if series.number is not None else 2**31,
            series.uid)


def _corrections(series: Series) -> list[str] | None:
    value = series.headers[0].get("CorrectedImage")
    if value in (None, ""):
        return None
    return [str(v).strip().upper() for v in (value if isinstance(value, Sequence)
                                              and not isinstance(value, str) else [value])]


def choose_pet(series: list[Series], folder: Path) -> tuple[Series, list[str]]:
    """The attenuation-corrected PET series (see the module docstring) and the reasons.

    Raises:
        PetsegError: no PT series, or only non-attenuation-corrected ones.
    """
    pets = sorted((s for s in series if s.modality == "PT"), key=_preference)
    if not pets:
        found = ", ".join(f"{s.label} ({len(s.paths)} files)" for s in series) or "none"
        raise PetsegError(f"{folder}: study has no PET series (Modality PT; its series: "
                          f"{found}); export the study with its attenuation-corrected PET")
    notes = []
    corrected = [s for s in pets if "ATTN" in (_corrections(s) or [])]
    candidates = corrected or [s for s in pets if _corrections(s) is None]
    for s in pets:
        if s not in candidates:
            notes.append(f"{s.label} skipped: not attenuation corrected (CorrectedImage "
                         f"{'/'.join(_corrections(s) or [])})")
    if not candidates:
        raise PetsegError(f"{folder}: study has only PET series that are not attenuation "
                          f"corrected (CorrectedImage without ATTN); export the "
                          f"attenuation-corrected PET series")
    chosen = candidates[0]
    why = "attenuation corrected" if corrected else "CorrectedImage not recorded"
    if len(candidates) > 1:
        why += f", the most files of {len(candidates)} such series"
    notes.insert(0, f"PET: {chosen.label} ({len(chosen.paths)} files): {why}")
    notes.extend(f"{s.label} skipped: fewer files or a higher SeriesNumber than the chosen PET"
                 for s in candidates[1:])
    return chosen, notes


def _along(series: Series, normal: np.ndarray) -> tuple[float, float]:
    """Lowest and highest slice position of `series` along `normal` (mm)."""
    values = [float(np.asarray(ds.ImagePositionPatient, float) @ normal)
              for ds in series.headers if ds.get("ImagePositionPatient")]
    return (min(values), max(values)) if values else (0.0, 0.0)


def ct_coverage(pet: Series, ct: Series) -> float:
    """Share (0..1) of the PET's slice range along its normal covered by the CT's slices."""
    orientation = np.asarray(pet.headers[0].get("ImageOrientationPatient") or
                             [1, 0, 0, 0, 1, 0], float)
    normal = np.cross(orientation[:3], orientation[3:])
    pet_low, pet_high = _along(pet, normal)
    ct_low, ct_high = _along(ct, normal)
    overlap = min(pet_high, ct_high) - max(pet_low, ct_low)
    if pet_high - pet_low <= 0:
        return float(ct_low <= pet_low <= ct_high)
    return float(np.clip(overlap / (pet_high - pet_low), 0.0, 1.0))


def choose_ct(series: list[Series], pet: Series, folder: Path) -> tuple[Series, list[str]]:
    """The CT series covering the PET best (see the module docstring) and the reasons.

    Raises:
        PetsegError: no CT series other than localizers.
    """
    notes = []
    cts = []
    for s in (s for s in series if s.modality == "CT"):
        image_type = [str(v).upper() for v in (s.headers[0].get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            notes.append(f"{s.label} skipped: a localizer")
        else:
            cts.append(s)
    if not cts:
        raise PetsegError(f"{folder}: study has no CT series (Modality CT, not a localizer); "
                          f"export the study with its CT")
    pet_frame = str(pet.headers[0].get("FrameOfReferenceUID", ""))
    coverage = {s.uid: round(ct_coverage(pet, s), COVERAGE_DECIMALS) for s in cts}
    cts.sort(key=lambda s: (-coverage[s.uid],
                            str(s.headers[0].get("FrameOfReferenceUID", "")) != pet_frame,
                            *_preference(s)))
    chosen = cts[0]
    notes.insert(0, f"CT: {chosen.label} ({len(chosen.paths)} files): covers "
                    f"{100 * coverage[chosen.uid]:.1f}% of the PET's axial extent")
    notes.extend(f"{s.label} skipped: covers {100 * coverage[s.uid]:.1f}% of the PET's "
                 f"axial extent" for s in cts[1:])
    return chosen, notes


def find_dicom_studies(root: str | Path, weight_kg: float | None = None) -> list[DicomStudy]:
    """Every study under `root` with its chosen series (None and the reason if unusable).

    Args:
        weight_kg: body weight for PET series without PatientWeight (others keep theirs).

    Returns:
        Studies sorted by case name; a study without a usable PET or CT has `pet` or `ct`
        None and its error as the first of `choices` (see `study_error`).
    """
    studies = []
    for study_uid, by_series in _group(Path(root)).items():
        series = sorted((_series(uid, files) for uid, files in by_series.items()),
                        key=lambda s: (s.modality, *_preference(s)))
        folder = Path(os.path.commonpath([p for s in series for p in s.paths]))
        if folder.is_file():
            folder = folder.parent
        pet = ct = None
        try:
            pet, pet_notes = choose_pet(series, folder)
            ct, ct_notes = choose_ct(series, pet, folder)
            choices = tuple(pet_notes + ct_notes)
        except PetsegError as exc:
            choices = (f"error: {exc}",)
        studies.append(DicomStudy(study_uid, folder, pet, ct, choices, weight_kg))
    return sorted(studies, key=lambda s: study_name(s.study_uid))


def study_error(study: DicomStudy) -> str | None:
    """Why `study` cannot run (a one-line PetsegError message), or None."""
    if study.pet is not None and study.ct is not None:
        return None
    return study.choices[0].removeprefix("error: ")


def _has_weight(ds: Dataset) -> bool:
    try:
        return float(ds.get("PatientWeight") or 0) > 0
    except (TypeError, ValueError):
        return False


def read_study_images(study: DicomStudy) -> tuple[sitk.Image, sitk.Image, Path, Path]:
    """A usable study's chosen PET in SUV body weight (float32) and CT in HU, with the
    first file of each series (for messages); `petseg.io.cases.read_case` checks them.

    `study.weight_kg` stands in for PatientWeight only where the PET lacks it.

    Raises:
        PetsegError: the study is unusable, or its PET/CT cannot be converted.
    """
    if study.pet is None or study.ct is None:
        raise PetsegError(study_error(study) or "not a usable DICOM study")
    pet_series, ct_series = study.pet, study.ct
    weight = None if _has_weight(pet_series.headers[0]) else study.weight_kg
    pet, parameters, _ = pet_series_suv(pet_series.paths, pet_series.headers, weight)
    ct = ct_series_hu(ct_series.paths, ct_series.headers, ct_series.paths[0].parent)
    log.info("%s: PET %d x %d x %d in SUV (%s), CT %d x %d x %d in HU",
             study_name(study.study_uid), *pet.GetSize(),
             parameters.decay_correction or parameters.units, *ct.GetSize())
    return sitk.Cast(pet, sitk.sitkFloat32), ct, pet_series.paths[0], ct_series.paths[0]
