"""Self-describing checkpoints and the fold ensemble's manifest.

A checkpoint is one safetensors file: the network's tensors plus JSON metadata (format,
`ModelConfig`, validation metrics, library versions, free-form extra). Loading never
unpickles anything. `weights/manifest.json` lists the folds `fold_0 ... fold_4` with
file name, sha256, config and validation metrics; `load_ensemble` checks all of them
before a single weight is used. A training run's `last.pt` (`TrainingState`) is the one
torch file: plain tensors and containers, read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petseg import __version__
from petseg.config import ModelConfig, from_dict, to_dict
from petseg.errors import PetsegError
from petseg.io.images import atomic_path, read_json, write_json

if TYPE_CHECKING:  # torch loads with the first checkpoint, not with the manifest
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "petseg-checkpoint/1"
MANIFEST_FORMAT = "petseg-manifest/1"
MANIFEST_NAME = "manifest.json"
DSC_KEY = "mean_dsc"
"""Metric name of a fold's mean validation Dice; the weighted ensemble uses it."""
N_FOLDS = 5
MAX_HEADER_BYTES = 100_000_000


def fold_name(index: int) -> str:
    """`fold_<index>`: the one naming of folds (files, manifest, logs)."""
    return f"fold_{index}"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One trained network.

    Attributes:
        state_dict: float32 tensors (fp16-stored weights are cast back on load).
        model_config: network + preprocessing settings the weights were trained with.
        metrics: validation metrics (`DSC_KEY` is the mean validation Dice).
        meta: format, versions, storage dtype, `extra`; plus `fold`/`sha256` from the
            manifest when loaded through `load_ensemble`.
        path: the file it was read from.
    """

    state_dict: dict[str, torch.Tensor]
    model_config: ModelConfig
    metrics: dict[str, float]
    meta: dict[str, Any]
    path: Path | None = None


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint (for reproducing a result)."""
    import monai
    import safetensors
    import torch

    return {
        "petseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "safetensors": safetensors.__version__,
    }


def save_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    model_config: ModelConfig,
    metrics: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a safetensors checkpoint atomically; returns `path`.

    Args:
        path: target file (`.safetensors`).
        state_dict: the network's tensors (any device); floating tensors are stored as
            `dtype` when given (e.g. `torch.float16` halves the file), else unchanged.
        model_config: stored as JSON metadata, rebuilt on load.
        metrics: validation metrics, JSON numbers (include `DSC_KEY`).
        extra: any JSON-serialisable information (epoch, fold, data split, ...).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous().clone()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "model_config": json.dumps(to_dict(model_config)),
        "metrics": json.dumps({k: float(v) for k, v in metrics.items()}),
        "extra": json.dumps(dict(extra or {})),
        "versions": json.dumps(library_versions()),
        "dtype": str(dtype or "unchanged").replace("torch.", ""),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """What a run's `last.pt` keeps to continue after an epoch (`--resume`).

    Random state needs no saving (each epoch's samples derive from seed, fold and epoch)
    and the learning rate is a function of the epoch, so there is no scheduler state.

    Attributes:
        epoch: epochs done (the next one to run is `epoch + 1`, 1-based).
        model: the network's `state_dict` (unwrapped from DDP).
        optimizer: the optimiser's `state_dict`; its lr is the next epoch's.
        scaler: the fp16 loss scaler's `state_dict` (`{}` when the scaler is disabled).
        best_epoch: epoch of `best.safetensors` (0: none yet).
        best_score: its mean validation DSC (-inf: none yet).
        best_metrics: its validation summary (mean_dsc, mean_fpv_ml, mean_fnv_ml, cases).
        init: {"file", "sha256"} of the checkpoint a fine-tuning started from, else None.
    """

    epoch: int
    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, Any]
    scaler: Mapping[str, Any]
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    init: Mapping[str, str] | None = None


