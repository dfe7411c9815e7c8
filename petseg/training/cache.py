"""The preprocessed-study cache: every study once through `preprocess_case`, stored compactly.

Layout (one folder per study, named by its key)::

    CACHE/cache.json             format + the PreprocessingConfig the cache was built with
    CACHE/<key>/image.npy        float16 [C, D, H, W] on the 2 mm grid (memory-mappable)
    CACHE/<key>/label.npy        uint8 [D, H, W]
    CACHE/<key>/case.json        shape, spacing and the prepared case's geometry

An entry is built in `CACHE/.partial/` and renamed into place in one step, so an
interrupted run never leaves a half entry; a rerun skips the finished ones. The same
`preprocess_case` prepares cases for inference, so training and inference see identical
inputs. `load_volume` opens an entry as a `Volume` with its voxel indexes for centred
crops. Numpy only: `petseg preprocess` and `petseg split` never import torch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from petseg.config import PreprocessingConfig, from_dict, to_dict
from petseg.errors import PetsegError
from petseg.io.images import read_json, write_json
from petseg.training.data import Study

CACHE_FORMAT = "petseg-cache/1"
PARTIAL = ".partial"


@dataclasses.dataclass(frozen=True)
class Volume:
    """A preprocessed study as used for training.

    Attributes:
        key: the study key.
        image: `[C, D, H, W]` on the 2 mm grid (PET in SUV, CT scaled to [0, 1]), float16
            or float32, memory-mapped or in RAM.
        label: `[D, H, W]` uint8 lesion mask.
        spacing_mm: voxel size in mm, SimpleITK (x, y, z) order.
        lesion_voxels: flat indices of (up to `MAX_LESION_VOXELS` of) the lesion voxels,
            for positive-centred crops; None when not needed.
        hot_voxels: flat indices of (a sample of) the voxels of high physiological uptake
            outside the lesions, for hot-spot-centred crops; None when not needed.
    """

    key: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    lesion_voxels: np.ndarray | None = None
    hot_voxels: np.ndarray | None = None


MAX_LESION_VOXELS = 100_000


def lesion_voxels(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat indices of the lesion voxels of `label` `[D, H, W]`, a seeded sample if many."""
    index = np.flatnonzero(np.asarray(label).reshape(-1))
    if index.size > MAX_LESION_VOXELS:
        index = np.sort(np.random.default_rng(seed).choice(index, MAX_LESION_VOXELS,
                                                           replace=False))
    return index


def hot_voxels(pet: np.ndarray, label: np.ndarray, suv: float, seed: int = 0) -> np.ndarray:
    """Flat indices of voxels with `pet` (SUV, `[D, H, W]`) above `suv` outside `label`.

    A seeded sample of at most `MAX_LESION_VOXELS` when there are more.
    """
    hot = (np.asarray(pet) > suv) & (np.asarray(label) == 0)
    index = np.flatnonzero(hot.reshape(-1))
    if index.size > MAX_LESION_VOXELS:
        index = np.sort(np.random.default_rng(seed).choice(index, MAX_LESION_VOXELS,
                                                           replace=False))
    return index


@dataclasses.dataclass(frozen=True)
class CacheSummary:
    """What one `build_cache` run did.

    Attributes:
        written: keys of entries written now.
        skipped: keys already cached.
        failed: `(key, one-line reason)` of studies that could not be prepared.
    """

    written: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _prepared_metadata(prepared: Any) -> dict[str, Any]:
    """The prepared case's fields other than the arrays, as JSON data."""
    if dataclasses.is_dataclass(prepared):
        fields = {f.name: getattr(prepared, f.name) for f in dataclasses.fields(prepared)}
    else:
        fields = dict(vars(prepared))
    return {k: _jsonable(v) for k, v in fields.items()
            if k not in ("image", "label") and not isinstance(v, np.ndarray)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, PetsegError):
        return first
    return f"{type(exc).__name__}: {first}"[:300]


