"""`scripts/evaluate_weights.py`: both ensembles at several thresholds from one pass."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location(
    "evaluate_weights", REPOSITORY / "scripts" / "evaluate_weights.py")
evaluate_weights = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(evaluate_weights)
MASKS = ("images", "automated-petct-lesion-segmentation")


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    truth, pred = truth > 0, pred > 0
    total = truth.sum() + pred.sum()
    return 2.0 * float((truth & pred).sum()) / float(total) if total else 1.0


@pytest.mark.slow
def test_scores_both_ensembles_at_every_threshold(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    weights = shutil.copytree(REPOSITORY / "weights", tmp_path / "weights")
    code = evaluate_weights.main(["--out", str(out), "--cases", "2", "--seed", "31",
                                  "--size", "small", "--mode", "fast", "--device", "cpu",
                                  "--thresholds", "0.9", "0.3", "0.5", "--calibrate",
                                  "--weights", str(weights)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["cases"], summary["size"], summary["mode"]) == (2, "small", "fast")
    keys = [(r["ensemble"], r["threshold"]) for r in summary["results"]]
    assert keys == [(e, t) for e in ("mean", "weighted") for t in (0.3, 0.5, 0.9)]
    cohorts = dict(line.split(",") for line in (out / "metadata.csv").read_text().split()[1:])
    positive = [c for c, cohort in cohorts.items() if cohort != "NEGATIVE"]
    assert len(positive) == 1 and len(cohorts) == 2
    for result in summary["results"]:
        tag = f"pred_{result['ensemble']}_t{result['threshold']:.2f}"
        pred = sitk.ReadImage(str(out.joinpath(tag, *MASKS, f"{positive[0]}.mha")))
        truth = sitk.ReadImage(str(out / "truth" / f"{positive[0]}.mha"))
        dice = _dice(sitk.GetArrayViewFromImage(truth), sitk.GetArrayViewFromImage(pred))
        assert result["numbers"]["mean_dsc_positive"] == pytest.approx(dice, abs=1e-6)
    for ensemble in ("mean", "weighted"):
        rows = [r["numbers"] for r in summary["results"] if r["ensemble"] == ensemble]
        volumes = [sum(float(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).sum())
                       for p in out.joinpath(f"pred_{ensemble}_t{t:.2f}", *MASKS).glob("*.mha"))
                   for t in (0.3, 0.5, 0.9)]
        assert volumes[0] >= volumes[1] >= volumes[2]
        assert [r["negative_mean_fpv_ml"] for r in rows] == sorted(
            (r["negative_mean_fpv_ml"] for r in rows), reverse=True)
    printed = capsys.readouterr().out
    assert "| weighted | 0.90 |" in printed and "## mean ensemble, threshold 0.30" in printed
    chosen = evaluate_weights.choose_thresholds(summary["results"])
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["thresholds"] == chosen == summary["calibrated_thresholds"]
    assert manifest["threshold_calibration"]["seed"] == 31
    assert manifest["threshold_calibration"]["candidates"] == [0.3, 0.5, 0.9]
    assert f"calibrated thresholds mean {chosen['mean']:.2f}" in printed


def _result(ensemble: str, threshold: float, dsc: float, negative_fpv: float) -> dict:
    return {"ensemble": ensemble, "threshold": threshold,
            "numbers": {"mean_dsc_positive": dsc, "negative_mean_fpv_ml": negative_fpv}}


def test_calibration_takes_the_best_dice_and_breaks_ties_by_negative_fpv() -> None:
    results = [_result("mean", 0.5, 0.60, 30.0), _result("mean", 0.7, 0.70, 10.0),
               _result("mean", 0.9, 0.65, 1.0),
               _result("weighted", 0.5, 0.65, 20.0),
               _result("weighted", 0.6, 0.65, 12.0)]  # a tie: less negative FPV wins
    assert evaluate_weights.choose_thresholds(results) == {"mean": 0.7, "weighted": 0.6}


def test_calibrate_needs_several_thresholds(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        evaluate_weights.main(["--out", str(tmp_path / "eval"), "--calibrate"])
    assert raised.value.code == 2
    assert "--calibrate: give at least two --thresholds" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_rejects_a_threshold_outside_zero_one(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        evaluate_weights.main(["--out", str(tmp_path / "eval"), "--thresholds", "0.5", "1.2"])
    assert raised.value.code == 2
    assert "--thresholds [0.5, 1.2]: use values between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_each_ensemble_defaults_to_its_own_calibrated_threshold(tmp_path: Path) -> None:
    """Without --thresholds the plain and weighted means are scored at their own thresholds."""
    import dataclasses

    from petseg.checkpoint import write_thresholds
    from petseg.config import InferenceConfig, load_json

    weights = shutil.copytree(REPOSITORY / "weights", tmp_path / "weights")
    write_thresholds(weights, {"mean": 0.35, "weighted": 0.8}, {"seed": 1})
    config = load_json(InferenceConfig, REPOSITORY / "resources" / "inference.json")
    assert config.threshold is None
    per_ensemble = evaluate_weights.thresholds_per_ensemble
    assert per_ensemble(None, weights, config) == {"mean": [0.35], "weighted": [0.8]}
    assert per_ensemble([0.4, 0.6], weights, config) == {"mean": [0.4, 0.6],
                                                         "weighted": [0.4, 0.6]}
    fixed = dataclasses.replace(config, threshold=0.45)
    assert per_ensemble(None, weights, fixed) == {"mean": [0.45], "weighted": [0.45]}
    write_thresholds(weights, {"weighted": 0.8}, {"seed": 1})
    assert per_ensemble(None, weights, config) == {"mean": [0.5], "weighted": [0.8]}
