"""The interactive protocols on cases with truth, with a segmenter that honours clicks
exactly: the expected curves are known voxel by voxel."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from petseg.interactive.clicks import Clicks
from petseg.interactive.evaluation import (
    EvaluationCase,
    autopet_iv_steps,
    autopet_v_steps,
    curve_area,
    evaluate_interactive,
    summarise,
)
from petseg.io.geometry import LAS_DIRECTION

SHAPE_ZYX = (30, 36, 40)
SPACING = (2.0364, 2.0364, 3.0)
LESIONS = (((8, 10, 12), 3), ((20, 24, 28), 2), ((22, 8, 30), 2))
HOT = ((6, 28, 8), 3)


def ball(centre, radius) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in SHAPE_ZYX)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


def image(array: np.ndarray) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(SPACING)
    result.SetOrigin((10.0, -20.0, 30.0))
    result.SetDirection(LAS_DIRECTION)
    return result


def make_case(name: str = "case") -> EvaluationCase:
    truth = np.zeros(SHAPE_ZYX, bool)
    for centre, radius in LESIONS:
        truth |= ball(centre, radius)
    hot = ball(*HOT)
    depth = ndimage.distance_transform_edt(truth | hot)
    pet = np.where(truth | hot, 5.0 + depth, 1.0).astype(np.float32)
    return EvaluationCase(name=name, pet=image(pet), ct=image(body_ct()), truth=truth)


def body_ct() -> np.ndarray:
    """HU `[z, y, x]`: air around a soft-tissue cylinder along z with a bone rod inside."""
    _, y, x = np.indices(SHAPE_ZYX)
    centre_y, centre_x = (SHAPE_ZYX[1] - 1) / 2, (SHAPE_ZYX[2] - 1) / 2
    radius = np.hypot(y - centre_y, x - centre_x)
    ct = np.where(radius <= 0.45 * min(SHAPE_ZYX[1:]), 40.0, -1000.0)
    return np.where(radius <= 2.0, 700.0, ct).astype(np.float32)


class ClickHonouring:
    """Predicts the hot organ (a false positive) plus every truth lesion holding a tumour
    point; a background point on a predicted component removes it."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.calls: list[Clicks | None] = []

    def __call__(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None) -> sitk.Image:
        self.calls.append(clicks)
        clicks = clicks or Clicks()
        labels, _ = ndimage.label(self.truth | ball(*HOT))
        keep = {labels[z, y, x] for x, y, z in clicks.tumour} | {labels[HOT[0]]}
        keep -= {labels[z, y, x] for x, y, z in clicks.background}
        mask = np.isin(labels, [k for k in keep if k > 0]).astype(np.uint8)
        return image(mask)


def test_curve_area_is_the_trapezoid_rule_over_steps() -> None:
    assert curve_area([0.0, 1.0, 1.0]) == pytest.approx(1.5)
    assert curve_area([0.2] * 11) == pytest.approx(2.0)
    assert curve_area([0.7]) == 0.0


def test_autopet_iv_protocol_steps_and_metrics() -> None:
    case = make_case()
    segment = ClickHonouring(case.truth)
    steps = autopet_iv_steps(case, segment)
    assert [s.step for s in steps] == list(range(11))
    assert [(s.tumour_points, s.background_points) for s in steps] == [(k, k) for k in range(11)]
    voxel_ml = np.prod(SPACING) / 1000.0
    hot_ml = ball(*HOT).sum() * voxel_ml
    lesion_ml = sorted(ball(c, r).sum() * voxel_ml for c, r in LESIONS)
    assert steps[0].dsc == 0.0 and steps[0].fpv_ml == pytest.approx(hot_ml)
    assert steps[0].fnv_ml == pytest.approx(sum(lesion_ml))
    # one background click removes the organ; three tumour clicks find the three lesions
    assert steps[1].fpv_ml == 0.0
    assert steps[3].dsc == pytest.approx(1.0) and steps[3].fnv_ml == 0.0
    assert all(s.dsc == pytest.approx(1.0) for s in steps[3:])
    assert segment.calls[0] == Clicks()  # step 0: an empty click set, the automatic case


def test_autopet_v_protocol_scribbles_over_the_errors() -> None:
    case = make_case()
    segment = ClickHonouring(case.truth)
    steps = autopet_v_steps(case, segment, shape="centre_line")
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[0].tumour_points == steps[0].background_points == 0
    assert steps[-1].dsc == pytest.approx(1.0) and steps[-1].fpv_ml == 0.0
    dsc = [s.dsc for s in steps]
    assert dsc == sorted(dsc)  # every scribble corrects the largest error, never worsens
    grown = [(s.tumour_points + s.background_points) for s in steps]
    assert all(b > a for a, b in itertools.pairwise(grown[:5]))
    first = segment.calls[1]  # the points of one scribble lie on one axial slice
    assert len({z for _, _, z in (*first.tumour, *first.background)}) == 1


