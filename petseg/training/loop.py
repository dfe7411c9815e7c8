"""The training loop of one fold: GDFL, Adam + cosine annealing, validation, checkpoints.

A run folder holds::

    RUN/config.json           the TrainingConfig (a resumed run must match it)
    RUN/best.safetensors      best mean validation DSC (petseg.checkpoint, metrics inside)
    RUN/best_validation.json  that epoch's per-case validation metrics
    RUN/last.pt               state for --resume (weights, optimiser, loss scaler)
    RUN/history.csv           one row per epoch; RUN/tensorboard/ the same as curves

`last.pt` holds only tensors and plain containers and is read with
`torch.load(weights_only=True)`. Random state needs no saving: each epoch's samples
derive from (seed, fold, epoch), see `petseg.training.loader`; the learning rate is a
function of the epoch (`cosine_lr`).

Every step is guarded (`train_step`): a step with a non-finite loss or gradient changes
nothing. An epoch with more than `STOP_SKIPPED_FRACTION` of such steps, or a validation
probability that is not finite, stops the run with a `PetsegError`; `last.pt` then keeps
the last good epoch.
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
from petseg.training.config import (
    OptimizerConfig,
    TrainingConfig,
    training_config_from_dict,
)
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

HISTORY_FIELDS = ("epoch", "train_loss", "lr", "epoch_s", "step_s", "data_wait_fraction",
                  "steps", "skipped_steps", "overflow_steps", "grad_norm_mean", "grad_norm_max",
                  "loss_scale", "val_mean_dsc", "val_mean_fpv_ml", "val_mean_fnv_ml", "val_cases",
                  "best")

STOP_SKIPPED_FRACTION = 0.05
"""An epoch in which more than this share of the steps had a non-finite loss or gradient
stops the run."""

COLLAPSE_FROM_DSC = 0.1
"""A validation mean DSC of 0 after a best above this value is logged as a collapse."""


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


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one `train_step` did.

    Attributes:
        loss: the batch loss (detached fp32 scalar; may be non-finite).
        grad_norm: global L2 norm of the unscaled gradients before clipping; NaN when the
            loss was not finite (no backward ran).
        skipped: the step changed nothing (no update, buffers restored).
        overflow: fp16 only: skipped because the scaled gradients overflowed while the
            loss was finite and the loss scale above 1; the scaler halved the scale. This
            is the scaler's normal search for its scale, not a non-finite step.
    """

    loss: torch.Tensor
    grad_norm: float
    skipped: bool
    overflow: bool = False

    @property
    def non_finite(self) -> bool:
        """Skipped for a non-finite loss or gradient (what the stop rule counts)."""
        return self.skipped and not self.overflow


