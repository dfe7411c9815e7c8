"""The interactive protocols against the organisers' own code: clicks and scribbles point
for point, scores to 1e-6, on the synthetic cases of `organisers_cases` (how the figures
were obtained: test/fixtures/README.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from organisers_cases import CASES, SPACING_XYZ, digest, pet_of, segment, truth_of

from petseg.evaluation.interactive import (
    EvaluationCase,
    autopet_iv_steps,
    autopet_v_steps,
    curve_area,
    summarise,
)
from petseg.interactive.clicks import Clicks
from petseg.interactive.scribbles import SCRIBBLE_SHAPES
from petseg.interactive.simulate import autopet_iv_clicks, zyx_to_xyz

FIXTURES = Path(__file__).parent / "fixtures"
IV = json.loads((FIXTURES / "organisers_autopet_iv.json").read_text())
V = json.loads((FIXTURES / "organisers_autopet_v.json").read_text())
NAMES = [case.name for case in CASES]


def image(array: np.ndarray) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(SPACING_XYZ)
    return result


def evaluation_case(case) -> EvaluationCase:
    truth = truth_of(case)
    return EvaluationCase(name=case.name, pet=image(pet_of(case)),
                          ct=image(np.zeros(truth.shape, np.float32)), truth=truth > 0)


class StandIn:
    """The stand-in segmenter the organisers' loop ran, recording the points it was given."""

    def __init__(self, case) -> None:
        self.case = case
        self.given: list[tuple[list, list]] = []

    def __call__(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None) -> sitk.Image:
        clicks = clicks or Clicks()
        self.given.append(([list(p) for p in clicks.tumour], [list(p) for p in clicks.background]))
        return image(segment(self.case, list(clicks.tumour), list(clicks.background)))


def assert_close(got: float, want: float, what: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), f"{what}: {got}, the organisers' NaN"
    else:
        assert got == pytest.approx(want, abs=1e-6), what


@pytest.mark.parametrize("case", CASES, ids=NAMES)
def test_inputs_are_those_the_organisers_code_read(case) -> None:
    recorded = IV["cases"][case.name]
    assert digest(truth_of(case)) == recorded["truth_sha256"]
    assert digest(pet_of(case)) == recorded["pet_sha256"]


@pytest.mark.parametrize("case", CASES, ids=NAMES)
def test_autopet_iv_clicks_are_the_organisers_point_for_point(case) -> None:
    recorded = IV["cases"][case.name]
    for offsets, key in ((None, "clicks"), (2, "clicks_offset_2_2_python_random_seed_42")):
        tumour, background = autopet_iv_clicks(truth_of(case), pet_of(case),
                                               centre_offset=offsets, edge_offset=offsets)
        assert [list(p) for p in zyx_to_xyz(tumour)] == recorded[key]["tumor"], key
        assert [list(p) for p in zyx_to_xyz(background)] == recorded[key]["background"], key


def test_autopet_iv_fixtures_hold_the_quirks() -> None:
    """The fill-in clicks and the whole-volume background pick are in the figures tested."""
    few = IV["cases"]["case_a"]["clicks"]["tumor"]  # 3 lesions: 3 centres and 7 fill-ins
    assert len(few) == 10 and len({tuple(p) for p in few}) == 10
    truth_xyz = truth_of(CASES[3]).T
    hot = pet_of(CASES[3]).T > 1.25
    background = IV["cases"]["case_d"]["clicks"]["background"]
    assert sum(not hot[tuple(p)] for p in background) >= 3  # outside any hot spot
    assert not any(truth_xyz[tuple(p)] for p in background)


def test_autopet_iv_scores_and_areas_are_the_organisers() -> None:
    results = []
    for case in CASES:
        steps = autopet_iv_steps(evaluation_case(case), StandIn(case))
        recorded = IV["cases"][case.name]
        for step, want in zip(steps, recorded["steps"], strict=True):
            for metric in ("dsc", "fpv_ml", "fnv_ml"):
                assert_close(getattr(step, metric), want[metric], f"{case.name} {metric}")
        areas = recorded["areas"]
        for metric, key in (("dsc", "dice"), ("fpv_ml", "fpv"), ("fnv_ml", "fnv")):
            assert_close(curve_area([getattr(s, metric) for s in steps]), areas[f"{key}_auc"],
                         f"{case.name} {key} area")
        results.extend(steps)
    rows = {row["step"]: row for row in summarise(results)}
    cohort = IV["cohort_mean"]
    for metric, key in (("dsc", "dice"), ("fpv_ml", "fpv"), ("fnv_ml", "fnv")):
        assert_close(rows["auc"][metric], cohort[f"{key}_auc"], f"mean {key} area")
        assert_close(rows[10][metric], cohort[f"{key}_final"], f"mean final {key}")


