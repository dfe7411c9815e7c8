"""The interactive session beside the Predictor: the weights say how they want their
clicks drawn (`ModelConfig.clicks`), the session draws them so, and a mismatch is an
error, never a silently wrong input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
from petseg.training.parts import initial_checkpoint

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
                                          r"gaussian; use weights trained with one of these"):
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
