"""Where a non-finite training step came from, told by numbers.

When the guard (`petseg.training.step.train_step`) skips a step, the batch's forward is
run again under the same precision with a hook on every leaf module. What it finds tells
the causes apart: an activation that reaches fp16's 65,504 before the first non-finite
output is an fp16 overflow in the forward; a parameter or running variance grown by
orders of magnitude is weight growth (unclipped updates); a non-finite input is bad data.
The model is left exactly as it was (its buffers are restored).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from petseg.training.step import BufferSnapshot

MAX_DIAGNOSED_STEPS = 5
"""Skipped steps diagnosed per training call (each costs one extra forward)."""


@dataclasses.dataclass(frozen=True)
class NonFiniteDiagnosis:
    """What the forward of one skipped batch showed.

    Attributes:
        precision: the autocast dtype of the forward ("float32" without autocast).
        input_finite: every input voxel was finite.
        first_non_finite: the first leaf module, in execution order, whose output was not
            finite everywhere (its qualified name); None when the whole forward was finite
            (then the loss or the backward went non-finite).
        largest_output: (module, max |output|) over the leaf outputs before that module.
        largest_parameter: (parameter, max |value|) over the network's parameters.
        largest_running_var: (buffer, max value) over the BatchNorm running variances as
            this forward left them (restored afterwards), or None without BatchNorm.
    """

    precision: str
    input_finite: bool
    first_non_finite: str | None
    largest_output: tuple[str, float]
    largest_parameter: tuple[str, float]
    largest_running_var: tuple[str, float] | None

    def describe(self) -> str:
        """One line for the log."""
        where = (f"first non-finite output at {self.first_non_finite}; largest output "
                 "before it" if self.first_non_finite else "forward finite; largest output")
        var = (f", largest running_var {self.largest_running_var[1]:.3g} "
               f"({self.largest_running_var[0]})" if self.largest_running_var else "")
        return (f"{self.precision} forward: {where} "
                f"{self.largest_output[1]:.3g} ({self.largest_output[0]}), largest parameter "
                f"{self.largest_parameter[1]:.3g} ({self.largest_parameter[0]}){var}"
                f"{'' if self.input_finite else '; the input is not finite'}")

    def as_dict(self) -> dict[str, Any]:
        """The fields for strict JSON (`json_value`)."""
        return {key: json_value(value) for key, value in dataclasses.asdict(self).items()}


def json_value(value: Any) -> Any:
    """`value` for strict JSON: a non-finite float as the string "nan", "inf" or "-inf",
    tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return [json_value(v) for v in value] if isinstance(value, tuple | list) else value


def _largest(named: list[tuple[str, torch.Tensor]]) -> tuple[str, float] | None:
    """(name, max |value|) of the tensor with the largest magnitude; NaN counts as largest."""
    values = [(name, float(t.detach().float().abs().amax())) for name, t in named
              if t.numel()]
    return max(values, key=lambda item: math.inf if math.isnan(item[1]) else item[1]) \
        if values else None


def diagnose_non_finite(network: torch.nn.Module, image: torch.Tensor,
                        amp_dtype: torch.dtype | None,
                        channels_last: bool) -> NonFiniteDiagnosis:
    """Rerun the forward of `image` `[B, C, D, H, W]` as `train_step` ran it (training
    mode, autocast `amp_dtype`) and report where it stopped being finite."""
    leaves = [(name, m) for name, m in network.named_modules() if not any(m.children())]
    first: list[str] = []
    largest = ["input", float(image.detach().float().abs().nan_to_num(0, 0, 0).amax())]

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if first or not isinstance(output, torch.Tensor):
                return
            if not bool(torch.isfinite(output).all()):
                first.append(name)
            elif (peak := float(output.detach().float().abs().amax())) > largest[1]:
                largest[:] = [name, peak]
        return record

    snapshot = BufferSnapshot(network)
    handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    try:
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad(), torch.autocast(image.device.type,
                                             dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None):
            network(image)
        running_var = _largest([(n, b) for n, b in network.named_buffers()
                                if n.endswith("running_var")])  # as this forward left them
    finally:
        for handle in handles:
            handle.remove()
        snapshot.restore()
    parameter = _largest(list(network.named_parameters()))
    return NonFiniteDiagnosis(
        precision=str(amp_dtype or torch.float32).removeprefix("torch."),
        input_finite=bool(torch.isfinite(image).all()),
        first_non_finite=first[0] if first else None,
        largest_output=(str(largest[0]), float(largest[1])),
        largest_parameter=parameter if parameter else ("-", 0.0),
        largest_running_var=running_var)
