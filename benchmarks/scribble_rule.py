"""A 2,000-point scribble through the click rule: one region per stroke against one region
per point (how the rule treated a scribble before strokes), in one run.

A full-size phantom with lesions (`petseg.phantom.generate_case(seed, "full")`, PET 400 x
400 x ~327); the mask is its largest lesion eroded by two voxels (a network that missed
the border); the scribble is 2,000 points painted over the missed border and up to two
voxels beyond, on every slice of the lesion, as the organisers' platform delivers a
scribble (points of one name). Prints seconds (median of `--repeat`), the ratio per point /
per stroke, the number of labellings each way, and the volume each adds.

    python benchmarks/scribble_rule.py [--seed 3] [--points 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cc3d
import numpy as np
import SimpleITK as sitk
from common import print_table
from scipy import ndimage

from petseg.interactive import rule
from petseg.interactive.clicks import Clicks
from petseg.phantom import generate_case


def scribble_case(seed: int, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(SUV, mask, scribble `[n, 3]` (z, y, x), spacing (x, y, z)) of the phantom `seed`."""
    case = generate_case(seed, "full", cohort="LUNG_CANCER")
    suv = sitk.GetArrayFromImage(case.pet)
    labels = cc3d.connected_components(sitk.GetArrayFromImage(case.seg) > 0, connectivity=18)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    core = ndimage.binary_erosion(largest, iterations=2)
    paint = np.argwhere(ndimage.binary_dilation(largest, iterations=2) & ~core)
    chosen = paint[np.random.default_rng(seed).permutation(len(paint))[:points]]
    return suv, core.astype(np.uint8), chosen, case.pet.GetSpacing()


def per_point(mask: np.ndarray, suv: np.ndarray, scribble: np.ndarray,
              spacing_xyz: tuple) -> np.ndarray:
    """Each point outside the mask grows its own region (the rule without strokes)."""
    out = mask.copy()
    spacing = np.asarray(spacing_xyz, float)[::-1]
    for point in scribble:
        if not out[tuple(point)]:
            found = rule.stroke_region(suv, point, spacing)
            out[found.box] |= found.region.astype(np.uint8)
    return out


def timed(function, repeat: int) -> tuple[float, int, np.ndarray]:
    """(median seconds, labellings per run, the result) of `function()`."""
    label = rule.cc3d.connected_components
    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return label(*args, **kwargs)

    rule.cc3d.connected_components = counted
    try:
        seconds = []
        for _ in range(repeat):
            count[0] = 0
            started = time.perf_counter()
            result = function()
            seconds.append(time.perf_counter() - started)
    finally:
        rule.cc3d.connected_components = label
    return statistics.median(seconds), count[0], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    suv, mask, scribble, spacing = scribble_case(args.seed, args.points)
    voxel_ml = float(np.prod(spacing)) / 1000
    clicks = Clicks(tumour=tuple(tuple(int(v) for v in p[::-1]) for p in scribble))
    stroke_s, stroke_labels, by_stroke = timed(
        lambda: rule.apply_click_rule(mask, suv, clicks, spacing), args.repeat)
    point_s, point_labels, by_point = timed(
        lambda: per_point(mask, suv, scribble, spacing), args.repeat)
    print(f"{len(scribble)} points, {len(rule.strokes(scribble))} stroke(s), mask "
          f"{mask.sum() * voxel_ml:.1f} ml, PET {suv.shape[::-1]}")
    print_table(["way", "seconds", "labellings", "added ml"], [
        ["one region per point", f"{point_s:.2f}", point_labels,
         f"{(by_point.sum() - mask.sum()) * voxel_ml:.1f}"],
        ["one region per stroke", f"{stroke_s:.3f}", stroke_labels,
         f"{(by_stroke.sum() - mask.sum()) * voxel_ml:.1f}"],
        ["ratio per point / per stroke", f"{point_s / stroke_s:.0f}", "", ""]])


if __name__ == "__main__":
    main()
