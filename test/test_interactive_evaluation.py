"""The interactive protocols on cases with truth, with a segmenter that honours clicks
exactly: the expected curves are known voxel by voxel."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from petseg.evaluation.interactive import (
    EvaluationCase,
    RuleOnAutomatic,
    autopet_iv_steps,
    autopet_v_steps,
    curve_area,
    evaluate_interactive,
    markdown_table,
    summarise,
)
from petseg.interactive.clicks import Clicks
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
    """The organisers' loop fails once the misses are fixed (no under-segmentation left)
    and scores 0 from then on; the petseg variant removes the false positive instead."""
    case = make_case()
    organisers = autopet_v_steps(case, ClickHonouring(case.truth), shape="centerline")
    assert [s.step for s in organisers] == [0, 1, 2, 3, 4, 5]
    assert organisers[0].tumour_points == organisers[0].background_points == 0
    assert [s.failed for s in organisers] == [False] * 4 + [True] * 2
    assert [s.dsc for s in organisers[4:]] == [0.0, 0.0] == [s.dmm for s in organisers[4:]]
    dsc = [s.dsc for s in organisers[:4]]
    assert dsc == sorted(dsc) and organisers[3].dmm == pytest.approx(6 / 7)  # 3 TP, 1 FP
    segment = ClickHonouring(case.truth)
    variant = autopet_v_steps(case, segment, shape="centerline", empty_error_fails=False)
    assert not any(s.failed for s in variant)
    assert variant[4].dsc == 1.0 and variant[4].fpv_ml == 0.0 and variant[4].dmm == 1.0
    grown = [(s.tumour_points + s.background_points) for s in variant]
    assert all(b > a for a, b in itertools.pairwise(grown[:5])) and grown[5] == grown[4]
    assert len(segment.calls) == 5  # no error left at iteration 5: the mask is kept
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
    # autoPET IV's curves by hand (both cases alike): lesion balls of 123, 33 and 33 voxels,
    # the hot organ 123 voxels; the organisers' seeded clicks find the large lesion and
    # remove the organ at step 1, then a small lesion, then the other
    big, small = 123, 33
    assert [int(ball(c, r).sum()) for c, r in (HOT, *LESIONS)] == [big, big, small, small]
    voxel_ml = np.prod(SPACING) / 1000.0
    truth_voxels = big + 2 * small
    dsc = [0.0, 2 * big / (big + truth_voxels),
           2 * (big + small) / (big + small + truth_voxels)] + [1.0] * 8
    fpv = [big * voxel_ml] + [0.0] * 10
    fnv = [truth_voxels * voxel_ml, 2 * small * voxel_ml, small * voxel_ml] + [0.0] * 8
    for metric, curve in (("dsc", dsc), ("fpv_ml", fpv), ("fnv_ml", fnv)):
        # volumes to 1e-6: the organisers take the voxel size as float32, as NIfTI stores it
        assert [rows[("autopet_iv", k)][metric] for k in range(11)] == pytest.approx(
            curve, rel=1e-6)
        # trapezoid rule, unit spacing: half the ends plus the inner values
        area = (curve[0] + curve[-1]) / 2 + sum(curve[1:-1])
        assert rows[("autopet_iv", "auc")][metric] == pytest.approx(area, rel=1e-6), metric
    assert rows[("autopet_iv", "auc")]["fpv_ml"] > 0 and rows[("autopet_iv", "auc")]["fnv_ml"] > 0
    assert 0.0 <= rows[("autopet_v", "auc")]["dmm"] <= 5.0
    with open(tmp_path / "out" / "steps.csv") as handle:
        rows_csv = list(csv.DictReader(handle))
    assert len(rows_csv) == 2 * (11 + 6) and rows_csv[0]["true_lesions"] == "3"
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert f"| autopet_iv | 1 | 2 | {dsc[1]:.3f} | 0.00 | {fnv[1]:.2f} |" in table
    area_row = [line for line in table if line.startswith("| autopet_iv | area under curve |")]
    assert area_row == [f"| autopet_iv | area under curve | 2 | {sum(dsc[1:-1]) + 0.5:.3f} | "
                        f"{fpv[0] / 2:.2f} | {fnv[0] / 2 + fnv[1] + fnv[2]:.2f} |"]
    with Image.open(tmp_path / "out" / "curves.png") as picture:
        assert picture.size[0] > 600 and picture.size[1] > 600
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # drawn, not blank


def test_summary_leaves_cases_without_lesions_out_of_the_dsc_and_fnv() -> None:
    """autoPET IV: a lesion-free case has NaN DSC and FNV (the organisers' rule), so it
    counts in the FPV only; autoPET V: its Dice (0 here) counts, its DMM (NaN) does not."""
    case = make_case()
    empty = EvaluationCase(name="negative", pet=case.pet, ct=case.ct,
                           truth=np.zeros(SHAPE_ZYX, bool))
    blob = ball((15, 30, 30), 2).astype(np.uint8)  # a false positive no click removes
    lesion_steps = autopet_iv_steps(case, ClickHonouring(case.truth))
    negative_steps = autopet_iv_steps(empty, lambda pet, ct, clicks: image(blob))
    assert all(math.isnan(s.dsc) and math.isnan(s.fnv_ml) and s.true_lesions == 0
               for s in negative_steps)
    rows = {r["step"]: r for r in summarise([*lesion_steps, *negative_steps])}
    for step in (1, 3, 10):
        assert rows[step]["dsc"] == pytest.approx(lesion_steps[step].dsc)
        assert rows[step]["fnv_ml"] == pytest.approx(lesion_steps[step].fnv_ml)
        assert rows[step]["fpv_ml"] == pytest.approx(
            (lesion_steps[step].fpv_ml + negative_steps[step].fpv_ml) / 2)
    assert rows[10]["cases"] == 2 and rows[3]["dsc"] == pytest.approx(1.0)
    lesion_v = autopet_v_steps(case, ClickHonouring(case.truth))
    negative_v = autopet_v_steps(empty, lambda pet, ct, clicks: image(blob))
    assert [s.dsc for s in negative_v] == [0.0] * 6
    rows = {r["step"]: r for r in summarise([*lesion_v, *negative_v])}
    assert rows[0]["dsc"] == pytest.approx(lesion_v[0].dsc / 2)
    assert rows[0]["dmm"] == pytest.approx(lesion_v[0].dmm)
    assert rows["auc"]["dsc"] == pytest.approx(curve_area([s.dsc for s in lesion_v]) / 2)


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
    masks of `InteractiveSession.predict` at every step."""
    from random_weights import make_random_weights

    from petseg.cli import main
    from petseg.config import InferenceConfig
    from petseg.inference.predictor import Predictor
    from petseg.interactive.session import InteractiveSession

    weights = make_random_weights(tmp_path / "weights", folds=2)
    cases = write_cases(tmp_path / "cases", names=("a",))
    config = InferenceConfig(roi_size=(48, 48, 48), mode="fast")
    (tmp_path / "inference.json").write_text(
        '{"roi_size": [48, 48, 48], "mode": "fast"}')
    assert main(["evaluate-interactive", "--data", str(cases), "--out", str(tmp_path / "out"),
                 "--weights", str(weights), "--device", "cpu", "--config",
                 str(tmp_path / "inference.json"), "--protocol", "autopet_v"]) == 0
    assert "| autopet_v | area under curve | 1 |" in capsys.readouterr().out
    predictor = Predictor.from_weights_dir(weights, config, device="cpu")
    direct = evaluate_interactive(
        cases, lambda pet, ct, clicks: InteractiveSession(predictor).predict(pet, ct, clicks).mask,
        tmp_path / "direct", protocols=("autopet_v",))
    steps_csv = (tmp_path / "out" / "steps.csv").read_text()
    assert steps_csv == (tmp_path / "direct" / "steps.csv").read_text()
    assert direct  # the summary the direct run returned
    # the table, read back, against the steps by hand (one case: the iteration rows are its
    # values, the last row the trapezoid area over the six iterations)
    steps = list(csv.DictReader(steps_csv.splitlines()))
    curves = np.array([[float(r[m]) for m in ("dsc", "dmm")] for r in steps])
    expected = [*curves, (curves[1:] + curves[:-1]).sum(axis=0) / 2]
    lines = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert lines[0] == ("| protocol | iteration | cases | Dice | DMM (lesion F1) | failed "
                        "iterations |")
    body = lines[2:]
    assert [line.split(" | ")[:3] for line in body] == [
        ["| autopet_v", str(step), "1"] for step in (*range(6), "area under curve")]
    shown = np.array([[float(v) for v in line.strip(" |").split(" | ")[3:5]] for line in body])
    assert (np.abs(shown - np.array(expected)) <= 0.0005 + 1e-9).all(), (shown, expected)


def test_rule_only_runs_a_click_aware_network_once_per_case(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    from random_weights import make_random_weights

    from petseg.cli import main
    from petseg.config import InferenceConfig
    from petseg.inference.predictor import Predictor

    weights = make_random_weights(tmp_path / "weights", folds=1, clicks=True)
    cases = write_cases(tmp_path / "cases", names=("a",))
    (tmp_path / "inference.json").write_text('{"roi_size": [48, 48, 48], "mode": "fast"}')
    calls: list[bool] = []  # per network pass: did its input hold a click?
    original, probability = Predictor.predict, Predictor.probability

    def counted(self, image, **options):
        calls.append(bool(np.asarray(image)[2:].any()))
        return probability(self, image, **options)

    monkeypatch.setattr(Predictor, "probability", counted)
    assert main(["evaluate-interactive", "--data", str(cases), "--out", str(tmp_path / "out"),
                 "--weights", str(weights), "--device", "cpu", "--config",
                 str(tmp_path / "inference.json"), "--protocol", "autopet_iv",
                 "--rule-only"]) == 0
    assert calls == [False]  # one network pass, no clicks into it
    predictor = Predictor.from_weights_dir(
        weights, InferenceConfig(roi_size=(48, 48, 48), mode="fast"), device="cpu")
    direct = evaluate_interactive(
        cases, RuleOnAutomatic(lambda pet, ct: original(predictor, pet, ct).mask),
        tmp_path / "direct", protocols=("autopet_iv",))
    assert (tmp_path / "out" / "summary.md").read_text() == markdown_table(direct)
    calls.clear()
    assert main(["evaluate-interactive", "--data", str(cases), "--out", str(tmp_path / "all"),
                 "--weights", str(weights), "--device", "cpu", "--config",
                 str(tmp_path / "inference.json"), "--protocol", "autopet_iv"]) == 0
    # click-aware: one session, the network on the whole case once, then around the clicks
    # at every later step
    assert calls[0] is False and len(calls) >= 11 and all(calls[1:])
    capsys.readouterr()


def test_cases_without_truth_are_refused(tmp_path: Path) -> None:
    from petseg.errors import PetsegError

    cases = write_cases(tmp_path / "cases", names=("a",))
    truth = cases / "a" / "truth" / "a-pet.mha"
    truth.unlink()
    with pytest.raises(PetsegError, match=r"a-pet\.mha: no truth mask found"):
        evaluate_interactive(cases, ClickHonouring(make_case().truth), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
