"""The bundled demo ensemble on held-out phantoms, and the demo command built on it.

These run the real weights in `weights/` on full-size synthetic cases made with seeds
never used in training, so a regression in any stage (phantom, preprocessing, engine,
postprocessing, weights) shows up as a drop in Dice.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from petseg.checkpoint import calibrated_threshold, load_ensemble, read_manifest
from petseg.cli import main
from petseg.config import InferenceConfig, load_json
from petseg.inference.predictor import Predictor
from petseg.interactive.session import InteractiveSession
from petseg.io.geometry import Geometry
from petseg.phantom import generate_case

REPOSITORY = Path(__file__).resolve().parents[1]
WEIGHTS = REPOSITORY / "weights"
HELD_OUT_FLOOR = 0.45
"""Dice floor of held-out seed 424242 (LYMPHOMA) in `fast` mode; measured 0.542 for the
click-aware folds at zero clicks (0.572 for the automatic folds they were tuned from)."""
NEGATIVE_FPV_CEILING = 3.0
"""False-positive ml ceiling of held-out negative seed 424243 in `fast` mode; measured 2.21
at the calibrated threshold 0.75 (automatic folds: 1.4 at their 0.70, and 4.0 at 0.5)."""
DEMO_FLOOR = 0.70
"""Dice floor of the demo case (seed 20231, LYMPHOMA, `reference` mode); measured 0.825
(automatic folds: 0.827)."""


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    truth, pred = truth > 0, pred > 0
    return 2.0 * float((truth & pred).sum()) / float(truth.sum() + pred.sum())


def _shipped_config() -> InferenceConfig:
    return load_json(InferenceConfig, REPOSITORY / "resources" / "inference.json")


def _fast_prediction(seed: int, cohort: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(truth, mask, ml per voxel) of a held-out full-size phantom, bundled ensemble."""
    case = generate_case(seed, "full", cohort)
    config = dataclasses.replace(_shipped_config(), mode="fast")
    predictor = Predictor.from_weights_dir(WEIGHTS, config, device="cpu")
    mask = predictor.predict(case.pet, case.ctres).mask
    assert Geometry.of(mask) == Geometry.of(case.pet)
    ml = float(np.prod(case.pet.GetSpacing())) / 1000.0
    return sitk.GetArrayFromImage(case.seg) > 0, sitk.GetArrayFromImage(mask) > 0, ml


def test_bundled_weights_verify_and_describe_themselves() -> None:
    checkpoints = load_ensemble(WEIGHTS)
    assert [c.meta["fold"] for c in checkpoints] == [f"fold_{f}" for f in range(5)]
    assert len({c.model_config for c in checkpoints}) == 1
    assert checkpoints[0].model_config.preprocessing.target_spacing_mm == 2.0
    assert all(0.0 < c.metrics["mean_dsc"] <= 1.0 for c in checkpoints)
    assert sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors")) < 15 * 2**20
    assert checkpoints[0].model_config.takes_clicks  # PET, CT and two click maps


@pytest.mark.slow
def test_bundled_ensemble_honours_the_autopet_iv_clicks_of_a_held_out_phantom() -> None:
    """10 + 10 clicks by the organisers' rule: no lesion missed, less false-positive volume
    and a higher Dice than without clicks (measured: DSC 0.542 -> 0.576, FPV 69.2 -> 64.7
    ml, all 4 lesions found both times)."""
    from petseg.evaluation.metrics import case_metrics
    from petseg.interactive.clicks import Clicks
    from petseg.interactive.simulate import autopet_iv_clicks, zyx_to_xyz

    case = generate_case(424242, "full", "LYMPHOMA")
    truth = sitk.GetArrayFromImage(case.seg) > 0
    tumour, background = autopet_iv_clicks(truth, sitk.GetArrayViewFromImage(case.pet))
    clicks = Clicks(tumour=zyx_to_xyz(tumour), background=zyx_to_xyz(background))
    config = dataclasses.replace(_shipped_config(), mode="fast")
    predictor = Predictor.from_weights_dir(WEIGHTS, config, device="cpu")
    spacing = case.pet.GetSpacing()
    before, after = (case_metrics(truth, sitk.GetArrayFromImage(
        InteractiveSession(predictor).predict(case.pet, case.ctres, given).mask) > 0, spacing)
        for given in (None, clicks))
    assert after.fnv_ml == 0.0 and after.detected == after.n_true_lesions
    assert after.fpv_ml <= before.fpv_ml - 2.0
    assert after.dsc >= before.dsc + 0.02


def test_bundled_weights_carry_the_threshold_inference_uses() -> None:
    calibration = read_manifest(WEIGHTS)["threshold_calibration"]
    assert calibration["seed"] not in (1000, 777000, 424242, 424243, 20231)  # never reused
    for ensemble in ("mean", "weighted"):
        threshold = calibrated_threshold(WEIGHTS, ensemble)
        assert threshold in calibration["candidates"]
        config = dataclasses.replace(_shipped_config(), ensemble=ensemble)
        predictor = Predictor.from_weights_dir(WEIGHTS, config, device="cpu")
        assert predictor.config.threshold == threshold


@pytest.mark.slow
def test_bundled_ensemble_finds_the_lesions_of_a_held_out_phantom() -> None:
    truth, mask, _ = _fast_prediction(424242, "LYMPHOMA")
    dice = _dice(truth, mask)
    assert dice >= HELD_OUT_FLOOR, f"Dice {dice:.3f} < {HELD_OUT_FLOOR}"


@pytest.mark.slow
def test_bundled_ensemble_keeps_the_hot_organs_of_a_negative_phantom_dark() -> None:
    truth, mask, ml = _fast_prediction(424243, "NEGATIVE")
    assert not truth.any()
    false_positive_ml = float(mask.sum()) * ml
    assert false_positive_ml <= NEGATIVE_FPV_CEILING, (
        f"FPV {false_positive_ml:.1f} ml > {NEGATIVE_FPV_CEILING} ml")


@pytest.mark.slow
def test_demo_prints_the_metrics_of_the_files_it_writes(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    masks = list((out / "prediction" / "images" / "automated-petct-lesion-segmentation").iterdir())
    assert len(masks) == 1
    truths = list((out / "input" / "case" / "truth").glob("*.mha"))
    pets = list((out / "input" / "case" / "images" / "pet").glob("*.mha"))
    mask, truth, pet = (sitk.ReadImage(str(p[0])) for p in (masks, truths, pets))
    assert masks[0].name == pets[0].name
    assert Geometry.of(mask) == Geometry.of(pet)
    dice = _dice(sitk.GetArrayViewFromImage(truth), sitk.GetArrayViewFromImage(mask))
    shown = float(re.search(r"DSC (\d\.\d{3})", printed).group(1))
    assert shown == pytest.approx(dice, abs=5e-4)
    assert dice >= DEMO_FLOOR, f"Dice {dice:.3f} < {DEMO_FLOOR}"
    assert f"lesion mask: {masks[0]}" in printed
    picture = Image.open(out / "mip.png")
    assert picture.width > 300 and picture.height > 300
    assert len(list((out / "extras").glob("*_lesions.json"))) == 1
