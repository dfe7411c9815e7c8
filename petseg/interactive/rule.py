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
where the clicks were given; the cost grows with the number of clicks and the size of the
components they hit, not with the image (a box per tumour click; a box around each
background click that hits the mask, grown until it holds the component).
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


START_REACH_MM = 32.0
"""A background click's component is first labelled within this distance of the click."""

def _reaches_inner_face(component: np.ndarray, box: tuple[slice, ...],
                        shape: tuple[int, ...]) -> bool:
    """True when `component` (bool, within `box`) touches a face of the box that is not the
    image's border: it may continue outside the box."""
    for axis, part in enumerate(box):
        faces = ([0] if part.start > 0 else []) + ([-1] if part.stop < shape[axis] else [])
        if any(np.take(component, face, axis=axis).any() for face in faces):
            return True
    return False


def component_at(mask_zyx: np.ndarray, point_zyx: np.ndarray,
                 spacing_zyx: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, bool component within the box): the 18-connected component of `mask_zyx`
    holding `point_zyx`, labelled in a box around the point that doubles until the
    component stays inside it, so the cost follows the component, not the image."""
    reach = START_REACH_MM
    while True:
        box = _box(point_zyx, reach, spacing_zyx, mask_zyx.shape)
        labels = cc3d.connected_components(mask_zyx[box], connectivity=CONNECTIVITY)
        origin = np.array([part.start for part in box])
        component = labels == labels[tuple(point_zyx - origin)]
        if not _reaches_inner_face(component, box, mask_zyx.shape):
            return box, component
        reach *= 2


def _in_component(points: np.ndarray, box: tuple[slice, ...],
                  component: np.ndarray) -> np.ndarray:
    """The rows of `points` `[N, 3]` (zyx) that lie on `component` (bool, within `box`)."""
    origin = np.array([part.start for part in box])
    local = points - origin
    inside = np.all((local >= 0) & (local < component.shape), axis=1)
    hits = np.zeros(len(points), bool)
    hits[inside] = component[tuple(local[inside].T)]
    return points[hits]


def _nearest_sq_mm(voxels_mm: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """float32 `[M]`: squared distance (mm^2) of each voxel `[M, 3]` to the nearest point."""
    best = np.full(len(voxels_mm), np.inf, np.float32)
    offset = np.empty_like(voxels_mm)
    for point in points_mm:  # one pass per click: memory stays M, not M x K
        np.subtract(voxels_mm, point, out=offset)
        np.square(offset, out=offset)
        np.minimum(best, offset.sum(axis=1), out=best)
    return best


def _remove_components(mask_zyx: np.ndarray, background: np.ndarray, tumour: np.ndarray,
                       spacing_zyx: np.ndarray) -> int:
    """Remove in place the components of `mask_zyx` holding a background click (`[N, 3]`
    zyx); voxels nearer a tumour click of the same component stay. Returns voxels removed."""
    removed = 0
    for click in background:
        if not mask_zyx[tuple(click)]:
            continue  # outside the mask, or its component went with an earlier click
        box, component = component_at(mask_zyx, click, spacing_zyx)
        local = mask_zyx[box]  # a view: writes go to the mask
        keep_near = _in_component(tumour, box, component)
        if len(keep_near):
            origin = np.array([part.start for part in box])
            voxels = np.argwhere(component)
            voxels_mm = ((voxels + origin) * spacing_zyx).astype(np.float32)
            near_background = _in_component(background, box, component) * spacing_zyx
            drop = (_nearest_sq_mm(voxels_mm, near_background.astype(np.float32))
                    < _nearest_sq_mm(voxels_mm, (keep_near * spacing_zyx).astype(np.float32)))
            component = np.zeros_like(component)
            component[tuple(voxels[drop].T)] = True
        local[component] = 0
        removed += int(component.sum())
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
