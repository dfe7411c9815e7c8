"""Simulated clicks and scribbles drawn on one augmented training patch.

The clicks are drawn on the patch itself (its label and PET after every spatial
augmentation), so they lie inside it and on what the patch shows. A sample gets one of:

- nothing (`no_click_fraction`): the network must still segment on its own;
- points (autoPET IV): tumour and background counts 0..max with falling probability
  (`count_decay` per extra click). Most points follow the organisers' rule
  (`organiser_fraction`): the centre of a lesion component (the maximum of its distance
  transform), moved by up to `jitter_voxels` along each axis while it stays on the lesion,
  filled up with edge voxels of the components in turn; background points at the centres
  of the components of high non-lesion uptake. The rest come from a wider sampler: inside
  a lesion weighted by depth or on its boundary band; background in the ring just outside
  a lesion or anywhere outside the lesions weighted by uptake squared;
- scribbles (autoPET V, `scribble_fraction`): the truth corrupted as a model's mask would
  be (a lesion missed, eroded or dilated; bright non-lesion components added), and 1..
  `max_scribbles` corrections drawn on its errors with the organisers' own scribble rule
  (`petseg.interactive.scribbles.organisers_scribble`, a random shape each), the error
  each scribble marks then counted as corrected for the next.

All arrays are numpy `[z, y, x]`; points are voxel indices `[n, 3]` in that order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from petseg.interactive.scribbles import SCRIBBLE_SHAPES, organisers_scribble
from petseg.interactive.simulate import high_uptake_mask, label_components

BAND_VOXELS = 3
"""Width (voxels) of the band outside a lesion where background points may go."""


@dataclasses.dataclass(frozen=True)
class ClickTrainingConfig:
    """How training samples get their simulated clicks (click-aware models only).

    Attributes:
        no_click_fraction: share of samples without any click (the automatic case).
        scribble_fraction: share of the other samples that get corrective scribbles on a
            corrupted truth instead of points.
        max_tumour_clicks, max_background_clicks: most points of each kind per sample.
        count_decay: P(k + 1 points) / P(k points): the counts 0..max fall geometrically.
        organiser_fraction: share of points placed by the organisers' rule (jittered);
            the rest by the wider sampler.
        jitter_voxels: an organisers' centre moves by up to this many voxels per axis.
        uptake_percentile: background points of the organisers' rule go to components of
            non-lesion PET above this percentile of the patch's non-lesion PET.
        max_scribbles: most corrective scribbles per sample (at least one).
    """

    no_click_fraction: float = 0.3
    scribble_fraction: float = 0.35
    max_tumour_clicks: int = 10
    max_background_clicks: int = 10
    count_decay: float = 0.75
    organiser_fraction: float = 0.7
    jitter_voxels: int = 2
    uptake_percentile: float = 99.0
    max_scribbles: int = 4


def check_click_training_config(config: ClickTrainingConfig) -> list[str]:
    """The fields of `config` out of range, as `clicks.<field> ...: must be ...` lines."""
    problems = []
    for name in ("no_click_fraction", "scribble_fraction", "organiser_fraction"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems.append(f"clicks.{name} {getattr(config, name)}: must be in [0, 1]")
    if not 0.0 < config.count_decay <= 1.0:
        problems.append(f"clicks.count_decay {config.count_decay}: must be in (0, 1]")
    for name in ("max_tumour_clicks", "max_background_clicks", "jitter_voxels"):
        if getattr(config, name) < 0:
            problems.append(f"clicks.{name} {getattr(config, name)}: must be >= 0")
    if config.max_scribbles < 1:
        problems.append(f"clicks.max_scribbles {config.max_scribbles}: must be >= 1")
    if not 0.0 < config.uptake_percentile < 100.0:
        problems.append(f"clicks.uptake_percentile {config.uptake_percentile}: must be in "
                        "(0, 100)")
    return problems


def falling_count(rng: np.random.Generator, most: int, decay: float) -> int:
    """A count in 0..most with P(k) proportional to decay**k."""
    if most <= 0:
        return 0
    weights = decay ** np.arange(most + 1, dtype=float)
    return int(rng.choice(most + 1, p=weights / weights.sum()))


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, count) of the 26-connected components of `mask`."""
    labels, counts, _ = label_components(mask)
    return labels, len(counts) - 1