def save_training_state(path: str | Path, state: TrainingState) -> Path:
    """Write `state` to `path` (`last.pt`) atomically as plain containers; returns `path`."""
    import torch

    path = Path(path)
    data = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load_training_state(path: str | Path, device: torch.device | str = "cpu") -> TrainingState:
    """Read a `last.pt` with `torch.load(weights_only=True)`, tensors mapped to `device`.

    Files of older versions load too: keys no longer written (e.g. "scheduler") are
    ignored. A missing, unreadable or incomplete file raises `PetsegError` naming it.
    """
    import torch

    path = Path(path)
    fix = "start the run again in a new folder, without --resume"
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise PetsegError(f"{path}: not found; {fix}") from None
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never here
        raise PetsegError(f"{path}: not a readable training state (not plain tensors and "
                          f"containers); {fix}") from None
    except (OSError, RuntimeError, EOFError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:100] if text else type(exc).__name__
        raise PetsegError(f"{path}: not a readable training state ({reason}); {fix}") from None
    required = ("epoch", "model", "optimizer", "scaler", "best_epoch", "best_score",
                "best_metrics")
    missing = [key for key in required if not isinstance(data, dict) or key not in data]
    if missing:
        raise PetsegError(f"{path}: incomplete training state (no {', '.join(missing)}); {fix}")
    return TrainingState(
        epoch=int(data["epoch"]), model=data["model"], optimizer=data["optimizer"],
        scaler=data["scaler"] or {}, best_epoch=int(data["best_epoch"]),
        best_score=float(data["best_score"]),
        best_metrics={k: float(v) for k, v in data["best_metrics"].items()},
        init=data.get("init"))


def sha256_of(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _header_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 or not 0 < n <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError("bad safetensors header length")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})


