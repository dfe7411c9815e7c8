"""autoPET V scribble simulation: one corrective scribble per step over the largest error.

After a prediction, the errors are the missed lesion voxels (truth and not prediction) and
the over-segmented ones (prediction and not truth). The scribble goes to the largest
connected error component (26-connectivity): a tumour scribble when it was missed, a
background scribble when it was over-segmented. It is drawn on one axial slice, the one
holding most of that component, inside the component's cross-section, in one of three
shapes:

- "centre_line": the longest straight line through the cross-section's centroid along its
  principal axis, kept where it lies inside;
- "random": a random 8-connected walk inside the cross-section;
- "boundary": the cross-section's contour (voxels with a 4-neighbour outside).

Scribbles are delivered as their voxels, as many points of the click file's schema.
Arrays are numpy `[z, y, x]`; points are voxel indices in that order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from petseg.interactive.simulate import label_components

SCRIBBLE_SHAPES: tuple[str, ...] = ("centre_line", "random", "boundary")


@dataclasses.dataclass(frozen=True)
class Scribble:
    """One simulated scribble.

    Attributes:
        kind: "tumour" (on missed lesion) or "background" (on over-segmentation).
        shape: one of `SCRIBBLE_SHAPES`.
        points: `[n, 3]` voxel indices `[z, y, x]`, all inside the error it corrects.
        error_voxels: size of the error component it was drawn on.
    """

    kind: str
    shape: str
    points: np.ndarray
    error_voxels: int


def largest_error(truth: np.ndarray, prediction: np.ndarray) -> tuple[str, np.ndarray] | None:
    """("tumour" | "background", mask of the largest error component), None without error."""
    truth, prediction = np.asarray(truth) != 0, np.asarray(prediction) != 0
    best: tuple[int, str, np.ndarray] | None = None
    for kind, error in (("tumour", truth & ~prediction), ("background", prediction & ~truth)):
        if not error.any():
            continue
        labels, counts, _ = label_components(error)
        label = int(np.argmax(counts[1:])) + 1
        if best is None or counts[label] > best[0]:
            best = (int(counts[label]), kind, labels == label)
    return None if best is None else (best[1], best[2])


def _centre_line(region: np.ndarray) -> np.ndarray:
    """`[n, 2]` voxels of the principal-axis line through the centroid, inside `region`."""
    points = np.argwhere(region).astype(float)
    centre = points.mean(axis=0)
    if len(points) < 2:
        return np.argwhere(region)
    _, _, vectors = np.linalg.svd(points - centre, full_matrices=False)
    axis = vectors[0]
    reach = np.abs((points - centre) @ axis).max() + 1.0
    steps = np.arange(-reach, reach + 0.5, 0.5)
    line = np.unique(np.rint(centre + steps[:, None] * axis).astype(int), axis=0)
    inside = (line >= 0).all(axis=1) & (line < region.shape).all(axis=1)
    line = line[inside]
    line = line[region[line[:, 0], line[:, 1]]]
    return line if len(line) else np.rint(centre[None]).astype(int)


def _random_walk(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`[n, 2]` voxels of a random 8-connected walk inside `region` (length ~3 sqrt(area))."""
    cells = np.argwhere(region)
    position = cells[rng.integers(len(cells))]
    length = max(1, int(3 * np.sqrt(len(cells))))
    moves = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)])
    visited = [tuple(position)]
    for _ in range(length):
        nxt = position + moves
        ok = (nxt >= 0).all(axis=1) & (nxt < region.shape).all(axis=1)
        nxt = nxt[ok]
        nxt = nxt[region[nxt[:, 0], nxt[:, 1]]]
        if len(nxt) == 0:
            break
        position = nxt[rng.integers(len(nxt))]
        visited.append(tuple(position))
    return np.unique(np.asarray(visited), axis=0)


def _boundary(region: np.ndarray) -> np.ndarray:
    """`[n, 2]` voxels of `region` with a 4-neighbour outside it (the image edge counts)."""
    inner = ndimage.binary_erosion(region, structure=ndimage.generate_binary_structure(2, 1),
                                   border_value=0)
    return np.argwhere(region & ~inner)


def draw_scribble(error: np.ndarray, kind: str, shape: str,
                  rng: np.random.Generator) -> Scribble:
    """A scribble of `shape` on the axial slice holding most of the `error` mask `[z, y, x]`."""
    if shape not in SCRIBBLE_SHAPES:
        raise ValueError(f"scribble shape {shape!r}: use one of {SCRIBBLE_SHAPES}")
    z = int(np.argmax(error.reshape(error.shape[0], -1).sum(axis=1)))
    region = error[z]
    if shape == "centre_line":
        drawn = _centre_line(region)
    elif shape == "random":
        drawn = _random_walk(region, rng)
    else:
        drawn = _boundary(region)
    points = np.column_stack([np.full(len(drawn), z), drawn]).astype(int)
    return Scribble(kind=kind, shape=shape, points=points, error_voxels=int(error.sum()))


def next_scribble(truth: np.ndarray, prediction: np.ndarray, rng: np.random.Generator,
                  shape: str | None = None) -> Scribble | None:
    """The corrective scribble for `prediction` against `truth` (both `[z, y, x]`): on the
    largest error, in `shape` (None: drawn at random from `SCRIBBLE_SHAPES` with `rng`);
    None when the prediction has no error."""
    found = largest_error(truth, prediction)
    if found is None:
        return None
    if shape is None:
        shape = SCRIBBLE_SHAPES[int(rng.integers(len(SCRIBBLE_SHAPES)))]
    kind, error = found
    return draw_scribble(error, kind, shape, rng)
