"""`petseg serve` on loopback for the viewer tests (`test_serve.py`, `test_serve_napari.py`):
a tiny click-aware fold, fast-mode settings, a small phantom study, the server process, and
`petseg predict` with the same clicks to compare the viewers' masks with."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_synthetic import make_case

from petseg.checkpoint import DSC_KEY, save_checkpoint, write_manifest
from petseg.cli import main
from petseg.config import (
    CLICK_CHANNELS,
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    save_json,
)
from petseg.model import build_network

REPOSITORY = Path(__file__).resolve().parents[1]
KEY = "s3cret-key"
PET_NAME = "7a1d-pet.mha"
MASKS = Path("images/tumor-lesion-segmentation")


CLICK_MODEL = ModelConfig(
    network=NetworkConfig(in_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    preprocessing=PreprocessingConfig(channel_order=("pet", "ct", *CLICK_CHANNELS)))
"""A tiny click-aware network: a click reruns it around the click in the server."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """One tiny click-aware fold, weights scaled so that clicks change its output."""
    folder = tmp_path_factory.mktemp("model") / "weights"
    folder.mkdir()
    torch.manual_seed(3)
    network = build_network(CLICK_MODEL.network)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    path = save_checkpoint(folder / "fold_0.safetensors", network.state_dict(), CLICK_MODEL,
                           {DSC_KEY: 0.6})
    write_manifest(folder, [path.name], n_folds=1)
    return folder


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Fast mode: one window over the small case, so an update equals a full rerun."""
    path = tmp_path_factory.mktemp("config") / "inference.json"
    save_json(InferenceConfig(roi_size=(32, 32, 32), mode="fast"), path)
    return path


def write_case(folder: Path, pet: sitk.Image, ct: sitk.Image) -> Path:
    """A grand-challenge case folder."""
    for kind, image, name in (("pet", pet, PET_NAME), ("ct", ct, "7a1d-ct.mha")):
        (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "images" / kind / name), True)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, sitk.Image, sitk.Image]:
    """(--cases folder, PET, CT): a small phantom with a hot spot off its centre."""
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    suv = sitk.GetArrayFromImage(pet)
    suv[4:7, 20:24, 5:8] = 9.0  # asymmetric: no mirrored axis order fits as well
    hot = sitk.GetImageFromArray(suv)
    hot.CopyInformation(pet)
    cases = tmp_path_factory.mktemp("cases")
    write_case(cases / "study-1", hot, ct)
    return cases, hot, ct


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, study, weights, config) -> Iterator[str]:
    """`petseg serve` on loopback with a key, one session at a time; killed at the end."""
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(KEY + "\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "petseg", "serve", "--cases", str(study[0]), "--port", str(port),
         "--weights", str(weights), "--config", str(config), "--device", "cpu",
         "--api-key-file", str(key_file)], cwd=REPOSITORY)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, "petseg serve exited"
            time.sleep(0.3)
        yield url
    finally:
        process.kill()
        process.wait(30)


def predicted(tmp_path: Path, study, weights: Path, config: Path, points: list) -> np.ndarray:
    """`petseg predict`'s mask `[z, y, x]` for the study with `points` in lesion-clicks.json."""
    case = write_case(tmp_path / "input", study[1], study[2])
    (case / "lesion-clicks.json").write_text(json.dumps(
        {"version": {"major": 1, "minor": 0}, "type": "Multiple points", "points": points}))
    out = tmp_path / "output"
    assert main(["predict", "--input", str(case), "--output", str(out), "--weights",
                 str(weights), "--config", str(config), "--device", "cpu"]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / MASKS / PET_NAME)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))
