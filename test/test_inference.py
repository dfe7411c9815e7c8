"""Sliding-window stitching and ensembling, checked exactly with trivial predictors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import Constant, SuvThreshold

from petseg.config import InferenceConfig, NetworkConfig
from petseg.device import resolve_device
from petseg.errors import PetsegError
from petseg.inference import (
    network_probabilities,
    normalized_weights,
    sliding_window_probability,
)
from petseg.model import build_network

torch.set_num_threads(1)  # the test machines' two cores are shared: more threads only contend


def _image(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack([rng.uniform(0, 6, shape), rng.uniform(0, 1, shape)]).astype(np.float32)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(37, 45, 29), (16, 16, 16), (10, 7, 12), (40, 9, 20)])
def test_stitching_of_a_voxelwise_predictor_is_exact(blend: str, shape) -> None:
    image = _image(shape)
    config = InferenceConfig(roi_size=(16, 16, 16), overlap=0.5, blend=blend,
                             windows_per_batch=3)
    probability = sliding_window_probability([SuvThreshold()], image, config)
    assert probability.shape == shape and probability.dtype == torch.float32
    expected = torch.sigmoid(torch.from_numpy(image[0]) - 2.5)
    torch.testing.assert_close(probability, expected, atol=2e-6, rtol=0)


def test_plain_and_weighted_averages_of_constant_predictors() -> None:
    image = _image((20, 18, 22))
    config = InferenceConfig(roi_size=(16, 16, 16), overlap=0.25)
    nets = [Constant(0.2), Constant(0.8), Constant(0.5)]
    mean = sliding_window_probability(nets, image, config)
    torch.testing.assert_close(mean, torch.full((20, 18, 22), 0.5), atol=1e-6, rtol=0)
    weighted = sliding_window_probability(nets, image, config, weights=[1.0, 3.0, 0.0])
    torch.testing.assert_close(weighted, torch.full((20, 18, 22), 0.65), atol=1e-6, rtol=0)
    dsc = sliding_window_probability(nets[:2], image, config, weights=[0.6, 0.4])
    torch.testing.assert_close(dsc, torch.full((20, 18, 22), 0.44), atol=1e-6, rtol=0)


def test_per_network_probabilities_come_in_order() -> None:
    image = _image((8, 8, 8))
    config = InferenceConfig(roi_size=(16, 16, 16))
    maps = list(network_probabilities([Constant(0.1), Constant(0.9)], image, config))
    assert [float(m.mean()) for m in maps] == pytest.approx([0.1, 0.9], abs=1e-5)
    assert all(m.shape == (8, 8, 8) for m in maps)


def test_single_window_equals_one_forward_of_a_real_network() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(channels=(4, 8, 16), strides=(2, 2),
                                      num_res_units=1)).eval()
    image = _image((32, 32, 32))
    config = InferenceConfig(roi_size=(32, 32, 32), overlap=0.5)
    probability = sliding_window_probability([net], image, config)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(image)[None]), 1)[0, 1]
    torch.testing.assert_close(probability, expected, atol=1e-6, rtol=0)


def test_a_real_network_on_an_image_smaller_than_the_window() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(channels=(4, 8, 16), strides=(2, 2),
                                      num_res_units=1)).eval()
    image = _image((13, 21, 9))
    config = InferenceConfig(roi_size=(32, 32, 32))
    probability = sliding_window_probability([net], image, config)
    assert probability.shape == (13, 21, 9)
    # zero padding to 32^3 (MONAI pads symmetrically), then cropped back
    padded = torch.zeros(1, 2, 32, 32, 32)
    padded[0, :, 9:22, 5:26, 11:20] = torch.from_numpy(image)
    with torch.no_grad():
        expected = torch.softmax(net(padded), 1)[0, 1, 9:22, 5:26, 11:20]
    torch.testing.assert_close(probability, expected, atol=1e-6, rtol=0)


def test_weights_are_normalised_and_checked() -> None:
    assert normalized_weights(4) == [0.25] * 4
    assert normalized_weights(2, [0.6, 0.2]) == pytest.approx([0.75, 0.25])
    with pytest.raises(PetsegError, match="must be finite, >= 0 and not all 0"):
        normalized_weights(2, [0.5, -0.1])
    with pytest.raises(PetsegError, match="not all 0"):
        normalized_weights(2, [0.0, 0.0])
    with pytest.raises(ValueError, match="3 ensemble weights for 2 networks"):
        normalized_weights(2, [1, 2, 3])
    with pytest.raises(PetsegError, match="ensemble is empty"):
        normalized_weights(0)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(PetsegError, match="no CUDA device is available; use --device cpu"):
            resolve_device("cuda")