def _parse(data: bytes, path: Path) -> Checkpoint:
    from safetensors.torch import load

    try:
        metadata = _header_metadata(data)
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise PetsegError(
            f"{path}: not a valid safetensors checkpoint ({reason}); replace the file"
        ) from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise PetsegError(
            f"{path}: not a petseg checkpoint (format {metadata.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); save it with petseg.checkpoint.save_checkpoint"
        )
    try:
        model_config = from_dict(ModelConfig, json.loads(metadata["model_config"]),
                                 where=f"{path}: model_config")
        metrics = {k: float(v) for k, v in json.loads(metadata.get("metrics", "{}")).items()}
        meta = {
            "format": metadata["format"],
            "dtype": metadata.get("dtype", "unchanged"),
            "versions": json.loads(metadata.get("versions", "{}")),
            "extra": json.loads(metadata.get("extra", "{}")),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise PetsegError(
            f"{path}: damaged checkpoint metadata ({exc}); replace the file"
        ) from None
    state_dict = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in tensors.items()
    }
    return Checkpoint(state_dict=state_dict, model_config=model_config, metrics=metrics,
                      meta=meta, path=path)


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> Checkpoint:
    """Read a checkpoint (no pickle); floating tensors come back as float32.

    With `expected_sha256` the file's bytes are checked first; a mismatch, a missing or a
    corrupt file raises `PetsegError` naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PetsegError(f"{path}: checkpoint not found; check the weights folder") from None
    except OSError as exc:
        raise PetsegError(f"{path}: cannot be read ({exc.strerror}); check permissions") from None
    if expected_sha256 is not None:
        actual = sha256_of(data)
        if actual != expected_sha256.lower():
            raise PetsegError(
                f"{path}: sha256 {actual[:16]}... does not match {MANIFEST_NAME} "
                f"({expected_sha256[:16]}...); the file is corrupt or replaced, copy it again"
            )
    return _parse(data, path)


def write_manifest(
    weights_dir: str | Path,
    checkpoints: Mapping[str, str | Path] | Sequence[str | Path],
    n_folds: int = N_FOLDS,
) -> Path:
    """Write `weights_dir/manifest.json` for fold checkpoints inside `weights_dir`.

    Args:
        weights_dir: folder holding the checkpoint files.
        checkpoints: fold name (`fold_<i>`) -> file, or files in fold order (fold_0 first).
            Each file's config and metrics are read from the file itself.
        n_folds: how many folds the full ensemble has (missing ones are allowed here and
            reported by `load_ensemble`).

    Returns:
        The manifest's path.
    """
    weights_dir = Path(weights_dir)
    if not isinstance(checkpoints, Mapping):
        checkpoints = {fold_name(i): p for i, p in enumerate(checkpoints)}
    folds: dict[str, dict[str, Any]] = {}
    for name, file in sorted(checkpoints.items()):
        path = Path(file) if Path(file).is_absolute() else weights_dir / file
        try:
            relative = path.resolve().relative_to(weights_dir.resolve())
        except ValueError:
            raise PetsegError(f"{path}: not inside {weights_dir}; copy it there first") from None
        checkpoint = load_checkpoint(path)
        if DSC_KEY not in checkpoint.metrics:
            raise PetsegError(
                f"{path}: metrics lack {DSC_KEY!r} (the mean validation Dice); save it with "
                f"metrics={{{DSC_KEY!r}: ...}}"
            )
        folds[name] = {
            "file": relative.as_posix(),
            "sha256": file_sha256(path),
            "config": to_dict(checkpoint.model_config),
            "metrics": checkpoint.metrics,
        }
    dscs = [fold["metrics"][DSC_KEY] for fold in folds.values()]
    manifest = {
        "format": MANIFEST_FORMAT,
        "n_folds": int(n_folds),
        "folds": folds,
        DSC_KEY: sum(dscs) / len(dscs) if dscs else None,
        "versions": library_versions(),
    }
    # a fold validated without lesions has a NaN Dice: null in the manifest
    return write_json(manifest, weights_dir / MANIFEST_NAME, strict=False)


def read_manifest(weights_dir: str | Path) -> dict[str, Any]:
    """The parsed `manifest.json` of a weights folder (clear errors if absent or invalid)."""
    path = Path(weights_dir) / MANIFEST_NAME
    manifest = read_json(path, "", "point --weights at a folder with fold checkpoints and "
                         f"a valid {MANIFEST_NAME}")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PetsegError(
            f"{path}: not a petseg manifest (expected format {MANIFEST_FORMAT!r}); write it "
            "with petseg.checkpoint.write_manifest"
        )
    return manifest


def find_weights_dir(candidates: Sequence[str | Path]) -> Path:
    """First candidate folder holding `manifest.json` (itself or one subfolder level down).

    Grand-challenge unpacks an uploaded model tarball into `/opt/ml/model`, possibly inside
    one folder; the image's own `weights/` is the usual fallback.
    """
    for candidate in map(Path, candidates):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
        if candidate.is_dir():
            nested = sorted(p.parent for p in candidate.glob(f"*/{MANIFEST_NAME}"))
            if len(nested) == 1:
                return nested[0]
    looked = ", ".join(str(c) for c in candidates)
    raise PetsegError(f"no {MANIFEST_NAME} found in {looked}; pass --weights DIR")


def write_thresholds(weights_dir: str | Path, thresholds: Mapping[str, float],
                     calibration: Mapping[str, Any]) -> Path:
    """Record the probability threshold calibrated for each ensemble in the manifest.

    Args:
        weights_dir: a weights folder with a valid `manifest.json`.
        thresholds: ensemble ("mean", "weighted") -> lesion probability threshold in (0, 1).
        calibration: how they were chosen (cases, seed, criterion, ...), stored beside them.

    Returns:
        The manifest's path (rewritten atomically; the fold entries are unchanged).
    """
    for ensemble, value in thresholds.items():
        _check_threshold(value, f"threshold for {ensemble!r}")
    manifest = read_manifest(weights_dir)
    manifest["thresholds"] = {k: float(v) for k, v in sorted(thresholds.items())}
    manifest["threshold_calibration"] = dict(calibration)
    return write_json(manifest, Path(weights_dir) / MANIFEST_NAME)


def calibrated_threshold(weights_dir: str | Path, ensemble: str) -> float | None:
    """The manifest's threshold for `ensemble` ("mean" or "weighted"), None if it has none."""
    thresholds = read_manifest(weights_dir).get("thresholds") or {}
    if ensemble not in thresholds:
        return None
    where = f"{Path(weights_dir) / MANIFEST_NAME}: thresholds.{ensemble}"
    return _check_threshold(thresholds[ensemble], where)