@pytest.mark.parametrize("shape", SCRIBBLE_SHAPES)
def test_autopet_v_loop_is_the_organisers_point_for_point(shape: str) -> None:
    for case in CASES:
        recorded = V[shape][case.name]
        segmenter = StandIn(case)
        steps = autopet_v_steps(evaluation_case(case), segmenter, shape=shape)
        given = [(p["tumor"], p["background"]) for _, p in
                 sorted(recorded["points_given"].items(), key=lambda item: int(item[0]))]
        # the organisers rerun a lesion-free case with the same (no) points: the same mask
        assert segmenter.given == (given[:1] if not case.lesions else given), case.name
        for step, want in zip(steps, recorded["iterations"], strict=True):
            assert step.step == want["iteration"]
            assert_close(step.dsc, want["dice"], f"{shape} {case.name} Dice")
            assert_close(step.dmm, want["dmm"], f"{shape} {case.name} DMM")
        assert_close(curve_area([s.dsc for s in steps]), recorded["areas"]["auc_dice"], "area")
        assert_close(curve_area([s.dmm for s in steps]), recorded["areas"]["auc_dmm"], "area")


def test_autopet_v_quirks_as_the_organisers_score_them() -> None:
    """No false positive: every iteration after the first fails and scores 0; lesion-free
    cases: Dice 1 for an empty mask, 0 otherwise, DMM NaN, no scribbles."""
    no_overseg = autopet_v_steps(evaluation_case(CASES[3]), StandIn(CASES[3]))
    assert [s.failed for s in no_overseg] == [False] + [True] * 5
    assert [s.dsc for s in no_overseg[1:]] == [0.0] * 5 and no_overseg[0].dsc > 0.6
    for case, dice in ((CASES[2], 0.0), (CASES[4], 1.0)):
        steps = autopet_v_steps(evaluation_case(case), StandIn(case))
        assert [s.dsc for s in steps] == [dice] * 6
        assert all(math.isnan(s.dmm) for s in steps)
        assert all(s.tumour_points == s.background_points == 0 for s in steps)


def test_petseg_variant_scribbles_where_the_organisers_loop_fails() -> None:
    organisers = autopet_v_steps(evaluation_case(CASES[3]), StandIn(CASES[3]))
    variant = autopet_v_steps(evaluation_case(CASES[3]), StandIn(CASES[3]),
                              empty_error_fails=False)
    assert not any(s.failed for s in variant)
    assert all(s.protocol == "autopet_v_petseg" for s in variant)
    assert variant[1].tumour_points > 0 and variant[1].background_points == 0
    assert variant[-1].dsc > organisers[0].dsc  # the missed border filled in
    negative = autopet_v_steps(evaluation_case(CASES[2]), StandIn(CASES[2]),
                               empty_error_fails=False)
    assert negative[1].background_points > 0 and negative[1].tumour_points == 0
    fpv = [s.fpv_ml for s in negative]
    assert fpv[-1] < fpv[0]


def test_dmm_matches_lesions_at_a_tenth_iou() -> None:
    from petseg.evaluation.organisers import autopet_v_dice, lesion_f1

    truth = np.zeros((8, 40, 40), bool)
    truth[2:6, 2:12, 2:12] = True  # 400 voxels
    truth[2:6, 20:30, 20:30] = True  # 400 voxels
    pred = np.zeros_like(truth)
    pred[2:6, 2:12, 7:17] = True  # IoU 200 / 600 with the first: found
    pred[2:4, 29:35, 29:35] = True  # overlaps the second by 2 voxels of 470: IoU < 0.1
    pred[2:6, 34:38, 2:6] = True  # touches nothing
    assert lesion_f1(truth, pred) == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert lesion_f1(truth, pred[:, :, ::-1] & ~truth) == 0.0
    assert math.isnan(lesion_f1(np.zeros_like(truth), pred))
    assert autopet_v_dice(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert autopet_v_dice(np.zeros_like(truth), pred) == 0.0


def test_autopet_iv_volumes_use_the_header_float32_voxel_size() -> None:
    from petseg.evaluation.organisers import autopet_iv_scores, header_voxel_ml

    voxel = header_voxel_ml((2.0364, 2.0364, 3.0))
    assert voxel == float(np.float32(2.0364) * np.float32(2.0364) * np.float32(3.0)
                          / np.float32(1000))
    assert voxel != pytest.approx(2.0364 * 2.0364 * 3.0 / 1000, rel=1e-9)
    truth = np.zeros((8, 20, 20), bool)
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:3] = True
    dsc, fpv, fnv = autopet_iv_scores(truth, pred, (2.0364, 2.0364, 3.0))
    assert math.isnan(dsc) and math.isnan(fnv) and fpv == 8 * voxel
