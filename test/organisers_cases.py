"""Five small synthetic cases and a deterministic stand-in segmenter, shared by the protocol
tests and the script that recorded the organisers' figures on them (test/fixtures/README.md).

Everything is integer arithmetic (no random generator, no transcendental functions), so the
cases are the same bit for bit on any machine and numpy version. Arrays are numpy
`[z, y, x]` as SimpleITK gives them; points are voxel indices (x, y, z) as a click file.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from scipy import ndimage

SHAPE_ZYX = (40, 48, 56)
SPACING_XYZ = (2.0364, 2.0364, 3.0)
POINT_RADIUS = 2
"""Voxels: a tumour point adds the lesion voxels within this radius, a background point
removes every predicted voxel within it."""


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
    """One case: ball lesions and hot spots as (centre `[z, y, x]`, radius in voxels).

    Attributes:
        missed: indices of `lesions` the stand-in segmenter misses without points.
        false_positives: balls the segmenter adds outside the lesions without points.
        hot: balls of high non-lesion uptake (peaked at the centre); radius 0 is one voxel.
    """

    name: str
    lesions: tuple[tuple[tuple[int, int, int], int], ...]
    hot: tuple[tuple[tuple[int, int, int], int], ...]
    missed: tuple[int, ...] = ()
    false_positives: tuple[tuple[tuple[int, int, int], int], ...] = ()


CASES: tuple[SyntheticCase, ...] = (
    SyntheticCase("case_a", lesions=(((10, 12, 14), 5), ((28, 30, 40), 3), ((20, 38, 12), 2)),
                  hot=(((6, 38, 46), 5), ((32, 9, 9), 4)), missed=(2,),
                  false_positives=(((30, 10, 30), 3),)),
    SyntheticCase("case_b",
                  lesions=tuple(((5 + (7 * i) % 30, 6 + (11 * i) % 36, 5 + 4 * i), 1 + i % 2)
                                for i in range(12)),
                  hot=(((20, 40, 48), 4), ((8, 40, 10), 3), ((34, 6, 50), 3)), missed=(0, 5),
                  false_positives=(((30, 40, 30), 4), ((12, 36, 44), 2))),
    SyntheticCase("case_c", lesions=(), hot=(((20, 24, 28), 5),),
                  false_positives=(((10, 10, 10), 3),)),
    SyntheticCase("case_d", lesions=(((18, 22, 26), 4),),
                  hot=(((6, 6, 6), 0), ((34, 40, 50), 0), ((30, 10, 44), 4))),
    SyntheticCase("case_e", lesions=(), hot=(((10, 30, 20), 4), ((30, 12, 40), 3))),
)


def ball(centre: tuple[int, int, int], radius: int) -> np.ndarray:
    """Bool `[z, y, x]` ball of integer `radius` (voxels) around `centre`."""
    grid = np.ogrid[tuple(slice(0, s) for s in SHAPE_ZYX)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


def truth_of(case: SyntheticCase) -> np.ndarray:
    """uint8 lesion mask `[z, y, x]`."""
    truth = np.zeros(SHAPE_ZYX, bool)
    for centre, radius in case.lesions:
        truth |= ball(centre, radius)
    return truth.astype(np.uint8)


def pet_of(case: SyntheticCase) -> np.ndarray:
    """float32 SUV `[z, y, x]`: 1 plus a hashed texture in [0, 0.25), lesions 6 + depth,
    hot spots 10 + depth (a one-voxel hot spot 20)."""
    z, y, x = np.indices(SHAPE_ZYX, dtype=np.int64)
    texture = ((x * 73856093) ^ (y * 19349663) ^ (z * 83492791)) % 1000
    pet = 1.0 + texture / 4000.0
    truth = truth_of(case) > 0
    pet[truth] = 6.0 + ndimage.distance_transform_cdt(truth, metric="taxicab")[truth]
    for centre, radius in case.hot:
        spot = ball(centre, radius) & ~truth
        if radius == 0:
            pet[spot] = 20.0
            continue
        pet[spot] = 10.0 + ndimage.distance_transform_cdt(spot, metric="taxicab")[spot]
    return pet.astype(np.float32)


def segment(case: SyntheticCase, tumour: list, background: list) -> np.ndarray:
    """The stand-in segmenter: uint8 mask `[z, y, x]` from the case and the points so far,
    (x, y, z) each. Without points: the lesions eroded by one voxel (face neighbours), the
    `missed` ones left out, the `false_positives` added. Each tumour point then adds the
    lesion voxels within `POINT_RADIUS`, each background point removes every voxel within it.
    """
    truth = truth_of(case) > 0
    labels, _ = ndimage.label(truth)
    mask = ndimage.binary_erosion(truth)
    for index in case.missed:
        centre = case.lesions[index][0]
        mask &= labels != labels[centre]
    for centre, radius in case.false_positives:
        mask |= ball(centre, radius) & ~truth
    for x, y, z in tumour:
        mask |= ball((z, y, x), POINT_RADIUS) & truth
    for x, y, z in background:
        mask &= ~ball((z, y, x), POINT_RADIUS)
    return mask.astype(np.uint8)


def iv_prediction(case: SyntheticCase, tumour: list, background: list, step: int) -> np.ndarray:
    """Step `step`'s mask of the autoPET IV protocol: `segment` with the first `step` clicks."""
    return segment(case, list(tumour[:step]), list(background[:step]))


def digest(array: np.ndarray) -> str:
    """sha256 of the array's bytes (C order), to check a regenerated input."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
