"""Config round trips and the network built from it."""

from __future__ import annotations

import pytest
import torch

from petseg.config import (
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    from_dict,
    load_json,
    save_json,
    to_dict,
)
from petseg.errors import PetsegError
from petseg.model import build_network, count_parameters, size_divisor


def test_paper_network_has_the_papers_parameter_count() -> None:
    assert count_parameters(build_network(NetworkConfig())) == 19_223_525


def test_instance_norm_changes_the_count_as_documented() -> None:
    assert count_parameters(build_network(NetworkConfig(norm="INSTANCE"))) == 19_218_657


def test_model_config_round_trips_through_json(tmp_path) -> None:
    config = ModelConfig(network=NetworkConfig(channels=(4, 8, 16), strides=(2, 2)))
    save_json(config, tmp_path / "c.json")
    loaded = load_json(ModelConfig, tmp_path / "c.json")
    assert loaded == config
    assert loaded.network.channels == (4, 8, 16)
    assert isinstance(loaded.preprocessing.ct_clip_hu, tuple)


def test_unknown_field_is_a_clear_error() -> None:
    with pytest.raises(PetsegError, match=r"unknown field\(s\) \['chanels'\]"):
        from_dict(NetworkConfig, {"chanels": [1, 2]})


def test_literal_fields_are_checked() -> None:
    data = to_dict(InferenceConfig())
    data["ensemble"] = "median"
    with pytest.raises(PetsegError, match="ensemble"):
        from_dict(InferenceConfig, data)


def test_tiny_network_runs_and_keeps_shape() -> None:
    config = NetworkConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    net = build_network(config).eval()
    assert size_divisor(config) == 4
    with torch.no_grad():
        out = net(torch.zeros(1, 2, 16, 20, 24))
    assert out.shape == (1, 2, 16, 20, 24)
