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
- click-aware weights: the click maps are drawn again and compared only around the clicks
  added or removed; the network runs again only over the boxes where they changed (one
  per group of nearby changes) plus `CONTEXT_MM` of context on each side (one forward
  each, cut from the first run's padded frame at whole strides), the probability is
  replaced within `UPDATE_MM` of each box, and the network's mask on the PET grid is
  resampled and thresholded again only where it reads the replaced probability. Measured
  against a full rerun on the full-size phantom with the bundled network
  (`benchmarks/session.py`, `test/test_interactive_session.py` for the tolerance).

Only the click rule's copy of the mask and the returned image span the whole case.
The probabilities stay the network's; only the mask honours every click.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from petseg.config import CLICK_CHANNELS
from petseg.errors import PetsegError
from petseg.inference.plan import Plan
from petseg.inference.postprocessing import threshold_mask
from petseg.inference.predictor import ExtraChannels, Prediction, Predictor
from petseg.interactive.clicks import Clicks, clicks_on_grid
from petseg.interactive.maps import click_maps_on_grid, render_click_maps
from petseg.interactive.rule import apply_click_rule
from petseg.io.geometry import Geometry, resample_parallel, target_span
from petseg.model import size_divisor
from petseg.preprocessing import PreparedCase, body_mask_for_windows, preprocess_case
from petseg.progress import CaseProgress

CONTEXT_MM = 56.0
"""Context (mm) around the changed click maps that the network sees when it runs again.
Chosen on the full-size phantom with the earlier bundled folds (Gaussian clicks of 18 mm):
the replaced part must lie at least about 40 mm inside the block (the zero padding beyond
it changes the output up to there); 48 mm of context with 8 mm replaced (40 mm inside)
agreed with a full rerun to Dice 0.9999, 40 mm with 4 mm (36 mm inside) differed in 11
voxels (Dice 0.9990). With the shipped folds (balls of 6 mm), 56/8 mm agreed to Dice
0.9992-1.0 over 6 single clicks (`benchmarks/session.py`) and to 0.9989 after 20 clicks
through `petseg serve` (`benchmarks/serve.py`)."""
UPDATE_MM = 8.0
"""Distance (mm) from the changed click maps within which the probability is replaced:
beyond it a click changed the earlier bundled folds' probability by at most 0.034 on the
full-size phantom, which moved no mask voxel."""


def changed_boxes(before: np.ndarray, after: np.ndarray, gap: np.ndarray
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The boxes (low, high voxel bounds `[z, y, x]`, high exclusive) of the voxels where two
    stacks of maps `[C, D, H, W]` differ: one per group of changes, boxes closer than `gap`
    voxels (per axis) merged; [] where the maps are equal."""
    changed = np.any(before != after, axis=0)
    if not changed.any():
        return []
    labels, _count = ndimage.label(changed)
    return merged_boxes([(np.array([s.start for s in found]), np.array([s.stop for s in found]))
                         for found in ndimage.find_objects(labels)], gap)


def merged_boxes(boxes: list[tuple[np.ndarray, np.ndarray]], gap: np.ndarray
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`boxes` (low, high voxel bounds, high exclusive) with those closer than `gap` voxels
    (per axis) merged into their bounding box, until none are."""
    boxes = list(boxes)
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


def _changed_points(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Rows `[N, 3]` of either points array that the other one lacks."""
    old = {tuple(p) for p in before.tolist()}
    new = {tuple(p) for p in after.tolist()}
    return np.array(sorted(old ^ new), float).reshape(-1, 3)


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
        context_mm, update_mm: an update's context and reach (`CONTEXT_MM`, `UPDATE_MM`,
            measured for the bundled network; a network whose clicks act farther, or
            whose output feels a block's border deeper, needs more).
        precision: of an update's blocks, None for the Predictor's; "bf16" runs them
            1.5-4x faster on a CPU with native bfloat16 (AVX512-BF16, AMX), its mask
            within Dice 0.9999 of the fp32 full rerun with the bundled network on the
            full-size phantom, but Dice 0.996 for a random network of large weights:
            measure it for other weights before using it.

    Raises:
        PetsegError: the network takes input channels other than the click maps, which
            this session cannot supply.
    """

    def __init__(self, predictor: Predictor, context_mm: float = CONTEXT_MM,
                 update_mm: float = UPDATE_MM, precision: str | None = None) -> None:
        model = predictor.model_config
        extra = model.extra_channels
        if extra and tuple(extra) != CLICK_CHANNELS:
            raise PetsegError(f"the weights take the input channels {', '.join(extra)} beyond "
                              f"the images; an interactive session supplies "
                              f"{', '.join(CLICK_CHANNELS)}; use click-aware or automatic "
                              "weights")
        self.predictor = predictor
        self.encoding = model.clicks
        self.context_mm, self.update_mm = float(context_mm), float(update_mm)
        self.precision = precision or predictor.config.precision
        self.pet: sitk.Image | None = None
        self.case: PreparedCase | None = None
        self.image: np.ndarray | None = None  # the network input [C, D, H, W]
        self.probability: torch.Tensor | None = None  # [D, H, W] on the network grid
        self.network_mask: np.ndarray | None = None  # the network's uint8 mask, PET grid
        self.passes = 1
        self.plan: Plan | _FramePlan | None = None  # the first run's padded frame
        self.clicks: Clicks | None = None  # those the probability was computed with
        self.updated_voxels = 0  # network-grid voxels the last update ran the network on
        self.blocks = 0  # blocks the last update ran the network on
        self.seconds: dict[str, float] = {}  # the last update's time per stage
        self.patches: list[Patch] = []  # what the last update overwrote, for `restore`

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
        self.network_mask = self._whole_mask()
        self.updated_voxels = int(np.prod(self.image.shape[1:]))
        self.clicks = clicks
        return self._honour(self.network_mask, pet, clicks, progress)

    def _whole_mask(self) -> np.ndarray:
        """The network's mask (uint8 `[z, y, x]`, PET grid) of the whole probability."""
        assert self.probability is not None and self.case is not None
        return sitk.GetArrayFromImage(
            self.predictor.mask_on_pet_grid(self.probability, self.case)[0])

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
        self.network_mask = self._whole_mask()
        self.updated_voxels = 0

    def update(self, clicks: Clicks | None, progress: CaseProgress | None = None) -> sitk.Image:
        """The mask for the case `start`ed with all of `clicks` (those given so far): the
        network runs again only where the click maps changed (click-aware weights).

        Every stage works in boxes: the click maps are drawn and compared only around the
        clicks added or removed, the probability is resampled to the PET grid and
        thresholded only where the network's output was replaced. `seconds` gets each
        stage's time."""
        if self.case is None or self.image is None or self.pet is None:
            raise RuntimeError("start the session on a case first")
        progress = progress or CaseProgress("-")
        self.updated_voxels, self.blocks, self.seconds, self.patches = 0, 0, {}, []
        if self.predictor.model_config.takes_clicks:
            with self._timed("click maps"):
                boxes = self._redraw_maps(clicks)
            if boxes:
                progress.stage(f"network around the changed clicks ({len(boxes)} block(s))")
            for low, high in boxes:
                with self._timed("network"):
                    target = self._run_again(low, high)
                with self._timed("mask on the PET grid"):
                    self._patch_mask(*target)
            self.blocks = len(boxes)
        assert self.network_mask is not None
        self.clicks = clicks
        with self._timed("click rule"):
            return self._honour(self.network_mask, self.pet, clicks, progress)

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Adds the time (s) of the block to `seconds[stage]`."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - began

    def _redraw_maps(self, clicks: Clicks | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Draw the click maps of `clicks` anew only around the clicks added or removed
        since `self.clicks` (the same values as drawing them all); returns the boxes
        (network grid `[z, y, x]`, high exclusive) where they changed, those within twice
        `context_mm` merged."""
        assert self.case is not None and self.image is not None and self.pet is not None
        grid = self.case.grid
        spacing = np.asarray(grid.spacing[::-1], float)  # [z, y, x] mm
        shape = np.asarray(self.image.shape[1:])
        old = clicks_on_grid(self.clicks or Clicks(), self.pet, grid)
        new = clicks_on_grid(clicks or Clicks(), self.pet, grid)
        reach = self.encoding.radius_mm / spacing
        around = [(np.clip(np.floor(point - reach).astype(int), 0, shape),
                   np.clip(np.ceil(point + reach).astype(int) + 1, 0, shape))
                  for before, after in zip(old, new, strict=True)
                  for point in _changed_points(before, after)]
        gap = 2 * np.ceil(self.context_mm / spacing).astype(int)
        maps = self.image[-len(CLICK_CHANNELS):]
        changed = []
        for low, high in merged_boxes([(lo, hi) for lo, hi in around if np.all(hi > lo)],
                                      np.zeros(3, int)):
            drawn = render_click_maps(new[0] - low, new[1] - low, tuple(high - low),
                                      tuple(spacing), self.encoding.radius_mm,
                                      self.encoding.shape)
            index = (slice(len(self.image) - len(maps), None), *_slices(low, high))
            found = changed_boxes(self.image[index], drawn, gap)
            if found:
                changed += [(a + low, b + low) for a, b in found]
                self._overwrite("image", index, drawn)
        return merged_boxes(changed, gap)

    def _patch_mask(self, low: np.ndarray, high: np.ndarray) -> None:
        """Make the network's mask on the PET grid again where it reads the probability's
        box `[low, high)` (network grid `[z, y, x]`): resampled and thresholded only there
        (the whole mask when small components are removed: a component reaches anywhere)."""
        assert self.case is not None and self.probability is not None
        assert self.network_mask is not None
        predictor, case = self.predictor, self.case
        if predictor.min_component_ml > 0:
            self._overwrite("network_mask", (), self._whole_mask())
            return
        crop = case.crop_geometry
        span = target_span(case.grid, crop, low, high)
        if span is None:
            return
        values = resample_parallel(self.probability.numpy(), case.grid, crop, 0.0, box=span)
        corner = np.asarray(case.crop_box.index[::-1])  # the crop's first voxel [z, y, x]
        self._overwrite("network_mask", _slices(span[0] + corner, span[1] + corner),
                        threshold_mask(values, predictor.threshold))

    def _overwrite(self, name: str, index: tuple[slice, ...], values: Any) -> None:
        """`self.<name>[index] = values`, what was there kept in `patches`."""
        held = getattr(self, name)
        self.patches.append(Patch(name, index, held[index].copy() if isinstance(
            held, np.ndarray) else held[index].clone()))
        held[index] = values

    def restore(self, patches: list[Patch], clicks: Clicks | None) -> None:
        """Undo an update: put back what it overwrote (its `patches`, taken right after
        it), the state for `clicks` (those before it) again; no network runs."""
        for patch in reversed(patches):
            getattr(self, patch.name)[patch.index] = patch.values
        self.clicks = clicks

    def _run_again(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network over `[low, high)` plus `context_mm` (one forward) and replace
        the probability within `update_mm` of the box; returns the replaced box.

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
        context = np.ceil(self.context_mm / spacing).astype(int)
        start = np.maximum((low + pad - context) // divisor * divisor, 0)
        stop = np.minimum(-(-(high + pad + context) // divisor) * divisor, padded)
        stop = start + -(-(stop - start) // divisor) * divisor  # whole strides
        block = np.zeros((self.image.shape[0], *(stop - start)), np.float32)
        inside_start, inside_stop = np.maximum(start - pad, 0), np.minimum(stop - pad, shape)
        block[(slice(None), *_slices(inside_start - (start - pad), inside_stop - (start - pad)))
              ] = self.image[(slice(None), *_slices(inside_start, inside_stop))]
        config = dataclasses.replace(self.predictor.config, mode="fast", time_budget_s=None,
                                     tta=self.passes, skip_empty_windows=False,
                                     precision=self.precision)
        local = self.predictor.probability(block, config=config).probability
        reach = np.ceil(self.update_mm / spacing).astype(int)
        target_start = np.maximum(low - reach, inside_start)
        target_stop = np.minimum(high + reach, inside_stop)
        offset = start - pad
        self._overwrite("probability", _slices(target_start, target_stop),
                        local[_slices(target_start - offset, target_stop - offset)])
        self.updated_voxels += int(np.prod(stop - start))
        return target_start, target_stop

    @staticmethod
    def _honour(mask: sitk.Image | np.ndarray, pet: sitk.Image, clicks: Clicks | None,
                progress: CaseProgress) -> sitk.Image:
        """`mask` (an image, or uint8 `[z, y, x]` on the PET grid) with every click honoured
        (the click rule), a new image on the PET grid."""
        geometry = Geometry.of(pet)
        array = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else mask
        if not clicks:
            return mask if isinstance(mask, sitk.Image) else geometry.image_from_array(array)
        counts = clicks.counts()
        progress.stage(f"click rule ({counts['tumour']} tumour, {counts['background']} "
                       "background)")
        return geometry.image_from_array(apply_click_rule(
            array, sitk.GetArrayViewFromImage(pet), clicks, geometry.spacing))


@dataclasses.dataclass(frozen=True)
class Patch:
    """A box of a session's array as it was before an update: `<name>[index]` held
    `values`."""

    name: str  # "image", "probability" or "network_mask"
    index: tuple[slice, ...]
    values: np.ndarray | torch.Tensor


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
