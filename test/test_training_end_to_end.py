"""Phantoms in the autoPET layout -> split -> preprocess -> train -> resume -> export -> predict."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_fixtures import TINY_MODEL

from petseg.checkpoint import load_ensemble
from petseg.cli import main
from petseg.config import InferenceConfig, save_json
from petseg.phantom import write_dataset
from petseg.training.config import (
    AugmentationConfig,
    OptimizerConfig,
    TrainingConfig,
    ValidationConfig,
)


@pytest.mark.slow
def test_phantoms_to_weights_to_prediction(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(2)
    data = tmp_path / "data"
    studies = write_dataset(data, 6, seed=3, layout="autopet", size="small")
    model = TINY_MODEL.__class__(network=TINY_MODEL.network,
                                 preprocessing=TINY_MODEL.preprocessing.__class__(
                                     target_spacing_mm=6.0))
    config = TrainingConfig(
        model=model,
        augmentation=AugmentationConfig(patch_size=(32, 32, 32), positive_fraction=0.5),
        optimizer=OptimizerConfig(epochs=2, batch_size=2, lr=3e-3),
        validation=ValidationConfig(every=1, inference=InferenceConfig(roi_size=(48, 48, 48))),
        in_memory=True, loader_threads=1)
    config_path = tmp_path / "train.json"
    save_json(config, config_path)

    splits = tmp_path / "splits.json"
    assert main(["split", "--data", str(data), "--metadata", str(data / "Clinical_Metadata.csv"),
                 "--out", str(splits), "--folds", "3"]) == 0
    cache = tmp_path / "cache"
    assert main(["preprocess", "--data", str(data), "--out", str(cache), "--workers", "1",
                 "--config", str(config_path), "--quiet"]) == 0
    image = np.load(next(cache.rglob("image.npy")), mmap_mode="r")
    assert image.dtype == np.float16 and image.shape[0] == 2

    # fold 0: interrupted (Ctrl-C) in its second epoch, then resumed
    import petseg.training.loop as loop

    original = loop.EpochLoader

    class Interrupted(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if self.epoch == 1:
                raise KeyboardInterrupt

    train = ["train", "--cache", str(cache), "--splits", str(splits), "--config",
             str(config_path), "--device", "cpu", "--quiet"]
    monkeypatch.setattr(loop, "EpochLoader", Interrupted)
    assert main([*train, "--fold", "0", "--out", str(tmp_path / "run0")]) == 130
    monkeypatch.setattr(loop, "EpochLoader", original)
    saved = torch.load(tmp_path / "run0" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1
    steps = saved["optimizer"]["state"][0]["step"]
    assert main([*train, "--fold", "0", "--out", str(tmp_path / "run0"), "--resume"]) == 0
    resumed = torch.load(tmp_path / "run0" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["optimizer"]["state"][0]["step"] == 2 * steps
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with open(tmp_path / "run0" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # the loss went down

    assert main([*train, "--fold", "1", "--out", str(tmp_path / "run1")]) == 0
    weights = tmp_path / "weights"
    assert main(["export-weights", str(tmp_path / "run0"), str(tmp_path / "run1"),
                 "--out", str(weights)]) == 0
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["n_folds"] == 3 and sorted(manifest["folds"]) == ["fold_0", "fold_1"]
    checkpoints = load_ensemble(weights, allow_missing=True)  # sha256 and configs verified
    assert checkpoints[0].model_config == model
    best = json.loads((tmp_path / "run0" / "best_validation.json").read_text())
    assert manifest["folds"]["fold_0"]["metrics"]["mean_dsc"] == pytest.approx(
        best["summary"]["mean_dsc"], nan_ok=True)

    case = tmp_path / "case"
    shutil.copytree(studies[0], case / studies[0].relative_to(data))
    inference = tmp_path / "inference.json"
    save_json(InferenceConfig(roi_size=(48, 48, 48), ensemble="mean"), inference)
    out = tmp_path / "out"
    assert main(["predict", "--input", str(case), "--output", str(out), "--weights",
                 str(weights), "--device", "cpu", "--config", str(inference),
                 "--allow-missing-folds"]) == 0
    masks = list((out / "images" / "automated-petct-lesion-segmentation").iterdir())
    assert len(masks) == 1
    mask, pet = sitk.ReadImage(str(masks[0])), sitk.ReadImage(str(studies[0] / "SUV.nii.gz"))
    assert mask.GetSize() == pet.GetSize() and mask.GetDirection() == pet.GetDirection()
    assert np.allclose(mask.GetSpacing(), pet.GetSpacing())
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}
