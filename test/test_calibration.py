"""`petseg calibrate`: thresholds checked before any work, the chosen ones in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from petseg.cli import main
from petseg.training.calibration import choose_thresholds

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("thresholds", "message"), [
    (["0.5"], "--thresholds: give at least two --thresholds to choose from"),
    (["0.5", "0.5"], "--thresholds: give at least two --thresholds to choose from"),
    (["0.7", "0"], "--thresholds [0.0, 0.7]: use values between 0 and 1"),
])
def test_bad_thresholds_are_one_line_errors_before_any_output(tmp_path, capsys, thresholds,
                                                              message) -> None:
    code = main(["calibrate", "--weights", str(REPOSITORY / "weights"), "--out",
                 str(tmp_path / "cal"), "--thresholds", *thresholds])
    assert code == 1
    assert capsys.readouterr().err == f"petseg calibrate: error: {message}\n"
    assert not (tmp_path / "cal").exists()


def test_weights_without_a_manifest_fail_before_the_phantoms(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", "--weights", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "cal")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"petseg calibrate: error: {tmp_path / 'empty' / 'manifest.json'}: "
                          "not found; point --weights")
    assert not (tmp_path / "cal").exists()


def test_a_null_dice_counts_as_zero_when_choosing() -> None:
    """summary.json stores a NaN mean DSC (no case with lesions) as null."""
    results = [{"ensemble": "mean", "threshold": t,
                "numbers": {"mean_dsc_positive": dsc, "negative_mean_fpv_ml": fpv}}
               for t, dsc, fpv in ((0.4, None, 5.0), (0.6, float("nan"), 2.0), (0.8, 0.0, 3.0))]
    assert choose_thresholds(results) == {"mean": 0.6}


@pytest.mark.slow
def test_calibrate_writes_the_chosen_thresholds_into_the_manifest(tmp_path, capsys) -> None:
    weights = shutil.copytree(REPOSITORY / "weights", tmp_path / "weights")
    out = tmp_path / "cal"
    assert main(["calibrate", "--weights", str(weights), "--out", str(out), "--cases", "2",
                 "--seed", "31", "--size", "small", "--mode", "fast", "--device", "cpu",
                 "--thresholds", "0.7", "0.3"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert [(r["ensemble"], r["threshold"]) for r in summary["results"]] == [
        ("mean", 0.3), ("mean", 0.7), ("weighted", 0.3), ("weighted", 0.7)]
    manifest = json.loads((weights / "manifest.json").read_text())
    chosen = choose_thresholds(summary["results"])
    assert manifest["thresholds"] == chosen == summary["calibrated_thresholds"]
    assert set(chosen.values()) <= {0.3, 0.7}
    assert manifest["threshold_calibration"]["candidates"] == [0.3, 0.7]
    assert (manifest["threshold_calibration"]["seed"], summary["seed"]) == (31, 31)
    assert f"written to {weights / 'manifest.json'}" in capsys.readouterr().out
