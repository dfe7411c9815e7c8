"""The training of one fold: GDFL, Adam + cosine annealing, validation, checkpoints.

`train` checks the run folder (`petseg.training.run_folder`), builds the fold's training
(`petseg.training.fold`), restores `last.pt` on `--resume`, and a `Trainer` runs the
epochs: one epoch of guarded steps (`petseg.training.step.train_step`), validation every
`validation.every` epochs (`petseg.training.validation`), then saving (best checkpoint,
`last.pt` as a `petseg.checkpoint.TrainingState`, history.csv, TensorBoard).

Random state needs no saving: each epoch's samples derive from (seed, fold, epoch), see
`petseg.training.loader`; the learning rate is a function of the epoch (`cosine_lr`).
More than `STOP_SKIPPED_FRACTION` non-finite steps among the last max(steps per epoch,
`STOP_WINDOW_STEPS`) steps, or a validation probability that is not finite, stops the
run with a `PetsegError`; `last.pt` then keeps the last good epoch. The first
`MAX_DIAGNOSED_STEPS` skipped steps are diagnosed (`petseg.training.diagnosis`): a
warning and a line of `RUN/non_finite_steps.jsonl` each.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg.checkpoint import DSC_KEY, TrainingState, load_training_state, save_training_state
from petseg.errors import PetsegError
from petseg.training.config import TrainingConfig
from petseg.training.diagnosis import MAX_DIAGNOSED_STEPS, diagnose_non_finite, json_value
from petseg.training.distributed import (
    DistributedContext,
    barrier,
    gather_objects,
    init_distributed,
    mean_over_processes,
    shutdown,
)
from petseg.training.fold import FoldTraining, build_fold, initial_checkpoint
from petseg.training.loader import EpochLoader
from petseg.training.run_folder import RunFolder
from petseg.training.step import StepResult, cosine_lr, set_lr, train_step
from petseg.training.validation import collapse_warning, summarise_validation, validate

log = logging.getLogger(__name__)

STOP_SKIPPED_FRACTION = 0.05
"""More than this share of non-finite steps (loss or gradient) in the stop window stops
the run."""
STOP_WINDOW_STEPS = 100
"""The stop window: the last max(steps per epoch, this) steps, counted at the end of each
epoch since the run (or the resume) began. On large data it is the epoch; on a small set
(5 steps an epoch) one harmless skipped step does not stop a run, while a run whose steps
all fail still stops within a few epochs."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a `train` call ended with.

    Attributes:
        run_dir: the run folder.
        epochs_done: epochs completed in total (resumed ones included).
        best_epoch: epoch (1-based) of the best checkpoint, 0 if none.
        best_metrics: its validation summary (mean_dsc, mean_fpv_ml, mean_fnv_ml, cases).
        history: this call's per-epoch rows (as in history.csv).
    """

    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_metrics: dict[str, float]
    history: tuple[dict[str, Any], ...]


def train(config: TrainingConfig, cache: str | Path, splits_path: str | Path, fold: int,
          run_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True, init: str | Path | None = None) -> TrainResult:
    """Train the network of one fold (the other folds' studies) and validate on the fold.

    Under `torchrun` each process trains on its share of every epoch's samples with DDP.

    Args:
        config: the training configuration.
        cache: cache folder from `petseg preprocess`.
        splits_path: split file from `petseg split`.
        fold: the held-out fold.
        run_dir: output folder (see module doc).
        resume: continue from `run_dir/last.pt`.
        device: "cpu", "cuda", "cuda:N" or None (CUDA if available).
        progress: tqdm bars on rank 0.
        init: a checkpoint (`.safetensors`, e.g. a bundled fold) to start from instead of
            random weights, for fine-tuning; its model config must equal `config.model`.
            Ignored on resume (the run's `last.pt` holds the weights).
    """
    context = init_distributed(device)
    try:
        result = _train(config, Path(cache), Path(splits_path), fold, Path(run_dir), resume,
                        context, progress, None if init is None else Path(init))
    except BaseException:
        shutdown(context)
        raise
    shutdown(context, together=True)
    return result



def _train(config: TrainingConfig, cache: Path, splits_path: Path, fold: int, run_dir: Path,
           resume: bool, context: DistributedContext, progress: bool,
           init: Path | None) -> TrainResult:
    """`train` in one process: check the run folder, build the fold's training, resume, run."""
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    folder = RunFolder(run_dir)
    changes = folder.check(config, resume)
    start = None if init is None or resume else initial_checkpoint(init, config)
    if context.is_main and not resume:
        folder.write_config(config)
    barrier(context)
    trainer = Trainer(build_fold(config, cache, splits_path, fold, context, start), folder,
                      progress)
    if resume:
        trainer.resume(load_training_state(folder.last, context.device))
        if changes and context.is_main:
            folder.record_changes(config, changes, trainer.epoch + 1)
    return trainer.run()


class Trainer:
    """Runs the epochs of one fold over `FoldTraining`, writing to a `RunFolder`.

    Attributes:
        fold: what trains (network, optimiser, data, ...).
        folder: the run folder (only the main process writes to it).
        epoch: epochs done, the one `last.pt` keeps (0: none).
        best_epoch, best_score, best_metrics: the best validation so far (0, -inf, {}).
        history: this call's per-epoch rows (as in history.csv).
    """

    def __init__(self, fold: FoldTraining, folder: RunFolder, progress: bool) -> None:
        self.fold, self.folder, self.progress = fold, folder, progress
        self.epoch, self.best_epoch, self.best_score = 0, 0, -math.inf
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.diagnosed = 0
        self.recent: collections.deque[bool] | None = None  # the stop window's steps

    def resume(self, state: TrainingState) -> None:
        """Continue from a saved `state` (weights, optimiser, scaler, best so far)."""
        self.fold.restore(state)
        self.epoch, self.best_epoch = state.epoch, state.best_epoch
        self.best_score, self.best_metrics = state.best_score, dict(state.best_metrics)
        log.info("resuming %s at epoch %d (best %.4f at epoch %d)", self.folder.path,
                 self.epoch + 1, self.best_score, self.best_epoch)

    def run(self) -> TrainResult:
        """The remaining epochs: train, validate when due, save; returns the summary."""
        config, context = self.fold.config, self.fold.context
        epochs = config.optimizer.epochs
        if context.is_main:
            self.folder.open_tensorboard(self.epoch)
        try:
            for epoch in range(self.epoch, epochs):
                started = time.perf_counter()
                row = self.train_epoch(epoch, started)
                due = (epoch + 1) % config.validation.every == 0 or epoch + 1 == epochs
                improved = self.validate_epoch(row) if due else False
                row["epoch_s"] = time.perf_counter() - started
                row["best"] = int(improved)
                self.save(row)
        finally:
            self.folder.close()
        return TrainResult(run_dir=self.folder.path, epochs_done=epochs,
                           best_epoch=self.best_epoch, best_metrics=self.best_metrics,
                           history=tuple(self.history))

    def train_epoch(self, epoch: int, started: float) -> dict[str, Any]:
        """Train epoch `epoch` (0-based, begun at `perf_counter` time `started`); returns its
        history row without validation. Too many non-finite steps stop the run."""
        p, opt = self.fold, self.fold.config.optimizer
        context, done = p.context, epoch + 1
        p.model.train()
        lr = cosine_lr(opt, epoch)
        set_lr(p.optimizer, lr)
        loader = EpochLoader(p.volumes, p.config.augmentation, opt.batch_size, p.config.seed,
                             p.fold, epoch, context.device, context.rank, context.world_size,
                             p.config.loader_threads, p.config.prefetch_batches, p.clicks)
        bar = _progress_bar(loader, f"epoch {done}/{opt.epochs}",
                            self.progress and context.is_main)
        if self.recent is None:
            self.recent = collections.deque(maxlen=max(len(loader), STOP_WINDOW_STEPS))
        losses: list[float] = []
        norms: list[float] = []
        non_finite = overflows = 0
        for step, (image, label) in enumerate(bar):
            result = train_step(p.model, image, label, p.loss_fn, p.optimizer, p.scaler,
                                p.amp_dtype, p.channels_last, opt.grad_clip_norm)
            loss = float(result.loss)
            if math.isfinite(loss):
                losses.append(loss)
            if not result.skipped:
                norms.append(result.grad_norm)
            non_finite += result.non_finite
            overflows += result.overflow
            self.recent.append(result.non_finite)
            if result.non_finite and self.diagnosed < MAX_DIAGNOSED_STEPS:
                self.diagnose(done, step + 1, image, result)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        self.check_stop_window(done)
        steps = len(loader)
        set_lr(p.optimizer, cosine_lr(opt, done))  # the next epoch's, as last.pt keeps it
        seconds = time.perf_counter() - started
        return {"epoch": done, "lr": lr, "steps": steps, "skipped_steps": non_finite,
                "train_loss": mean_over_processes(float(np.mean(losses)) if losses
                                                  else math.nan, context),
                "step_s": mean_over_processes((seconds - loader.wait_s) / max(steps, 1),
                                              context),
                "data_wait_fraction": mean_over_processes(loader.wait_s / max(seconds, 1e-9),
                                                          context),
                "overflow_steps": overflows,
                "grad_norm_mean": float(np.mean(norms)) if norms else math.nan,
                "grad_norm_max": max(norms) if norms else math.nan,
                "loss_scale": p.scaler.get_scale() if p.scaler.is_enabled() else ""}

    def check_stop_window(self, epoch: int) -> None:
        """Stop the run (at the end of epoch `epoch`) when more than `STOP_SKIPPED_FRACTION`
        of the stop window's steps were non-finite."""
        assert self.recent is not None
        window = self.recent.maxlen or 1
        if sum(self.recent) > STOP_SKIPPED_FRACTION * window:
            raise self.stop(epoch, f"{sum(self.recent)} of the last {len(self.recent)} training "
                                   "steps had a non-finite loss or gradient (more than "
                                   f"{STOP_SKIPPED_FRACTION:.0%} of {window})")

    def diagnose(self, epoch: int, step: int, image: torch.Tensor, result: StepResult) -> None:
        """Rerun the forward of skipped step `step` of epoch `epoch` and say what it showed
        (`petseg.training.diagnosis`); every process runs it, the main one reports."""
        p = self.fold
        found = diagnose_non_finite(p.network, image, p.amp_dtype, p.channels_last)
        self.diagnosed += 1
        if p.context.is_main:
            log.warning("epoch %d step %d skipped (loss %s, gradient norm %s): %s", epoch, step,
                        f"{float(result.loss):.4g}", f"{result.grad_norm:.4g}",
                        found.describe())
            self.folder.log_non_finite({"epoch": epoch, "step": step,
                                        "loss": json_value(float(result.loss)),
                                        "grad_norm": json_value(result.grad_norm),
                                        **found.as_dict()})

    def validate_epoch(self, row: dict[str, Any]) -> bool:
        """Validate after epoch `row["epoch"]`, adding the means to `row`; True when it is
        the best so far (then saved as best.safetensors)."""
        p, done = self.fold, row["epoch"]
        cases = gather_objects(validate(p.network, p.validation, p.config, p.context.device),
                               p.context)
        broken = [c["key"] for c in cases if not c.pop("probability_finite")]
        if broken:
            raise self.stop(done, f"the validation probability is not finite in {len(broken)} "
                                  f"of {len(cases)} studies ({broken[0]} first)")
        summary = summarise_validation(cases)
        row.update(val_mean_dsc=summary[DSC_KEY], val_mean_fpv_ml=summary["mean_fpv_ml"],
                   val_mean_fnv_ml=summary["mean_fnv_ml"], val_cases=len(cases))
        warning = collapse_warning(done, summary[DSC_KEY], self.best_score, self.best_epoch)
        if warning and p.context.is_main:
            log.warning("%s", warning)
        score = summary[DSC_KEY] if math.isfinite(summary[DSC_KEY]) else -math.inf
        if self.best_epoch and score <= self.best_score:
            return False
        self.best_epoch, self.best_score, self.best_metrics = done, score, summary
        if p.context.is_main:
            extra: dict[str, Any] = {"fold": p.fold, "folds": p.folds, "epoch": done,
                                     "seed": p.config.seed}
            if p.started_from is not None:
                extra["init"] = p.started_from
            self.folder.save_best(p.network.state_dict(), p.config, {
                "fold": p.fold, "epoch": done, "summary": summary, "cases": cases}, extra)
        return True

    def save(self, row: dict[str, Any]) -> None:
        """Keep epoch `row["epoch"]`: last.pt, history.csv, TensorBoard, the log line."""
        p, epochs = self.fold, self.fold.config.optimizer.epochs
        if p.context.is_main:
            save_training_state(self.folder.last, TrainingState(
                epoch=row["epoch"], model=p.network.state_dict(),
                optimizer=p.optimizer.state_dict(), scaler=p.scaler.state_dict(),
                best_epoch=self.best_epoch, best_score=self.best_score,
                best_metrics=self.best_metrics, init=p.started_from))
            self.folder.log_epoch(row)
            skipped = row["skipped_steps"] + row["overflow_steps"]
            log.info("epoch %d/%d loss %.4f lr %.2e%s%s (%.1f s, data wait %.0f%%)",
                     row["epoch"], epochs, row["train_loss"], row["lr"],
                     f" val DSC {row['val_mean_dsc']:.4f}" if "val_mean_dsc" in row else "",
                     f" skipped {skipped}/{row['steps']}" if skipped else "", row["epoch_s"],
                     100 * row["data_wait_fraction"])
        self.epoch = row["epoch"]
        self.history.append(row)
        barrier(p.context)

    def stop(self, epoch: int, cause: str) -> PetsegError:
        """The one-line error of a run stopped at `epoch`, naming the last good state."""
        if self.epoch:
            where = f"{self.folder.last} keeps epoch {self.epoch}; continue with --resume"
        else:
            where = "no epoch was saved; start again, e.g. with a lower optimizer.lr or amp bf16"
        return PetsegError(f"epoch {epoch}: {cause}; the run stopped, {where}")


def _progress_bar(loader: EpochLoader, description: str, show: bool) -> Any:
    """A tqdm bar over `loader`'s steps (disabled unless `show`)."""
    from tqdm import tqdm

    return tqdm(loader, total=len(loader), desc=description, unit="step", disable=not show,
                leave=False)
