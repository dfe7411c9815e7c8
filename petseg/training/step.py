"""One guarded optimiser step and the per-epoch settings of the step (precision, learning rate).

`train_step` is shared by the training loop, the DDP tests and the augmentation benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from petseg.training.config import OptimizerConfig

log = logging.getLogger(__name__)


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


class BufferSnapshot:
    """A copy of every buffer of `model` (BatchNorm running statistics, batch counters),
    taken when built; `restore` writes it back. `statistics` are the live floating-point
    buffers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.before = [buffer.detach().clone() for buffer in self.buffers]
        self.statistics = [b.detach() for b in self.buffers if b.is_floating_point()]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, value in zip(self.buffers, self.before, strict=True):
                buffer.copy_(value)


def _finite_everywhere(values: list[torch.Tensor]) -> bool:
    """Every tensor of `values` is finite in this process and, under DDP, in every other one."""
    bad = (~torch.stack([torch.isfinite(value).all() for value in values])).any()
    bad = bad.to(torch.int32).reshape(1)
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
    So does a forward that left a floating-point buffer non-finite while the loss stayed
    finite: a poisoned running statistic would break every later evaluation. Under DDP
    every process takes the same decision.
    """
    snapshot = BufferSnapshot(model)

    def restore() -> None:
        snapshot.restore()
        optimizer.zero_grad(set_to_none=True)

    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(image.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere([loss.detach(), *snapshot.statistics]):
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
    ones (bf16 is emulated there) and fp32 on the CPU. "fp16" is fp32 on the CPU, with a
    warning: fp16 is emulated there (about 5x slower than fp32 for this network) and the
    CPU's loss scaler adds nothing; it was the default of configs written before "auto".
    """
    if setting == "off":
        return None
    if setting == "fp16" and device.type != "cuda":
        log.warning("amp 'fp16' is for CUDA GPUs; training in fp32 on the %s "
                    "(set amp to 'bf16' or 'off' to choose explicitly)", device.type)
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set learning rate `lr` in every parameter group of `optimizer`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
