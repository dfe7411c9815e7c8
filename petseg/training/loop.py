"""The training loop of one fold: GDFL, Adam + cosine annealing, validation, checkpoints.

A run folder holds::

    RUN/config.json           the TrainingConfig (a resumed run must match it)
    RUN/best.safetensors      best mean validation DSC (petseg.checkpoint, metrics inside)
    RUN/best_validation.json  that epoch's per-case validation metrics
    RUN/last.pt               state for --resume (weights, optimiser, scheduler, scaler)
    RUN/history.csv           one row per epoch; RUN/tensorboard/ the same as curves

`last.pt` holds only tensors and plain containers and is read with
`torch.load(weights_only=True)`. Random state needs no saving: each epoch's samples
derive from (seed, fold, epoch), see `petseg.training.loader`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg.checkpoint import (
    DSC_KEY,
    Checkpoint,
    config_difference,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from petseg.config import to_dict
from petseg.errors import PetsegError
from petseg.io import atomic_path
from petseg.model import build_network
from petseg.training.cache import check_cache_config, load_volume
from petseg.training.config import TrainingConfig, training_config_from_dict
from petseg.training.distributed import (
    DistributedContext,
    barrier,
    gather_objects,
    init_distributed,
    mean_over_processes,
    shutdown,
    unwrap,
    wrap_model,
)
from petseg.training.loader import EpochLoader, Volume
from petseg.training.loss import build_loss
from petseg.training.splits import load_splits

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "lr", "epoch_s", "data_wait_fraction", "val_mean_dsc",
                  "val_mean_fpv_ml", "val_mean_fnv_ml", "val_cases", "best")


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


def train_step(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor,
               loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
               channels_last: bool) -> torch.Tensor:
    """One optimiser step on a batch `image` `[B, C, D, H, W]`, `label` `[B, 1, D, H, W]`.

    Mixed precision with `amp_dtype` (None: fp32); returns the detached loss.
    """
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(image.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def summarise_validation(cases: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean DSC over cases with lesions (autoPET convention), mean FPV and FNV over all."""
    dsc = [c["dsc"] for c in cases if c.get("n_true_lesions", 0) > 0 and math.isfinite(c["dsc"])]
    return {
        DSC_KEY: float(np.mean(dsc)) if dsc else float("nan"),
        "mean_fpv_ml": float(np.mean([c["fpv_ml"] for c in cases])) if cases else float("nan"),
        "mean_fnv_ml": float(np.mean([c["fnv_ml"] for c in cases])) if cases else float("nan"),
        "cases": float(len(cases)),
    }


def validate(network: torch.nn.Module, volumes: Sequence[Volume], config: TrainingConfig,
             device: torch.device) -> list[dict[str, Any]]:
    """Per-case metrics of `network` on whole volumes, with the inference engine.

    The lesion probability comes from `petseg.inference.sliding_window_probability`
    (the same windows, overlap and blending as `petseg predict`), thresholded at
    `validation.inference.threshold` (0.5 when null); metrics from
    `petseg.metrics.case_metrics` on the 2 mm grid.
    """
    from petseg.inference import sliding_window_probability
    from petseg.metrics import case_metrics

    inference = config.validation.inference
    results = []
    was_training = network.training
    network.eval()
    try:
        for volume in volumes:
            image = torch.from_numpy(np.asarray(volume.image, dtype=np.float32))
            probability = sliding_window_probability([network], image, inference, None, device)
            prediction = (probability > inference.mask_threshold()).numpy()  # as postprocessing
            metrics = case_metrics(np.asarray(volume.label), prediction, volume.spacing_mm)
            results.append({"key": volume.key, **metrics.as_dict()})
    finally:
        # the engine may switch the weights to channels_last_3d; training keeps its own layout
        channels_last = device.type == "cuda" and config.channels_last
        network.to(memory_format=torch.channels_last_3d if channels_last
                   else torch.contiguous_format)  # type: ignore[call-arg]
        network.train(was_training)
    return results


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})


