"""Training-data discovery (autoPET layout) and the clinical metadata (cohort per study).

A study is a folder holding a PET in SUV, a CT and a lesion mask, named as in the
published autoPET NIfTI release: `SUV`, `CTres` (CT on the PET grid; `CT` is used when
`CTres` is missing) and `SEG`, with any image suffix (`.nii.gz`, `.mha`, ...). The autoPET
layout is `<root>/PETCT_<id>/<date>/`; a flat `<root>/<case>/` layout works too. The
patient is the first folder below the root, so studies of one patient stay together.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections import Counter, defaultdict
from pathlib import Path

from petseg.errors import PetsegError
from petseg.io import IMAGE_SUFFIXES, image_stem

PET_NAMES: tuple[str, ...] = ("SUV",)
CT_NAMES: tuple[str, ...] = ("CTres", "CT")
LABEL_NAMES: tuple[str, ...] = ("SEG",)
DEFAULT_COHORT = "ALL"
"""Cohort of every study when no metadata file is given."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One PET/CT study on disk.

    Attributes:
        key: path of the study folder relative to the data root, '/'-separated
            (`PETCT_0af7ffe12a/08-12-2005-NA-PET-CT ...`); names the cache entry too.
        patient: the first folder of `key`.
        pet, ct, label: the image files (SUV, CT in HU, 0/1 lesion mask).
    """

    key: str
    patient: str
    pet: Path
    ct: Path
    label: Path


def _find(folder_files: dict[str, Path], names: tuple[str, ...]) -> Path | None:
    for name in names:
        if name in folder_files:
            return folder_files[name]
    return None


def discover_studies(root: str | Path) -> list[Study]:
    """Every study folder below `root`, sorted by key.

    Raises:
        PetsegError: `root` is missing or holds no study, or a folder has a PET but no
            CT or mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"{root}: data folder not found; pass the folder holding PETCT_* studies")
    by_folder: dict[Path, dict[str, Path]] = defaultdict(dict)
    for suffix in IMAGE_SUFFIXES:
        for path in root.rglob(f"*{suffix}"):
            if path.is_file() and not path.name.startswith("."):
                by_folder[path.parent].setdefault(image_stem(path), path)
    studies = []
    for folder, files in by_folder.items():
        pet = _find(files, PET_NAMES)
        if pet is None:
            continue
        ct, label = _find(files, CT_NAMES), _find(files, LABEL_NAMES)
        if ct is None or label is None:
            missing = "CT (CTres or CT)" if ct is None else "mask (SEG)"
            raise PetsegError(f"{folder}: has {pet.name} but no {missing}; add it or remove "
                              "the folder")
        rel = folder.relative_to(root)
        if rel == Path("."):
            raise PetsegError(f"{root}: images lie directly in the data root; put each study "
                              "in its own folder (<root>/<patient>/<study>/)")
        studies.append(Study(key=rel.as_posix(), patient=rel.parts[0], pet=pet, ct=ct,
                             label=label))
    if not studies:
        raise PetsegError(f"{root}: no study found (folders with SUV, CTres and SEG images); "
                          "check the data path")
    return sorted(studies, key=lambda s: s.key)


def _diagnosis_column(header: list[str], path: Path) -> str:
    for name in header:
        if name.strip().lower() in ("diagnosis", "cohort"):
            return name
    raise PetsegError(f"{path}: no 'diagnosis' column (found {header}); add one")


def read_cohorts(metadata: str | Path, studies: list[Study]) -> dict[str, str]:
    """Cohort (diagnosis, upper case) of every study from a clinical-metadata CSV.

    A row belongs to a study when one of its cells contains the study's `key` as a path
    (the autoPET CSVs' `File Location` / `study_location`) or names the study as
    `<patient>_<date folder>`; otherwise a cell equal to a patient id applies the row to
    every study of that patient not matched by its own row. The published CSV has one row
    per series; they agree on the diagnosis.

    Returns:
        `{study key: cohort}` for every study in `studies`.

    Raises:
        PetsegError: the file is missing or unreadable, a study has no row, or a study's
            rows disagree.
    """
    path = Path(metadata)
    if not path.is_file():
        raise PetsegError(f"{path}: metadata file not found; check the path")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PetsegError(f"{path}: cannot be read as CSV ({exc}); fix the file") from None
    if not rows:
        raise PetsegError(f"{path}: has no rows; it must list each study's diagnosis")
    column = _diagnosis_column(list(rows[0].keys()), path)

    by_pair = {tuple(s.key.split("/")[:2]): s.key for s in studies if "/" in s.key}
    by_name = {s.key.replace("/", "_"): s.key for s in studies}
    by_name.update({s.key: s.key for s in studies})
    patients = {s.patient for s in studies}
    study_votes: dict[str, set[str]] = defaultdict(set)
    patient_votes: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        diagnosis = (row.get(column) or "").strip().upper()
        if not diagnosis:
            continue
        matched = None
        for name, cell in row.items():
            if name == column or cell is None:
                continue
            value = cell.strip()
            if value in by_name:
                matched = by_name[value]
                break
            parts = [p for p in value.replace("\\", "/").split("/") if p and p != "."]
            for a, b in itertools.pairwise(parts):
                if (a, b) in by_pair:
                    matched = by_pair[(a, b)]
                    break
            if matched:
                break
        if matched:
            study_votes[matched].add(diagnosis)
            continue
        for name, cell in row.items():
            if name != column and cell is not None and cell.strip() in patients:
                patient_votes[cell.strip()].add(diagnosis)
                break

    cohorts: dict[str, str] = {}
    missing = []
    for study in studies:
        votes = study_votes.get(study.key) or patient_votes.get(study.patient)
        if not votes:
            missing.append(study.key)
            continue
        if len(votes) > 1:
            raise PetsegError(f"{path}: rows for study {study.key} disagree on the diagnosis "
                              f"({sorted(votes)}); fix the file")
        cohorts[study.key] = next(iter(votes))
    if missing:
        raise PetsegError(f"{path}: no diagnosis for {len(missing)} studies (first: "
                          f"{missing[0]}); add rows for them")
    return cohorts


def patient_cohort(cohorts: dict[str, str], studies: list[Study]) -> dict[str, str]:
    """Cohort of each patient: the most frequent among the patient's studies (ties: by name)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for study in studies:
        counts[study.patient][cohorts[study.key]] += 1
    return {
        patient: sorted(c.items(), key=lambda item: (-item[1], item[0]))[0][0]
        for patient, c in counts.items()
    }
