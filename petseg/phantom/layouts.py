"""Writers: grand-challenge input layout and the autoPET training-set layout.

`challenge`::

    OUT/<case>/images/pet/<uuid>.mha          SUV, PET grid
    OUT/<case>/images/ct/<uuid>.mha           CT (PET grid by default, or native grid)
    OUT/<case>/truth/<pet uuid>.mha           lesion mask, uint8 0/1, PET grid
    OUT/<case>/truth/lesions.json             lesions, cohort, patient, uuids

`autopet`::

    OUT/PETCT_<id>/<MM-DD-YYYY>-NA-PET-CT Ganzkoerper  primaer mit KM-<nnnnn>/
        SUV.nii.gz CTres.nii.gz SEG.nii.gz CT.nii.gz
    OUT/Clinical_Metadata.csv                 one row per study

Every name and byte derives from the seed: the same seed writes identical files.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from petseg.errors import PetsegError
from petseg.io.images import atomic_path, write_image
from petseg.phantom.case import PhantomCase, generate_study, seed_digest
from petseg.phantom.preview import preview_png

LAYOUTS: tuple[str, ...] = ("challenge", "autopet")
CT_GRIDS: tuple[str, ...] = ("pet", "native")
METADATA_CSV = "Clinical_Metadata.csv"
METADATA_COLUMNS: tuple[str, ...] = (
    "Subject ID", "Study UID", "Study Description", "Study Date", "Modality", "diagnosis",
    "age", "sex", "study_location",
)
"""Column names as in autoPET's "Clinical Metadata FDG PET_CT Lesions.csv" (one row per
study here, Modality always "PT"); study_location is the study folder relative to OUT."""

log = logging.getLogger(__name__)


def case_uuid(case: PhantomCase, kind: str) -> str:
    """Deterministic uuid4-style name of one image of a case ("pet" or "ct")."""
    digest = seed_digest("uuid", case.seed, case.study_seed, case.study_index, kind)
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return path


def case_record(case: PhantomCase) -> dict[str, object]:
    """The truth and metadata of a case as a JSON-ready dict."""
    p = case.patient
    return {
        "patient_id": case.patient_id, "study_uid": case.study_uid,
        "study_date": case.study_date.isoformat(), "cohort": case.cohort,
        "seed": case.seed, "study_seed": case.study_seed, "study_index": case.study_index,
        "size": case.size,
        "patient": {"sex": p.sex, "age": p.age, "height_mm": round(p.height, 1),
                    "weight_kg": p.weight, "arms": p.arms},
        "lesion_count": len(case.lesions),
        "total_lesion_volume_ml": round(sum(les.volume_ml for les in case.lesions), 4),
        "lesions": [les.to_json() for les in case.lesions],
    }


def write_challenge_case(case: PhantomCase, out_dir: str | Path, name: str,
                         ct_grid: str = "pet") -> dict[str, Path]:
    """Write one case as a grand-challenge input folder plus its truth.

    Args:
        case: the study.
        out_dir: parent folder; the case goes to `out_dir/name`.
        name: case folder name.
        ct_grid: "pet" writes CTres (CT on the PET grid), "native" the CT's own grid.

    Returns:
        Paths by role: "pet", "ct", "truth", "lesions".
    """
    if ct_grid not in CT_GRIDS:
        raise PetsegError(f"--ct-grid {ct_grid!r}: use one of {', '.join(CT_GRIDS)}")
    root = Path(out_dir) / name
    pet_id, ct_id = case_uuid(case, "pet"), case_uuid(case, "ct")
    paths = {
        "pet": root / "images" / "pet" / f"{pet_id}.mha",
        "ct": root / "images" / "ct" / f"{ct_id}.mha",
        "truth": root / "truth" / f"{pet_id}.mha",
        "lesions": root / "truth" / "lesions.json",
    }
    write_image(case.pet, paths["pet"])
    write_image(case.ctres if ct_grid == "pet" else case.ct, paths["ct"])
    write_image(case.seg, paths["truth"])
    record = case_record(case) | {"pet_uuid": pet_id, "ct_uuid": ct_id, "ct_grid": ct_grid}
    _write_text(paths["lesions"], json.dumps(record, indent=2, sort_keys=True) + "\n")
    return paths


def study_folder_name(case: PhantomCase) -> str:
    """autoPET-style study folder name (date first, as in the published data)."""
    number = int.from_bytes(seed_digest("study-folder", case.study_uid)[:4], "big") % 100000
    return f"{case.study_date:%m-%d-%Y}-NA-PET-CT Ganzkoerper  primaer mit KM-{number:05d}"


def write_autopet_study(case: PhantomCase, root: str | Path) -> Path:
    """Write one study as `root/PETCT_<id>/<date folder>/{SUV,CTres,SEG,CT}.nii.gz`.

    Returns:
        The study folder.
    """
    folder = Path(root) / case.patient_id / study_folder_name(case)
    write_image(case.pet, folder / "SUV.nii.gz")
    write_image(case.ctres, folder / "CTres.nii.gz")
    write_image(case.seg, folder / "SEG.nii.gz")
    write_image(case.ct, folder / "CT.nii.gz")
    return folder


def metadata_row(case: PhantomCase, root: str | Path, folder: Path) -> dict[str, str]:
    """One `Clinical_Metadata.csv` row for a written study."""
    return {
        "Subject ID": case.patient_id, "Study UID": case.study_uid,
        "Study Description": "PET-CT Ganzkoerper  primaer mit KM",
        "Study Date": f"{case.study_date:%m/%d/%Y}", "Modality": "PT",
        "diagnosis": case.cohort, "age": f"{case.patient.age:03d}Y", "sex": case.patient.sex,
        "study_location": "./" + folder.relative_to(Path(root)).as_posix() + "/",
    }


def write_metadata_csv(rows: Sequence[dict[str, str]], root: str | Path) -> Path:
    """Write `root/Clinical_Metadata.csv` (columns `METADATA_COLUMNS`)."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METADATA_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return _write_text(Path(root) / METADATA_CSV, buffer.getvalue())


