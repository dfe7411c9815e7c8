"""Clinical metadata: the diagnosis of each case from a CSV (the groups themselves are
`petseg.diagnoses`).

Used by `petseg evaluate` (per-group summaries) and `petseg split` (folds stratified by
diagnosis).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io as _io
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from petseg.diagnoses import UNKNOWN
from petseg.errors import PetsegError

logger = logging.getLogger(__name__)



def _header_key(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


_CASE_COLUMNS = ("casename", "case", "caseid", "study", "studyname", "studyid")
_PATH_COLUMNS = ("filelocation", "studypath", "path", "folder")
_PATIENT_COLUMNS = ("subjectid", "patientid", "patient", "subject", "pid", "id")
_DIAGNOSIS_COLUMNS = ("diagnosis", "cohort", "dx", "disease")
_DATE_COLUMNS = ("studydate", "date")


_DATE_FORMATS = ("%m/%d/%Y", "%m-%d-%Y", "%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", "%Y%m%d")


def _parse_date(text: str) -> datetime.date | None:
    """A study date as the TCIA metadata writes it ('3/23/2003') or in ISO form."""
    for fmt in _DATE_FORMATS:
        try:
            return datetime.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return None


def _dates_in(case: str) -> set[datetime.date]:
    """Dates inside a case name: TCIA study folders start 'MM-DD-YYYY', or ISO 'YYYY-MM-DD'."""
    found = set()
    for match in re.finditer(r"(?<!\d)(\d{1,2})-(\d{1,2})-(\d{4})(?!\d)", case):
        found.add(_parse_date("-".join(match.groups())))
    for match in re.finditer(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)", case):
        found.add(_parse_date("-".join(match.groups())))
    found.discard(None)
    return found


def normalize_cohort(value: str) -> str:
    """Upper case with `_` for spaces and dashes: 'Lung cancer' -> 'LUNG_CANCER'."""
    return re.sub(r"[\s\-]+", "_", value.strip()).upper()


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Cohort (diagnosis) per case, read from a clinical metadata CSV.

    A case matches a row by (1) a case-name column equal to the case name, or a path
    column whose last folder, or last two folders joined by `_`, equal it; else (2) a
    patient-id column whose value is the case name or its start followed by `_`
    (`PETCT_<id>` matches `PETCT_<id>_<date>`). When one patient's rows disagree, a
    study-date column ('3/23/2003' as TCIA writes it, or ISO) picks the rows whose date
    is the one in the case name (the study folder '03-23-2003-NA-PET-CT ...').
    """

    path: Path
    by_case: Mapping[str, str]
    by_patient: Mapping[str, tuple[tuple[str, datetime.date | None], ...]]

    def cohort_of(self, case: str) -> str:
        """The case's normalised diagnosis, or `UNKNOWN` when no row matches clearly."""
        if case in self.by_case:
            return self.by_case[case]
        parts = case.split("_")
        for end in range(len(parts), 0, -1):
            rows = self.by_patient.get("_".join(parts[:end]))
            if not rows:
                continue
            cohorts = {cohort for cohort, _ in rows}
            if len(cohorts) == 1:
                return cohorts.pop()
            dates = _dates_in(case)
            dated = {cohort for cohort, date in rows if date is not None and date in dates}
            if len(dated) == 1:
                return dated.pop()
            logger.warning("%s: rows of case %s disagree on the diagnosis", self.path, case)
            return UNKNOWN
        return UNKNOWN


def read_metadata(csv_path: str | Path) -> Metadata:
    """Read a clinical metadata CSV (comma, semicolon or tab separated).

    Needs a diagnosis column (`diagnosis`, `cohort`, `dx` or `disease`) and one to pair
    rows with cases: a case-name column (`case`, `case_name`, `study`, ...), a path
    column (`File Location`, `path`, ...) or a patient-id column (`Subject ID`,
    `patient_id`, `patient`, `id`, ...). Header matching ignores case, spaces and `_`.

    Raises:
        PetsegError: unreadable file or missing columns.
    """
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PetsegError(f"{path}: cannot read the metadata CSV ({exc.__class__.__name__}); "
                          "pass a UTF-8 CSV file") from None
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(_io.StringIO(text), dialect=dialect)
    headers = {_header_key(h): h for h in reader.fieldnames or [] if h}

    def column(candidates: Sequence[str]) -> str | None:
        return next((headers[c] for c in candidates if c in headers), None)

    diagnosis = column(_DIAGNOSIS_COLUMNS)
    case_col, path_col = column(_CASE_COLUMNS), column(_PATH_COLUMNS)
    patient_col, date_col = column(_PATIENT_COLUMNS), column(_DATE_COLUMNS)
    if diagnosis is None or not (case_col or path_col or patient_col):
        raise PetsegError(
            f"{path}: needs a 'diagnosis' column and a 'case', 'File Location' or "
            f"'Subject ID' column; found {list(reader.fieldnames or [])}"
        )
    by_case: dict[str, str] = {}
    by_patient: dict[str, list[tuple[str, str]]] = {}
    for row in reader:
        cohort = normalize_cohort(row.get(diagnosis) or "")
        if not cohort:
            continue
        if case_col and (row.get(case_col) or "").strip():
            by_case[row[case_col].strip()] = cohort
        if path_col and (row.get(path_col) or "").strip():
            # TCIA: ./<collection>/<patient>/<study>/<series>; any folder or pair of
            # neighbouring folders may be the case name.
            parts = [p for p in re.split(r"[\\/]+", row[path_col].strip()) if p not in ("", ".")]
            for key in [*parts, *(f"{a}_{b}" for a, b in itertools.pairwise(parts))]:
                by_case.setdefault(key, cohort)
        if patient_col and (row.get(patient_col) or "").strip():
            date = _parse_date(row.get(date_col) or "") if date_col else None
            by_patient.setdefault(row[patient_col].strip(), []).append((cohort, date))
    return Metadata(path, by_case, {k: tuple(v) for k, v in by_patient.items()})
