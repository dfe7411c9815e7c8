"""An interactive session beside the Predictor: clicks in, the corrected mask out.

    clicks (PET voxel indices) -> click maps on the network grid, drawn as the weights'
      `ModelConfig.clicks` says (a click-aware network only) -> Predictor with the maps as
      extra input channels -> the click rule on the mask (`petseg.interactive.rule`, any
      weights)

`InteractiveSession.predict` answers one case with its clicks in one call. A session that
`start`s on a case keeps what does not change between clicks, so each later `update`
costs a fraction of the first step:

- the case is preprocessed once, and the network runs once over the whole case;
- automatic weights: the network's mask stays, only the click rule runs again;
- click-aware weights: the network runs again only over the boxes where the click maps
  changed (one per group of nearby changes) plus `CONTEXT_MM` of context on each side
  (one forward each, cut from the first run's padded frame at whole strides), and the
  probability is replaced within `UPDATE_MM` of each box; beyond it a click's effect on
  the network's output is below what changes a mask (measured against a full rerun:
  `test/test_interactive_session.py`, `benchmarks/session.py`).

The probabilities stay the network's; only the mask honours every click.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from petseg.config import CLICK_CHANNELS
from petseg.errors import PetsegError
from petseg.inference.plan import Plan
from petseg.inference.predictor import ExtraChannels, Prediction, Predictor
from petseg.interactive.clicks import Clicks
from petseg.interactive.maps import click_maps_on_grid
from petseg.interactive.rule import apply_click_rule
from petseg.io.geometry import Geometry
from petseg.model import size_divisor
from petseg.preprocessing import PreparedCase, body_mask_for_windows, preprocess_case
from petseg.progress import CaseProgress

CONTEXT_MM = 96.0
"""Context (mm) around the changed click maps that the network sees when it runs again."""
UPDATE_MM = 32.0
"""Distance (mm) from the changed click maps within which the probability is replaced."""


def changed_boxes(before: np.ndarray, after: np.ndarray, gap: np.ndarray
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The boxes (low, high voxel bounds `[z, y, x]`, high exclusive) of the voxels where two
    stacks of maps `[C, D, H, W]` differ: one per group of changes, boxes closer than `gap`
    voxels (per axis) merged; [] where the maps are equal."""
    changed = np.any(before != after, axis=0)
    if not changed.any():
        return []
    labels, _count = ndimage.label(changed)
    boxes = [(np.array([s.start for s in found]), np.array([s.stop for s in found]))
             for found in ndimage.find_objects(labels)]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (low_a, high_a), (low_b, high_b) = boxes[i], boxes[j]
                if np.all(low_a < high_b + gap) and np.all(low_b < high_a + gap):
                    boxes[i] = (np.minimum(low_a, low_b), np.maximum(high_a, high_b))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


@dataclasses.dataclass(frozen=True)
class _FramePlan:
    """The part of a first run's `Plan` a resumed session needs: its padded frame."""

    pad: tuple[tuple[int, int], ...]
    padded_shape: tuple[int, ...]


