"""A session kept between calls (autoPET V's `/cache`): a later call with more clicks goes on
from the kept state, and its mask equals a run from the start; an absent, stale, damaged
or unwritable cache only costs time."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import assert_masks_agree, make_case
from tiny_models import tiny_ensemble

from petseg.cli import main
from petseg.config import CLICK_CHANNELS, ModelConfig, NetworkConfig, PreprocessingConfig
from petseg.interactive.cache import SESSIONS_FOLDER

CLICK_MODEL = ModelConfig(
    network=NetworkConfig(in_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    preprocessing=PreprocessingConfig(channel_order=("pet", "ct", *CLICK_CHANNELS)))
MASK = Path("images/tumor-lesion-segmentation/study-pet.mha")
FIRST = [{"point": [36, 46, 55], "name": "tumor"}]
LATER = [*FIRST, {"point": [32, 45, 185], "name": "background"}]
"""The next call's clicks: one more, 520 mm from the first, so the kept session reruns the
network on a part of the case and keeps the rest."""
KEPT = "session kept from an earlier call"


@pytest.fixture(scope="module")
def click_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clicks") / "weights"
    tiny_ensemble(folder, CLICK_MODEL)
    return folder


def _case(folder: Path, points: list, offset: float = 0.0) -> Path:
    pet, ct, _, _ = make_case(size=(72, 72, 200), spacing=(4.0, 4.0, 4.0))
    for kind, image in (("pet", pet + offset if offset else pet), ("ct", ct)):
        (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "images" / kind / f"study-{kind}.mha"))
    (folder / "lesion-clicks.json").write_text(json.dumps(
        {"version": {"major": 1, "minor": 0}, "type": "Multiple points", "points": points}))
    return folder


def _predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> np.ndarray:
    assert main(["predict", "--input", str(inp), "--output", str(out), "--weights",
                 str(weights), "--config", str(config), "--device", "cpu", *extra]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / MASK)))


@pytest.fixture(scope="module")
def start_run(tmp_path_factory, click_weights, config) -> Path:
    """The output folder of the later call computed without a cache (with its probability)."""
    root = tmp_path_factory.mktemp("start")
    _predict(_case(root / "in", LATER), root / "out", click_weights, config,
             "--save-probability")
    return root / "out"


@pytest.fixture(scope="module")
def from_the_start(start_run) -> np.ndarray:
    """The mask of the later call computed without a cache."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(start_run / MASK)))


@pytest.fixture(scope="module")
def decided(start_run, click_weights, config) -> tuple[np.ndarray, float]:
    """(the probability behind `from_the_start` on the PET grid, the ensemble's threshold)."""
    from petseg.config import InferenceConfig, load_json
    from petseg.inference.predictor import settled_config

    threshold = settled_config(load_json(InferenceConfig, config), click_weights).threshold
    probability = sitk.ReadImage(str(start_run / "probabilities" / "study-pet.mha"))
    return sitk.GetArrayFromImage(probability), float(threshold)


def test_a_later_call_goes_on_from_the_kept_session(tmp_path, click_weights, config,
                                                    from_the_start, decided, caplog) -> None:
    """The kept session's update agrees with the run from the start wherever that run's
    probability is decided (`assert_masks_agree`)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    inp = _case(tmp_path / "in", FIRST)
    with caplog.at_level(logging.INFO, logger="petseg.interactive.cache"):
        _predict(inp, tmp_path / "out1", click_weights, config, "--session-cache", str(cache))
        assert KEPT not in caplog.text
        assert len(list((cache / SESSIONS_FOLDER).glob("*.npz"))) == 1
        _case(inp, LATER)  # the next call: the same images, more clicks
        mask = _predict(inp, tmp_path / "out2", click_weights, config,
                        "--session-cache", str(cache), "--save-probability")
    assert KEPT in caplog.text  # found although this call also asks for the probability
    assert_masks_agree(mask, from_the_start, *decided, margin=5e-3)
    # the kept probability, not only the rerun block, over the whole case: to 5e-3 (the
    # block's zero padding still reaches in past its context: 2.1e-3 for this ensemble)
    kept = sitk.GetArrayFromImage(sitk.ReadImage(
        str(tmp_path / "out2" / "probabilities" / "study-pet.mha")))
    np.testing.assert_allclose(kept, decided[0], rtol=0, atol=5e-3)
    assert decided[0].max() > 0.1  # the network answers: the comparison is not of zeros
    assert len(list((cache / SESSIONS_FOLDER).glob("*.npz"))) == 1  # one state per case


def test_other_images_do_not_find_the_session(tmp_path, click_weights, config,
                                              caplog) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _predict(_case(tmp_path / "a", FIRST), tmp_path / "out1", click_weights, config,
             "--session-cache", str(cache))
    with caplog.at_level(logging.INFO, logger="petseg.interactive.cache"):
        _predict(_case(tmp_path / "b", LATER, offset=0.01), tmp_path / "out2", click_weights,
                 config, "--session-cache", str(cache))
    assert KEPT not in caplog.text
    assert len(list((cache / SESSIONS_FOLDER).glob("*.npz"))) == 2


def test_a_damaged_or_unwritable_cache_costs_only_time(tmp_path, click_weights, config,
                                                       from_the_start, caplog) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    inp = _case(tmp_path / "in", FIRST)
    _predict(inp, tmp_path / "out1", click_weights, config, "--session-cache", str(cache))
    [kept] = (cache / SESSIONS_FOLDER).glob("*.npz")
    kept.write_bytes(b"PK\x03\x04 truncated")
    _case(inp, LATER)
    with caplog.at_level(logging.INFO, logger="petseg.interactive.cache"):
        mask = _predict(inp, tmp_path / "out2", click_weights, config,
                        "--session-cache", str(cache))
    assert "kept session unusable" in caplog.text and KEPT not in caplog.text
    np.testing.assert_array_equal(mask, from_the_start)
    # a cache whose sessions folder cannot be made: warned, the mask as from the start
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / SESSIONS_FOLDER).write_text("a file where the folder goes")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="petseg.interactive.cache"):
        mask = _predict(inp, tmp_path / "out3", click_weights, config,
                        "--session-cache", str(blocked))
    assert "cannot keep the session" in caplog.text
    np.testing.assert_array_equal(mask, from_the_start)


def test_an_absent_cache_folder_is_not_made(tmp_path, click_weights, config,
                                            from_the_start) -> None:
    mask = _predict(_case(tmp_path / "in", LATER), tmp_path / "out", click_weights, config,
                    "--session-cache", str(tmp_path / "no-cache"))
    assert not (tmp_path / "no-cache").exists()
    np.testing.assert_array_equal(mask, from_the_start)
