"""Threshold calibration: both ensembles scored on phantom cases at several probability
thresholds, the best per ensemble recorded in the weights' `manifest.json`.

`petseg calibrate` (and `scripts/evaluate_weights.py`, which reports held-out numbers
with the same code) generates phantoms in the grand-challenge layout, segments them with
the plain and the DSC-weighted ensemble through the same `Predictor` as `petseg predict`
(one pass over the folds serves both ensembles and every threshold), and scores each
(ensemble, threshold): the challenge metrics summary (DSC over cases with lesions, FPV
and FNV over all), lesion sensitivity for lesions of 1 ml and more, and the
false-positive volume on the negative cases. Everything lands under OUT (`heldout/`,
`truth/`, `metadata.csv`, `pred_<ensemble>[_t<threshold>]/`, `summary.json`).

Calibrating chooses per ensemble the threshold with the highest mean DSC over the cases
with lesions, the challenge's first metric (ties: less false-positive volume on the
negative cases), and writes it to the manifest (`thresholds`), which prediction uses
whenever its config's `threshold` is null. Choose on a calibration seed, never on the
held-out seed that reports the result.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.checkpoint import calibrated_threshold, dsc_weights, load_ensemble, write_thresholds
from petseg.config import InferenceConfig, load_json, resolve_inference_config
from petseg.errors import PetsegError
from petseg.evaluation.metadata import Metadata, read_metadata
from petseg.evaluation.metrics import match_components, voxel_volume_ml
from petseg.evaluation.pairing import evaluate_pairs, pair_cases
from petseg.evaluation.scoring import summarize
from petseg.evaluation.tables import markdown_table
from petseg.io.cases import find_cases, read_case
from petseg.io.geometry import Geometry
from petseg.io.images import read_image, read_json, write_image, write_json

MIN_LESION_ML = 1.0
"""Lesions at least this large count for the detection sensitivity."""
ENSEMBLES = ("mean", "weighted")
"""The plain fold mean and the DSC-weighted mean (the paper's Table 2)."""
CRITERION = ("highest mean DSC over the cases with lesions; ties: least false-positive "
             "volume on the negative cases")


def check_thresholds(values: Sequence[float] | None, chooser: str | None) -> list[float] | None:
    """`values` sorted without repeats (None if none given), each checked to lie in (0, 1).

    Args:
        values: thresholds as given on the command line.
        chooser: the option that chooses among them ("--calibrate"), which needs at least
            two; None when nothing is chosen.

    Raises:
        PetsegError: a value outside (0, 1), or fewer than two to choose from.
    """
    thresholds = sorted(set(values or [])) or None
    if thresholds is not None and not all(0.0 < t < 1.0 for t in thresholds):
        raise PetsegError(f"--thresholds {thresholds}: use values between 0 and 1")
    if chooser is not None and (thresholds is None or len(thresholds) < 2):
        raise PetsegError(f"{chooser}: give at least two --thresholds to choose from")
    return thresholds


def inference_config(path: Path | None, mode: str | None) -> InferenceConfig:
    """The settings of `path` (built-in defaults without one), with `mode` when given."""
    config = load_json(InferenceConfig, path) if path is not None else InferenceConfig()
    return dataclasses.replace(config, mode=mode) if mode else config


def prepare_heldout(out: Path, cases: int, seed: int,
                    size: str = "full") -> tuple[Path, Path, Path]:
    """Phantoms, a truth folder `<case>.mha` and a metadata CSV (case, diagnosis)."""
    from petseg.phantom import write_dataset

    heldout, truth_dir, metadata = out / "heldout", out / "truth", out / "metadata.csv"
    if not heldout.exists():
        write_dataset(heldout, cases, seed, "challenge", size=size)
    truth_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_dir in sorted(p for p in heldout.iterdir() if (p / "truth").is_dir()):
        record = read_json(case_dir / "truth" / "lesions.json", "phantom record",
                           f"delete {heldout} and rerun")
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
            [resolve_inference_config(config, calibrated_threshold(weights, name)).threshold]
            for name in ENSEMBLES}


