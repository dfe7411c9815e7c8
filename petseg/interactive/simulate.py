"""Click simulators: points drawn from a truth mask (and the PET for high uptake).

- `autopet_iv_clicks`: the autoPET IV evaluation clicks exactly as the organisers' script
  makes them (lab-midas/autoPETCTIV:clicks/simulate_clicks.py), quirks included: numpy's
  legacy generator seeded with 42 and their `[x, y, z]` order, tumour clicks at the centres
  (EDT maximum, voxel units) of 26-connected truth components drawn at random, filled up to
  the budget with edge voxels of the drawn ones in turn; background clicks the same way on
  the components of the non-lesion PET above its 99.75th percentile, filled up with any
  voxel of a drawn component (of a component of uniform depth: any voxel of the volume
  outside it), as their edge test for background looks outside the component.
- Training clicks are drawn on each augmented patch: `petseg.training.click_simulation`.

All arrays are numpy `[z, y, x]` and all points voxel indices in that order; see
`zyx_to_xyz` for the (x, y, z) order of a click file.
"""

from __future__ import annotations

import dataclasses
import random

import cc3d
import numpy as np
from scipy import ndimage

CLICK_BUDGET = 10
"""Tumour and background clicks of a full autoPET IV case (10 + 10)."""
COMPONENT_CONNECTIVITY = 26
"""Connectivity of the components clicks are placed on (the organisers')."""
HIGH_UPTAKE_PERCENTILE = 99.75
"""Background clicks go to non-lesion voxels with PET above this percentile of the
non-lesion PET (the organisers' rule)."""
EVALUATION_SEED = 42
"""The organisers' fixed seed."""


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """(labels, voxel counts, bounding boxes) of the 26-connected components of `mask`;
    index 0 of the counts and boxes is the background."""
    labels = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8),
                                       connectivity=COMPONENT_CONNECTIVITY)
    stats = cc3d.statistics(labels)
    return labels, np.asarray(stats["voxel_counts"]), list(stats["bounding_boxes"])


def high_uptake_mask(pet: np.ndarray, truth: np.ndarray,
                     percentile: float = HIGH_UPTAKE_PERCENTILE) -> np.ndarray:
    """Non-lesion voxels with PET (SUV, `[z, y, x]`) above `percentile` of the non-lesion PET."""
    outside = np.asarray(truth) == 0
    values = np.asarray(pet)[outside]
    if values.size == 0:
        return np.zeros(outside.shape, bool)
    return (np.asarray(pet) > np.percentile(values, percentile)) & outside


@dataclasses.dataclass(frozen=True)
class _Target:
    """One picked component as the organisers' click script sees it, in (x, y, z).

    Attributes:
        centre: the first voxel (x, then y, then z order) of maximal EDT depth.
        edge: `[n, 3]` voxels of the smallest depth, in that order (tumour fill-in clicks).
        voxels: `[m, 3]` all voxels, in that order (background fill-in clicks).
        flat: sorted flat indices of the voxels on the `[x, y, z]` grid.
        uniform: every voxel has the same depth (a component at most two voxels thick).
    """

    centre: tuple[int, int, int]
    edge: np.ndarray
    voxels: np.ndarray
    flat: np.ndarray
    uniform: bool


def _target(labels: np.ndarray, label: int, box: tuple[slice, ...]) -> _Target:
    """The `_Target` of `labels == label` (`[z, y, x]`); its EDT on the box grown by one
    voxel equals the EDT of the whole volume."""
    grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                  for s, n in zip(box, labels.shape, strict=True))
    mask = (labels[grown] == label).transpose(2, 1, 0)  # [x, y, z], as their arrays
    depth = ndimage.distance_transform_edt(mask)
    offset = np.array([grown[2].start, grown[1].start, grown[0].start])
    inside = depth[mask]
    centre = np.asarray(np.unravel_index(int(np.argmax(depth)), depth.shape)) + offset
    voxels = np.argwhere(mask) + offset
    size_yz = labels.shape[1] * labels.shape[0]
    flat = voxels[:, 0] * size_yz + voxels[:, 1] * labels.shape[0] + voxels[:, 2]
    return _Target(centre=tuple(int(c) for c in centre),  # type: ignore[arg-type]
                   edge=np.argwhere(mask & (depth == inside.min())) + offset,
                   voxels=voxels, flat=np.sort(flat), uniform=bool(inside.min() == inside.max()))


def _nth_outside(flat_sorted: np.ndarray, n: int) -> int:
    """The flat index of the `n`-th voxel (0-based, flat order) not in `flat_sorted`."""
    index = n
    for member in flat_sorted.tolist():
        if member > index:
            break
        index += 1
    return index


def _fill_in(target: _Target, rs: np.random.RandomState, background: bool,
             shape_xyz: tuple[int, int, int]) -> tuple[int, int, int]:
    """One fill-in click. Tumour: a random edge voxel. Background (the organisers'
    quirk: their edge test looks outside the component): a random voxel of the component,
    or, for a component of uniform depth, a random voxel of the whole volume outside it."""
    if not background:
        return tuple(int(v) for v in target.edge[rs.choice(len(target.edge))])  # type: ignore[return-value]
    if not target.uniform:
        return tuple(int(v) for v in target.voxels[rs.choice(len(target.voxels))])  # type: ignore[return-value]
    outside = int(np.prod(shape_xyz)) - len(target.flat)
    flat = _nth_outside(target.flat, int(rs.choice(outside)))
    return tuple(int(v) for v in np.unravel_index(flat, shape_xyz))  # type: ignore[return-value]