def dataset_plan(cases: int, seed: int, layout: str, negative_fraction: float = 0.5,
                 second_study_fraction: float = 0.1,
                 ) -> list[tuple[int, int, str, int]]:
    """Which studies a dataset holds: `(patient seed, study seed, cohort, study index)`.

    Exactly round(cases * negative_fraction) studies are NEGATIVE; the others cycle
    through LYMPHOMA, LUNG_CANCER and MELANOMA. In the autoPET layout about
    `second_study_fraction` of the studies (at least one from 3 studies on) are a second,
    later study of an earlier patient, as in the published data.
    """
    if cases < 1:
        raise PetsegError(f"--cases {cases}: at least one case is needed")
    if seed < 0:
        raise PetsegError(f"--seed {seed}: use a non-negative integer")
    if not 0.0 <= negative_fraction <= 1.0:
        raise PetsegError(f"--negative-fraction {negative_fraction}: use a value in [0, 1]")
    rng = np.random.default_rng([seed, 99])
    n_neg = round(cases * negative_fraction)
    positives = ["LYMPHOMA", "LUNG_CANCER", "MELANOMA"]
    start = int(rng.integers(0, 3))
    cohorts = ["NEGATIVE"] * n_neg + [positives[(start + i) % 3] for i in range(cases - n_neg)]
    cohorts = [cohorts[i] for i in rng.permutation(cases)]
    seeds = [int.from_bytes(seed_digest("dataset", seed, i)[:4], "big") & 0x7FFFFFFF
             for i in range(cases)]
    plan = [(seeds[i], seeds[i], cohorts[i], 0) for i in range(cases)]
    if layout == "autopet" and cases >= 3 and second_study_fraction > 0:
        repeats = max(1, round(cases * second_study_fraction))
        later = sorted(rng.choice(np.arange(cases // 2, cases),
                                  size=min(repeats, cases - cases // 2), replace=False).tolist())
        used: set[int] = set(later)
        for i in later:
            earlier = [j for j in range(i) if j not in used and plan[j][3] == 0]
            if not earlier:
                continue
            j = int(rng.choice(earlier))
            used.add(j)
            plan[i] = (plan[j][0], seeds[i], plan[j][2], 1)
    return plan


def write_dataset(out: str | Path, cases: int, seed: int, layout: str, size: str = "full",
                  ct_grid: str = "pet", negative_fraction: float = 0.5,
                  preview: bool = False, second_study_fraction: float = 0.1) -> list[Path]:
    """Generate and write a dataset of `cases` studies.

    Args:
        out: output folder; must not exist or be empty.
        cases: number of studies.
        seed: dataset seed; every case seed derives from it.
        layout: "challenge" or "autopet".
        size: "full" or "small".
        ct_grid: challenge layout only: CT on the "pet" grid or its "native" grid.
        negative_fraction: share of NEGATIVE (lesion-free) studies.
        preview: also write `out/previews/<name>.png` per study.
        second_study_fraction: autoPET layout: share of second studies of a patient.

    Returns:
        The case folders (challenge) or study folders (autopet), in order.
    """
    if layout not in LAYOUTS:
        raise PetsegError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if size not in ("small", "full"):
        raise PetsegError(f"--size {size!r}: use small or full")
    if ct_grid not in CT_GRIDS:
        raise PetsegError(f"--ct-grid {ct_grid!r}: use one of {', '.join(CT_GRIDS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PetsegError(f"{out}: exists and is not an empty folder; choose a new output folder")
    plan = dataset_plan(cases, seed, layout, negative_fraction, second_study_fraction)
    written: list[Path] = []
    rows: list[dict[str, str]] = []
    for i, (patient_seed, study_seed, cohort, index) in enumerate(plan):
        start = time.perf_counter()
        case = generate_study(patient_seed, study_seed, size=size, cohort=cohort,
                              study_index=index)
        if layout == "challenge":
            name = f"case_{i:03d}"
            paths = write_challenge_case(case, out, name, ct_grid=ct_grid)
            folder = paths["pet"].parents[2]
        else:
            folder = write_autopet_study(case, out)
            rows.append(metadata_row(case, out, folder))
            name = f"{case.patient_id}_{case.study_date:%Y%m%d}"
        if preview:
            preview_png(case.pet, case.seg, case.ctres, out / "previews" / f"{name}.png")
        written.append(folder)
        log.info("%s: %s %s, %d lesion(s), %.1f s", name, case.patient_id, cohort,
                 len(case.lesions), time.perf_counter() - start)
    if layout == "autopet":
        write_metadata_csv(rows, out)
    return written