def _slices(start: np.ndarray, stop: np.ndarray) -> tuple[slice, ...]:
    """Index of the box `[start, stop)` (voxels per axis)."""
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


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
        self.pet: sitk.Image | None = None
        self.case: PreparedCase | None = None
        self.image: np.ndarray | None = None  # the network input [C, D, H, W]
        self.probability: torch.Tensor | None = None  # [D, H, W] on the network grid
        self.network_mask: sitk.Image | None = None  # the network's mask on the PET grid
        self.passes = 1
        self.plan: Plan | _FramePlan | None = None  # the first run's padded frame
        self.clicks: Clicks | None = None  # those the probability was computed with
        self.updated_voxels = 0  # network-grid voxels the last update ran the network on
        self.blocks = 0  # blocks the last update ran the network on

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
        progress = options.get("progress") or CaseProgress("-")
        return dataclasses.replace(prediction, mask=self._honour(prediction.mask, pet, clicks,
                                                                 progress))

    # --- a session over many clicks on one case ----------------------------------------

    def start(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None = None,
              progress: CaseProgress | None = None) -> sitk.Image:
        """Preprocess the case once and run the network over all of it (with `clicks`);
        returns the mask honouring `clicks` (uint8 0/1, the PET's grid)."""
        predictor = self.predictor
        progress = progress or CaseProgress("-")
        progress.stage("preprocessing")
        self.pet = pet
        self.case = preprocess_case(pet, ct, predictor.model_config.preprocessing)
        self.image = predictor.network_input(self.case, self.click_maps(clicks, pet))
        config = predictor.config
        body = (body_mask_for_windows(self.case.image, predictor.model_config.preprocessing)
                if config.skip_empty_windows else None)
        progress.stage(f"{len(predictor.networks)} network(s) on "
                       f"{tuple(self.image.shape[1:])} voxels")
        with progress.listening():
            result = predictor.probability(self.image, body_mask=body)
        self.probability, self.passes, self.plan = (result.probability, result.passes,
                                                    result.plan)
        self.network_mask = predictor.mask_on_pet_grid(self.probability, self.case)[0]
        self.updated_voxels = int(np.prod(self.image.shape[1:]))
        self.clicks = clicks
        return self._honour(self.network_mask, pet, clicks, progress)

    def probability_on_pet_grid(self) -> sitk.Image:
        """The network's probability (float32) on the PET grid of the started case."""
        if self.probability is None or self.case is None:
            raise RuntimeError("start the session on a case first")
        on_pet = self.predictor.mask_on_pet_grid(self.probability, self.case)[1]
        return self.case.pet_geometry.image_from_array(on_pet)

    def state(self) -> SessionState:
        """What `resume` needs to go on with this case in another process."""
        if self.probability is None or self.plan is None:
            raise RuntimeError("start the session on a case first")
        return SessionState(self.probability.numpy().copy(), self.clicks or Clicks(),
                            tuple(tuple(int(v) for v in p) for p in self.plan.pad),
                            tuple(int(v) for v in self.plan.padded_shape), self.passes)

    def resume(self, pet: sitk.Image, ct: sitk.Image, state: SessionState,
               progress: CaseProgress | None = None) -> None:
        """Go on with a case an earlier session `state`d: preprocessed again (the same
        result for the same images), the network not run.

        Raises:
            ValueError: the state does not fit this case and weights (another grid).
        """
        progress = progress or CaseProgress("-")
        progress.stage("preprocessing")
        case = preprocess_case(pet, ct, self.predictor.model_config.preprocessing)
        image = self.predictor.network_input(case, self.click_maps(state.clicks, pet))
        if state.probability.shape != image.shape[1:]:
            raise ValueError(f"a kept probability of {state.probability.shape} voxels for a "
                             f"case of {image.shape[1:]}")
        self.pet, self.case, self.image, self.clicks = pet, case, image, state.clicks
        self.probability = torch.from_numpy(np.asarray(state.probability, np.float32))
        self.passes = state.passes
        self.plan = _FramePlan(state.pad, state.padded_shape)
        self.network_mask = self.predictor.mask_on_pet_grid(self.probability, case)[0]
        self.updated_voxels = 0

    def update(self, clicks: Clicks | None, progress: CaseProgress | None = None) -> sitk.Image:
        """The mask for the case `start`ed with all of `clicks` (those given so far): the
        network runs again only where the click maps changed (click-aware weights)."""
        if self.case is None or self.image is None or self.pet is None:
            raise RuntimeError("start the session on a case first")
        progress = progress or CaseProgress("-")
        self.updated_voxels, self.blocks = 0, 0
        maps = self.click_maps(clicks, self.pet)
        if maps is not None:
            drawn = maps(self.case.grid)
            spacing = np.asarray(self.case.grid.spacing[::-1], float)  # [z, y, x] mm
            boxes = changed_boxes(self.image[-len(drawn):], drawn,
                                  2 * np.ceil(CONTEXT_MM / spacing).astype(int))
            if boxes:
                self.image[-len(drawn):] = drawn
                progress.stage(f"network around the changed clicks ({len(boxes)} block(s))")
                for low, high in boxes:
                    self._run_again(low, high)
                self.blocks = len(boxes)
                self.network_mask = self.predictor.mask_on_pet_grid(self.probability,
                                                                    self.case)[0]
        assert self.network_mask is not None
        self.clicks = clicks
        return self._honour(self.network_mask, self.pet, clicks, progress)

    def _run_again(self, low: np.ndarray, high: np.ndarray) -> None:
        """Run the network over `[low, high)` plus `CONTEXT_MM` (one forward) and replace
        the probability within `UPDATE_MM` of the box.

        The block is cut from the first run's padded frame at multiples of the network's
        size divisor, so its strided layers sample the same voxels as the first run did:
        where that run was one window, the block's inside agrees with it but for the faint
        reach of the block's zero padding past the context."""
        assert self.case is not None and self.image is not None
        assert self.probability is not None and self.plan is not None
        spacing = np.asarray(self.case.grid.spacing[::-1], float)  # [z, y, x] mm
        divisor = size_divisor(self.predictor.model_config.network)
        shape = np.asarray(self.image.shape[1:])
        pad = np.asarray([before for before, _after in self.plan.pad])
        padded = np.asarray(self.plan.padded_shape)
        context = np.ceil(CONTEXT_MM / spacing).astype(int)
        start = np.maximum((low + pad - context) // divisor * divisor, 0)
        stop = np.minimum(-(-(high + pad + context) // divisor) * divisor, padded)
        stop = start + -(-(stop - start) // divisor) * divisor  # whole strides
        block = np.zeros((self.image.shape[0], *(stop - start)), np.float32)
        inside_start, inside_stop = np.maximum(start - pad, 0), np.minimum(stop - pad, shape)
        block[(slice(None), *_slices(inside_start - (start - pad), inside_stop - (start - pad)))
              ] = self.image[(slice(None), *_slices(inside_start, inside_stop))]
        config = dataclasses.replace(self.predictor.config, mode="fast", time_budget_s=None,
                                     tta=self.passes, skip_empty_windows=False)
        local = self.predictor.probability(block, config=config).probability
        reach = np.ceil(UPDATE_MM / spacing).astype(int)
        target_start = np.maximum(low - reach, inside_start)
        target_stop = np.minimum(high + reach, inside_stop)
        offset = start - pad
        self.probability[_slices(target_start, target_stop)] = local[
            _slices(target_start - offset, target_stop - offset)]
        self.updated_voxels += int(np.prod(stop - start))

    @staticmethod
    def _honour(mask: sitk.Image, pet: sitk.Image, clicks: Clicks | None,
                progress: CaseProgress) -> sitk.Image:
        """`mask` with every click honoured (the click rule), on the PET grid."""
        if not clicks:
            return mask
        counts = clicks.counts()
        progress.stage(f"click rule ({counts['tumour']} tumour, {counts['background']} "
                       "background)")
        geometry = Geometry.of(mask)
        return geometry.image_from_array(apply_click_rule(
            sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(pet), clicks,
            geometry.spacing))


@dataclasses.dataclass(frozen=True)
class SessionState:
    """What a session keeps between calls on one case (`InteractiveSession.state`).

    Attributes:
        probability: float32 `[D, H, W]` on the network grid.
        clicks: the clicks the probability was computed with (PET indices x, y, z).
        pad: the first run's padding `[(before, after)] * 3` (voxels).
        padded_shape: the first run's padded `[D, H, W]`.
        passes: flipped passes averaged.
    """

    probability: np.ndarray
    clicks: Clicks
    pad: tuple[tuple[int, int], ...]
    padded_shape: tuple[int, ...]
    passes: int


class SessionSegmenter:
    """(PET, CT, clicks) -> mask over the steps of interactive protocols: one session per
    case (started at the case's first step, the same PET object at every later one), each
    later step an `update`."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.session: InteractiveSession | None = None
        self._pet: sitk.Image | None = None

    def __call__(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None) -> sitk.Image:
        if self.session is None or self._pet is not pet:
            self.session, self._pet = InteractiveSession(self.predictor), pet
            return self.session.start(pet, ct, clicks)
        return self.session.update(clicks)
