"""Evaluate folders of predicted masks against ground truth: pairing, per-case rows,
per-cohort summaries (the paper's Table 1), the challenge ranking, Markdown tables.

Case names (how a prediction pairs with its truth):

- A file's case name is its name without the image suffix (`PETCT_0af7ffe12a_08-12-2005.mha`
  -> `PETCT_0af7ffe12a_08-12-2005`).
- Files named only by their content (`SEG`, `PRED`, `GT`, `LABEL`, `MASK`, ...) take the
  names of the folders between the search root and the file, joined by `_`: the autoPET
  layout `PETCT_<id>/<date>/SEG.nii.gz` gives `PETCT_<id>_<date>`.
- Challenge outputs `.../images/automated-petct-lesion-segmentation/<uuid>.mha` take the
  folders above `images` (joined by `_`) when there are any, else the uuid. When a tree
  holds such folders, only the files inside them are predictions.
- Input images of the autoPET layout (`SUV`, `CTres`, `CT`, `PET`) and hidden files are
  ignored. Folders are searched recursively; two files with one case name are an error.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io as _io
import itertools
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.geometry import grid_difference
from petseg.io import atomic_path, image_stem, image_suffix, read_image
from petseg.metrics import CaseMetrics, case_metrics

logger = logging.getLogger(__name__)

CHALLENGE_OUTPUT_DIR = "automated-petct-lesion-segmentation"
"""Folder (under `images/`) where a grand-challenge algorithm writes its mask."""

CONTENT_STEMS: frozenset[str] = frozenset(
    {"seg", "pred", "prediction", "gt", "truth", "label", "labels", "mask", "segmentation"}
)
"""File stems (lower case) that name the content, not the case: named by their folders."""

INPUT_IMAGE_STEMS: frozenset[str] = frozenset({"suv", "ctres", "ct", "pet"})
"""File stems (lower case) of autoPET input images, never masks: skipped."""

COHORTS: tuple[str, ...] = ("LYMPHOMA", "LUNG_CANCER", "MELANOMA", "NEGATIVE")
"""The autoPET FDG cohorts, in the order the summary tables list them."""

ALL = "ALL"
UNKNOWN = "UNKNOWN"

# ------------------------------------------------------------------------------ pairing


def case_name(path: str | Path, root: str | Path) -> str:
    """The case name of mask file `path` found under folder `root` (rules in the module doc)."""
    path, root = Path(path), Path(root)
    folders = path.relative_to(root).parts[:-1]
    stem = image_stem(path)
    if len(folders) >= 2 and folders[-1] == CHALLENGE_OUTPUT_DIR and folders[-2] == "images":
        above = folders[:-2]
        return "_".join(above) if above else stem
    if stem.lower() in CONTENT_STEMS and folders:
        return "_".join(folders)
    return stem


def find_masks(root: str | Path) -> dict[str, Path]:
    """Case name -> mask file for every image file under `root` (recursive, sorted).

    Raises:
        PetsegError: `root` is not a folder, or two files share a case name.
    """
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"{root}: folder not found; pass an existing folder of masks")
    files = [
        p for p in sorted(root.rglob("*"))
        if p.is_file() and image_suffix(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and image_stem(p).lower() not in INPUT_IMAGE_STEMS
    ]
    challenge = [p for p in files if p.parent.name == CHALLENGE_OUTPUT_DIR]
    if challenge:
        files = challenge
    found: dict[str, Path] = {}
    for path in files:
        name = case_name(path, root)
        if name in found:
            raise PetsegError(
                f"{path}: case name '{name}' is already taken by {found[name]}; "
                "keep one mask per case in the folder"
            )
        found[name] = path
    return found


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Prediction and truth files paired by case name.

    Attributes:
        pairs: (case name, prediction file, truth file), sorted by case name.
        unpaired_predictions: prediction files whose case has no truth.
        unpaired_truths: truth files whose case has no prediction.
    """

    pairs: tuple[tuple[str, Path, Path], ...]
    unpaired_predictions: tuple[Path, ...]
    unpaired_truths: tuple[Path, ...]


