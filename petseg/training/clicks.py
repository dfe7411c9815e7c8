"""Simulated clicks for training a click-aware network.

Each sample draws its clicks on its own augmented patch
(`petseg.training.click_simulation.patch_clicks`: none, points or corrective scribbles)
with a generator of its own, derived from (seed, fold, epoch, sample index) like the
patch's augmentation but independent of it, so the patches of an automatic network's
training are untouched. The clicks become maps drawn as the model's click encoding says
(`petseg.interactive.maps.render_click_maps`, the inference's own drawing) on the patch
grid, appended after the image channels (`augment_sample(patch_maps=...)`).

A click-aware network is fine-tuned from automatic weights with `add_click_inputs`: the
click channels start with zero weights, so at zero clicks it starts as the automatic one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from petseg.config import CLICK_CHANNELS, DEFAULT_CLICK_ENCODING, ClickEncoding, ModelConfig
from petseg.errors import PetsegError
from petseg.training.click_simulation import ClickTrainingConfig, patch_clicks


def click_rng(seed: int, fold: int, epoch: int, index: int) -> np.random.Generator:
    """The click generator of sample `index` of an epoch (apart from the patch's)."""
    return np.random.default_rng([seed, fold, epoch, index, 0xC11C])


class TrainingClicks:
    """Draws each training sample's clicks on its patch and renders their maps.

    Attributes:
        config: how many clicks, of which kinds, how often none.
        encoding: how the model wants its clicks drawn (`ModelConfig.clicks`).
        pet_channel: index of the PET among the image channels.
    """

    def __init__(self, config: ClickTrainingConfig, pet_channel: int = 0,
                 encoding: ClickEncoding = DEFAULT_CLICK_ENCODING) -> None:
        self.config, self.pet_channel, self.encoding = config, pet_channel, encoding

    def draw(self, label: np.ndarray, pet: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """(tumour `[n, 3]`, background `[m, 3]`) clicks `[z, y, x]` on one patch."""
        return patch_clicks(label, pet, rng, self.config)

    def patch_maps(self, rng: np.random.Generator, spacing_zyx_mm: tuple[float, float, float]
                   ) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
        """The `augment_sample` callback: `(image [C, *patch], label [*patch]) -> maps
        [2, *patch]` float32 of this sample's clicks drawn on the augmented patch."""
        from petseg.interactive.maps import render_click_maps

        def maps(image: torch.Tensor, label: torch.Tensor) -> np.ndarray:
            lesion = label.detach().cpu().numpy()
            pet = image[self.pet_channel].detach().float().cpu().numpy()
            tumour, background = self.draw(lesion, pet, rng)
            return render_click_maps(tumour, background, lesion.shape, spacing_zyx_mm,
                                     self.encoding.radius_mm, self.encoding.shape)

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