def entry_dir(cache: str | Path, key: str) -> Path:
    """Folder of the cache entry of study `key`."""
    return Path(cache) / key


def is_cached(cache: str | Path, key: str) -> bool:
    """Whether study `key` has a complete entry."""
    return (entry_dir(cache, key) / "case.json").is_file()


def write_entry(cache: str | Path, key: str, image: np.ndarray, label: np.ndarray,
                metadata: dict[str, Any]) -> Path:
    """Store one prepared study atomically (build in `.partial/`, rename into place).

    Args:
        cache: the cache folder.
        key: the study key (may contain '/').
        image: `[C, D, H, W]`, stored as float16.
        label: `[D, H, W]`, stored as uint8.
        metadata: extra JSON data for case.json.
    """
    cache = Path(cache)
    partial = cache / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=partial))
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float16))
        np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
        info = {"key": key, "shape": list(image.shape), **metadata}
        write_json(info, tmp / "case.json", strict=False, indent=1)
        target = entry_dir(cache, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # an incomplete leftover without case.json
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry_dir(cache, key)


def prepare_study(study: Study, cache: str | Path, config: PreprocessingConfig) -> str:
    """Read one study, run `preprocess_case` and store the entry; returns its key.

    Raises whatever reading or preprocessing raises (corrupt files: `PetsegError`).
    """
    from petseg.io.images import read_image
    from petseg.preprocessing import preprocess_case

    pet, ct, seg = read_image(study.pet), read_image(study.ct), read_image(study.label)
    prepared = preprocess_case(pet, ct, config, seg)
    if prepared.label is None:
        raise PetsegError(f"{study.label}: the mask was not prepared; check the file")
    image = np.asarray(prepared.image)
    label = np.asarray(prepared.label)
    if image.ndim != 4 or label.shape != image.shape[1:]:
        raise PetsegError(f"{study.key}: prepared image {image.shape} and mask {label.shape} "
                          "disagree; check the study's files")
    spacing = float(config.target_spacing_mm)
    metadata = {
        "patient": study.patient,
        "spacing_mm": [spacing, spacing, spacing],
        "lesion_voxels": int(np.count_nonzero(label)),
        "prepared": _prepared_metadata(prepared),
    }
    write_entry(cache, study.key, image, label, metadata)
    return study.key


def _worker_init() -> None:
    # one thread per worker process; the pool provides the parallelism
    os.environ["OMP_NUM_THREADS"] = "1"
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run_one(study: Study, cache: str, config: PreprocessingConfig) -> tuple[str, str | None]:
    try:
        return prepare_study(study, cache, config), None
    except Exception as exc:  # a corrupt study is reported and counted, never fatal
        return study.key, _one_line(exc)


def check_cache_config(cache: str | Path, config: PreprocessingConfig, create: bool) -> None:
    """Make sure the cache was (or will be) built with `config`.

    Raises:
        PetsegError: the cache folder holds another preprocessing, or (with
            `create=False`) no cache at all.
    """
    cache = Path(cache)
    info_path = cache / "cache.json"
    # the cache holds the image channels; click maps are drawn per sample
    config = dataclasses.replace(config, channel_order=config.image_channels)
    wanted = to_dict(config)
    if info_path.is_file():
        info = read_json(info_path, "cache description",
                         "delete the cache folder and rerun `petseg preprocess`")
        if info.get("format") != CACHE_FORMAT:
            raise PetsegError(f"{cache}: not a petseg cache ({info.get('format')}); use a new "
                              "folder")
        stored = to_dict(from_dict(PreprocessingConfig, info.get("preprocessing", {}),
                                   where=str(info_path)))
        if stored != wanted:
            diff = ", ".join(f"{k} {stored[k]} vs {wanted[k]}" for k in wanted
                             if stored.get(k) != wanted[k])
            raise PetsegError(f"{cache}: built with other preprocessing settings ({diff} "
                              "wanted); run `petseg preprocess --config <this training "
                              "config>` into a new cache folder")
        return
    if not create:
        raise PetsegError(f"{cache}: no petseg cache here; build it with `petseg preprocess`")
    write_json({"format": CACHE_FORMAT, "preprocessing": wanted}, info_path, indent=1)


def build_cache(studies: list[Study], cache: str | Path, config: PreprocessingConfig,
                workers: int = 1, progress: bool = True,
                on_failure: Callable[[str, str], None] | None = None) -> CacheSummary:
    """Prepare every study not yet cached, in `workers` processes.

    Args:
        studies: from `discover_studies`.
        cache: the cache folder (created).
        config: preprocessing settings (must match an existing cache's).
        workers: processes (1: in this process).
        progress: show a tqdm bar.
        on_failure: called with `(key, reason)` for each failed study as it fails.
    """
    from tqdm import tqdm

    cache = Path(cache)
    check_cache_config(cache, config, create=True)
    shutil.rmtree(cache / PARTIAL, ignore_errors=True)  # leftovers of an interrupted run
    skipped = tuple(s.key for s in studies if is_cached(cache, s.key))
    todo = [s for s in studies if not is_cached(cache, s.key)]
    written: list[str] = []
    failed: list[tuple[str, str]] = []

    def record(key: str, error: str | None) -> None:
        if error is None:
            written.append(key)
        else:
            failed.append((key, error))
            if on_failure is not None:
                on_failure(key, error)

    bar = tqdm(total=len(todo), desc="preprocess", unit="study", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for study in todo:
            record(*_run_one(study, str(cache), config))
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_run_one, s, str(cache), config) for s in todo]
            for future in as_completed(futures):
                record(*future.result())
                bar.update(1)
    bar.close()
    shutil.rmtree(cache / PARTIAL, ignore_errors=True)
    return CacheSummary(written=tuple(sorted(written)), skipped=skipped,
                        failed=tuple(sorted(failed)))