def _centres(labels: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centre `[3]`, edge voxels `[n, 3]`) of components 1..count, by their distance
    transform on the bounding box (grown by one voxel, so it equals the whole patch's)."""
    found = []
    for label, box in enumerate(ndimage.find_objects(labels)[:count], start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                      for s, n in zip(box, labels.shape, strict=True))
        mask = labels[grown] == label
        depth = ndimage.distance_transform_edt(mask)
        offset = np.array([s.start for s in grown])
        centre = np.asarray(np.unravel_index(int(np.argmax(depth)), depth.shape)) + offset
        edge = np.argwhere(mask & (depth == depth[mask].min())) + offset
        found.append((centre, edge))
    return found


def _weighted_voxels(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` voxels `[count, 3]` drawn with probability proportional to `weights` (>= 0)."""
    flat = weights.ravel()
    total = float(flat.sum())
    if count <= 0 or not total > 0:
        return np.zeros((0, 3), int)
    picks = rng.choice(flat.size, size=count, p=flat / total)
    return np.stack(np.unravel_index(picks, weights.shape), axis=1)


def _organiser_points(mask: np.ndarray, count: int, rng: np.random.Generator,
                      jitter: int) -> np.ndarray:
    """`count` points on the components of `mask` as the organisers' rule places them:
    centres of components in random order (jittered, kept on `mask`), then edge voxels of
    the drawn ones in turn."""
    labels, n = _components(mask)
    if count <= 0 or n == 0:
        return np.zeros((0, 3), int)
    parts = _centres(labels, n)
    order = rng.permutation(len(parts))[:count]
    points = []
    for i in order:
        centre = parts[i][0]
        moved = np.clip(centre + rng.integers(-jitter, jitter + 1, 3), 0,
                        np.asarray(mask.shape) - 1)
        points.append(moved if mask[tuple(moved)] else centre)
    turn = 0
    while len(points) < count:
        edge = parts[order[turn % len(order)]][1]
        points.append(edge[rng.integers(len(edge))])
        turn += 1
    return np.asarray(points, int).reshape(-1, 3)


def _wider_tumour(lesion: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Tumour points inside lesions, each either weighted by depth or on the boundary band
    (the lesion voxels next to the background)."""
    if count <= 0 or not lesion.any():
        return np.zeros((0, 3), int)
    depth = ndimage.distance_transform_edt(lesion)
    deep = int(rng.binomial(count, 0.5))
    band = (lesion & (depth <= 1.5)).astype(float)
    return np.concatenate([_weighted_voxels(depth, deep, rng),
                           _weighted_voxels(band, count - deep, rng)])


def _wider_background(lesion: np.ndarray, pet: np.ndarray, count: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Background points outside lesions: a third in the band just outside a lesion, the
    rest weighted by uptake squared."""
    if count <= 0:
        return np.zeros((0, 3), int)
    outside = ~lesion
    near = 0
    if lesion.any():
        near = int(rng.binomial(count, 1 / 3))
    ring = (ndimage.binary_dilation(lesion, iterations=BAND_VOXELS) & outside).astype(float) \
        if near else np.zeros(lesion.shape)
    uptake = np.where(outside, np.clip(pet, 0.0, None), 0.0) ** 2
    return np.concatenate([_weighted_voxels(ring, near, rng),
                           _weighted_voxels(uptake, count - near, rng)])


def point_clicks(lesion: np.ndarray, pet: np.ndarray, rng: np.random.Generator,
                 config: ClickTrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tumour `[n, 3]`, background `[m, 3]`) points on one patch (autoPET IV style)."""
    n_tumour = falling_count(rng, config.max_tumour_clicks, config.count_decay) \
        if lesion.any() else 0
    n_background = falling_count(rng, config.max_background_clicks, config.count_decay)
    organiser_tumour = int(rng.binomial(n_tumour, config.organiser_fraction))
    organiser_background = int(rng.binomial(n_background, config.organiser_fraction))
    tumour = np.concatenate([
        _organiser_points(lesion, organiser_tumour, rng, config.jitter_voxels),
        _wider_tumour(lesion, n_tumour - organiser_tumour, rng)])
    bright = high_uptake_mask(pet, lesion, config.uptake_percentile)
    placed = _organiser_points(bright, organiser_background, rng, config.jitter_voxels)
    background = np.concatenate([
        placed, _wider_background(lesion, pet, n_background - len(placed), rng)])
    return tumour.astype(int), background.astype(int)


def corrupted_truth(lesion: np.ndarray, pet: np.ndarray, rng: np.random.Generator,
                    config: ClickTrainingConfig) -> np.ndarray:
    """A model-like mask made from the truth: each lesion component kept, missed, eroded or
    dilated (1-2 voxels), and each bright non-lesion component added with probability 1/2."""
    labels, _ = _components(lesion)
    mask = np.zeros(lesion.shape, bool)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, size))
                      for s, size in zip(box, lesion.shape, strict=True))
        part = labels[grown] == label
        fate, steps = rng.random(), int(rng.integers(1, 3))
        if fate < 0.25:
            continue  # missed
        if fate < 0.5:
            eroded = ndimage.binary_erosion(part, iterations=steps)
            part = eroded if eroded.any() else part
        elif fate < 0.75:
            part = ndimage.binary_dilation(part, iterations=steps)
        mask[grown] |= part
    bright, m = _components(high_uptake_mask(pet, lesion, config.uptake_percentile))
    if m:
        added = np.flatnonzero(rng.random(m) < 0.5) + 1
        mask |= np.isin(bright, added)
    return mask


def corrective_scribbles(lesion: np.ndarray, pet: np.ndarray, rng: np.random.Generator,
                         config: ClickTrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tumour `[n, 3]`, background `[m, 3]`) points of 1..max scribbles correcting a
    corrupted truth, each by the organisers' rule (the larger error's scribble)."""
    mask = corrupted_truth(lesion, pet, rng, config)
    wanted = int(rng.integers(1, config.max_scribbles + 1))
    strokes: dict[str, list[np.ndarray]] = {"tumour": [], "background": []}
    for _ in range(wanted):
        shape = SCRIBBLE_SHAPES[int(rng.integers(len(SCRIBBLE_SHAPES)))]
        found = organisers_scribble(lesion, mask, shape, empty_error_fails=False)
        if found is None:
            break
        kind, points_xyz = found
        points = np.asarray(points_xyz, int).reshape(-1, 3)[:, ::-1]
        strokes[kind].append(points)
        error = (lesion & ~mask) if kind == "tumour" else (mask & ~lesion)
        labels, _ = _components(error)
        marked = np.unique(labels[tuple(points.T)])
        fixed = np.isin(labels, marked[marked > 0])
        mask = np.where(fixed, lesion, mask)
    return tuple(np.concatenate(strokes[k]) if strokes[k] else np.zeros((0, 3), int)  # type: ignore[return-value]
                 for k in ("tumour", "background"))


def patch_clicks(lesion: np.ndarray, pet: np.ndarray, rng: np.random.Generator,
                 config: ClickTrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tumour `[n, 3]`, background `[m, 3]`) voxel indices `[z, y, x]` of one training
    patch: none, points or corrective scribbles (see the module's docstring).

    Args:
        lesion: the patch's label `[D, H, W]` (non-zero: lesion).
        pet: the patch's PET `[D, H, W]` (any positive scale; only its order matters).
        rng: the sample's click generator.
    """
    lesion = np.asarray(lesion) != 0
    pet = np.asarray(pet, np.float32)
    if rng.random() < config.no_click_fraction:
        return np.zeros((0, 3), int), np.zeros((0, 3), int)
    if rng.random() < config.scribble_fraction:
        return corrective_scribbles(lesion, pet, rng, config)
    return point_clicks(lesion, pet, rng, config)
