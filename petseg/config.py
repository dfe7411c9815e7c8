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

IMAGE_CHANNELS: tuple[str, ...] = ("pet", "ct")
"""Image channel names `PreprocessingConfig.channel_order` may use (PET in SUV, CT scaled)."""

CLICK_CHANNELS: tuple[str, ...] = ("tumour_clicks", "background_clicks")
"""Click map channel names of a click-aware model: both, in this order, after the images
(e.g. `("pet", "ct", "tumour_clicks", "background_clicks")`, `in_channels=4`)."""


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
        channel_order: names of the input channels, in order ("pet" in SUV, "ct" scaled;
            a click-aware model adds `CLICK_CHANNELS` last).
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

    @property
    def image_channels(self) -> tuple[str, ...]:
        """The channels made from the images: `channel_order` without the click maps."""
        return tuple(n for n in self.channel_order if n not in CLICK_CHANNELS)


CLICK_SHAPES: tuple[str, ...] = ("gaussian", "ball")
"""How a click may be drawn into its map."""


@dataclasses.dataclass(frozen=True)
class ClickEncoding:
    """How a click-aware network wants its clicks drawn (`petseg.interactive.maps`).

    Attributes:
        shape: "gaussian": each click a 3D Gaussian of sigma `radius_mm / 3`, peak 1 at
            the click, cut to zero beyond `radius_mm`; "ball": 1 within `radius_mm` of the
            click, 0 beyond. Overlapping clicks take the maximum.
        radius_mm: physical radius of a drawn click (mm).

    A checkpoint written before the encoding was recorded was trained with these defaults.
    """

    shape: str = "gaussian"
    radius_mm: float = 18.0

    def __post_init__(self) -> None:
        if self.shape not in CLICK_SHAPES:
            raise PetsegError(f"clicks.shape {self.shape!r}: petseg draws clicks as "
                              f"{', '.join(CLICK_SHAPES)}; use weights trained with one of "
                              "these or a petseg version that knows this encoding")
        if not float(self.radius_mm) > 0:
            raise PetsegError(f"clicks.radius_mm {self.radius_mm}: must be a positive "
                              "radius in mm")


DEFAULT_CLICK_ENCODING = ClickEncoding()
"""The encoding of a checkpoint that records none."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a checkpoint needs to be used: network, preprocessing and, for a
    click-aware network, how its clicks are drawn."""

    network: NetworkConfig = NetworkConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    clicks: ClickEncoding = ClickEncoding()

    def __post_init__(self) -> None:
        order = tuple(self.preprocessing.channel_order)
        if int(self.network.in_channels) != len(order):
            raise PetsegError(
                f"network.in_channels {self.network.in_channels} != {len(order)} channels in "
                f"preprocessing.channel_order {order}; make them agree in the model config"
            )
        clicks = [name for name in order if name in CLICK_CHANNELS]
        images = order[:len(order) - len(clicks)]
        if clicks and (tuple(order[len(images):]) != CLICK_CHANNELS
                       or any(name in CLICK_CHANNELS for name in images)):
            raise PetsegError(
                f"preprocessing.channel_order {order}: click channels come both, last and in "
                f"the order {CLICK_CHANNELS}, e.g. {('pet', 'ct', *CLICK_CHANNELS)}"
            )

    @property
    def takes_clicks(self) -> bool:
        """True when the network takes a tumour and a background click map as input."""
        return CLICK_CHANNELS[0] in self.preprocessing.channel_order

    @property
    def extra_channels(self) -> tuple[str, ...]:
        """Input channels not made from the images (the click maps), in order: a caller
        supplies them (`Predictor.predict(extra_channels=...)`), else they are zeros."""
        return tuple(self.preprocessing.channel_order[len(self.preprocessing.image_channels):])


DEFAULT_THRESHOLD = 0.5
"""Lesion probability threshold when neither the config nor the weights name one."""

MAX_FLIP_PASSES = 8
"""Test-time augmentation averages at most this many flipped passes (all flips of 3 axes)."""


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
        precision: "fp16" autocast, "fp32", or "auto" (fp16 on CUDA, fp32 on the CPU);
            "bf16" autocast on either (CUDA or the CPU).
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
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    stitch: Literal["auto", "device", "cpu"] = "auto"
    memory_budget_gb: float | None = None
    fast_overlap: int = 32
    tta: int = 1
    time_budget_s: float | None = None
    skip_empty_windows: bool = True

    def __post_init__(self) -> None:
        batch = self.windows_per_batch
        if batch != "auto" and not (isinstance(batch, int) and batch >= 1):
            raise PetsegError(
                f"windows_per_batch {batch!r}: must be a positive integer or \"auto\";"
                " fix the inference config"
            )
        if not 1 <= int(self.tta) <= MAX_FLIP_PASSES:
            raise PetsegError(f"tta {self.tta}: must be 1 to {MAX_FLIP_PASSES} flip passes")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise PetsegError(f"threshold {self.threshold}: must be between 0 and 1 (exclusive)"
                              " or null for the weights' calibrated one")
        if not 0 <= self.overlap < 1:
            raise PetsegError(f"overlap {self.overlap}: must be >= 0 and < 1")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise PetsegError(f"time budget {self.time_budget_s} s: must be positive")

    def mask_threshold(self, calibrated: float | None = None) -> float:
        """The probability threshold in use: `threshold`, else `calibrated`, else 0.5."""
        if self.threshold is not None:
            return float(self.threshold)
        return DEFAULT_THRESHOLD if calibrated is None else float(calibrated)


def resolve_inference_config(config: InferenceConfig,
                             calibrated: float | None = None) -> InferenceConfig:
    """`config` with its threshold settled: the config's own (command line or file), else
    `calibrated` (the weights' manifest), else 0.5. What every later stage receives."""
    return dataclasses.replace(config, threshold=config.mask_threshold(calibrated))


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


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    reference: str = "resources/train_config.json",
                    example: str = "optimizer.epochs=2") -> dict[str, Any]:
    """Set dotted `FIELD=VALUE` overrides (`--set`; JSON values, bare words are strings) in
    the plain dict `data` of a config; `reference` is the file an unknown field points to,
    `example` the override a malformed one is shown."""
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise PetsegError(f"--set {item}: use FIELD=VALUE, e.g. {example}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        parts = name.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise PetsegError(f"--set {item}: {part!r} is not a config section")
            target = target[part]
        if parts[-1] not in target:
            raise PetsegError(f"--set {item}: unknown field {name!r}; see {reference}")
        target[parts[-1]] = value
    return data


def with_overrides(config: T, overrides: list[str], reference: str, example: str) -> T:
    """A copy of the dataclass `config` with `--set` overrides (`apply_overrides`) applied,
    validated like a config file."""
    data = apply_overrides(to_dict(config), overrides, reference, example)
    return from_dict(type(config), data, where="--set")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a dataclass of type `cls` from a JSON file."""
    from petseg.io.images import read_json

    data = read_json(path, "config file", "pass an existing JSON settings file")
    return from_dict(cls, data, where=str(path))


def save_json(config: Any, path: str | Path) -> None:
    """Write a dataclass as indented JSON (atomically)."""
    from petseg.io.images import write_json

    write_json(to_dict(config), path)
