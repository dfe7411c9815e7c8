"""autoPET V scribbles, exactly as the organisers simulate them (the autoPETV repository,
`interactive/simulate_scribbles.py:simulate_scribble_from_label` and the choice in
`interactive/interactive_loop.py`).

For one error mask (the under- or the over-segmentation), every axial slice is split into
8-connected components; the largest component over all slices (the first slice and the
lowest label on ties) gets one scribble, in one of three shapes:

- "centerline": the skeleton's (scikit-image `skeletonize`) largest 8-connected piece,
  the shortest 8-connected path (networkx) between its two points farthest apart, 10 % cut
  off at each end when it has more than 10 voxels;
- "random": the straight line (Bresenham) between two voxels drawn with Python's `random`
  reseeded with 42;
- "boundary": from a boundary voxel (scikit-image `find_boundaries`, inner) drawn the same
  way, a walk along the boundary to its first unvisited 8-neighbour, for 20 % of the
  boundary's voxels.

A component too small for its shape (no skeleton, fewer than 2 voxels or boundary voxels)
is given whole. Both errors get a scribble; the longer one (voxel count) is given, the
tumour scribble on ties (`organisers_scribble`). The organisers work on nibabel's `[x, y, z]`
arrays; here the arrays are SimpleITK's `[z, y, x]` and each slice is handed on as its
transposed `[x, y]` view, so every tie falls as theirs. Points are (x, y, z) voxel
indices, in the order of the organisers' `np.argwhere` (x, then y).
"""

from __future__ import annotations

import random

import cc3d
import numpy as np

SCRIBBLE_SHAPES: tuple[str, ...] = ("centerline", "random", "boundary")
SCRIBBLE_SEED = 42
"""The organisers reseed Python's `random` with 42 at every scribble."""
TRIM_FRACTION = 0.1
"""Share of a centre line cut off at each end."""
BOUNDARY_FRACTION = 0.2
"""A boundary scribble's length as a share of the boundary's voxels."""

Points = list[tuple[int, int, int]]
_NEIGHBOURS = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0))


