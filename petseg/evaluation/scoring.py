"""Scoring per-case metric rows: per-cohort summaries (the paper's Table 1) and the
autoPET challenge ranking of several methods.

Rows are `petseg.evaluation.pairing.evaluate_pairs` output: dicts with `case`, `cohort` and the
`CaseMetrics` fields (DSC, volumes in ml, lesion counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from petseg.diagnoses import DIAGNOSES, UNKNOWN

ALL = "ALL"
"""Summary key of the group of all cases."""


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
    known = [c for c in DIAGNOSES if c in present]
    others = sorted(present - set(DIAGNOSES) - {UNKNOWN})
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