def _check_run_dir(run_dir: Path, config: TrainingConfig, resume: bool) -> None:
    """Read-only checks every process makes (so all fail together under DDP)."""
    config_path = run_dir / "config.json"
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise PetsegError(f"{run_dir}: no last.pt to resume from; start without --resume")
        stored = training_config_from_dict(json.loads(config_path.read_text()))
        if stored != config:
            raise PetsegError(f"{config_path}: the run was started with another config; resume "
                              "with --config pointing to this file")
    elif (run_dir / "last.pt").exists():
        raise PetsegError(f"{run_dir}: holds a run already; pass --resume or another --out")


def _write_run_config(run_dir: Path, config: TrainingConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def _allow_open_files(needed: int) -> None:
    """Raise the soft limit on open files: every memory-mapped array keeps a descriptor."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise PetsegError(f"{needed} memory-mapped cache files exceed the open-file limit "
                          f"({hard}); raise `ulimit -n` or set in_memory: true")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY
                                                else hard, hard))


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
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    device = context.device
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    _check_run_dir(run_dir, config, resume)
    start = None if init is None or resume else _initial_checkpoint(init, config)
    if context.is_main and not resume:
        _write_run_config(run_dir, config)
    barrier(context)

    splits = load_splits(splits_path)
    train_keys, val_keys = splits.training_keys(fold), splits.validation_keys(fold)
    if not train_keys or not val_keys:
        raise PetsegError(f"{splits_path}: fold {fold} leaves no training or no validation "
                          "study; make a split with more studies")
    check_cache_config(cache, config.model.preprocessing, create=False)
    if not config.in_memory:
        _allow_open_files(2 * (len(train_keys) + len(val_keys)) + 256)
    aug = config.augmentation
    positive = aug.positive_fraction > 0
    hot_suv = aug.hot_suv if aug.hot_fraction > 0 else None
    pet_channel = config.model.preprocessing.channel_order.index("pet")
    volumes = [load_volume(cache, key, config.in_memory, positive, hot_suv, pet_channel)
               for key in train_keys]
    my_val = [load_volume(cache, key, False) for key in val_keys[context.rank::context.world_size]]

    torch.manual_seed(config.seed + fold)
    cuda = device.type == "cuda"
    network = build_network(config.model.network)
    started_from = None
    if start is not None:
        network.load_state_dict({k: v.float() for k, v in start.state_dict.items()})
        started_from = {"file": start.path.name, "sha256": file_sha256(start.path)}
        log.info("starting from the weights of %s", start.path)
    network = network.to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last_3d)
    model = wrap_model(network, context, config.sync_batchnorm)
    network = unwrap(model)
    loss_fn = build_loss(config.loss)
    opt_cfg = config.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=opt_cfg.lr,
                                 weight_decay=opt_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt_cfg.epochs,
                                                           eta_min=opt_cfg.lr_min)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.amp) if cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, best_epoch, best_score = 0, 0, -math.inf
    best_metrics: dict[str, float] = {}
    if resume:
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
        best_score = float(state["best_score"])
        best_metrics = {k: float(v) for k, v in state["best_metrics"].items()}
        started_from = state.get("init")  # a resumed fine-tuning keeps its record
        log.info("resuming %s at epoch %d (best %.4f at epoch %d)", run_dir, start_epoch + 1,
                 best_score, best_epoch)

    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1) \
        if context.is_main else None
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, opt_cfg.epochs):
        started = time.perf_counter()
        model.train()
        loader = EpochLoader(volumes, config.augmentation, opt_cfg.batch_size, config.seed,
                             fold, epoch, device, context.rank, context.world_size,
                             config.loader_threads, config.prefetch_batches)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{opt_cfg.epochs}",
                   unit="step", disable=not (progress and context.is_main), leave=False)
        for step, (image, label) in enumerate(bar):
            loss = train_step(model, image, label, loss_fn, optimizer, scaler, amp_dtype,
                              cuda and config.channels_last)
            loss_sum += loss
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_loss = mean_over_processes(loss_sum.item() / max(len(loader), 1), context)
        train_seconds = time.perf_counter() - started
        wait = mean_over_processes(loader.wait_s / max(train_seconds, 1e-9), context)

        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                               "data_wait_fraction": wait}
        done = epoch + 1
        improved = False
        if done % config.validation.every == 0 or done == opt_cfg.epochs:
            cases = gather_objects(validate(network, my_val, config, device), context)
            summary = summarise_validation(cases)
            row.update(val_mean_dsc=summary[DSC_KEY], val_mean_fpv_ml=summary["mean_fpv_ml"],
                       val_mean_fnv_ml=summary["mean_fnv_ml"], val_cases=len(cases))
            score = summary[DSC_KEY] if math.isfinite(summary[DSC_KEY]) else -math.inf
            if best_epoch == 0 or score > best_score:
                improved, best_epoch, best_score, best_metrics = True, done, score, summary
                if context.is_main:
                    _save_best(run_dir, network, config, summary, cases, fold, splits.folds,
                               done, started_from)
        row["epoch_s"] = time.perf_counter() - started
        row["best"] = int(improved)
        if context.is_main:
            _save_torch({
                "epoch": done,
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_metrics": best_metrics,
                "init": started_from,
            }, run_dir / "last.pt")
            _append_history(run_dir / "history.csv", row)
            _log_scalars(writer, row)
            log.info("epoch %d/%d loss %.4f lr %.2e%s (%.1f s, data wait %.0f%%)", done,
                     opt_cfg.epochs, train_loss, lr,
                     f" val DSC {row['val_mean_dsc']:.4f}" if "val_mean_dsc" in row else "",
                     row["epoch_s"], 100 * wait)
        history.append(row)
        barrier(context)
    if writer is not None:
        writer.close()
    return TrainResult(run_dir=run_dir, epochs_done=opt_cfg.epochs, best_epoch=best_epoch,
                       best_metrics=best_metrics, history=tuple(history))


def _initial_checkpoint(init: Path, config: TrainingConfig) -> Checkpoint:
    """Checkpoint `init`, checked to hold the network and preprocessing of `config`."""
    if not init.is_file():
        raise PetsegError(f"{init}: not found; pass a fold checkpoint (.safetensors) to --init")
    start = load_checkpoint(init)
    if start.model_config != config.model:
        raise PetsegError(
            f"{init}: was trained with another model "
            f"({config_difference(config.model, start.model_config, 'the config')}); "
            "start from a checkpoint of the same network and preprocessing"
        )
    return start


def _save_best(run_dir: Path, network: torch.nn.Module, config: TrainingConfig,
               summary: dict[str, float], cases: list[dict[str, Any]], fold: int,
               folds: int, epoch: int, started_from: dict[str, str] | None) -> None:
    extra = {"fold": fold, "folds": folds, "epoch": epoch, "seed": config.seed}
    if started_from is not None:
        extra["init"] = started_from
    save_checkpoint(run_dir / "best.safetensors", network.state_dict(), config.model,
                    metrics=summary, extra=extra)
    with atomic_path(run_dir / "best_validation.json") as tmp:
        tmp.write_text(json.dumps({"fold": fold, "epoch": epoch, "summary": summary,
                                   "cases": cases}, indent=1, default=float) + "\n")


def _log_scalars(writer: Any, row: dict[str, Any]) -> None:
    if writer is None:
        return
    epoch = row["epoch"]
    for name, tag in (("train_loss", "train/loss"), ("lr", "train/lr"),
                      ("data_wait_fraction", "train/data_wait_fraction"),
                      ("epoch_s", "time/epoch_s"), ("val_mean_dsc", "val/mean_dsc"),
                      ("val_mean_fpv_ml", "val/mean_fpv_ml"),
                      ("val_mean_fnv_ml", "val/mean_fnv_ml")):
        if name in row and row[name] is not None and math.isfinite(float(row[name])):
            writer.add_scalar(tag, float(row[name]), epoch)
    writer.flush()