def largest_slice_component(error: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(z, uint8 `[x, y]` mask) of the largest 8-connected component of any axial slice of
    `error` (`[z, y, x]`); None when `error` is empty."""
    error = np.asarray(error) != 0
    per_slice = error.reshape(error.shape[0], -1).sum(axis=1)
    best: tuple[int, int, np.ndarray] | None = None
    for z in np.flatnonzero(per_slice).tolist():
        if best is not None and per_slice[z] <= best[0]:
            continue  # no component of this slice can be larger
        labels = cc3d.connected_components(np.ascontiguousarray(error[z]), connectivity=8)
        counts = np.bincount(labels.ravel())
        label = int(np.argmax(counts[1:])) + 1
        if best is None or counts[label] > best[0]:
            best = (int(counts[label]), z, labels == label)
    if best is None:
        return None
    return best[1], best[2].astype(np.uint8).T  # [x, y], Fortran-ordered like theirs


def _centerline(region: np.ndarray) -> np.ndarray:
    """uint8 `[x, y]` centre line of `region` (see the module docstring)."""
    import networkx as nx
    from scipy.spatial.distance import cdist
    from skimage.morphology import skeletonize

    skeleton = skeletonize(region).astype(np.uint8)
    labels = cc3d.connected_components(skeleton, connectivity=8)
    counts = np.bincount(labels.ravel())
    if len(counts) < 2:
        return region.copy()
    skeleton = (labels == int(np.argmax(counts[1:])) + 1).astype(np.uint8)
    cells = np.argwhere(skeleton)
    if len(cells) < 2:
        return region.copy()
    graph = nx.Graph()
    for a, b in cells.tolist():  # nodes and edges in the organisers' insertion order
        graph.add_node((a, b))
        for da, db in _NEIGHBOURS:
            na, nb = a + da, b + db
            if 0 <= na < skeleton.shape[0] and 0 <= nb < skeleton.shape[1] and skeleton[na, nb]:
                graph.add_edge((a, b), (na, nb))
    far = np.unravel_index(int(cdist(cells, cells).argmax()), (len(cells), len(cells)))
    path = np.array(nx.shortest_path(graph, tuple(cells[far[0]].tolist()),
                                     tuple(cells[far[1]].tolist())))
    if len(path) > 10:
        n = len(path)
        path = path[int(n * TRIM_FRACTION):int(n * (1 - TRIM_FRACTION))]
    line = np.zeros_like(region)
    line[path[:, 0], path[:, 1]] = region[path[:, 0], path[:, 1]]
    return line


def _random_line(region: np.ndarray) -> np.ndarray:
    """uint8 `[x, y]`: the voxels of `region` on the line between two random voxels."""
    from skimage.draw import line as bresenham

    rng = random.Random(SCRIBBLE_SEED)
    cells = np.argwhere(region)
    if len(cells) < 2:
        return region.copy()
    start = cells[rng.randint(0, len(cells) - 1)]
    end = cells[rng.randint(0, len(cells) - 1)]
    rows, cols = bresenham(int(start[0]), int(start[1]), int(end[0]), int(end[1]))
    drawn = np.zeros_like(region)
    drawn[rows, cols] = region[rows, cols]
    return drawn


def _boundary_walk(region: np.ndarray) -> np.ndarray:
    """uint8 `[x, y]`: a walk along `region`'s inner boundary from a random voxel."""
    from skimage.segmentation import find_boundaries

    rng = random.Random(SCRIBBLE_SEED)
    boundary = find_boundaries(region, mode="inner")
    cells = np.argwhere(boundary)
    if len(cells) < 2:
        return region.copy()
    current = tuple(int(v) for v in cells[rng.randint(0, len(cells) - 1)])
    walk = np.zeros_like(region)
    walk[current] = 1
    visited = {current}
    for _ in range(max(2, int(BOUNDARY_FRACTION * len(cells)))):
        step = next(((current[0] + da, current[1] + db) for da, db in _NEIGHBOURS
                     if 0 <= current[0] + da < boundary.shape[0]
                     and 0 <= current[1] + db < boundary.shape[1]
                     and boundary[current[0] + da, current[1] + db]
                     and (current[0] + da, current[1] + db) not in visited), None)
        if step is None:
            break
        current = step
        walk[current] = 1
        visited.add(current)
    return walk


_DRAW = {"centerline": _centerline, "random": _random_line, "boundary": _boundary_walk}


def simulate_scribble(error: np.ndarray, shape: str) -> Points | None:
    """The organisers' scribble on `error` (`[z, y, x]`): (x, y, z) points in their order;
    None when `error` is empty (their function then returns a tuple too short to unpack)."""
    if shape not in _DRAW:
        raise ValueError(f"scribble shape {shape!r}: use one of {SCRIBBLE_SHAPES}")
    found = largest_slice_component(error)
    if found is None:
        return None
    z, region = found
    drawn = _DRAW[shape](region)
    return [(int(x), int(y), z) for x, y in np.argwhere(drawn)]


def organisers_scribble(truth: np.ndarray, prediction: np.ndarray, shape: str,
                        empty_error_fails: bool = True) -> tuple[str, Points] | None:
    """("tumour" | "background", points) of the next correction of `prediction` (`[z, y, x]`).

    Both errors get a scribble; the background one is given when it has more voxels than
    the tumour one. None when the organisers' loop fails the iteration: the under- or the
    over-segmentation is empty (`empty_error_fails`, their quirk). Without the quirk an empty
    error leaves the scribble to the other, and None means no error at all.
    """
    truth, prediction = np.asarray(truth) != 0, np.asarray(prediction) != 0
    background = simulate_scribble(prediction & ~truth, shape)
    tumour = simulate_scribble(truth & ~prediction, shape)
    if background is None or tumour is None:
        if empty_error_fails or (background is None and tumour is None):
            return None
        return ("tumour", tumour) if background is None else ("background", background)  # type: ignore[return-value]
    return ("tumour", tumour) if len(background) <= len(tumour) else ("background", background)
