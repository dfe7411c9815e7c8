"""The interactive session beside the Predictor: the weights say how they want their
clicks drawn (`ModelConfig.clicks`), the session draws them so, and a mismatch is an
error, never a silently wrong input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_synthetic import assert_masks_agree
from training_fixtures import TINY_MODEL, tiny_config

from petseg.checkpoint import load_checkpoint, save_checkpoint
from petseg.config import (
    CLICK_CHANNELS,
    ClickEncoding,
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    from_dict,
    resolve_inference_config,
    to_dict,
)
from petseg.errors import PetsegError
from petseg.inference.predictor import Predictor
from petseg.interactive.clicks import Clicks
from petseg.interactive.maps import CLICK_RADIUS_MM
from petseg.interactive.session import InteractiveSession
from petseg.io.geometry import Geometry
from petseg.model import build_network
from petseg.training.clicks import automatic_model
from petseg.training.fold import initial_checkpoint

CLICK_MODEL = ModelConfig(
    network=NetworkConfig(in_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    preprocessing=PreprocessingConfig(channel_order=("pet", "ct", *CLICK_CHANNELS)))


def _predictor(model: ModelConfig) -> Predictor:
    config = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32), mode="fast"))
    return Predictor([build_network(model.network)], model, config, device="cpu")


def _drawn_radius_mm(session: InteractiveSession) -> float:
    """The radius (mm) the session draws a click with, measured on its map: the distance
    from the click to the farthest non-zero voxel along x on a 1 mm grid."""
    grid = Geometry(size=(81, 9, 9), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                    direction=tuple(np.eye(3).ravel()))
    maps = session.click_maps(Clicks(tumour=((40, 4, 4),)), grid)(grid)
    row = maps[0, 4, 4]
    assert maps.shape == (2, 9, 9, 81) and row[40] == 1.0
    return float(np.flatnonzero(row > 0).max() - 40)


def test_the_session_draws_clicks_as_the_weights_say() -> None:
    assert _drawn_radius_mm(InteractiveSession(_predictor(CLICK_MODEL))) == CLICK_RADIUS_MM
    wide = dataclasses.replace(CLICK_MODEL, clicks=ClickEncoding(radius_mm=30.0))
    assert _drawn_radius_mm(InteractiveSession(_predictor(wide))) == 30.0


def test_automatic_weights_get_no_click_maps() -> None:
    session = InteractiveSession(_predictor(TINY_MODEL))
    assert session.click_maps(Clicks(tumour=((1, 1, 1),)), None) is None


def test_the_encoding_travels_with_the_checkpoint(tmp_path: Path) -> None:
    model = dataclasses.replace(CLICK_MODEL, clicks=ClickEncoding(radius_mm=12.0))
    path = save_checkpoint(tmp_path / "fold.safetensors",
                           build_network(model.network).state_dict(), model, {"dsc": 0.5})
    assert load_checkpoint(path).model_config.clicks == ClickEncoding(radius_mm=12.0)
    # a model config written before the encoding was recorded reads as the default one
    old = to_dict(CLICK_MODEL)
    del old["clicks"]
    assert from_dict(ModelConfig, json.loads(json.dumps(old))).clicks == ClickEncoding()


def test_an_unknown_encoding_is_refused_with_the_fix() -> None:
    with pytest.raises(PetsegError, match=r"clicks.shape 'disk': petseg draws clicks as "
                                          r"gaussian, ball; use weights trained with one of these"):
        from_dict(ModelConfig, {**to_dict(CLICK_MODEL), "clicks": {"shape": "disk"}})
    with pytest.raises(PetsegError, match=r"clicks.radius_mm 0.0: must be a positive radius"):
        ClickEncoding(radius_mm=0.0)


def test_fine_tuning_refuses_weights_that_want_other_clicks(tmp_path: Path) -> None:
    """Click-aware weights drawn with 18 mm clicks cannot start a 12 mm recipe; automatic
    weights can start either (they read no clicks)."""
    click_model = dataclasses.replace(
        TINY_MODEL, network=dataclasses.replace(TINY_MODEL.network, in_channels=4),
        preprocessing=dataclasses.replace(TINY_MODEL.preprocessing,
                                          channel_order=("pet", "ct", *CLICK_CHANNELS)))
    narrow = dataclasses.replace(tiny_config(), model=dataclasses.replace(
        click_model, clicks=ClickEncoding(radius_mm=12.0)))
    path = save_checkpoint(tmp_path / "clicks18.safetensors",
                           build_network(click_model.network).state_dict(), click_model,
                           {"dsc": 0.5})
    with pytest.raises(PetsegError, match=r"was trained with another model .*clicks"):
        initial_checkpoint(path, narrow)
    automatic = save_checkpoint(tmp_path / "auto.safetensors",
                                build_network(TINY_MODEL.network).state_dict(), TINY_MODEL,
                                {"dsc": 0.5})
    assert automatic_model(narrow.model) == TINY_MODEL
    assert initial_checkpoint(automatic, narrow).model_config == TINY_MODEL


def test_the_predictor_takes_extra_channels_not_clicks() -> None:
    """The network gets what the caller draws on its grid, zeros without a caller; a
    wrong shape is an error naming the channels."""
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    from inference_synthetic import make_case

    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    config = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32), mode="fast"))
    predictor = Predictor([Recorder()], CLICK_MODEL, config, device="cpu")
    predictor.predict(pet, ct)
    assert seen[-1].shape[1] == 4 and not seen[-1][:, 2:].any()
    predictor.predict(pet, ct, extra_channels=lambda grid: np.full(
        (2, *reversed(grid.size)), 0.25, np.float32))
    assert torch.all(seen[-1][:, 2:] == 0.25)
    with pytest.raises(ValueError, match=r"tumour_clicks, background_clicks"):
        predictor.predict(pet, ct, extra_channels=lambda grid: np.zeros((1, 2, 2, 2)))


# --- a session over many clicks: the second click costs a fraction of the first -----------


def _scaled_click_network(seed: int) -> torch.nn.Module:
    """The tiny click-aware network with random weights, scaled so that clicks change its
    output (and its mask) around them."""
    torch.manual_seed(seed)
    network = build_network(CLICK_MODEL.network)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    return network


@pytest.fixture(scope="module")
def session_case():
    from inference_synthetic import make_case

    pet, ct, _, _ = make_case(size=(96, 96, 200), spacing=(4.0, 4.0, 4.0))
    config = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32), mode="fast"))
    return pet, ct, Predictor([_scaled_click_network(3)], CLICK_MODEL, config, device="cpu")


STEPS = (Clicks(tumour=((48, 58, 75),)),
         Clicks(tumour=((48, 58, 75),), background=((44, 57, 40),)),
         Clicks(tumour=((48, 58, 75), (52, 60, 110)), background=((44, 57, 40),)),
         Clicks(tumour=((48, 58, 75), (52, 60, 110), (46, 56, 10)),
                background=((44, 57, 40), (50, 58, 140))))
"""Clicks added step by step (PET indices x, y, z) inside the body box of the case; the
last step adds two clicks 520 mm apart (two blocks)."""
REACH = {"context_mm": 96.0, "update_mm": 32.0}
"""The scaled random network's clicks act farther than the bundled network's (for which
the session's defaults were measured, `benchmarks/session.py`): its update needs more."""


def test_each_update_equals_a_full_rerun_and_runs_the_network_on_less(session_case) -> None:
    """Click after click, the session's mask equals the one-shot answer (which preprocesses
    and runs the whole case again) wherever that answer's probability is decided (more
    than 1e-3 from the threshold), and its probability to 1e-3 (the block's
    zero padding reaches faintly past the context: up to 6e-4 for this network), while the
    network runs on a part of the case."""
    pet, ct, predictor = session_case
    session = InteractiveSession(predictor, **REACH)
    start = session.start(pet, ct)
    whole = session.updated_voxels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(start), sitk.GetArrayFromImage(
        predictor.predict(pet, ct).mask))
    for clicks in STEPS:
        mask = session.update(clicks)
        assert 0 < session.updated_voxels < 0.5 * whole
        full = InteractiveSession(predictor).predict(pet, ct, clicks, probability=True)
        assert_masks_agree(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(full.mask),
                           sitk.GetArrayFromImage(full.probability), predictor.threshold)
        rerun = predictor.probability(predictor.network_input(
            session.case, session.click_maps(clicks, pet))).probability
        torch.testing.assert_close(session.probability, rerun, rtol=0, atol=1e-3)
        # drawn and resampled in boxes only, yet as drawn and resampled over the whole case
        np.testing.assert_array_equal(session.image[-2:], session.click_maps(clicks, pet)(
            session.case.grid))
        np.testing.assert_array_equal(session.network_mask, sitk.GetArrayFromImage(
            predictor.mask_on_pet_grid(session.probability, session.case)[0]))
        assert {"click maps", "network", "mask on the PET grid", "click rule"} <= set(
            session.seconds)
    assert session.blocks == 2  # the last step's two clicks lie far apart
    # the clicks changed the network's output: the check above is not vacuous
    assert not torch.equal(session.probability, predictor.probability(
        predictor.network_input(session.case)).probability)