def pair_cases(pred_dir: str | Path, truth_dir: str | Path) -> Pairing:
    """Pair the masks of two folders by case name.

    Raises:
        PetsegError: a folder is missing, or no case pairs at all.
    """
    preds = find_masks(pred_dir)
    truths = find_masks(truth_dir)
    names = sorted(preds.keys() & truths.keys())
    if not names:
        example = next(iter(truths), "PETCT_<id>_<date>")
        raise PetsegError(
            f"{pred_dir}: no prediction pairs with a truth mask in {truth_dir} "
            f"({len(preds)} predictions, {len(truths)} truths); name each prediction "
            f"after its case, e.g. '{example}.nii.gz'"
        )
    return Pairing(
        pairs=tuple((n, preds[n], truths[n]) for n in names),
        unpaired_predictions=tuple(preds[n] for n in sorted(preds.keys() - truths.keys())),
        unpaired_truths=tuple(truths[n] for n in sorted(truths.keys() - preds.keys())),
    )


# ------------------------------------------------------------------------ one case


def _mask_array(image: sitk.Image, path: Path) -> np.ndarray:
    """`[z, y, x]` boolean mask of a 0/1 image; other values raise `PetsegError`."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == bool:
        return array.copy()
    if array.size:
        low, high = array.min(), array.max()
        not_binary = low < 0 or high > 1
        if not not_binary and np.issubdtype(array.dtype, np.floating):
            not_binary = bool(np.any((array != 0) & (array != 1)))
        if not_binary:
            raise PetsegError(
                f"{path}: holds values other than 0 and 1 (range {low:g}..{high:g}); "
                "write a binary 0/1 lesion mask"
            )
    return array != 0


def load_pair(
    pred_path: str | Path, truth_path: str | Path, resample_pred: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a truth/prediction pair onto one grid.

    Args:
        pred_path: predicted 0/1 mask.
        truth_path: ground-truth 0/1 mask.
        resample_pred: put the prediction onto the truth grid (nearest neighbour) when
            the grids differ, instead of refusing.

    Returns:
        (truth `[z, y, x]` bool, prediction `[z, y, x]` bool, spacing mm (x, y, z)).

    Raises:
        PetsegError: unreadable file, non-binary values, or grids that differ (without
            `resample_pred`).
    """
    pred_path, truth_path = Path(pred_path), Path(truth_path)
    truth_image = read_image(truth_path)
    pred_image = read_image(pred_path)
    difference = grid_difference(pred_image, truth_image)
    if difference is not None:
        if not resample_pred:
            raise PetsegError(
                f"{pred_path}: grid differs from truth {truth_path}: {difference}; "
                "write the prediction on the truth grid or pass --resample-pred"
            )
        logger.debug("%s: resampled onto the truth grid (%s)", pred_path, difference)
        pred_image = sitk.Resample(
            pred_image, truth_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
            pred_image.GetPixelID(),
        )
    spacing = tuple(float(s) for s in truth_image.GetSpacing())
    return _mask_array(truth_image, truth_path), _mask_array(pred_image, pred_path), spacing


def evaluate_case(
    pred_path: str | Path, truth_path: str | Path, resample_pred: bool = False
) -> CaseMetrics:
    """`CaseMetrics` of one prediction file against its truth file (see `load_pair`)."""
    truth, pred, spacing = load_pair(pred_path, truth_path, resample_pred)
    return case_metrics(truth, pred, spacing)


# --------------------------------------------------------------------------- metadata


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


# ------------------------------------------------------------------------------ folders