def test_summary_table_csv_and_png(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    for name in ("a", "b"):
        case = make_case(name)
        folder = cases / name
        for sub, array in (("images/pet", sitk.GetArrayFromImage(case.pet)),
                           ("images/ct", sitk.GetArrayFromImage(case.ct)),
                           ("truth", case.truth.astype(np.uint8))):
            (folder / sub).mkdir(parents=True)
            uid = f"{name}-ct" if sub == "images/ct" else f"{name}-pet"
            sitk.WriteImage(image(array), str(folder / sub / f"{uid}.mha"))
    truth = make_case().truth
    summary = evaluate_interactive(cases, ClickHonouring(truth), tmp_path / "out")
    rows = {(r["protocol"], r["step"]): r for r in summary}
    assert rows[("autopet_iv", 0)]["cases"] == 2 and rows[("autopet_iv", 0)]["dsc"] == 0.0
    # the curves by hand (both cases alike): lesion balls of 123, 33 and 33 voxels, the hot
    # organ 123 voxels; the seeded IV clicks find a small lesion, then the large one, and
    # remove the organ at step 1; the V scribbles take the large lesion, the organ, then
    # the small lesions one per step
    big, small = 123, 33
    assert [int(ball(c, r).sum()) for c, r in (HOT, *LESIONS)] == [big, big, small, small]
    voxel_ml = np.prod(SPACING) / 1000.0
    hot_ml, big_ml, small_ml = big * voxel_ml, big * voxel_ml, small * voxel_ml
    truth_voxels = big + 2 * small
    iv_dsc = [0.0, 2 * small / (small + truth_voxels),
              2 * (big + small) / (big + small + truth_voxels)] + [1.0] * 8
    v_dsc = [0.0, 2 * big / (2 * big + truth_voxels), 2 * big / (big + truth_voxels),
             iv_dsc[2], 1.0, 1.0]
    expected_auc = {  # trapezoid rule, unit spacing: half the ends plus the inner values
        "autopet_iv": {"dsc": sum(iv_dsc[1:-1]) + 0.5,
                       "fpv_ml": hot_ml / 2,
                       "fnv_ml": (big_ml + 2 * small_ml) / 2 + (big_ml + small_ml) + small_ml},
        "autopet_v": {"dsc": sum(v_dsc[1:-1]) + 0.5,
                      "fpv_ml": hot_ml / 2 + hot_ml,
                      "fnv_ml": (big_ml + 2 * small_ml) / 2 + 2 * small_ml + 2 * small_ml
                      + small_ml}}
    for protocol, metrics in expected_auc.items():
        for metric, value in metrics.items():
            assert rows[(protocol, "auc")][metric] == pytest.approx(value, rel=1e-9), (
                protocol, metric)
    assert [rows[("autopet_iv", k)]["dsc"] for k in range(11)] == pytest.approx(iv_dsc)
    assert [rows[("autopet_v", k)]["dsc"] for k in range(1, 7)] == pytest.approx(v_dsc)
    with open(tmp_path / "out" / "steps.csv") as handle:
        rows_csv = list(csv.DictReader(handle))
    assert len(rows_csv) == 2 * (11 + 6) and rows_csv[0]["true_lesions"] == "3"
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert len(table) == 2 + 12 + 7
    assert table[:3] == ["| protocol | step | cases | DSC | FPV ml | FNV ml |",
                         "|---|---|---:|---:|---:|---:|",
                         "| autopet_iv | 0 | 2 | 0.000 | 1.53 | 2.35 |"]
    assert table[13] == "| autopet_iv | area under curve | 2 | 8.702 | 0.77 | 3.53 |"
    assert table[14] == "| autopet_v | 1 | 2 | 0.000 | 1.53 | 2.35 |"
    assert table[16] == "| autopet_v | 3 | 2 | 0.788 | 0.00 | 0.82 |"
    assert table[20] == "| autopet_v | area under curve | 2 | 3.758 | 2.30 | 3.23 |"
    with Image.open(tmp_path / "out" / "curves.png") as picture:
        assert picture.size[0] > 600 and picture.size[1] > 600
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # drawn, not blank


def test_summary_leaves_cases_without_lesions_out_of_the_dsc() -> None:
    case = make_case()
    empty = EvaluationCase(name="negative", pet=case.pet, ct=case.ct,
                           truth=np.zeros(SHAPE_ZYX, bool))
    blob = ball((15, 30, 30), 2).astype(np.uint8)  # a false positive no click removes
    lesion_steps = autopet_iv_steps(case, ClickHonouring(case.truth))
    negative_steps = autopet_iv_steps(empty, lambda pet, ct, clicks: image(blob))
    assert all(s.dsc == 0.0 and s.true_lesions == 0 for s in negative_steps)
    rows = {r["step"]: r for r in summarise([*lesion_steps, *negative_steps])}
    for step in (1, 3, 10):  # the negative case's DSC 0 is left out, its FPV is not
        assert rows[step]["dsc"] == pytest.approx(lesion_steps[step].dsc)
        assert rows[step]["fpv_ml"] == pytest.approx(
            (lesion_steps[step].fpv_ml + negative_steps[step].fpv_ml) / 2)
    assert rows[10]["cases"] == 2 and rows[3]["dsc"] == pytest.approx(1.0)


def write_cases(root: Path, names=("a", "b")) -> Path:
    """Cases in the grand-challenge layout with `truth/` beside `images/`."""
    for name in names:
        case = make_case(name)
        for sub, array in (("images/pet", sitk.GetArrayFromImage(case.pet)),
                           ("images/ct", sitk.GetArrayFromImage(case.ct)),
                           ("truth", case.truth.astype(np.uint8))):
            (root / name / sub).mkdir(parents=True)
            uid = f"{name}-ct" if sub == "images/ct" else f"{name}-pet"
            sitk.WriteImage(image(array), str(root / name / sub / f"{uid}.mha"))
    return root


def test_command_matches_the_predictor_with_clicks(tmp_path: Path, capsys) -> None:
    """Automatic weights: the command's one-network-pass-per-case path gives exactly the
    masks of `Predictor.predict(..., clicks=...)` at every step."""
    from random_weights import make_random_weights

    from petseg.cli import main
    from petseg.config import InferenceConfig
    from petseg.inference.predictor import Predictor

    weights = make_random_weights(tmp_path / "weights", folds=2)
    cases = write_cases(tmp_path / "cases", names=("a",))
    config = InferenceConfig(roi_size=(48, 48, 48), mode="fast")
    (tmp_path / "inference.json").write_text(
        '{"roi_size": [48, 48, 48], "mode": "fast"}')
    assert main(["evaluate-interactive", "--data", str(cases), "--out", str(tmp_path / "out"),
                 "--weights", str(weights), "--device", "cpu", "--config",
                 str(tmp_path / "inference.json"), "--protocol", "autopet_v"]) == 0
    printed = capsys.readouterr().out
    predictor = Predictor.from_weights_dir(weights, config, device="cpu")
    evaluate_interactive(
        cases, lambda pet, ct, clicks: predictor.predict(pet, ct, clicks=clicks).mask,
        tmp_path / "direct", protocols=("autopet_v",))
    steps_csv = (tmp_path / "out" / "steps.csv").read_text()
    assert steps_csv == (tmp_path / "direct" / "steps.csv").read_text()
    # the table, read back, against the steps by hand (one case: the step rows are its
    # values, the last row the trapezoid area over the six steps)
    table = (tmp_path / "out" / "summary.md").read_text()
    assert printed == table
    steps = list(csv.DictReader(steps_csv.splitlines()))
    curves = np.array([[float(r[m]) for m in ("dsc", "fpv_ml", "fnv_ml")] for r in steps])
    expected = [*curves, (curves[1:] + curves[:-1]).sum(axis=0) / 2]
    lines = table.splitlines()[2:]
    assert [line.split(" | ")[:3] for line in lines] == [
        ["| autopet_v", str(step), "1"] for step in (*range(1, 7), "area under curve")]
    shown = np.array([[float(v) for v in line.strip(" |").split(" | ")[3:]] for line in lines])
    rounding = np.array([0.0005, 0.005, 0.005]) + 1e-9  # DSC to 3 digits, ml to 2
    assert (np.abs(shown - np.array(expected)) <= rounding).all(), (shown, expected)


def test_cases_without_truth_are_refused(tmp_path: Path) -> None:
    from petseg.errors import PetsegError

    cases = write_cases(tmp_path / "cases", names=("a",))
    truth = cases / "a" / "truth" / "a-pet.mha"
    truth.unlink()
    with pytest.raises(PetsegError, match=r"a-pet\.mha: no truth mask found"):
        evaluate_interactive(cases, ClickHonouring(make_case().truth), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