def _finite_everywhere(value: torch.Tensor) -> bool:
    """`value` is finite in this process and, under DDP, in every other one."""
    bad = (~torch.isfinite(value)).any().to(torch.int32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return not bool(bad.item())


def train_step(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor,
               loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
               channels_last: bool, grad_clip_norm: float | None = None) -> StepResult:
    """One guarded optimiser step on a batch `image` `[B, C, D, H, W]`, `label` `[B, 1, D, H, W]`.

    Mixed precision with `amp_dtype` (None: fp32); under fp16 `scaler` scales the loss
    and the gradients are unscaled before they are clipped to the global L2 norm
    `grad_clip_norm` (None: no clipping). A step whose loss or gradients are not finite
    changes nothing: no optimiser update, and the model's buffers (BatchNorm running
    statistics and batch counters, which the forward has already updated) are restored.
    Under DDP every process takes the same decision.
    """
    buffers = list(model.buffers())
    before = [buffer.detach().clone() for buffer in buffers]

    def restore() -> None:
        with torch.no_grad():
            for buffer, value in zip(buffers, before, strict=True):
                buffer.copy_(value)
        optimizer.zero_grad(set_to_none=True)

    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(image.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere(loss.detach()):
        restore()  # the scale is not to blame: leave the scaler alone
        return StepResult(loss.detach(), math.nan, skipped=True)
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(
        parameters, math.inf if grad_clip_norm is None else grad_clip_norm))
    if not math.isfinite(grad_norm):  # the same in every process: DDP averaged the gradients
        restore()
        scaler.update()  # fp16: halves the scale after the overflow unscale_ recorded
        return StepResult(loss.detach(), grad_norm, skipped=True,
                          overflow=scaler.is_enabled() and scale > 1.0)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss.detach(), grad_norm, skipped=False)


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the `amp` setting on `device` (None: fp32).

    "auto" is bf16 on CUDA GPUs of compute capability 8 (Ampere) and later, fp16 on older
    ones (bf16 is emulated there) and fp32 on the CPU.
    """
    if setting == "off":
        return None
    if setting in ("fp16", "bf16"):
        return torch.float16 if setting == "fp16" else torch.bfloat16
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def cosine_lr(optimizer_config: OptimizerConfig, epoch: int) -> float:
    """Learning rate of epoch `epoch` (0-based): cosine from `lr` to `lr_min` over `epochs`.

    The closed form of `torch.optim.lr_scheduler.CosineAnnealingLR`, set per epoch; with
    no scheduler object, a skipped first step cannot put the schedule out of order.
    """
    opt = optimizer_config
    return opt.lr_min + (opt.lr - opt.lr_min) * (1 + math.cos(math.pi * epoch / opt.epochs)) / 2


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def collapse_warning(epoch: int, mean_dsc: float, best_score: float,
                     best_epoch: int) -> str | None:
    """The warning for a validation mean DSC that fell to 0 after a best above
    `COLLAPSE_FROM_DSC` (None when it did not)."""
    if mean_dsc == 0.0 and best_score > COLLAPSE_FROM_DSC:
        return (f"epoch {epoch}: validation mean DSC fell to 0 after {best_score:.4f} at "
                f"epoch {best_epoch}; the network has collapsed (see skipped_steps and "
                "grad_norm_max in history.csv)")
    return None


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
    `petseg.metrics.case_metrics` on the 2 mm grid. Each case's `probability_finite`
    says whether every voxel's probability was finite.
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
            results.append({"key": volume.key, **metrics.as_dict(),
                            "probability_finite": bool(torch.isfinite(probability).all())})
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
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    log.info("precision: %s (amp %r on %s), gradient clipping: %s",
             "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
             config.amp, device.type, opt_cfg.grad_clip_norm or "off")

    start_epoch, best_epoch, best_score = 0, 0, -math.inf
    best_metrics: dict[str, float] = {}
    if resume:
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved by a disabled scaler
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
        best_score = float(state["best_score"])
        best_metrics = {k: float(v) for k, v in state["best_metrics"].items()}
        started_from = state.get("init")  # a resumed fine-tuning keeps its record
        log.info("resuming %s at epoch %d (best %.4f at epoch %d)", run_dir, start_epoch + 1,
                 best_score, best_epoch)

    def stop(epoch: int, cause: str) -> PetsegError:
        """The one-line error of a run stopped at `epoch`, naming the last good state."""
        if saved_epoch:
            where = (f"{run_dir / 'last.pt'} keeps epoch {saved_epoch}; continue with "
                     "--resume")
        else:
            where = ("no epoch was saved; start again, e.g. with a lower optimizer.lr or "
                     "amp bf16")
        return PetsegError(f"epoch {epoch}: {cause}; the run stopped, {where}")

    saved_epoch = start_epoch
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1) \
        if context.is_main else None
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, opt_cfg.epochs):
        started = time.perf_counter()
        done = epoch + 1
        model.train()
        lr = cosine_lr(opt_cfg, epoch)
        _set_lr(optimizer, lr)
        loader = EpochLoader(volumes, config.augmentation, opt_cfg.batch_size, config.seed,
                             fold, epoch, device, context.rank, context.world_size,
                             config.loader_threads, config.prefetch_batches)
        bar = tqdm(loader, total=len(loader), desc=f"epoch {done}/{opt_cfg.epochs}",
                   unit="step", disable=not (progress and context.is_main), leave=False)
        losses: list[float] = []
        norms: list[float] = []
        non_finite = overflows = 0
        for step, (image, label) in enumerate(bar):
            result = train_step(model, image, label, loss_fn, optimizer, scaler, amp_dtype,
                                cuda and config.channels_last, opt_cfg.grad_clip_norm)
            loss = float(result.loss)
            if math.isfinite(loss):
                losses.append(loss)
            if not result.skipped:
                norms.append(result.grad_norm)
            non_finite += result.non_finite
            overflows += result.overflow
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        steps = len(loader)
        if non_finite > STOP_SKIPPED_FRACTION * steps:
            raise stop(done, f"{non_finite} of {steps} training steps had a non-finite loss "
                             f"or gradient (more than {STOP_SKIPPED_FRACTION:.0%})")
        _set_lr(optimizer, cosine_lr(opt_cfg, done))  # the next epoch's, as last.pt keeps it
        train_loss = mean_over_processes(float(np.mean(losses)) if losses else math.nan,
                                         context)
        train_seconds = time.perf_counter() - started
        wait = mean_over_processes(loader.wait_s / max(train_seconds, 1e-9), context)
        step_s = mean_over_processes((train_seconds - loader.wait_s) / max(steps, 1), context)

        row: dict[str, Any] = {
            "epoch": done, "train_loss": train_loss, "lr": lr, "step_s": step_s,
            "data_wait_fraction": wait, "steps": steps, "skipped_steps": non_finite,
            "overflow_steps": overflows,
            "grad_norm_mean": float(np.mean(norms)) if norms else math.nan,
            "grad_norm_max": max(norms) if norms else math.nan,
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else ""}
        improved = False
        if done % config.validation.every == 0 or done == opt_cfg.epochs:
            cases = gather_objects(validate(network, my_val, config, device), context)
            broken = [c["key"] for c in cases if not c.pop("probability_finite")]
            if broken:
                raise stop(done, f"the validation probability is not finite in {len(broken)} "
                                 f"of {len(cases)} studies ({broken[0]} first)")
            summary = summarise_validation(cases)
            row.update(val_mean_dsc=summary[DSC_KEY], val_mean_fpv_ml=summary["mean_fpv_ml"],
                       val_mean_fnv_ml=summary["mean_fnv_ml"], val_cases=len(cases))
            warning = collapse_warning(done, summary[DSC_KEY], best_score, best_epoch)
            if warning and context.is_main:
                log.warning("%s", warning)
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
                "scaler": scaler.state_dict(),
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_metrics": best_metrics,
                "init": started_from,
            }, run_dir / "last.pt")
            _append_history(run_dir / "history.csv", row)
            _log_scalars(writer, row)
            log.info("epoch %d/%d loss %.4f lr %.2e%s%s (%.1f s, data wait %.0f%%)", done,
                     opt_cfg.epochs, train_loss, lr,
                     f" val DSC {row['val_mean_dsc']:.4f}" if "val_mean_dsc" in row else "",
                     f" skipped {non_finite + overflows}/{steps}" if non_finite + overflows
                     else "", row["epoch_s"], 100 * wait)
        saved_epoch = done
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
                      ("skipped_steps", "train/skipped_steps"),
                      ("overflow_steps", "train/overflow_steps"),
                      ("grad_norm_mean", "train/grad_norm_mean"),
                      ("grad_norm_max", "train/grad_norm_max"),
                      ("loss_scale", "train/loss_scale"), ("step_s", "time/step_s"),
                      ("epoch_s", "time/epoch_s"), ("val_mean_dsc", "val/mean_dsc"),
                      ("val_mean_fpv_ml", "val/mean_fpv_ml"),
                      ("val_mean_fnv_ml", "val/mean_fnv_ml")):
        if row.get(name) not in (None, "") and math.isfinite(float(row[name])):
            writer.add_scalar(tag, float(row[name]), epoch)
    writer.flush()
