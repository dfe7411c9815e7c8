"""Building one fold's training: its studies, the network (DDP-wrapped), loss, Adam and the
fp16 loss scaler, from a `TrainingConfig`, the cache and the split file."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from petseg.checkpoint import (
    Checkpoint,
    TrainingState,
    config_difference,
    file_sha256,
    load_checkpoint,
)
from petseg.errors import PetsegError
from petseg.model import build_network
from petseg.training.cache import Volume, check_cache_config, load_volume
from petseg.training.clicks import TrainingClicks, add_click_inputs, automatic_model
from petseg.training.config import TrainingConfig
from petseg.training.distributed import DistributedContext, unwrap, wrap_model
from petseg.training.loss import build_loss
from petseg.training.splits import load_splits
from petseg.training.step import resolve_amp

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FoldTraining:
    """Everything one fold's training works with, as `build_fold` makes it.

    Attributes:
        config: the training configuration.
        fold: the held-out fold; `folds` the split's number of folds.
        context: this process's place under DDP (device, rank, world size).
        volumes: the training studies (each process samples its share of every epoch).
        validation: this process's share of the held-out studies, whole volumes.
        network: the network itself; `model` the same under DDP's wrapper (what trains).
        loss_fn: the GDFL loss of logits `[B, 2, D, H, W]` and labels `[B, 1, D, H, W]`.
        optimizer: Adam; its lr is set per epoch (`petseg.training.step.cosine_lr`).
        scaler: the fp16 loss scaler (disabled for bf16 and fp32).
        amp_dtype: autocast dtype of the step (None: fp32).
        channels_last: batches and weights in `channels_last_3d` (CUDA only).
        started_from: {"file", "sha256"} of the checkpoint a fine-tuning started from.
        clicks: the samples' click simulation (click-aware models), else None.
    """

    config: TrainingConfig
    fold: int
    folds: int
    context: DistributedContext
    volumes: list[Volume]
    validation: list[Volume]
    network: torch.nn.Module
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool
    started_from: dict[str, Any] | None
    clicks: TrainingClicks | None = None

    def restore(self, state: TrainingState) -> None:
        """Load the weights, optimiser and scaler of a saved `state` (`--resume`)."""
        self.network.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        if state.scaler:  # empty when saved by a disabled scaler
            self.scaler.load_state_dict(state.scaler)
        self.started_from = None if state.init is None else dict(state.init)


def build_fold(config: TrainingConfig, cache: Path, splits_path: Path, fold: int,
               context: DistributedContext, start: Checkpoint | None) -> FoldTraining:
    """Fold `fold`'s training (studies, network, loss, optimiser, scaler), random weights
    seeded by (seed, fold) unless `start` (`initial_checkpoint`) gives them."""
    folds, volumes, validation = _load_fold(config, cache, splits_path, fold, context)
    device = context.device
    torch.manual_seed(config.seed + fold)
    network = build_network(config.model.network)
    started_from = None
    if start is not None:
        weights = start.state_dict
        if start.model_config != config.model:  # automatic weights for a click-aware model
            weights = add_click_inputs(weights, config.model)
        network.load_state_dict({k: v.float() for k, v in weights.items()})
        started_from = {"file": start.path.name, "sha256": file_sha256(start.path)}
        log.info("starting from the weights of %s", start.path)
    network = network.to(device)
    channels_last = device.type == "cuda" and config.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-arg]
    model = wrap_model(network, context, config.sync_batchnorm)
    opt = config.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    log.info("precision: %s (amp %r on %s), gradient clipping: %s",
             "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
             config.amp, device.type, opt.grad_clip_norm or "off")
    return FoldTraining(config=config, fold=fold, folds=folds, context=context,
                         volumes=volumes, validation=validation, network=unwrap(model),
                         model=model, loss_fn=build_loss(config.loss), optimizer=optimizer,
                         scaler=scaler, amp_dtype=amp_dtype, channels_last=channels_last,
                         started_from=started_from, clicks=_training_clicks(config))


def _training_clicks(config: TrainingConfig) -> TrainingClicks | None:
    """The samples' click simulation when the model takes clicks."""
    if not config.model.takes_clicks:
        return None
    pet_channel = config.model.preprocessing.channel_order.index("pet")
    return TrainingClicks(config.clicks, pet_channel, config.model.clicks)


def _load_fold(config: TrainingConfig, cache: Path, splits_path: Path, fold: int,
               context: DistributedContext) -> tuple[int, list[Volume], list[Volume]]:
    """(number of folds, training volumes, this process's validation volumes)."""
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
    mine = [load_volume(cache, key, False) for key in val_keys[context.rank::context.world_size]]
    return splits.folds, volumes, mine


def initial_checkpoint(init: Path, config: TrainingConfig) -> Checkpoint:
    """Checkpoint `init`, checked to hold the network and preprocessing of `config` (or, for
    a click-aware model, of its automatic counterpart: its click inputs then start at zero)."""
    if not init.is_file():
        raise PetsegError(f"{init}: not found; pass a fold checkpoint (.safetensors) to --init")
    start = load_checkpoint(init)
    widens = config.model.takes_clicks and start.model_config == automatic_model(config.model)
    if start.model_config != config.model and not widens:
        raise PetsegError(
            f"{init}: was trained with another model "
            f"({config_difference(config.model, start.model_config, 'the config')}); "
            "start from a checkpoint of the same network and preprocessing"
        )
    return start


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