def cached_keys(cache: str | Path) -> list[str]:
    """Keys of all complete entries in the cache (sorted)."""
    cache = Path(cache)
    keys = [p.parent.relative_to(cache).as_posix() for p in cache.rglob("case.json")
            if PARTIAL not in p.parts]
    return sorted(keys)


def load_volume(cache: str | Path, key: str, in_memory: bool = False,
                with_lesions: bool = False, hot_suv: float | None = None,
                pet_channel: int = 0) -> Volume:
    """Open one cache entry: memory-mapped, or read into RAM with `in_memory`.

    With `with_lesions` the lesion voxels are indexed too (for positive-centred crops);
    with `hot_suv` the voxels of channel `pet_channel` above it outside the lesions too
    (for hot-spot-centred crops).

    Raises:
        PetsegError: the entry is missing or damaged.
    """
    folder = entry_dir(cache, key)
    if not is_cached(cache, key):
        raise PetsegError(f"{folder}: study {key} is not in the cache; run `petseg preprocess` "
                          "for its data folder")
    info = read_json(folder / "case.json", "cache entry",
                     "delete the folder and rerun `petseg preprocess`")
    try:
        mode = None if in_memory else "r"
        image = np.load(folder / "image.npy", mmap_mode=mode)
        label = np.load(folder / "label.npy", mmap_mode=mode)
    except (OSError, ValueError) as exc:
        raise PetsegError(f"{folder}: damaged cache entry ({exc}); delete the folder and rerun "
                          "`petseg preprocess`") from None
    if image.ndim != 4 or label.shape != image.shape[1:]:
        raise PetsegError(f"{folder}: image {image.shape} and label {label.shape} disagree; "
                          "delete the folder and rerun `petseg preprocess`")
    spacing = tuple(float(s) for s in info.get("spacing_mm", (2.0, 2.0, 2.0)))
    lesions = lesion_voxels(label) if with_lesions else None
    hot = hot_voxels(image[pet_channel], label, hot_suv) if hot_suv is not None else None
    return Volume(key=key, image=image, label=label, spacing_mm=spacing,  # type: ignore[arg-type]
                  lesion_voxels=lesions, hot_voxels=hot)
