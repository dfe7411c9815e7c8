"""Gather the folds' best checkpoints into the inference weights layout.

`weights/fold_<f>.safetensors` per fold plus `weights/manifest.json` (sha256, config and
validation metrics of each fold) written by `petseg.checkpoint.write_manifest`; the
weighted ensemble reads each fold's mean validation DSC from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from petseg.checkpoint import (
    fold_name,
    load_checkpoint,
    load_ensemble,
    save_checkpoint,
    write_manifest,
)
from petseg.errors import PetsegError

BEST_NAME = "best.safetensors"


def export_weights(run_dirs: Sequence[str | Path], out: str | Path, fp16: bool = False,
                   n_folds: int | None = None) -> Path:
    """Copy each run's best checkpoint to `out/fold_<f>.safetensors` and write the manifest.

    Args:
        run_dirs: `petseg train` run folders (one per fold, any order).
        out: the weights folder (created).
        fp16: store the weights as float16 (half the size; loaded back as float32).
        n_folds: folds of the full ensemble (default: the split's, stored at training).

    Returns:
        The manifest's path. The folder is verified with `load_ensemble` before returning.

    Raises:
        PetsegError: a run has no best checkpoint, two runs are the same fold, or the
            runs were trained with different model configs.
    """
    out = Path(out)
    checkpoints = []
    for run in run_dirs:
        path = Path(run) / BEST_NAME
        if not path.is_file():
            raise PetsegError(f"{path}: not found; pass run folders of `petseg train` that "
                              "validated at least once")
        checkpoint = load_checkpoint(path)
        fold = checkpoint.meta.get("extra", {}).get("fold")
        if not isinstance(fold, int):
            raise PetsegError(f"{path}: the checkpoint does not say its fold; export runs made "
                              "by `petseg train`")
        checkpoints.append((fold, path, checkpoint))
    if not checkpoints:
        raise PetsegError("no run folders given; pass one `petseg train` output per fold")
    folds = [fold for fold, _, _ in checkpoints]
    duplicate = sorted({f for f in folds if folds.count(f) > 1})
    if duplicate:
        paths = [str(p) for f, p, _ in checkpoints if f == duplicate[0]]
        raise PetsegError(f"{', '.join(paths)}: all are fold {duplicate[0]}; pass one run per "
                          "fold")
    if n_folds is None:
        n_folds = max([int(c.meta.get("extra", {}).get("folds", 0)) for _, _, c in checkpoints]
                      + [max(folds) + 1])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for fold, path, checkpoint in sorted(checkpoints, key=lambda item: item[0]):
        name = fold_name(fold)
        extra = {**checkpoint.meta.get("extra", {}), "run": str(path.parent.resolve())}
        saved = save_checkpoint(out / f"{name}.safetensors", checkpoint.state_dict,
                                checkpoint.model_config, checkpoint.metrics, extra=extra,
                                dtype=torch.float16 if fp16 else None)
        files[name] = saved.name  # the manifest names files relative to `out`
    manifest = write_manifest(out, files, n_folds=n_folds)
    load_ensemble(out, allow_missing=True)  # every file reloads and matches the manifest
    return manifest
