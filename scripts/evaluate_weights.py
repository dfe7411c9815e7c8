#!/usr/bin/env python3
"""Score an ensemble on held-out phantom cases, as the paper's Table 2 (both ensembles).

    python scripts/evaluate_weights.py --weights weights/ --out OUT [--cases 20]
        [--seed 777000] [--size full] [--config resources/inference.json]
        [--thresholds 0.5 0.7 ...]

Generates `--cases` phantoms in the grand-challenge layout with `--seed` (about half
negative), segments them with the plain and the DSC-weighted ensemble through the same
pipeline as `petseg predict` (one pass over the folds serves both), and prints per
ensemble: the challenge metrics summary (DSC over cases with lesions, FPV and FNV over
all), lesion sensitivity for lesions of 1 ml and more, and the false-positive volume on
the negative cases. Everything lands under OUT (`heldout/`, `truth/`, `metadata.csv`,
`pred_<ensemble>/`), and the numbers also in `OUT/summary.json`.

`--thresholds` scores several probability thresholds from the same fold maps (masks in
`pred_<ensemble>_t<threshold>/`); choose a threshold on a calibration seed, never on the
held-out seed that reports the result. `--calibrate` does that choice and records it in
the weights' `manifest.json` (`thresholds`), which inference then uses whenever its
config's `threshold` is null: per ensemble, the threshold with the highest mean DSC over
the cases with lesions, the challenge's first metric (ties: less false-positive volume on
the negative cases).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from petseg.checkpoint import (  # noqa: E402
    calibrated_threshold,
    dsc_weights,
    load_ensemble,
    write_thresholds,
)
from petseg.config import InferenceConfig, load_json  # noqa: E402
from petseg.evaluation import (  # noqa: E402
    Metadata,
    evaluate_pairs,
    markdown_table,
    pair_cases,
    read_metadata,
    summarize,
)
from petseg.geometry import Geometry  # noqa: E402
from petseg.inference import normalized_weights  # noqa: E402
from petseg.io import find_cases, read_case, read_image, write_image  # noqa: E402
from petseg.metrics import match_components, voxel_volume_ml  # noqa: E402
from petseg.phantom import write_dataset  # noqa: E402
from petseg.pipeline import MASK_FOLDER, Predictor  # noqa: E402
from petseg.postprocessing import probability_to_mask  # noqa: E402

MIN_LESION_ML = 1.0
"""Lesions at least this large count for the detection sensitivity."""
ENSEMBLES = ("mean", "weighted")
"""The plain fold mean and the DSC-weighted mean (the paper's Table 2)."""


def prepare_heldout(out: Path, cases: int, seed: int,
                    size: str = "full") -> tuple[Path, Path, Path]:
    """Phantoms, a truth folder `<case>.mha` and a metadata CSV (case, diagnosis)."""
    heldout, truth_dir, metadata = out / "heldout", out / "truth", out / "metadata.csv"
    if not heldout.exists():
        write_dataset(heldout, cases, seed, "challenge", size=size)
    truth_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_dir in sorted(p for p in heldout.iterdir() if (p / "truth").is_dir()):
        record = json.loads((case_dir / "truth" / "lesions.json").read_text())
        truth = case_dir / "truth" / f"{record['pet_uuid']}.mha"
        link = truth_dir / f"{case_dir.name}.mha"
        if not link.exists():
            os.symlink(truth.resolve(), link)
        rows.append({"case": case_dir.name, "diagnosis": record["cohort"]})
    with metadata.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "diagnosis"])
        writer.writeheader()
        writer.writerows(rows)
    return heldout, truth_dir, metadata


