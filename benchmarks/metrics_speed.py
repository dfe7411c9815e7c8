"""Speed of the challenge metrics on a full-size autoPET pair (400 x 400 x 326 voxels).

Compares `petseg.evaluation.metrics.case_metrics` (components labelled once on the bounding box of
both masks, overlaps read from the labels) with the stock way of the organisers'
evaluation script (lab-midas/autoPET:val_script.py): label with cc3d, then one full-volume
mask per component to test its overlap and count its voxels. Both run in this process on
the same masks, and their results are checked to agree. Also times the whole case from
compressed .mha files (reading included), as `petseg evaluate` does it.

    python benchmarks/metrics_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cc3d
import numpy as np

from petseg.evaluation.metrics import case_metrics, voxel_volume_ml
from petseg.evaluation.pairing import evaluate_case
from petseg.io.geometry import LAS_DIRECTION, Geometry
from petseg.io.images import write_image

SIZE_XYZ = (400, 400, 326)
SPACING = (2.0364, 2.0364, 3.0)
TARGET_S = 2.0


def _balls(shape: tuple[int, int, int], n: int, radius: tuple[int, int], seed: int) -> np.ndarray:
    """`n` random balls (radius in voxels) inside the body region of a [z, y, x] volume."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        r = int(rng.integers(*radius))
        centre = rng.integers([r + 10, 120, 100], [shape[0] - r - 10, 280, 300])
        box = tuple(slice(c - r, c + r + 1) for c in centre)
        zz, yy, xx = np.ogrid[box]
        mask[box] |= (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r
    return mask


def make_pair() -> tuple[np.ndarray, np.ndarray]:
    """Truth with 30 lesions; a prediction that finds most of them, misses some, adds 25 FPs."""
    shape = SIZE_XYZ[::-1]
    truth = _balls(shape, 30, (2, 14), seed=1)
    rng = np.random.default_rng(2)
    found = cc3d.connected_components(truth, connectivity=18)
    keep = np.isin(found, rng.choice(np.arange(1, found.max() + 1), size=found.max() * 3 // 4,
                                     replace=False))
    pred = (keep & (rng.random(shape, dtype=np.float32) < 0.9)) | _balls(shape, 25, (2, 10), 3)
    pred |= _balls(shape, 1, (30, 31), seed=4)  # a bladder-sized false positive
    return truth.astype(np.uint8), pred.astype(np.uint8)


def stock_metrics(truth: np.ndarray, pred: np.ndarray, voxel_ml: float) -> tuple[float, ...]:
    """DSC, FPV, FNV as the organisers' script computes them: one mask per component."""
    pred_cc = cc3d.connected_components(pred, connectivity=18)
    fp = 0
    for idx in range(1, int(pred_cc.max()) + 1):
        component = np.isin(pred_cc, idx)
        if (component * truth).sum() == 0:
            fp += component.sum()
    truth_cc = cc3d.connected_components(truth, connectivity=18)
    fn = 0
    for idx in range(1, int(truth_cc.max()) + 1):
        component = np.isin(truth_cc, idx)
        if (component * pred).sum() == 0:
            fn += component.sum()
    dsc = 2 * (truth * pred).sum() / (truth.sum() + pred.sum())
    return float(dsc), fp * voxel_ml, fn * voxel_ml


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time in s over `repeat` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median)")
    args = parser.parse_args()

    truth, pred = make_pair()
    voxel_ml = voxel_volume_ml(SPACING)
    t_ours, ours = timed(lambda: case_metrics(truth, pred, SPACING), args.repeat)
    t_stock, stock = timed(lambda: stock_metrics(truth, pred, voxel_ml), 1)
    got = (ours.dsc, ours.fpv_ml, ours.fnv_ml)
    if not np.allclose(got, stock, rtol=1e-12, atol=1e-12):
        raise SystemExit(f"results differ: petseg {got} vs stock {stock}")

    geometry = Geometry(SIZE_XYZ, SPACING, (407.0, -407.0, -975.0), LAS_DIRECTION)
    with tempfile.TemporaryDirectory() as tmp:
        truth_path = write_image(geometry.image_from_array(truth), Path(tmp) / "truth.mha")
        pred_path = write_image(geometry.image_from_array(pred), Path(tmp) / "pred.mha")
        t_file, from_file = timed(lambda: evaluate_case(pred_path, truth_path), args.repeat)
    if from_file != ours:
        raise SystemExit("metrics from the .mha files differ from the in-memory ones")

    print(f"pair {SIZE_XYZ[0]} x {SIZE_XYZ[1]} x {SIZE_XYZ[2]} voxels, spacing {SPACING} mm; "
          f"{ours.n_true_lesions} true lesions, {ours.n_pred_lesions} predicted components")
    print(f"values: DSC {ours.dsc:.4f}  FPV {ours.fpv_ml:.2f} ml  FNV {ours.fnv_ml:.2f} ml  "
          f"(detected {ours.detected}, missed {ours.missed}, FP lesions {ours.fp_lesions}); "
          "stock way agrees")
    print(f"stock (organisers' per-component loop): {t_stock:8.3f} s")
    print(f"petseg.evaluation.metrics.case_metrics (arrays):   {t_ours:8.3f} s   "
          f"speed-up x{t_stock / t_ours:.1f}")
    print(f"evaluate_case from .mha (read + check): {t_file:8.3f} s   "
          f"target < {TARGET_S:.0f} s: {'met' if t_file < TARGET_S else 'MISSED'}")


if __name__ == "__main__":
    main()
