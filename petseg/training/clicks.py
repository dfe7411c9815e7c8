"""Simulated clicks for training a click-aware network.

Each study's click targets (lesion components, high-uptake components outside the lesions)
are found once when the fold is built; each sample then draws its own clicks from them
(`petseg.interactive.simulate.draw_training_clicks`) with a generator of its own, derived
from (seed, fold, epoch, sample index) like the patch's augmentation but independent of
it, so the patches of an automatic network's training are untouched. The clicks become
maps (`petseg.interactive.maps.render_click_maps`) on the source box of the patch, and the
fused sampler resamples them with the image (`augment_sample(box_maps=...)`).

A click-aware network is fine-tuned from automatic weights with `add_click_inputs`: the
click channels start with zero weights, so at zero clicks it starts as the automatic one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from petseg.config import CLICK_CHANNELS, DEFAULT_CLICK_ENCODING, ClickEncoding, ModelConfig
from petseg.errors import PetsegError
from petseg.interactive.simulate import (
    ClickTargets,
    ClickTrainingConfig,
    click_targets,
    draw_training_clicks,
)
from petseg.training.cache import Volume


def click_rng(seed: int, fold: int, epoch: int, index: int) -> np.random.Generator:
    """The click generator of sample `index` of an epoch (apart from the patch's)."""
    return np.random.default_rng([seed, fold, epoch, index, 0xC11C])


class TrainingClicks:
    """The click targets of a fold's training studies and the maps of one sample's clicks.

    Attributes:
        config: how many clicks, how often none.
        targets: per study (in the order of the volumes).
        spacing_zyx_mm: per study, the voxel size in `[z, y, x]` order (mm).
    """

    def __init__(self, volumes: Sequence[Volume], config: ClickTrainingConfig,
                 pet_channel: int = 0, encoding: ClickEncoding = DEFAULT_CLICK_ENCODING) -> None:
        self.config, self.encoding = config, encoding
        self.targets: list[ClickTargets] = [
            click_targets(np.asarray(v.label), np.asarray(v.image[pet_channel], np.float32),
                          config, seed=i) for i, v in enumerate(volumes)]
        self.spacing_zyx_mm = [tuple(float(s) for s in v.spacing_mm[::-1]) for v in volumes]

    def draw(self, case: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(tumour `[n, 3]`, background `[m, 3]`) clicks `[z, y, x]` of one sample of `case`."""
        return draw_training_clicks(self.targets[case], rng, self.config)

    def box_maps(self, case: int, rng: np.random.Generator
                 ) -> Callable[[tuple[int, ...], tuple[int, ...]], np.ndarray]:
        """The `augment_sample` callback drawing this sample's click maps on a source box."""
        from petseg.interactive.maps import render_click_maps

        tumour, background = self.draw(case, rng)
        spacing = self.spacing_zyx_mm[case]

        def maps(start: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
            origin = np.asarray(start, float)
            return render_click_maps(tumour - origin, background - origin, shape, spacing,
                                     self.encoding.radius_mm)

        return maps


def automatic_model(model: ModelConfig) -> ModelConfig:
    """The automatic counterpart of a click-aware model: the click channels left out (and
    the click encoding, which it does not use, at its default)."""
    order = tuple(c for c in model.preprocessing.channel_order if c not in CLICK_CHANNELS)
    dropped = len(model.preprocessing.channel_order) - len(order)
    return dataclasses.replace(
        model, network=dataclasses.replace(model.network,
                                           in_channels=model.network.in_channels - dropped),
        preprocessing=dataclasses.replace(model.preprocessing, channel_order=order),
        clicks=DEFAULT_CLICK_ENCODING)


def add_click_inputs(state_dict: dict[str, torch.Tensor], model: ModelConfig
                     ) -> dict[str, torch.Tensor]:
    """The weights of an automatic network, widened for the click-aware `model`.

    Every weight that reads the network's input (the first convolution and its residual
    path) gets zero weights for the click channels, so at zero clicks the widened network
    gives exactly the automatic one's output; all other tensors are copied.

    Raises:
        PetsegError: the weights do not fit `automatic_model(model)`.
    """
    from petseg.model import build_network

    wanted = build_network(model.network).state_dict()
    auto_in = automatic_model(model).network.in_channels
    order = model.preprocessing.channel_order
    image_at = [order.index(c) for c in order if c not in CLICK_CHANNELS]
    widened = {}
    for key, target in wanted.items():
        value = state_dict.get(key)
        if value is None:
            raise PetsegError(f"weights lack {key}; start from a fold of the same network")
        value = value.float()
        if value.shape != target.shape:
            if (value.ndim < 2 or value.shape[1] != auto_in
                    or value.shape[:1] + value.shape[2:] != target.shape[:1] + target.shape[2:]):
                raise PetsegError(f"weights {key} {tuple(value.shape)} do not fit "
                                  f"{tuple(target.shape)}; start from the same network")
            grown = torch.zeros(target.shape, dtype=torch.float32)
            grown[:, image_at] = value
            value = grown
        widened[key] = value
    return widened
