"""The run folder of one fold's training: what is checked, written and appended there.

A run folder holds::

    RUN/config.json           the TrainingConfig in force (a resume may change only
                              `RESUMABLE_FIELDS`; the file is then rewritten)
    RUN/config_changes.json   the fields a resume changed: from which epoch, old and new value
    RUN/best.safetensors      best mean validation DSC (petseg.checkpoint, metrics inside)
    RUN/best_validation.json  that epoch's per-case validation metrics
    RUN/last.pt               state for --resume (`petseg.checkpoint.TrainingState`)
    RUN/history.csv           one row per epoch; RUN/tensorboard/ the same as curves
    RUN/non_finite_steps.jsonl  what the first skipped steps' forwards showed
                              (`petseg.training.diagnosis`), one JSON object a line

Only the main process writes; every process makes the read-only checks, so all fail
together under DDP.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from petseg.checkpoint import save_checkpoint
from petseg.config import to_dict
from petseg.errors import PetsegError
from petseg.io.images import read_json, write_json
from petseg.training.config import TrainingConfig, load_run_config

log = logging.getLogger(__name__)

RESUMABLE_FIELDS = ("optimizer.lr", "optimizer.lr_min", "optimizer.grad_clip_norm", "amp",
                    "validation.every", "loader_threads", "prefetch_batches", "num_threads")
"""Config fields a `--resume` may change (e.g. a lower lr after a run stopped); each acts
from the next epoch on. Everything else (network, data, loss, batch size, the schedule's
`optimizer.epochs`, seed) must stay as the run began."""

HISTORY_FIELDS = ("epoch", "train_loss", "lr", "epoch_s", "step_s", "data_wait_fraction",
                  "steps", "skipped_steps", "overflow_steps", "grad_norm_mean", "grad_norm_max",
                  "loss_scale", "val_mean_dsc", "val_mean_fpv_ml", "val_mean_fnv_ml", "val_cases",
                  "best")

_SCALARS = (("train_loss", "train/loss"), ("lr", "train/lr"),
            ("data_wait_fraction", "train/data_wait_fraction"),
            ("skipped_steps", "train/skipped_steps"), ("overflow_steps", "train/overflow_steps"),
            ("grad_norm_mean", "train/grad_norm_mean"), ("grad_norm_max", "train/grad_norm_max"),
            ("loss_scale", "train/loss_scale"), ("step_s", "time/step_s"),
            ("epoch_s", "time/epoch_s"), ("val_mean_dsc", "val/mean_dsc"),
            ("val_mean_fpv_ml", "val/mean_fpv_ml"), ("val_mean_fnv_ml", "val/mean_fnv_ml"))
"""history.csv column -> TensorBoard tag."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"section.field": value}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(before: TrainingConfig, after: TrainingConfig) -> dict[str, tuple[Any, Any]]:
    """{"section.field": (before's value, after's value)} for every field that differs,
    in the config's field order; values as in the JSON file (tuples as lists)."""
    old, new = _flatten(to_dict(before)), _flatten(to_dict(after))
    return {name: (value, new.get(name)) for name, value in old.items() if new.get(name) != value}


class RunFolder:
    """The files of one run folder `path` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config_path = path / "config.json"
        self.changes_path = path / "config_changes.json"
        self.last = path / "last.pt"
        self._writer: Any = None

    def check(self, config: TrainingConfig, resume: bool) -> dict[str, tuple[Any, Any]]:
        """Read-only checks before a run starts; returns the resumable fields `config`
        changes against the run's config.json (empty for a new run).

        Raises:
            PetsegError: a resume without last.pt, a resume changing another field (all
                differing fields named), a new run in a folder that holds one.
        """
        if not resume:
            if self.last.exists():
                raise PetsegError(f"{self.path}: holds a run already; pass --resume or another "
                                  "--out")
            return {}
        if not self.last.is_file():
            raise PetsegError(f"{self.path}: no last.pt to resume from; start without --resume")
        stored = load_run_config(self.config_path)
        changes = config_changes(stored, config)
        refused = [f"{name}: {json.dumps(new)} vs the run's {json.dumps(old)}"
                   for name, (old, new) in changes.items() if name not in RESUMABLE_FIELDS]
        if refused:
            raise PetsegError(f"{self.config_path}: the run was started with another config "
                              f"({'; '.join(refused)}); resume with --config pointing to this "
                              f"file, changing only {', '.join(RESUMABLE_FIELDS)}")
        return changes

    def write_config(self, config: TrainingConfig) -> None:
        """Write config.json (the folder is created)."""
        write_json(to_dict(config), self.config_path)

    def record_changes(self, config: TrainingConfig, changes: dict[str, tuple[Any, Any]],
                       epoch: int) -> None:
        """Append resumed `changes` (acting from 1-based `epoch`) to config_changes.json,
        then rewrite config.json with `config`; both atomically."""
        for name, (old, new) in changes.items():
            log.info("resuming with %s = %s (was %s) from epoch %d", name, json.dumps(new),
                     json.dumps(old), epoch)
        earlier = read_json(self.changes_path, "", "delete it to start a new record") \
            if self.changes_path.exists() else []
        entry = {"epoch": epoch, "changes": {name: {"from": old, "to": new}
                                             for name, (old, new) in changes.items()}}
        write_json([*earlier, entry], self.changes_path)
        self.write_config(config)

    def save_best(self, state_dict: dict[str, torch.Tensor], config: TrainingConfig,
                  validation: dict[str, Any], extra: dict[str, Any]) -> None:
        """best.safetensors (`validation["summary"]` as its metrics, `extra` beside the
        config) and best_validation.json (`validation`: fold, epoch, summary, cases;
        a NaN metric is written as null)."""
        save_checkpoint(self.path / "best.safetensors", state_dict, config.model,
                        metrics=validation["summary"], extra=extra)
        write_json(validation, self.path / "best_validation.json", strict=False, indent=1)

    def open_tensorboard(self, start_epoch: int) -> None:
        """Start RUN/tensorboard/, dropping curves past `start_epoch` (a resumed run's)."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.path / "tensorboard"), purge_step=start_epoch + 1)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append `row` to history.csv and its finite values to TensorBoard (if open)."""
        _append_history(self.path / "history.csv", row)
        if self._writer is None:
            return
        for name, tag in _SCALARS:
            if row.get(name) not in (None, "") and math.isfinite(float(row[name])):
                self._writer.add_scalar(tag, float(row[name]), row["epoch"])
        self._writer.flush()

    def log_non_finite(self, record: dict[str, Any]) -> None:
        """Append `record` (strict JSON values) as a line of non_finite_steps.jsonl."""
        with (self.path / "non_finite_steps.jsonl").open("a") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")

    def close(self) -> None:
        """Close TensorBoard's writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _append_history(path: Path, row: dict[str, Any]) -> None:
    """Append `row`; a file begun with other columns (an older version) keeps its own."""
    fields: Sequence[str] = HISTORY_FIELDS
    if path.exists():
        with path.open(newline="") as handle:
            fields = next(csv.reader(handle), None) or HISTORY_FIELDS
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})