def evaluate_pairs(
    pairs: Iterable[tuple[str, Path, Path]],
    metadata: Metadata | None = None,
    resample_pred: bool = False,
) -> list[dict[str, Any]]:
    """One row per (case, prediction, truth): case, cohort, the `CaseMetrics` fields, files.

    `cohort` is the metadata diagnosis (`UNKNOWN` if unmatched), '' without metadata.
    """
    from tqdm import tqdm

    pairs = list(pairs)
    rows = []
    for case, pred_path, truth_path in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        metrics = evaluate_case(pred_path, truth_path, resample_pred)
        cohort = metadata.cohort_of(case) if metadata is not None else ""
        rows.append({"case": case, "cohort": cohort, **metrics.as_dict(),
                     "pred_file": str(pred_path), "truth_file": str(truth_path)})
    if metadata is not None:
        unknown = [r["case"] for r in rows if r["cohort"] == UNKNOWN]
        if unknown:
            logger.warning("%s: no diagnosis for %d case(s), e.g. %s", metadata.path,
                           len(unknown), ", ".join(unknown[:3]))
    return rows


def evaluate_folder(
    pred_dir: str | Path,
    truth_dir: str | Path,
    metadata_csv: str | Path | None = None,
    resample_pred: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every prediction in `pred_dir` that pairs with a truth in `truth_dir`.

    Unpaired files are logged as warnings. Rows as `evaluate_pairs`.
    """
    pairing = pair_cases(pred_dir, truth_dir)
    log_unpaired(pairing, str(pred_dir))
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else None
    return evaluate_pairs(pairing.pairs, metadata, resample_pred)


def log_unpaired(pairing: Pairing, label: str) -> None:
    """Warn about files that found no partner (up to 5 names each)."""
    for files, what in (
        (pairing.unpaired_predictions, "prediction(s) without a truth mask"),
        (pairing.unpaired_truths, "truth case(s) without a prediction"),
    ):
        if files:
            shown = ", ".join(str(f) for f in files[:5])
            more = f" and {len(files) - 5} more" if len(files) > 5 else ""
            logger.warning("%s: %d %s: %s%s", label, len(files), what, shown, more)


# ---------------------------------------------------------------------------- summaries


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """n, mean, sample SD (ddof 1), median, quartiles q1/q3 of the finite values (NaN if none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    nan = float("nan")
    if v.size == 0:
        return {"n": 0, "mean": nan, "sd": nan, "median": nan, "q1": nan, "q3": nan}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else nan,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
    }


def _has_lesions(row: Mapping[str, Any]) -> bool:
    return int(row["n_true_lesions"]) > 0


def _summarize_group(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    positive = [r for r in rows if _has_lesions(r)]
    totals = {k: int(sum(int(r[k]) for r in rows))
              for k in ("n_true_lesions", "n_pred_lesions", "detected", "missed", "fp_lesions")}
    sens = totals["detected"] / totals["n_true_lesions"] if totals["n_true_lesions"] else math.nan
    matched = totals["n_pred_lesions"] - totals["fp_lesions"]
    prec = matched / totals["n_pred_lesions"] if totals["n_pred_lesions"] else math.nan
    f1 = (math.nan if math.isnan(sens) or math.isnan(prec)
          else (0.0 if sens + prec == 0 else 2 * sens * prec / (sens + prec)))
    return {
        "n_cases": len(rows),
        "n_cases_with_lesions": len(positive),
        # autoPET II: DSC only over cases with lesions; FPV and FNV over all cases.
        "dsc": describe(float(r["dsc"]) for r in positive),
        "fpv_ml": describe(float(r["fpv_ml"]) for r in rows),
        "fnv_ml": describe(float(r["fnv_ml"]) for r in rows),
        "tmtv_diff_ml": describe(float(r["tmtv_diff_ml"]) for r in rows),
        "lesions": {**totals, "sensitivity": sens, "precision": prec, "f1": f1},
    }


def cohort_order(cohorts: Iterable[str]) -> list[str]:
    """Known cohorts in paper order, then others sorted, `UNKNOWN` last."""
    present = set(cohorts) - {""}
    known = [c for c in COHORTS if c in present]
    others = sorted(present - set(COHORTS) - {UNKNOWN})
    return known + others + ([UNKNOWN] if UNKNOWN in present else [])


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table 1 statistics per cohort and over all cases.

    DSC is summarised over the cases whose truth has lesions (NaN-DSC cases of empty
    truth and empty prediction never count); FPV, FNV and the TMTV difference over all
    cases. Each metric gives n, mean, sd, median, q1, q3; `lesions` gives pooled lesion
    counts with pooled sensitivity, precision and F1.

    Returns:
        {"cohorts": {cohort: stats, ..., "ALL": stats}} with cohorts in paper order.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("cohort") or ""), []).append(row)
    out = {c: _summarize_group(groups[c]) for c in cohort_order(groups)}
    out[ALL] = _summarize_group(list(rows))
    return {"cohorts": out}