def large_lesion_sensitivity(pairs: list[tuple[str, Path, Path]]) -> tuple[int, int]:
    """(found, total) true lesions of at least `MIN_LESION_ML` over all pairs."""
    found = total = 0
    for _, pred_path, truth_path in pairs:
        truth, pred = read_image(truth_path), read_image(pred_path)
        match = match_components(sitk.GetArrayViewFromImage(truth),
                                 sitk.GetArrayViewFromImage(pred))
        large = match.truth_sizes * voxel_volume_ml(truth.GetSpacing()) >= MIN_LESION_ML
        total += int(large.sum())
        found += int((match.truth_detected & large).sum())
    return found, total


def thresholds_per_ensemble(requested: list[float] | None, weights: Path,
                            config: InferenceConfig) -> dict[str, list[float]]:
    """Ensemble -> thresholds to score: `requested` for both, else each ensemble's own
    default (the config's threshold, else the one calibrated for it, else 0.5)."""
    return {name: list(requested) if requested else
            [config.mask_threshold(calibrated_threshold(weights, name))] for name in ENSEMBLES}


def predict_both(heldout: Path, out: Path, weights: Path, config: InferenceConfig,
                 device: str, thresholds: dict[str, list[float]]) -> dict[tuple[str, float], Path]:
    """Masks of both ensembles at each one's thresholds from one pass over the folds.

    Averaging the folds' PET-grid probabilities equals resampling the averaged
    probability (linear interpolation is linear), so both ensembles come from the same
    fold maps. `thresholds`: ensemble ("mean", "weighted") -> its thresholds. Returns the
    prediction folder of each (ensemble, threshold): `pred_<ensemble>` where an ensemble
    has a single threshold, `pred_<ensemble>_t<threshold>` where it has several.
    """
    predictor = Predictor(weights, config, device=device)
    dsc = normalized_weights(len(predictor.networks),
                             dsc_weights(load_ensemble(weights)))
    plain = normalized_weights(len(predictor.networks))
    folders = {(name, t): out / (f"pred_{name}" if len(values) == 1 else f"pred_{name}_t{t:.2f}")
               for name, values in thresholds.items() for t in values}
    for files in find_cases(heldout).cases:
        case = read_case(files, predictor.model_config.preprocessing.ct_fill_hu)
        folds = predictor.predict(case.pet, case.ct, fold_probabilities=True).fold_probabilities
        maps = [sitk.GetArrayViewFromImage(f) for f in folds]
        geometry = Geometry.of(case.pet)
        for name, weights_ in zip(ENSEMBLES, (plain, dsc), strict=True):
            probability = sum(w * m for w, m in zip(weights_, maps, strict=True))
            for t in thresholds[name]:
                mask = probability_to_mask(probability, geometry, t)
                write_image(mask, folders[name, t].joinpath(*MASK_FOLDER, f"{files.name}.mha"))
        print(f"{files.name}: done", flush=True)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=REPOSITORY / "weights")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=777000)
    parser.add_argument("--config", type=Path, default=REPOSITORY / "resources" / "inference.json")
    parser.add_argument("--mode", choices=("reference", "fast"), default=None,
                        help="engine mode (default: the config's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="phantom size (small: a quick check, not a result)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None,
                        help="probability thresholds to score (default: the config's, "
                        "else each ensemble's calibrated one, else 0.5)")
    parser.add_argument("--calibrate", action="store_true",
                        help="write the best of --thresholds per ensemble into the weights' "
                        "manifest (use a calibration seed, not the reporting one)")
    args = parser.parse_args(argv)

    config = load_json(InferenceConfig, args.config)
    if args.mode:
        config = dataclasses.replace(config, mode=args.mode)
    thresholds = sorted(set(args.thresholds or [])) or None
    if thresholds is not None and not all(0.0 < t < 1.0 for t in thresholds):
        parser.error(f"--thresholds {thresholds}: use values between 0 and 1")
    if args.calibrate and (thresholds is None or len(thresholds) < 2):
        parser.error("--calibrate: give at least two --thresholds to choose from")
    per_ensemble = thresholds_per_ensemble(thresholds, args.weights, config)
    heldout, truth_dir, metadata_csv = prepare_heldout(args.out, args.cases, args.seed,
                                                       args.size)
    metadata = read_metadata(metadata_csv)
    folders = predict_both(heldout, args.out, args.weights, config, args.device, per_ensemble)
    results = []
    for (ensemble, threshold), pred_dir in folders.items():
        numbers, table = score(pred_dir, truth_dir, metadata)
        results.append({"ensemble": ensemble, "threshold": threshold,
                        "numbers": numbers, "table": table})
        print(f"\n## {ensemble} ensemble, threshold {threshold:.2f}\n")
        print(markdown_table(table))
        print("\n" + "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
                                for k, v in numbers.items()))
    if len(results) > 2:
        print("\n" + comparison_table(results))
    summary = {"cases": args.cases, "seed": args.seed, "size": args.size, "mode": config.mode,
               "results": results}
    if args.calibrate:
        chosen = choose_thresholds(results)
        calibration = {"cases": args.cases, "seed": args.seed, "size": args.size,
                       "mode": config.mode, "candidates": thresholds,
                       "criterion": "highest mean DSC over the cases with lesions; ties: "
                       "least false-positive volume on the negative cases"}
        manifest = write_thresholds(args.weights, chosen, calibration)
        summary["calibrated_thresholds"] = chosen
        print("\ncalibrated thresholds " + ", ".join(f"{k} {v:.2f}" for k, v in chosen.items())
              + f" written to {manifest}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


def choose_thresholds(results: list[dict[str, Any]]) -> dict[str, float]:
    """Ensemble -> the best threshold of `results` (entries of `summary.json["results"]`).

    The one with the highest mean DSC over the cases with lesions; ties go to less
    false-positive volume on the negative cases.
    """
    chosen = {}
    for ensemble in sorted({r["ensemble"] for r in results}):
        rows = [r for r in results if r["ensemble"] == ensemble]
        best = max(rows, key=lambda r: (np.nan_to_num(r["numbers"]["mean_dsc_positive"]),
                                        -r["numbers"]["negative_mean_fpv_ml"]))
        chosen[ensemble] = float(best["threshold"])
    return chosen


def score(pred_dir: Path, truth_dir: Path,
          metadata: Metadata) -> tuple[dict[str, float | int], list[dict[str, object]]]:
    """(headline numbers, Table-1 summary rows) of one prediction folder."""
    pairs = list(pair_cases(pred_dir, truth_dir).pairs)
    rows = evaluate_pairs(pairs, metadata)
    found, total = large_lesion_sensitivity(pairs)
    negative_fpv = [r["fpv_ml"] for r in rows if r["cohort"] == "NEGATIVE"]
    positive = [r for r in rows if r["cohort"] != "NEGATIVE"]
    numbers = {
        "mean_dsc_positive": float(np.nanmean([r["dsc"] for r in positive]))
        if positive else float("nan"),
        "median_fpv_ml": float(np.median([r["fpv_ml"] for r in rows])),
        "median_fnv_ml": float(np.median([r["fnv_ml"] for r in rows])),
        "sensitivity_lesions_ge_1ml": found / total if total else float("nan"),
        "lesions_ge_1ml": total,
        "negative_mean_fpv_ml": float(np.mean(negative_fpv)) if negative_fpv else 0.0,
    }
    return numbers, summarize(rows)


def comparison_table(results: list[dict[str, object]]) -> str:
    """Markdown: one row per (ensemble, threshold) with the headline numbers."""
    lines = ["| ensemble | threshold | mean DSC | median FPV ml | median FNV ml "
             "| sensitivity >= 1 ml | negative FPV ml |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n = r["numbers"]
        lines.append(f"| {r['ensemble']} | {r['threshold']:.2f} | {n['mean_dsc_positive']:.3f} "
                     f"| {n['median_fpv_ml']:.2f} | {n['median_fnv_ml']:.2f} "
                     f"| {n['sensitivity_lesions_ge_1ml']:.2f} "
                     f"| {n['negative_mean_fpv_ml']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
