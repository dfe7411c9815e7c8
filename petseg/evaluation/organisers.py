"""The interactive challenges' scores as the organisers compute them.

- autoPET IV (lab-midas/autoPETCTIV, `evaluation_metrics/evaluation_metrics.py`): DSC, FPV
  and FNV per step. Their rules differ from the 2023 script (`petseg.evaluation.metrics`) in
  two places: DSC is NaN whenever the truth is empty (2023: only when both masks are), and
  FNV is NaN when the truth is empty (2023: 0), so a lesion-free case drops out of both
  means. The voxel volume is the product of the NIfTI header's float32 voxel sizes, computed
  in float32 (their `pixdim[1] * pixdim[2] * pixdim[3] / 1000`).
- autoPET V (the autoPETV repository, `interactive/interactive_loop.py` and `metrics.py`):
  Dice with 1 for an empty prediction of an empty truth (0 for any other prediction of it),
  and DMM, the lesion-level F1: 18-connected components, a true lesion is found when a
  predicted component overlaps it with IoU >= 0.1, a predicted component is a false
  positive when it reaches IoU 0.1 with no true lesion; F1 = 2 TP / (2 TP + FP + FN), 0
  without a found lesion, NaN for a lesion-free truth.

Masks are numpy `[z, y, x]` (non-zero: foreground); voxel sizes in mm, (x, y, z).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cc3d
import numpy as np

from petseg.evaluation.metrics import CONNECTIVITY, _as_mask, _bounding_box, match_components

DMM_IOU = 0.1
"""IoU at which a predicted component and a true lesion match (autoPET V's DMM)."""


def header_voxel_ml(spacing_mm: Sequence[float]) -> float:
    """Voxel volume in ml as the autoPET IV script computes it: float32 voxel sizes (a
    NIfTI header's) multiplied and divided by 1000 in float32."""
    sx, sy, sz = (np.float32(s) for s in spacing_mm)
    return float(sx * sy * sz / np.float32(1000))


def autopet_iv_scores(truth: Any, pred: Any, spacing_mm: Sequence[float]
                      ) -> tuple[float, float, float]:
    """(DSC, FPV ml, FNV ml) of one step by the autoPET IV rules (NaN DSC and FNV for a
    lesion-free truth; FPV 0 for an empty prediction)."""
    truth, pred = _as_mask(truth), _as_mask(pred)
    match = match_components(truth, pred)
    voxel_ml = header_voxel_ml(spacing_mm)
    fpv = match.fp_voxels * voxel_ml
    if match.truth_voxels == 0:
        return math.nan, fpv, math.nan
    dsc = 2.0 * match.intersection_voxels / (match.truth_voxels + match.pred_voxels)
    return dsc, fpv, match.fn_voxels * voxel_ml


def autopet_v_dice(truth: Any, pred: Any) -> float:
    """Dice of autoPET V: 2|G n P| / (|G| + |P|), 1 when both masks are empty."""
    truth, pred = _as_mask(truth), _as_mask(pred)
    total = int(np.count_nonzero(truth)) + int(np.count_nonzero(pred))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(truth & pred)) / total


def lesion_f1(truth: Any, pred: Any, iou: float = DMM_IOU) -> float:
    """autoPET V's DMM: the lesion-level F1 at component IoU >= `iou` (18-connected).

    Returns:
        2 TP / (2 TP + FP + FN); 0.0 when no true lesion is matched; NaN for an empty truth.
    """
    truth, pred = _as_mask(truth), _as_mask(pred)
    box = _bounding_box(truth | pred)
    if box is None or not truth.any():
        return math.nan
    truth_labels, n_truth = cc3d.connected_components(truth[box], connectivity=CONNECTIVITY,
                                                      return_N=True)
    pred_labels, n_pred = cc3d.connected_components(pred[box], connectivity=CONNECTIVITY,
                                                    return_N=True)
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    both = (truth_labels > 0) & (pred_labels > 0)
    pairs = truth_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    codes, overlap = np.unique(pairs, return_counts=True)
    true_ids, pred_ids = codes // (n_pred + 1), codes % (n_pred + 1)
    union = truth_sizes[true_ids] + pred_sizes[pred_ids] - overlap
    matched = overlap / union >= iou
    tp = len(set(true_ids[matched].tolist()))
    fp = n_pred - len(set(pred_ids[matched].tolist()))
    fn = n_truth - tp
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