def _perturb(click: tuple[int, int, int], offset: int | None, allowed: np.ndarray,
             rng: random.Random) -> tuple[int, int, int]:
    """The organisers' optional offset: each coordinate plus a uniform 0..offset, kept when
    the moved voxel is in the volume and `allowed` (`[x, y, z]`), else the click."""
    if offset is None:
        return click
    moved = tuple(c + rng.randint(0, int(offset)) for c in click)
    inside = all(m < n for m, n in zip(moved, allowed.shape, strict=True))
    return moved if inside and allowed[moved] else click  # type: ignore[return-value]


def _organisers_clicks(mask: np.ndarray, allowed: np.ndarray, rs: np.random.RandomState,
                       budget: int, background: bool, offsets: tuple[int | None, int | None],
                       offset_rng: random.Random) -> list[tuple[int, int, int]]:
    """(x, y, z) clicks on the 26-connected components of `mask` (`[z, y, x]`): centres of
    up to `budget` components drawn without replacement, then fill-in clicks on the drawn
    ones in turn until `budget`. `allowed` (`[x, y, z]`) bounds the offsets."""
    labels, counts, boxes = label_components(mask)
    present = np.arange(1, len(counts))
    if present.size == 0 or budget <= 0:
        return []
    picked = rs.choice(present, size=min(budget, present.size), replace=False)
    targets = [_target(labels, int(label), boxes[label]) for label in picked]
    clicks = [_perturb(t.centre, offsets[0], allowed, offset_rng) for t in targets]
    shape_xyz = mask.shape[::-1]
    while len(clicks) < budget:
        for target in targets:
            click = _fill_in(target, rs, background, shape_xyz)
            clicks.append(_perturb(click, offsets[1], allowed, offset_rng))
            if len(clicks) == budget:
                break
    return clicks


def autopet_iv_clicks(truth: np.ndarray, pet: np.ndarray, seed: int = EVALUATION_SEED,
                      budget: int = CLICK_BUDGET, centre_offset: int | None = None,
                      edge_offset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The autoPET IV clicks of one case, exactly as the organisers' `simulate_clicks`:
    (tumour `[n, 3]`, background `[m, 3]`), numpy indices `[z, y, x]`.

    Their rule: numpy's legacy global generator seeded with `seed` (`np.random.seed(42)`)
    draws, in this order, the tumour components, the tumour fill-in voxels, the background
    components and the background fill-in voxels, all on their `[x, y, z]` arrays (nibabel's
    order; component labels in the order of each component's first voxel in memory, which
    for nibabel's Fortran-ordered array is the `[z, y, x]` raster order of SimpleITK's).
    Background clicks go on the non-lesion voxels with PET above the 99.75th percentile of
    the non-lesion PET (float64). A lesion-free truth gets background clicks only.

    Args:
        truth: lesion mask `[z, y, x]` on the PET grid (non-zero: lesion).
        pet: PET in SUV on the same grid.
        seed: the generator's seed (the organisers': 42).
        budget: clicks of each kind.
        centre_offset, edge_offset: the organisers' optional perturbations (voxels) of the
            centre and fill-in clicks. Theirs draw from Python's unseeded global `random`;
            here from `random.Random(seed)`, in the same order.

    Raises:
        PetsegError: a background fill-in click falls on a lesion, where the organisers'
            script stops on an assertion; or the PET has no voxel above the threshold and a
            click budget remains, where their script never ends.
    """
    from petseg.errors import PetsegError

    truth = np.asarray(truth) != 0
    rs = np.random.RandomState(seed)
    offset_rng = random.Random(seed)
    offsets = (centre_offset, edge_offset)
    tumour_xyz = (_organisers_clicks(truth, truth.T, rs, budget, False, offsets, offset_rng)
                  if truth.any() else [])
    outside = ~truth
    values = np.asarray(pet)[outside].astype(np.float64)
    uptake = (np.asarray(pet) > np.percentile(values, HIGH_UPTAKE_PERCENTILE)) & outside \
        if values.size else np.zeros(truth.shape, bool)
    if budget > 0 and not uptake.any():
        raise PetsegError("autoPET IV clicks: no non-lesion PET voxel above the 99.75th "
                          "percentile, where the organisers' script never ends")
    background_xyz = _organisers_clicks(uptake, outside.T, rs, budget, True, offsets, offset_rng)
    hits = [p for p in background_xyz if truth.T[p]]
    if hits:
        raise PetsegError(f"autoPET IV clicks: the background fill-in click {hits[0]} lies on "
                          "a lesion, where the organisers' script stops on an assertion")

    def zyx(points: list[tuple[int, int, int]]) -> np.ndarray:
        return np.asarray([p[::-1] for p in points], int).reshape(-1, 3)

    return zyx(tumour_xyz), zyx(background_xyz)


def zyx_to_xyz(points: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """`[n, 3]` numpy indices `[z, y, x]` -> ITK voxel indices (x, y, z), as a click file."""
    return tuple((int(p[2]), int(p[1]), int(p[0])) for p in np.asarray(points).reshape(-1, 3))