def predict_both(heldout: Path, out: Path, weights: Path, config: InferenceConfig,
                 device: str, thresholds: dict[str, list[float]]) -> dict[tuple[str, float], Path]:
    """Masks of both ensembles at each one's thresholds from one engine pass over the folds.

    The ensemble is loaded once; the `Predictor` keeps each fold's map from its fused
    pass. Averaging the folds' PET-grid probabilities equals resampling the averaged
    probability (linear interpolation is linear), so both ensembles come from the same
    fold maps. `thresholds`: ensemble ("mean", "weighted") -> its thresholds. Returns the
    prediction folder of each (ensemble, threshold): `pred_<ensemble>` where an ensemble
    has a single threshold, `pred_<ensemble>_t<threshold>` where it has several.
    """
    from petseg.inference.engine import normalized_weights
    from petseg.inference.postprocessing import probability_to_mask
    from petseg.inference.predictor import Predictor
    from petseg.io.outputs import MASK_FOLDER

    checkpoints = load_ensemble(weights)
    predictor = Predictor.from_checkpoints(checkpoints, resolve_inference_config(config),
                                           device=device)
    dsc = normalized_weights(len(checkpoints), dsc_weights(checkpoints))
    plain = normalized_weights(len(checkpoints))
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


def score(pred_dir: Path, truth_dir: Path,
          metadata: Metadata) -> tuple[dict[str, float | int], dict[str, Any]]:
    """(headline numbers, Table-1 summary) of one prediction folder."""
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


def choose_thresholds(results: list[dict[str, Any]]) -> dict[str, float]:
    """Ensemble -> the best threshold of `results` (entries of `summary.json["results"]`).

    The one with the highest mean DSC over the cases with lesions (NaN or null: no
    lesions, counts as 0); ties go to less false-positive volume on the negative cases.
    """
    def key(result: dict[str, Any]) -> tuple[float, float]:
        dsc = result["numbers"]["mean_dsc_positive"]
        dsc = 0.0 if dsc is None or math.isnan(dsc) else dsc
        return dsc, -result["numbers"]["negative_mean_fpv_ml"]

    return {ensemble: float(max((r for r in results if r["ensemble"] == ensemble),
                                key=key)["threshold"])
            for ensemble in sorted({r["ensemble"] for r in results})}


def comparison_table(results: list[dict[str, Any]]) -> str:
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


def score_folders(folders: dict[tuple[str, float], Path], truth_dir: Path,
                  metadata: Metadata) -> list[dict[str, Any]]:
    """Score and print every (ensemble, threshold) folder; `summary.json["results"]`."""
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
    return results


def run(args: argparse.Namespace, config: InferenceConfig, thresholds: list[float] | None,
        calibrate: bool) -> dict[str, Any]:
    """Generate, predict and score (options of `petseg.commands.calibrate.add_options`);
    with `calibrate` write
    the best threshold per ensemble into the manifest. Writes and returns the summary."""
    per_ensemble = thresholds_per_ensemble(thresholds, args.weights, config)
    heldout, truth_dir, metadata_csv = prepare_heldout(args.out, args.cases, args.seed,
                                                       args.size)
    folders = predict_both(heldout, args.out, args.weights, config, args.device, per_ensemble)
    results = score_folders(folders, truth_dir, read_metadata(metadata_csv))
    summary: dict[str, Any] = {"cases": args.cases, "seed": args.seed, "size": args.size,
                               "mode": config.mode, "results": results}
    if calibrate:
        chosen = choose_thresholds(results)
        calibration = {"cases": args.cases, "seed": args.seed, "size": args.size,
                       "mode": config.mode, "candidates": thresholds, "criterion": CRITERION}
        manifest = write_thresholds(args.weights, chosen, calibration)
        summary["calibrated_thresholds"] = chosen
        print("\ncalibrated thresholds " + ", ".join(f"{k} {v:.2f}" for k, v in chosen.items())
              + f" written to {manifest}")
    write_json(summary, args.out / "summary.json", strict=False)  # NaN: no such cases -> null
    return summary
