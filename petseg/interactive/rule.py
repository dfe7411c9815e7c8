"""The click rule: every click honoured on any mask, whatever the network made of it,
without flooding the tissue around a faint lesion.

Strokes. The click file carries only points; a scribble (autoPET V) arrives as many. The
points of one kind are grouped into strokes by single linkage: two points belong to one
stroke when they are at most `STROKE_GAP_VOXELS` (2) voxels apart along every axis, so a
rasterised scribble (26-connected voxels, a skipped voxel tolerated) is one stroke and
separate clicks (autoPET IV: centres of different lesions, tens of mm apart) stay
separate strokes. Each stroke acts once: one region, not one per point.

A tumour stroke with a point outside the mask adds one region:

- The local SUVmax P: the highest SUV within `PEAK_RADIUS_MM` (10 mm) of the stroke.
- The local background B: the median SUV of the shell `SHELL_MM` (20-30 mm) around the
  stroke. The shell lies beyond a lesion up to about 30 ml (radius 19 mm) clicked at its
  centre and takes in the tissue the lesion sits in (liver about 2 SUV, blood pool 1.5,
  muscle 0.7, lung and fat below); the median holds while less than half of the shell is
  lesion or another hot structure, and it needs no organ segmentation (a liver or
  blood-pool reference would be the wrong background for a node in fat or a lung nodule).
- Contrast gate: where P < `MIN_CONTRAST` x B (2), the maximum within 10 mm is within what
  noise and texture give in uniform tissue (noise sd about 10-25 % of the SUV, smooth over
  a few mm, so the highest of a few hundred voxels lies 2-3 sd up; clicks in uniform
  tissue of the held-out phantoms gave P / B 1.2-1.9) and no threshold separates a
  lesion: the stroke adds only the voxels within `BALL_RADIUS_MM` (5 mm) of its points.
  The faintest phantom lesion (5.4 ml, SUVmax 3.4) has P / B 2.8.
- Otherwise the background-corrected 41 % threshold, B + 0.41 (P - B) (the EANM
  guideline's fixed-threshold volume with the background subtracted, as in contrast-
  oriented PET segmentation): the 18-connected components above it that hold P or a
  stroke point, within `REGION_RADIUS_MM` (60 mm per axis) of the stroke, plus the stroke's
  points. A region that reaches a face of that box (one that is not the image's border)
  is an organ or tissue, not a closed lesion: the fraction rises through
  `TUMOUR_FRACTIONS` (0.41, 0.5, 0.6, 0.7) until the region closes, else the small ball.

A background stroke acts on every predicted component (18-connected, the challenge
metrics' connectivity) holding one of its points. The component's core is the region a
tumour click at its SUVmax would add (above): when a mark lies on the core (a false
positive organ or lesion marked on its hot part), the whole component goes; when the marks
lie only outside it (an over-segmented rim or tail of a lesion), the component goes but
for its core, so marking the rim never deletes the lesion and leaves no fragment. When the
component also holds a tumour point, only its voxels nearer (in mm) to a background point
than to every tumour point go, so both are honoured. Tumour strokes act first, then
background strokes; background marks alone never add a voxel, so a lesion-free case whose
reader only placed background marks stays empty.

Everything happens on the PET grid, where the clicks were given. The cost follows the
strokes, not the points or the image: per tumour stroke one distance transform and at most
`len(TUMOUR_FRACTIONS)` labellings of the box around the stroke; per background point that
hits the mask one labelling of a box grown until it holds the component.
"""

from __future__ import annotations

import dataclasses
import logging

import cc3d
import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import cKDTree

from petseg.interactive.clicks import Clicks

log = logging.getLogger(__name__)

TUMOUR_FRACTION = 0.41
"""A tumour stroke's region: SUV at least B + this fraction of (P - B)."""

TUMOUR_FRACTIONS = (TUMOUR_FRACTION, 0.5, 0.6, 0.7)
"""Fractions tried in turn until the region is closed (does not reach the box's faces)."""

PEAK_RADIUS_MM = 10.0
"""The local SUVmax P is searched within this distance of a tumour stroke."""

SHELL_MM = (20.0, 30.0)
"""The local background B: median SUV at these distances (mm) from the stroke."""

MIN_CONTRAST = 2.0
"""No growth where P < MIN_CONTRAST x B: only the ball of `BALL_RADIUS_MM`."""

BALL_RADIUS_MM = 5.0
"""What a tumour stroke adds without growth: the voxels within this distance of it."""

REGION_RADIUS_MM = 60.0
"""A tumour stroke's region stays within this distance (per axis) of the stroke."""