def test_bf16_blocks_run_in_bfloat16_close_to_fp32(session_case) -> None:
    """`precision="bf16"`: the update's blocks run in bfloat16 (not bit for bit the fp32
    rerun), within 0.02 of it for a network of unscaled random weights."""
    pet, ct, _predictor = session_case
    torch.manual_seed(5)
    predictor = Predictor([build_network(CLICK_MODEL.network)], CLICK_MODEL,
                          _predictor.config, device="cpu")
    session = InteractiveSession(predictor, **REACH, precision="bf16")
    session.start(pet, ct)
    session.update(STEPS[0])
    rerun = predictor.probability(predictor.network_input(
        session.case, session.click_maps(STEPS[0], pet))).probability
    torch.testing.assert_close(session.probability, rerun, rtol=0, atol=0.02)
    assert not torch.equal(session.probability, rerun)


def test_unchanged_clicks_and_automatic_weights_run_no_network(session_case) -> None:
    pet, ct, predictor = session_case
    session = InteractiveSession(predictor)
    session.start(pet, ct, STEPS[0])
    again = session.update(STEPS[0])
    assert session.updated_voxels == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(
        InteractiveSession(predictor).predict(pet, ct, STEPS[0]).mask))
    automatic = Predictor([build_network(TINY_MODEL.network)], TINY_MODEL, predictor.config,
                          device="cpu")
    session = InteractiveSession(automatic)
    session.start(pet, ct)
    for clicks in STEPS:
        mask = session.update(clicks)
        assert session.updated_voxels == 0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(
            InteractiveSession(automatic).predict(pet, ct, clicks).mask))


