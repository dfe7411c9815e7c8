"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_ensemble

from petseg.config import InferenceConfig, save_json


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state."""
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder of the tiny exact ensemble (`tiny_models.tiny_ensemble`); a test
    module that needs other weights defines its own `weights`."""
    folder = tmp_path_factory.mktemp("model") / "weights"
    tiny_ensemble(folder)
    return folder


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """An inference settings file with 32^3 windows at overlap 0.25: seconds per small case."""
    path = tmp_path_factory.mktemp("config") / "inference.json"
    save_json(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25), path)
    return path