STROKE_GAP_VOXELS = 2
"""Points of one kind at most this many voxels apart along every axis are one stroke."""

CONNECTIVITY = 18


def strokes(points_zyx: np.ndarray) -> list[np.ndarray]:
    """The strokes of one kind's points: a list of int `[n, 3]` (z, y, x) arrays, in order
    of first appearance, duplicates dropped. Single linkage at Chebyshev distance
    `STROKE_GAP_VOXELS` (a k-d tree, so 2,000 points cost milliseconds)."""
    points = np.asarray(points_zyx, int).reshape(-1, 3)
    if not len(points):
        return []
    _, first = np.unique(points, axis=0, return_index=True)
    points = points[np.sort(first)]
    pairs = cKDTree(points).query_pairs(STROKE_GAP_VOXELS, p=np.inf, output_type="ndarray")
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                              shape=(len(points), len(points)))
    _, labels = sparse.csgraph.connected_components(graph, directed=False)
    order = np.unique(labels, return_index=True)[1]  # label of each stroke's first point
    return [points[labels == labels[i]] for i in np.sort(order)]


def _box(lo_zyx: np.ndarray, hi_zyx: np.ndarray, reach_mm: float, spacing_zyx: np.ndarray,
         shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box from `lo_zyx` to `hi_zyx` (inclusive voxels) widened by `reach_mm`."""
    reach = np.ceil(reach_mm / spacing_zyx).astype(int)
    lo = np.maximum(lo_zyx - reach, 0)
    hi = np.minimum(hi_zyx + reach + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclasses.dataclass(frozen=True)
class StrokeRegion:
    """What one tumour stroke adds.

    Attributes:
        box: the slices (z, y, x) of the PET that `region` covers.
        region: bool `[d, h, w]` within `box`.
        peak: P, the local SUVmax; background: B, the shell's median SUV.
        fraction: the fraction of (P - B) the region was cut at; None for the ball.
    """

    box: tuple[slice, ...]
    region: np.ndarray
    peak: float
    background: float
    fraction: float | None


def stroke_region(suv_zyx: np.ndarray, points_zyx: np.ndarray,
                  spacing_zyx: np.ndarray) -> StrokeRegion:
    """The region a tumour stroke (int `[n, 3]` or `[3]` (z, y, x) points) adds; see the
    module's docstring. `spacing_zyx` in mm."""
    points = np.asarray(points_zyx, int).reshape(-1, 3)
    box = _box(points.min(0), points.max(0), REGION_RADIUS_MM, spacing_zyx, suv_zyx.shape)
    local = np.asarray(suv_zyx[box], np.float32)
    on_stroke = tuple((points - [part.start for part in box]).T)
    not_stroke = np.ones(local.shape, bool)
    not_stroke[on_stroke] = False
    distance = ndimage.distance_transform_edt(not_stroke, sampling=spacing_zyx)
    near = np.where(distance <= PEAK_RADIUS_MM, local, -np.inf)
    peak_at = np.unravel_index(int(np.argmax(near)), near.shape)
    peak = float(local[peak_at])
    shell = local[(distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1])]
    background = float(np.median(shell if shell.size else local))
    if peak > 0 and peak >= MIN_CONTRAST * max(background, 0.0):
        for fraction in TUMOUR_FRACTIONS:
            labels = cc3d.connected_components(
                local >= background + fraction * (peak - background), connectivity=CONNECTIVITY)
            held = np.union1d(labels[on_stroke], labels[peak_at])
            region = np.isin(labels, held[held > 0])
            if not _reaches_inner_face(region, box, suv_zyx.shape):
                region[on_stroke] = True
                return StrokeRegion(box, region, peak, background, fraction)
    return StrokeRegion(box, distance <= BALL_RADIUS_MM, peak, background, None)


