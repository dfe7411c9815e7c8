"""Configuration as frozen dataclasses with a JSON round trip.

Checkpoints store the `ModelConfig` they were trained with, so inference rebuilds the
exact network and preprocessing from the checkpoint itself, never from code constants.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from petseg.errors import PetsegError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """MONAI residual UNet; the defaults are the paper's network (19,223,525 parameters).

    `norm` is a MONAI norm name ("BATCH", the paper's; "INSTANCE", MONAI's default) or
    None for no normalisation layers (the CPU demo: batch statistics of two 64^3 patches
    are too noisy for BatchNorm's running averages, see docs/training.md).
    """

    in_channels: int = 2
    out_channels: int = 2
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str | None = "BATCH"


@dataclasses.dataclass(frozen=True)
class PreprocessingConfig:
    """How a case becomes the network's input tensor `[C, D, H, W]`.

    Attributes:
        channel_order: names of the input channels, in order ("pet" in SUV, "ct" scaled).
        target_spacing_mm: isotropic voxel size of the network's grid.
        ct_clip_hu: CT window in HU, min-max scaled to [0, 1] afterwards.
        ct_fill_hu: value for CT voxels outside its field of view when resampled.
        body_threshold_hu: CT threshold used to find the body before cleaning the mask.
        body_margin_mm: margin added around the body bounding box before cropping.
        orientation: anatomical orientation of the network grid's axes (SimpleITK
            code, e.g. "RAS"), so every scan reaches the network the same way round.
    """

    channel_order: tuple[str, ...] = ("pet", "ct")
    target_spacing_mm: float = 2.0
    ct_clip_hu: tuple[float, float] = (-1024.0, 1024.0)
    ct_fill_hu: float = -1024.0
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 10.0
    orientation: str = "RAS"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a checkpoint needs to be used: network and preprocessing."""

    network: NetworkConfig = NetworkConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()


DEFAULT_THRESHOLD = 0.5
"""Lesion probability threshold when neither the config nor the weights name one."""


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window and ensemble settings (defaults: the paper's).

    Attributes:
        roi_size: window `(d, h, w)` in voxels of the 2 mm grid (reference mode; the
            smallest window fast mode uses).
        overlap: reference-mode overlap fraction between windows.
        ensemble: plain "mean" or DSC-"weighted" mean of the folds.
        threshold: lesion probability above which a voxel is lesion; None = the threshold
            calibrated for the weights (their manifest's `thresholds`), else 0.5.
        blend: reference-mode blending of overlapping windows.
        windows_per_batch: windows per forward, or "auto" (from the free GPU memory).
        mode: "reference" (`roi_size` windows at `overlap`, the paper) or "fast" (windows as
            large as memory allows, up to the whole cropped body in one forward).
        precision: "fp16" autocast, "fp32", or "auto" (fp16 on CUDA, fp32 on the CPU).
        stitch: where the accumulation buffers live: "device", "cpu" or "auto".
        memory_budget_gb: memory the engine may plan for (GB); None = 90 % of the free
            GPU memory, or half the available RAM on the CPU.
        fast_overlap: overlap in voxels between the tiles of fast mode.
        tta: flip passes averaged (1 = none, up to 8).
        time_budget_s: seconds per case for preprocessing and inference; when set, as many
            flip passes (up to 8) as fit are averaged, judged by the first pass.
        skip_empty_windows: skip windows without a voxel denser than air in the CT.
    """

    roi_size: tuple[int, int, int] = (192, 192, 192)
    overlap: float = 0.5
    ensemble: Literal["mean", "weighted"] = "weighted"
    threshold: float | None = None
    blend: Literal["gaussian", "constant"] = "gaussian"
    windows_per_batch: int | Literal["auto"] = "auto"
    mode: Literal["reference", "fast"] = "reference"
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    stitch: Literal["auto", "device", "cpu"] = "auto"
    memory_budget_gb: float | None = None
    fast_overlap: int = 32
    tta: int = 1
    time_budget_s: float | None = None
    skip_empty_windows: bool = True

    def mask_threshold(self, calibrated: float | None = None) -> float:
        """The probability threshold in use: `threshold`, else `calibrated`, else 0.5."""
        if self.threshold is not None:
            return float(self.threshold)
        return DEFAULT_THRESHOLD if calibrated is None else float(calibrated)


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-compatible dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        return tuple(value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise PetsegError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Plain dict -> dataclass `cls`; unknown keys are an error, missing keys keep defaults."""
    if not isinstance(data, dict):
        raise PetsegError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise PetsegError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a dataclass of type `cls` from a JSON file."""
    from petseg.io import read_json

    data = read_json(path, "config file", "pass an existing JSON settings file")
    return from_dict(cls, data, where=str(path))


def save_json(config: Any, path: str | Path) -> None:
    """Write a dataclass as indented JSON (atomically)."""
    from petseg.io import write_json

    write_json(to_dict(config), path)
