"""The click rule: every click honoured on any mask, whatever the network made of it.

- A tumour click outside the mask adds the connected high-uptake region around it: the
  voxels of at least `TUMOUR_FRACTION` (41 %) of the local SUVmax (the highest SUV within
  `PEAK_RADIUS_MM` of the click) that are 18-connected to that maximum, within
  `REGION_RADIUS_MM` of the click, plus the clicked voxel itself. The 41 % isocontour is
  the EANM guideline's fixed-threshold tumour volume, the rule semi-automatic PET tools
  apply around a seed; the box keeps a click near the bladder or the heart from flooding
  the organ.
- A background click inside a predicted component removes that component (18-connected,
  the challenge metrics' connectivity). When the component also holds a tumour click, only
  its voxels nearer (in mm) to a background click than to every tumour click go, so both
  clicks are honoured.

Tumour clicks act first, then background clicks. Everything happens on the PET grid,
where the clicks were given; the cost grows with the number of clicks (a box per tumour
click, one labelling of the mask's bounding box when a background click hits it).
"""

from __future__ import annotations

import logging

import cc3d
import numpy as np

from petseg.interactive.clicks import Clicks

log = logging.getLogger(__name__)

TUMOUR_FRACTION = 0.41
"""A tumour click's region: SUV at least this fraction of the local SUVmax."""

PEAK_RADIUS_MM = 10.0
"""The local SUVmax is searched within this distance of a tumour click."""

REGION_RADIUS_MM = 40.0
"""A tumour click's region stays within this distance (per axis) of the click."""

CONNECTIVITY = 18


def _box(centre_zyx: np.ndarray, reach_mm: float, spacing_zyx: np.ndarray,
         shape: tuple[int, ...]) -> tuple[slice, ...]:
    reach = np.ceil(reach_mm / spacing_zyx).astype(int)
    lo = np.maximum(centre_zyx - reach, 0)
    hi = np.minimum(centre_zyx + reach + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def tumour_region(suv_zyx: np.ndarray, click_zyx: np.ndarray,
                  spacing_zyx: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, bool region `[d, h, w]` within the box) that a tumour click at `click_zyx` adds."""
    box = _box(click_zyx, REGION_RADIUS_MM, spacing_zyx, suv_zyx.shape)
    local = suv_zyx[box]
    offsets = [(np.arange(s.start, s.stop) - c) * d
               for s, c, d in zip(box, click_zyx, spacing_zyx, strict=True)]
    distance_sq = (offsets[0][:, None, None] ** 2 + offsets[1][None, :, None] ** 2
                   + offsets[2][None, None, :] ** 2)
    near = np.where(distance_sq <= PEAK_RADIUS_MM ** 2, local, -np.inf)
    peak = np.unravel_index(int(np.argmax(near)), near.shape)
    click_in_box = tuple(int(c - s.start) for c, s in zip(click_zyx, box, strict=True))
    region = np.zeros(local.shape, bool)
    if local[peak] > 0:
        labels = cc3d.connected_components(local >= TUMOUR_FRACTION * local[peak],
                                           connectivity=CONNECTIVITY)
        region = labels == labels[peak]
    region[click_in_box] = True
    return box, region


def _bounding_box(mask_zyx: np.ndarray) -> tuple[slice, ...]:
    slices = []
    for axis in range(3):
        hits = np.flatnonzero(mask_zyx.any(axis=tuple(a for a in range(3) if a != axis)))
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(slices)


def _nearest_sq_mm(voxels: np.ndarray, points: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Squared distance (mm^2) of each voxel `[M, 3]` to the nearest of `points` `[K, 3]`."""
    best = np.full(len(voxels), np.inf)
    for point in points:  # one pass per click: memory stays M, not M x K
        best = np.minimum(best, ((((voxels - point) * spacing_zyx) ** 2).sum(axis=1)))
    return best


def _remove_components(mask_zyx: np.ndarray, background: np.ndarray, tumour: np.ndarray,
                       spacing_zyx: np.ndarray) -> int:
    """Remove in place the components of `mask_zyx` holding a background click (`[N, 3]`
    zyx); voxels nearer a tumour click of the same component stay. Returns voxels removed."""
    hits = np.array([p for p in background if mask_zyx[tuple(p)]], int).reshape(-1, 3)
    if not len(hits):
        return 0
    box = _bounding_box(mask_zyx)
    origin = np.array([s.start for s in box])
    labels = cc3d.connected_components(mask_zyx[box], connectivity=CONNECTIVITY)
    hit_labels = labels[tuple((hits - origin).T)]
    tumour_in = tumour[mask_zyx[tuple(tumour.T)] > 0] - origin if len(tumour) else tumour
    tumour_labels = labels[tuple(tumour_in.T)] if len(tumour_in) else np.zeros(0, int)
    removed = 0
    for label in np.unique(hit_labels):
        voxels = np.argwhere(labels == label)  # [M, 3] within the box
        keep_near = tumour_in[tumour_labels == label]
        drop = np.ones(len(voxels), bool)
        if len(keep_near):
            drop = (_nearest_sq_mm(voxels, hits[hit_labels == label] - origin, spacing_zyx)
                    < _nearest_sq_mm(voxels, keep_near, spacing_zyx))
        gone = voxels[drop] + origin
        mask_zyx[tuple(gone.T)] = 0
        removed += len(gone)
    return removed


def apply_click_rule(mask_zyx: np.ndarray, suv_zyx: np.ndarray, clicks: Clicks,
                     spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """The mask with every click honoured (a new uint8 0/1 `[z, y, x]` array).

    Args:
        mask_zyx: the predicted 0/1 mask on the PET grid.
        suv_zyx: the PET in SUV on the same grid.
        clicks: PET voxel indices (x, y, z), inside the image (`read_click_file` checks).
        spacing_xyz_mm: the PET's voxel size (x, y, z) in mm.
    """
    out = (np.asarray(mask_zyx) > 0).astype(np.uint8)
    spacing = np.asarray(spacing_xyz_mm, float)[::-1]
    tumour = np.array(clicks.tumour, int).reshape(-1, 3)[:, ::-1]
    background = np.array(clicks.background, int).reshape(-1, 3)[:, ::-1]
    added = 0
    for click in tumour:
        if out[tuple(click)]:
            continue
        box, region = tumour_region(suv_zyx, click, spacing)
        added += int((region & (out[box] == 0)).sum())
        out[box] |= region.astype(np.uint8)
    removed = _remove_components(out, background, tumour, spacing)
    if added or removed:
        log.info("click rule: %d voxel(s) added for tumour clicks, %d removed for background "
                 "clicks", added, removed)
    return out