def tumour_region(suv_zyx: np.ndarray, points_zyx: np.ndarray,
                  spacing_zyx: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, bool region `[d, h, w]` within the box) that a tumour click or stroke at
    `points_zyx` (`[3]` or `[n, 3]`) adds."""
    found = stroke_region(suv_zyx, points_zyx, spacing_zyx)
    return found.box, found.region


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
        box = _box(point_zyx, point_zyx, reach, spacing_zyx, mask_zyx.shape)
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


def _nearest_mm(voxels_mm: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """float `[M]`: distance (mm) of each voxel `[M, 3]` to the nearest of `points_mm`."""
    return cKDTree(points_mm).query(voxels_mm)[0]


def _marked_part(suv_zyx: np.ndarray, box: tuple[slice, ...], component: np.ndarray,
                 marks: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """The part of `component` (bool, within `box`) that background marks (`[N, 3]` zyx, on
    it) remove: all of it when a mark lies on its hot core, else all but the core.

    The core is the region a tumour click at the component's SUVmax would add
    (`stroke_region`): the lesion itself when the marks sit on an over-segmented rim or
    tail of it, so marking the rim does not delete the lesion; a reader who marks the hot
    part itself (a false positive organ or lesion) removes the whole component."""
    origin = np.array([part.start for part in box])
    voxels = np.argwhere(component)
    peak = voxels[int(np.argmax(suv_zyx[box][component]))] + origin
    core = stroke_region(suv_zyx, peak, spacing_zyx)
    core_origin = np.array([part.start for part in core.box])
    local = marks - core_origin
    inside = np.all((local >= 0) & (local < core.region.shape), axis=1)
    if core.region[tuple(local[inside].T)].any():
        return component
    kept = np.zeros_like(component)
    lo, hi = np.maximum(core_origin, origin), np.minimum(
        core_origin + core.region.shape, origin + component.shape)
    if np.any(hi <= lo):
        return component
    kept[tuple(slice(a, b) for a, b in zip(lo - origin, hi - origin, strict=True))] = \
        core.region[tuple(slice(a, b) for a, b in zip(lo - core_origin, hi - core_origin,
                                                       strict=True))]
    kept &= component
    labels = cc3d.connected_components(kept, connectivity=CONNECTIVITY)
    at_peak = labels[tuple(peak - origin)]
    if at_peak == 0:
        return component
    return component & (labels != at_peak)


def _remove_components(mask_zyx: np.ndarray, suv_zyx: np.ndarray, background: np.ndarray,
                       tumour: np.ndarray, spacing_zyx: np.ndarray) -> int:
    """Remove in place, from each component of `mask_zyx` holding a background point
    (`[N, 3]` zyx), the part the marks remove (`_marked_part`); when the component also
    holds a tumour point, only its voxels nearer a background point than every tumour
    point go. Returns voxels removed."""
    removed = 0
    for click in background:
        if not mask_zyx[tuple(click)]:
            continue  # outside the mask, or its part went with an earlier point
        box, component = component_at(mask_zyx, click, spacing_zyx)
        local = mask_zyx[box]  # a view: writes go to the mask
        keep_near = _in_component(tumour, box, component)
        marks = _in_component(background, box, component)
        if len(keep_near):
            origin = np.array([part.start for part in box])
            voxels = np.argwhere(component)
            voxels_mm = (voxels + origin) * spacing_zyx
            drop = (_nearest_mm(voxels_mm, marks * spacing_zyx)
                    < _nearest_mm(voxels_mm, keep_near * spacing_zyx))
            component = np.zeros_like(component)
            component[tuple(voxels[drop].T)] = True
        else:
            component = _marked_part(suv_zyx, box, component, marks, spacing_zyx)
        local[component] = 0
        removed += int(component.sum())
    return removed


def apply_click_rule(mask_zyx: np.ndarray, suv_zyx: np.ndarray, clicks: Clicks,
                     spacing_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """The mask with every click honoured (a new uint8 0/1 `[z, y, x]` array).

    Args:
        mask_zyx: the predicted 0/1 mask on the PET grid.
        suv_zyx: the PET in SUV on the same grid.
        clicks: PET voxel indices (x, y, z), inside the image (`read_click_file` checks);
            scribbles as their points.
        spacing_xyz_mm: the PET's voxel size (x, y, z) in mm.
    """
    out = (np.asarray(mask_zyx) > 0).astype(np.uint8)
    spacing = np.asarray(spacing_xyz_mm, float)[::-1]
    tumour = np.array(clicks.tumour, int).reshape(-1, 3)[:, ::-1]
    background = np.array(clicks.background, int).reshape(-1, 3)[:, ::-1]
    added, grown = 0, 0
    for stroke in strokes(tumour):
        if out[tuple(stroke.T)].all():
            continue  # the mask already holds the whole stroke
        found = stroke_region(suv_zyx, stroke, spacing)
        added += int((found.region & (out[found.box] == 0)).sum())
        out[found.box] |= found.region.astype(np.uint8)
        grown += 1
    removed = _remove_components(out, suv_zyx, background, tumour, spacing)
    if added or removed:
        log.info("click rule: %d voxel(s) added for %d tumour stroke(s), %d removed for "
                 "background clicks", added, grown, removed)
    return out