def test_an_update_needs_a_started_case() -> None:
    with pytest.raises(RuntimeError, match="start the session on a case first"):
        InteractiveSession(_predictor(CLICK_MODEL)).update(STEPS[0])


def test_the_segmenter_starts_one_session_per_case(session_case) -> None:
    from petseg.interactive.session import SessionSegmenter

    pet, ct, predictor = session_case
    segment = SessionSegmenter(predictor)
    segment(pet, ct, None)
    first = segment.session
    segment(pet, ct, STEPS[0])
    assert segment.session is first and first.updated_voxels > 0
    other = sitk.Image(pet)
    segment(other, ct, None)
    assert segment.session is not first


def test_changed_boxes_group_nearby_changes() -> None:
    from petseg.interactive.session import changed_boxes

    before = np.zeros((2, 40, 10, 60), np.float32)
    after = before.copy()
    assert changed_boxes(before, after, np.array([4, 4, 4])) == []
    after[0, 2:5, 1:3, 3:6] = 1.0
    after[1, 30:33, 6:8, 50:52] = 0.5
    far = changed_boxes(before, after, np.array([4, 4, 4]))
    assert [(list(a), list(b)) for a, b in far] == [([2, 1, 3], [5, 3, 6]),
                                                    ([30, 6, 50], [33, 8, 52])]
    near = changed_boxes(before, after, np.array([30, 30, 50]))
    assert [(list(a), list(b)) for a, b in near] == [([2, 1, 3], [33, 8, 52])]
