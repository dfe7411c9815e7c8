"""Training-data discovery (autoPET layout) and the clinical metadata (cohort per study).

A study is a folder holding a PET in SUV, a CT and a lesion mask, named as in the
published autoPET NIfTI release: `SUV`, `CTres` (CT on the PET grid; `CT` is used when
`CTres` is missing) and `SEG`, with any image suffix (`.nii.gz`, `.mha`, ...). The autoPET
layout is `<root>/PETCT_<id>/<date>/`; a flat `<root>/<case>/` layout works too. The
patient is the first folder below the root, so studies of one patient stay together.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

from petseg.errors import PetsegError
from petseg.io.images import IMAGE_SUFFIXES, image_stem

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
        name: the case name, the folders of `key` joined by '_' (`PETCT_<id>_<date>`), as
            `petseg evaluate` names cases.
        pet, ct, label: the image files (SUV, CT in HU, 0/1 lesion mask).
    """

    key: str
    patient: str
    name: str
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
        studies.append(Study(key=rel.as_posix(), patient=rel.parts[0],
                             name="_".join(rel.parts), pet=pet, ct=ct, label=label))
    if not studies:
        raise PetsegError(f"{root}: no study found (folders with SUV, CTres and SEG images); "
                          "check the data path")
    return sorted(studies, key=lambda s: s.key)


def read_cohorts(metadata: str | Path, studies: list[Study]) -> dict[str, str]:
    """Cohort (normalised diagnosis) of every study from a clinical-metadata CSV.

    Uses the clinical metadata reader (`petseg.evaluation.metadata.read_metadata`): a study
    matches by its case name (`PETCT_<id>_<date folder>`), a path column, or its patient
    id (with the study date where the patient's rows disagree), so the published autoPET
    CSV (one row per series) works as it is.

    Returns:
        `{study key: cohort}` for every study in `studies`.

    Raises:
        PetsegError: the file is unreadable, or some study has no (unambiguous) row.
    """
    from petseg.diagnoses import UNKNOWN
    from petseg.evaluation.metadata import read_metadata

    table = read_metadata(metadata)
    cohorts = {study.key: table.cohort_of(study.name) for study in studies}
    missing = [key for key, cohort in cohorts.items() if cohort == UNKNOWN]
    if missing:
        raise PetsegError(f"{metadata}: no unambiguous diagnosis for {len(missing)} of "
                          f"{len(studies)} studies (first: {missing[0]}); add rows for them")
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
