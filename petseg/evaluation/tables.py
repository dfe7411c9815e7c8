"""The tables `petseg evaluate` prints and writes: Markdown summaries and rankings,
and the per-case CSV."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from petseg.evaluation.metrics import CaseMetrics
from petseg.io.images import atomic_path

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