def _check_threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise PetsegError(f"{where} {value!r}: must be a number between 0 and 1 (exclusive); "
                          "fix the manifest or calibrate again")
    return float(value)


def config_difference(reference: ModelConfig, other: ModelConfig, reference_name: str) -> str:
    """`section.field: other's value vs <reference_name>'s value` for every differing field."""
    ref, new = to_dict(reference), to_dict(other)
    diffs = [
        f"{section}.{key}: {new[section].get(key)} vs {reference_name}'s {value}"
        for section in ref
        for key, value in ref[section].items()
        if new[section].get(key) != value
    ]
    return "; ".join(diffs) or "differs"


def load_ensemble(weights_dir: str | Path, allow_missing: bool = False) -> list[Checkpoint]:
    """Load and verify the fold checkpoints listed in `weights_dir/manifest.json`.

    Every file's sha256 is checked against the manifest, and all folds must share one
    `ModelConfig` (manifest and file agree too). A missing fold is an error unless
    `allow_missing`, in which case the folds present are used and a warning names the
    missing ones. Returned checkpoints carry `meta["fold"]` and `meta["sha256"]`.
    """
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    manifest_path = weights_dir / MANIFEST_NAME
    entries = manifest.get("folds") or {}
    expected = [fold_name(i) for i in range(int(manifest.get("n_folds", N_FOLDS)))]
    expected += sorted(name for name in entries if name not in expected)

    def present_on_disk(name: str) -> bool:
        file = (entries.get(name) or {}).get("file")
        return bool(file) and (weights_dir / str(file)).is_file()

    missing = [name for name in expected if not present_on_disk(name)]
    present = [name for name in expected if name not in missing]
    if missing and (not allow_missing or not present):
        hint = "restore them" if present else "train or copy the fold checkpoints"
        flag = "" if not present else " or pass --allow-missing-folds"
        raise PetsegError(
            f"{weights_dir}: fold(s) {', '.join(missing)} missing (listed in "
            f"{MANIFEST_NAME} or file absent); {hint}{flag}"
        )
    if missing:
        log.warning("weights %s: fold(s) %s missing; ensembling the %d fold(s) present: %s",
                    weights_dir, ", ".join(missing), len(present), ", ".join(present))

    checkpoints: list[Checkpoint] = []
    reference: ModelConfig | None = None
    for name in present:
        entry = entries[name]
        if "sha256" not in entry:
            raise PetsegError(f"{manifest_path}: {name} has no sha256; rewrite the manifest")
        checkpoint = load_checkpoint(weights_dir / entry["file"], expected_sha256=entry["sha256"])
        listed = from_dict(ModelConfig, entry.get("config", {}), where=f"{manifest_path}: {name}")
        if listed != checkpoint.model_config:
            raise PetsegError(
                f"{checkpoint.path}: config differs from {MANIFEST_NAME} "
                f"({config_difference(listed, checkpoint.model_config, 'manifest')}); rewrite "
                "the manifest"
            )
        if reference is None:
            reference = checkpoint.model_config
        elif checkpoint.model_config != reference:
            raise PetsegError(
                f"{checkpoint.path}: model config differs from {present[0]}'s "
                f"({config_difference(reference, checkpoint.model_config, present[0])}); "
                "all folds must share one config"
            )
        checkpoint.meta.update(fold=name, sha256=entry["sha256"])
        checkpoints.append(checkpoint)
    return checkpoints


def dsc_weights(checkpoints: Sequence[Checkpoint]) -> list[float]:
    """Each fold's mean validation Dice (`DSC_KEY`), the weighted ensemble's weights."""
    weights = []
    for checkpoint in checkpoints:
        if DSC_KEY not in checkpoint.metrics:
            raise PetsegError(
                f"{checkpoint.path}: no {DSC_KEY!r} metric for the weighted ensemble; use "
                "--ensemble mean"
            )
        weights.append(float(checkpoint.metrics[DSC_KEY]))
    return weights
