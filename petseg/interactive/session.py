"""An interactive session beside the Predictor: clicks in, the corrected mask out.

    clicks (PET voxel indices) -> click maps on the network grid, drawn as the weights'
      `ModelConfig.clicks` says (a click-aware network only) -> Predictor.predict with the
      maps as extra input channels -> the click rule on the mask (`petseg.interactive.rule`,
      any weights)

The probabilities stay the network's; only the mask honours every click.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.config import CLICK_CHANNELS
from petseg.errors import PetsegError
from petseg.inference.predictor import ExtraChannels, Prediction, Predictor
from petseg.interactive.clicks import Clicks
from petseg.interactive.maps import click_maps_on_grid
from petseg.interactive.rule import apply_click_rule
from petseg.io.geometry import Geometry
from petseg.progress import CaseProgress


class InteractiveSession:
    """A Predictor answering clicks.

    Args:
        predictor: the fold ensemble; its network may take click maps
            (`ModelConfig.takes_clicks`) or not (then only the click rule acts).

    Raises:
        PetsegError: the network takes input channels other than the click maps, which
            this session cannot supply.
    """

    def __init__(self, predictor: Predictor) -> None:
        model = predictor.model_config
        extra = model.extra_channels
        if extra and tuple(extra) != CLICK_CHANNELS:
            raise PetsegError(f"the weights take the input channels {', '.join(extra)} beyond "
                              f"the images; an interactive session supplies "
                              f"{', '.join(CLICK_CHANNELS)}; use click-aware or automatic "
                              "weights")
        self.predictor = predictor
        self.encoding = model.clicks

    def click_maps(self, clicks: Clicks | None, pet: sitk.Image | Geometry
                   ) -> ExtraChannels | None:
        """The callback drawing `clicks` (indices of `pet`) on the network grid, for a
        click-aware network; None for automatic weights."""
        if not self.predictor.model_config.takes_clicks:
            return None

        def maps(grid: Geometry) -> np.ndarray:
            return click_maps_on_grid(clicks, pet, grid, self.encoding)

        return maps

    def predict(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None,
                **options: Any) -> Prediction:
        """The Predictor's answer for PET (SUV) + CT (HU) with `clicks`, its mask
        honouring every click; `options` go to `Predictor.predict` (probability,
        fold_probabilities, progress)."""
        prediction = self.predictor.predict(pet, ct, extra_channels=self.click_maps(clicks, pet),
                                            **options)
        if not clicks:
            return prediction
        counts = clicks.counts()
        progress = options.get("progress") or CaseProgress("-")
        progress.stage(f"click rule ({counts['tumour']} tumour, {counts['background']} "
                       "background)")
        geometry = Geometry.of(prediction.mask)
        mask = geometry.image_from_array(apply_click_rule(
            sitk.GetArrayViewFromImage(prediction.mask), sitk.GetArrayViewFromImage(pet),
            clicks, geometry.spacing))
        return dataclasses.replace(prediction, mask=mask)