# ------------------------------------------------------------------------------ ranking


def _competition_ranks(values: Sequence[float], higher_is_better: bool) -> list[int]:
    """1 + number of strictly better values; NaN is worst ("1224" ranking)."""
    worst = -math.inf if higher_is_better else math.inf
    v = [worst if math.isnan(x) else x for x in values]
    if higher_is_better:
        return [1 + sum(o > x for o in v) for x in v]
    return [1 + sum(o < x for o in v) for x in v]


def ranking(per_method_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The autoPET challenge ranking of several methods on the cases they all predicted.

    As the organisers rank (autoPET I/II): each metric is averaged over the test cases
    (DSC over cases with lesions, FPV and FNV over all cases); methods are ranked on each
    mean (1 = best: highest DSC, lowest volumes; ties share the better rank); the score is
    0.5 rank(DSC) + 0.25 rank(FPV) + 0.25 rank(FNV); lower score places first, ties broken
    by the higher mean DSC.

    Args:
        per_method_rows: method name -> its per-case rows (`evaluate_folder` output).

    Returns:
        One dict per method, best first: method, place, score, rank_dsc, rank_fpv,
        rank_fnv, dsc_mean, fpv_mean_ml, fnv_mean_ml, n_cases, n_cases_with_lesions.
    """
    if not per_method_rows:
        return []
    names = list(per_method_rows)
    common = set.intersection(*({r["case"] for r in per_method_rows[m]} for m in names))
    table = []
    for method in names:
        rows = [r for r in per_method_rows[method] if r["case"] in common]
        positive = [r for r in rows if _has_lesions(r)]
        table.append({
            "method": method,
            "dsc_mean": describe(float(r["dsc"]) for r in positive)["mean"],
            "fpv_mean_ml": describe(float(r["fpv_ml"]) for r in rows)["mean"],
            "fnv_mean_ml": describe(float(r["fnv_ml"]) for r in rows)["mean"],
            "n_cases": len(rows),
            "n_cases_with_lesions": len(positive),
        })
    rank_dsc = _competition_ranks([t["dsc_mean"] for t in table], higher_is_better=True)
    rank_fpv = _competition_ranks([t["fpv_mean_ml"] for t in table], higher_is_better=False)
    rank_fnv = _competition_ranks([t["fnv_mean_ml"] for t in table], higher_is_better=False)
    for t, rd, rp, rn in zip(table, rank_dsc, rank_fpv, rank_fnv, strict=True):
        t.update(rank_dsc=rd, rank_fpv=rp, rank_fnv=rn, score=0.5 * rd + 0.25 * rp + 0.25 * rn)

    def key(t: Mapping[str, Any]) -> tuple[float, float]:
        dsc = t["dsc_mean"]
        return t["score"], -(dsc if not math.isnan(dsc) else -math.inf)

    for t in table:
        t["place"] = 1 + sum(key(o) < key(t) for o in table)
    order = ("method", "place", "score", "rank_dsc", "rank_fpv", "rank_fnv", "dsc_mean",
             "fpv_mean_ml", "fnv_mean_ml", "n_cases", "n_cases_with_lesions")
    return [{k: t[k] for k in order} for t in sorted(table, key=key)]


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(stats: Mapping[str, float], digits: int) -> str:
    if not stats["n"]:
        return "n/a"
    sd = stats["sd"]
    return _fmt(stats["mean"], digits) + ("" if math.isnan(sd) else f" ± {_fmt(sd, digits)}")


def _median_iqr(stats: Mapping[str, float], digits: int) -> str:
    if not stats["n"]:
        return "n/a"
    q = f"[{_fmt(stats['q1'], digits)}, {_fmt(stats['q3'], digits)}]"
    return f"{_fmt(stats['median'], digits)} {q}"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The paper's Table 1 (and a lesion-detection table) in Markdown from `summarize`.

    Values are mean ± SD and median [Q1, Q3]; DSC over cases with lesions, volumes in ml
    over all cases.
    """
    cohorts: Mapping[str, Any] = summary["cohorts"]
    lines = [
        "| Cohort | Cases (with lesions) | DSC mean ± SD | DSC median [IQR] "
        "| FPV ml mean ± SD | FPV ml median [IQR] | FNV ml mean ± SD | FNV ml median [IQR] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in cohorts.items():
        lines.append(
            f"| {name} | {s['n_cases']} ({s['n_cases_with_lesions']}) "
            f"| {_mean_sd(s['dsc'], 3)} | {_median_iqr(s['dsc'], 3)} "
            f"| {_mean_sd(s['fpv_ml'], 2)} | {_median_iqr(s['fpv_ml'], 2)} "
            f"| {_mean_sd(s['fnv_ml'], 2)} | {_median_iqr(s['fnv_ml'], 2)} |"
        )
    lines += [
        "",
        "| Cohort | True lesions | Detected | Missed | Predicted | FP lesions "
        "| Sensitivity | Precision | F1 | TMTV diff ml mean ± SD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in cohorts.items():
        les = s["lesions"]
        lines.append(
            f"| {name} | {les['n_true_lesions']} | {les['detected']} | {les['missed']} "
            f"| {les['n_pred_lesions']} | {les['fp_lesions']} | {_fmt(les['sensitivity'], 3)} "
            f"| {_fmt(les['precision'], 3)} | {_fmt(les['f1'], 3)} "
            f"| {_mean_sd(s['tmtv_diff_ml'], 2)} |"
        )
    return "\n".join(lines)


def ranking_markdown(ranks: Sequence[Mapping[str, Any]]) -> str:
    """The `ranking` result as a Markdown table, best first."""
    lines = [
        "| Place | Method | Score | rank DSC | rank FPV | rank FNV "
        "| mean DSC | mean FPV ml | mean FNV ml | Cases |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ranks:
        lines.append(
            f"| {r['place']} | {r['method']} | {r['score']:.2f} | {r['rank_dsc']} "
            f"| {r['rank_fpv']} | {r['rank_fnv']} | {_fmt(r['dsc_mean'], 3)} "
            f"| {_fmt(r['fpv_mean_ml'], 2)} | {_fmt(r['fnv_mean_ml'], 2)} | {r['n_cases']} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ writing

PER_CASE_COLUMNS: tuple[str, ...] = (
    "method", "case", "cohort",
    *(f.name for f in dataclasses.fields(CaseMetrics)),
    "pred_file", "truth_file",
)
"""Column order of `per_case.csv`."""


def write_per_case_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows (with a `method` key) atomically as CSV; NaN is written as `nan`."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CASE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in PER_CASE_COLUMNS})
    return path


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats turned into None and tuples/paths into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(data: Any, path: str | Path) -> Path:
    """Write `data` atomically as strict JSON (NaN -> null)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n",
                       encoding="utf-8")
    return path
