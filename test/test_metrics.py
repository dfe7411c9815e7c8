"""The challenge metrics on masks whose answers are known by construction, and agreement
with a reference written from the organisers' definitions on random masks."""

from __future__ import annotations

import math

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from petseg.evaluation.metrics import (
    CaseMetrics,
    case_metrics,
    dice,
    false_negative_volume,
    false_positive_volume,
    lesion_detection,
    match_components,
    voxel_volume_ml,
)

ISO2 = (2.0, 2.0, 2.0)  # 0.008 ml per voxel
V2 = 0.008


def _mask(shape=(8, 9, 10)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


# ----------------------------------------------------------------- known by construction


def test_edge_neighbours_are_one_lesion_under_18_but_two_under_6() -> None:
    truth = _mask()
    truth[2, 3, 3] = 1
    truth[2, 4, 4] = 1  # shares an edge (differs in y and x) with the first voxel
    assert cc3d.connected_components(truth, connectivity=6, return_N=True)[1] == 2
    pred = _mask()
    pred[2, 3, 3] = 1  # touches only the first voxel

    m = case_metrics(truth, pred, ISO2)
    assert m.n_true_lesions == 1
    assert m.detected == 1 and m.missed == 0
    assert m.fnv_ml == 0.0  # under 6-connectivity the untouched voxel would count 0.008 ml
    assert m.fpv_ml == 0.0
    assert m.dsc == pytest.approx(2 * 1 / 3)


def test_corner_neighbours_are_two_lesions_under_18() -> None:
    truth = _mask()
    truth[2, 3, 3] = 1
    truth[3, 4, 4] = 1  # shares only a corner: a separate lesion under 18-connectivity
    pred = _mask()
    pred[2, 3, 3] = 1

    m = case_metrics(truth, pred, ISO2)
    assert m.n_true_lesions == 2
    assert (m.detected, m.missed) == (1, 1)
    assert m.fnv_ml == pytest.approx(V2)
    assert m.sensitivity == 0.5


def test_prediction_touching_a_lesion_by_one_voxel_is_neither_fp_nor_fn() -> None:
    truth = _mask((12, 12, 12))
    truth[2:5, 2:5, 2:5] = 1  # 27 voxels
    pred = _mask((12, 12, 12))
    pred[4, 4, 4:9] = 1  # 5 voxels, only (4, 4, 4) inside the lesion
    pred[4:7, 4, 8] = 1  # continues the line: one component of 7 voxels
    assert int((truth & pred).sum()) == 1

    m = case_metrics(truth, pred, ISO2)
    assert m.fpv_ml == 0.0
    assert m.fnv_ml == 0.0
    assert (m.n_true_lesions, m.n_pred_lesions, m.detected, m.fp_lesions) == (1, 1, 1, 0)
    assert m.dsc == pytest.approx(2 * 1 / (27 + 7))
    assert m.precision == 1.0 and m.f1 == 1.0
    assert m.tmtv_true_ml == pytest.approx(27 * V2)
    assert m.tmtv_pred_ml == pytest.approx(7 * V2)
    assert m.tmtv_diff_ml == pytest.approx(-20 * V2)


def test_empty_truth_counts_every_prediction_as_false_positive() -> None:
    truth = _mask()
    pred = _mask()
    pred[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred[6, 7, 8] = 1  # 1 voxel, far away

    m = case_metrics(truth, pred, ISO2)
    assert m.dsc == 0.0
    assert m.fpv_ml == pytest.approx(9 * V2)
    assert m.fnv_ml == 0.0
    assert (m.n_true_lesions, m.n_pred_lesions, m.fp_lesions) == (0, 2, 2)
    assert math.isnan(m.sensitivity)
    assert m.precision == 0.0
    assert math.isnan(m.f1)
    assert not m.has_lesions


def test_both_empty_gives_nan_dice_and_zero_volumes() -> None:
    m = case_metrics(_mask(), _mask(), ISO2)
    assert math.isnan(m.dsc)
    assert math.isnan(dice(_mask(), _mask()))
    assert (m.fpv_ml, m.fnv_ml, m.tmtv_true_ml, m.tmtv_pred_ml) == (0.0, 0.0, 0.0, 0.0)
    assert (m.n_true_lesions, m.n_pred_lesions, m.detected, m.missed, m.fp_lesions) == (
        0, 0, 0, 0, 0,
    )


def test_empty_prediction_misses_every_lesion() -> None:
    truth = _mask()
    truth[1:3, 1:3, 1:4] = 1  # 12 voxels
    truth[6, 6:8, 8] = 1  # 2 voxels
    m = case_metrics(truth, _mask(), ISO2)
    assert m.dsc == 0.0
    assert m.fnv_ml == pytest.approx(14 * V2)
    assert m.fpv_ml == 0.0
    assert (m.detected, m.missed, m.fp_lesions) == (0, 2, 0)
    assert m.sensitivity == 0.0
    assert math.isnan(m.precision)


def test_anisotropic_spacing_scales_the_volumes() -> None:
    truth = _mask()
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels, missed
    pred = _mask()
    pred[5:7, 6, 6:9] = 1  # 6 voxels, false positive
    spacing = (2.0364, 2.0364, 3.0)  # x, y, z as SimpleITK reports it
    voxel = 2.0364 * 2.0364 * 3.0 / 1000.0
    assert voxel_volume_ml(spacing) == pytest.approx(voxel)

    iso = case_metrics(truth, pred, ISO2)
    aniso = case_metrics(truth, pred, spacing)
    assert iso.fpv_ml == pytest.approx(6 * V2)
    assert aniso.fpv_ml == pytest.approx(6 * voxel)
    assert aniso.fnv_ml == pytest.approx(8 * voxel)
    assert aniso.tmtv_true_ml == pytest.approx(8 * voxel)
    assert aniso.fpv_ml / iso.fpv_ml == pytest.approx(voxel / V2)
    assert aniso.dsc == iso.dsc == 0.0


def test_lesions_on_the_volume_border_and_label_values() -> None:
    truth = _mask((5, 6, 7))
    truth[0, 0, 0:2] = 1
    truth[4, 5, 6] = 2  # label 2 counts as foreground
    pred = np.zeros((5, 6, 7), dtype=bool)
    pred[0, 0, 1] = True
    pred[4, 0, 6] = True

    m = case_metrics(truth, pred, (1.0, 1.0, 1.0))
    assert (m.n_true_lesions, m.detected, m.missed, m.fp_lesions) == (2, 1, 1, 1)
    assert m.fnv_ml == pytest.approx(0.001)
    assert m.fpv_ml == pytest.approx(0.001)


def test_single_functions_agree_with_case_metrics() -> None:
    truth = _mask()
    truth[1:4, 1:4, 1:4] = 1
    truth[6, 7, 7:9] = 1
    pred = _mask()
    pred[2:5, 2:5, 2:5] = 1
    pred[7, 1, 1] = 1
    m = case_metrics(truth, pred, ISO2)
    assert dice(truth, pred) == m.dsc == pytest.approx(2 * 8 / (29 + 28))
    assert false_positive_volume(truth, pred, V2) == m.fpv_ml == pytest.approx(V2)
    assert false_negative_volume(truth, pred, V2) == m.fnv_ml == pytest.approx(2 * V2)
    det = lesion_detection(truth, pred)
    assert (det.detected, det.missed, det.fp_lesions) == (m.detected, m.missed, m.fp_lesions)
    assert (det.detected, det.missed, det.fp_lesions) == (1, 1, 1)
    assert m.f1 == pytest.approx(0.5)
    assert list(m.as_dict()) == [f.name for f in CaseMetrics.__dataclass_fields__.values()]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        case_metrics(_mask((4, 4, 4)), _mask((4, 4, 5)), ISO2)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(_mask(), _mask(), (2.0, 2.0))
    with pytest.raises(ValueError, match="spacing"):
        voxel_volume_ml((2.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="3D"):
        match_components(np.zeros((4, 4)), np.zeros((4, 4)))


# ----------------------------------------------------- reference from the definitions

STRUCTURE_18 = ndimage.generate_binary_structure(3, 2)  # faces + edges, no corners


def _reference(truth: np.ndarray, pred: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The organisers' definitions, one component at a time, with scipy's labelling."""
    g = truth.astype(bool)
    p = pred.astype(bool)
    g_lab, n_g = ndimage.label(g, structure=STRUCTURE_18)
    p_lab, n_p = ndimage.label(p, structure=STRUCTURE_18)
    fp = fn = 0
    fp_lesions = detected = 0
    for idx in range(1, n_p + 1):
        component = p_lab == idx
        if not (component & g).any():
            fp += int(component.sum())
            fp_lesions += 1
    for idx in range(1, n_g + 1):
        component = g_lab == idx
        if (component & p).any():
            detected += 1
        else:
            fn += int(component.sum())
    denominator = g.sum() + p.sum()
    return {
        "dsc": float("nan") if denominator == 0 else 2 * (g & p).sum() / denominator,
        "fpv_ml": fp * voxel_ml,
        "fnv_ml": fn * voxel_ml,
        "n_true_lesions": n_g,
        "n_pred_lesions": n_p,
        "detected": detected,
        "fp_lesions": fp_lesions,
        "tmtv_true_ml": g.sum() * voxel_ml,
        "tmtv_pred_ml": p.sum() * voxel_ml,
    }


def _random_lesions(rng: np.random.Generator, shape, density: float) -> np.ndarray:
    """Blobby random lesions of varied size plus isolated voxels."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=1.2)
    blobs = noise > np.quantile(noise, 1.0 - density)
    speckle = rng.random(shape) < density / 20
    return (blobs | speckle).astype(np.uint8)


@pytest.mark.parametrize(("seed", "density"), [(s, 0.03) for s in range(6)] + [(6, 0.3)])
def test_agrees_with_reference_on_random_masks(seed: int, density: float) -> None:
    # density 0.03 takes the sparse counting path, 0.3 the dense one.
    rng = np.random.default_rng(seed)
    shape = (24, 28, 32)
    truth = _random_lesions(rng, shape, density=density)
    if seed == 0:
        truth[:] = 0  # a negative case
    # A prediction that overlaps part of the truth, misses some and adds its own blobs.
    pred = (truth.astype(bool) & (rng.random(shape) < 0.3)) | _random_lesions(
        rng, shape, density=density * 2 / 3
    ).astype(bool)
    spacing = (2.0364, 2.0364, 3.0)
    voxel = voxel_volume_ml(spacing)

    ref = _reference(truth, pred, voxel)
    m = case_metrics(truth, pred, spacing)
    assert ref["n_pred_lesions"] > 5 and (seed == 0 or ref["n_true_lesions"] > 5)
    assert ref["fp_lesions"] > 0
    got = m.as_dict()
    for key, expected in ref.items():
        assert got[key] == pytest.approx(expected, rel=1e-12, abs=1e-12), key
    assert m.missed == ref["n_true_lesions"] - ref["detected"]
