"""Folder evaluation, cohort summaries, the challenge ranking and the `evaluate` command,
on small masks written to a temporary folder with real-world geometry."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.errors import PetsegError
from petseg.evaluation.metadata import read_metadata
from petseg.evaluation.pairing import case_name, evaluate_folder, find_masks, pair_cases
from petseg.evaluation.scoring import describe, ranking, summarize
from petseg.evaluation.tables import markdown_table
from petseg.io.geometry import LAS_DIRECTION, Geometry
from petseg.io.images import write_image

SPACING = (2.0364, 2.0364, 3.0)
VOXEL_ML = 2.0364 * 2.0364 * 3.0 / 1000.0
GEOMETRY = Geometry(size=(12, 10, 8), spacing=SPACING, origin=(250.0, -180.5, -900.0),
                    direction=LAS_DIRECTION)
SHAPE = (8, 10, 12)  # [z, y, x]


def _write(path: Path, mask: np.ndarray, geometry: Geometry = GEOMETRY) -> Path:
    return write_image(geometry.image_from_array(mask.astype(np.uint8)), path)


def _zeros() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.uint8)


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    """autoPET-layout truth (3 studies, one negative), predictions for two, one stray file.

    Case A (lymphoma): truth 2 lesions (27 + 4 voxels); prediction finds the first with
    18 of its voxels plus 2 voxels outside, misses the second, adds a 3-voxel blob.
    Case B (negative): empty truth; prediction has one 5-voxel false positive.
    """
    truth = tmp_path / "truth"
    a, b, c = _zeros(), _zeros(), _zeros()
    a[1:4, 1:4, 1:4] = 1
    a[6, 7, 8:10] = 1
    a[6, 8, 8:10] = 1
    c[2:4, 5:7, 5:7] = 1
    _write(truth / "PETCT_0aa" / "01-01-2000-NA-PET-CT" / "SEG.nii.gz", a)
    _write(truth / "PETCT_0aa" / "01-01-2000-NA-PET-CT" / "SUV.nii.gz", a * 3)  # ignored
    _write(truth / "PETCT_0bb" / "02-02-2001-NA-PET-CT" / "SEG.nii.gz", b)
    _write(truth / "PETCT_0cc" / "03-03-2002-NA-PET-CT" / "SEG.nii.gz", c)

    pred = tmp_path / "pred"
    pa, pb = _zeros(), _zeros()
    pa[2:4, 1:4, 1:4] = 1  # 18 voxels inside lesion 1
    pa[2, 1, 4:6] = 1  # 2 voxels outside, connected to them
    pa[6, 1, 9:12] = 1  # 3-voxel false positive
    pb[4, 2:7, 6] = 1  # 5-voxel false positive
    _write(pred / "PETCT_0aa_01-01-2000-NA-PET-CT.mha", pa)
    _write(pred / "PETCT_0bb_02-02-2001-NA-PET-CT.nii.gz", pb)
    _write(pred / "stray.mha", pb)

    meta = tmp_path / "Clinical Metadata FDG PET_CT Lesions.csv"
    meta.write_text(
        "Subject ID,Study Date,diagnosis,age\n"
        "PETCT_0aa,1/1/2000,LYMPHOMA,60\n"
        "PETCT_0bb,2/2/2001,NEGATIVE,50\n"
        "PETCT_0cc,3/3/2002,MELANOMA,40\n",
        encoding="utf-8",
    )
    return {"truth": truth, "pred": pred, "meta": meta, "tmp": tmp_path}


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


# ------------------------------------------------------------------------------ pairing


def test_case_names_follow_the_documented_rules(tmp_path: Path) -> None:
    root = tmp_path
    assert case_name(root / "PETCT_1" / "2001-x" / "SEG.nii.gz", root) == "PETCT_1_2001-x"
    assert case_name(root / "fold_0" / "PETCT_1_2001-x.mha", root) == "PETCT_1_2001-x"
    challenge = "images/automated-petct-lesion-segmentation/1b2c.mha"
    assert case_name(root / challenge, root) == "1b2c"
    assert case_name(root / "PETCT_1_2001-x" / challenge, root) == "PETCT_1_2001-x"
    assert case_name(root / "PETCT_1" / "2001-x" / challenge, root) == "PETCT_1_2001-x"


def test_challenge_output_folders_hide_other_images(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _write(out / "case7" / "images" / "automated-petct-lesion-segmentation" / "u1.mha", _zeros())
    _write(out / "case7" / "images" / "lesion-probability" / "u1.mha", _zeros())
    _write(out / "case7" / ".partial.mha", _zeros())
    assert list(find_masks(out)) == ["case7"]


def test_pairing_reports_unpaired_files(study: dict[str, Path]) -> None:
    pairing = pair_cases(study["pred"], study["truth"])
    assert [p[0] for p in pairing.pairs] == ["PETCT_0aa_01-01-2000-NA-PET-CT",
                                             "PETCT_0bb_02-02-2001-NA-PET-CT"]
    assert pairing.unpaired_predictions == (study["pred"] / "stray.mha",)
    assert pairing.unpaired_truths == (
        study["truth"] / "PETCT_0cc" / "03-03-2002-NA-PET-CT" / "SEG.nii.gz",
    )


def test_duplicate_case_names_and_no_pairs_are_clear_errors(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "x.mha", _zeros())
    _write(tmp_path / "p" / "sub" / "x.nii.gz", _zeros())
    with pytest.raises(PetsegError, match=r"p/x\.mha: case name 'x' is already taken by .*"
                                          r"p/sub/x\.nii\.gz; keep one mask per case"):
        find_masks(tmp_path / "p")
    _write(tmp_path / "t" / "y.mha", _zeros())
    _write(tmp_path / "q" / "z.mha", _zeros())
    with pytest.raises(PetsegError, match=r"no prediction pairs .* e\.g\. 'y\.nii\.gz'"):
        pair_cases(tmp_path / "q", tmp_path / "t")
    with pytest.raises(PetsegError, match="folder not found"):
        find_masks(tmp_path / "missing")


# ----------------------------------------------------------------------------- metadata


def test_metadata_pairs_by_patient_path_or_case(tmp_path: Path) -> None:
    by_patient = tmp_path / "a.csv"
    by_patient.write_text(
        "Subject ID;Modality;Study Date;Diagnosis\n"
        "PETCT_1;PT;1/1/2000;Lung cancer\n"
        "PETCT_1;CT;1/1/2000;Lung cancer\n"
        "PETCT_2;PT;1/1/2001;LYMPHOMA\n"
        "PETCT_2;PT;5/5/2003;NEGATIVE\n"
        "PETCT_3;PT;2001-01-01;MELANOMA\n"
        "PETCT_3;PT;2003-05-05;NEGATIVE\n",
        encoding="utf-8",
    )
    meta = read_metadata(by_patient)
    assert meta.cohort_of("PETCT_1_01-01-2000-NA-PET-CT") == "LUNG_CANCER"
    assert meta.cohort_of("PETCT_2_05-05-2003-NA-PET-CT") == "NEGATIVE"  # date picks the row
    assert meta.cohort_of("PETCT_2_01-01-2001-NA-PET-CT") == "LYMPHOMA"
    assert meta.cohort_of("PETCT_3_2001-01-01") == "MELANOMA"
    assert meta.cohort_of("PETCT_3_09-09-2009-NA") == "UNKNOWN"  # rows disagree, no date
    assert meta.cohort_of("PETCT_10_01-01-2000") == "UNKNOWN"  # PETCT_1 is no prefix of it

    by_path = tmp_path / "b.csv"
    by_path.write_text(
        'File Location,diagnosis\n'
        '"./FDG-PET-CT-Lesions/PETCT_4/10-10-2010-NA-PET-CT Ganzkoerper  primaer/'
        '2.000000-PET-1234",MELANOMA\n',
        encoding="utf-8",
    )
    assert read_metadata(by_path).cohort_of(
        "PETCT_4_10-10-2010-NA-PET-CT Ganzkoerper  primaer") == "MELANOMA"

    by_case = tmp_path / "c.csv"
    by_case.write_text("case\tcohort\n1b2c\tnegative\n", encoding="utf-8")
    assert read_metadata(by_case).cohort_of("1b2c") == "NEGATIVE"

    bad = tmp_path / "d.csv"
    bad.write_text("patient,age\nPETCT_1,3\n", encoding="utf-8")
    with pytest.raises(PetsegError, match=r"d\.csv: needs a 'diagnosis' column"):
        read_metadata(bad)


# --------------------------------------------------------------------- folders and rows


def test_evaluate_folder_values(study: dict[str, Path]) -> None:
    rows = {r["case"]: r for r in evaluate_folder(study["pred"], study["truth"], study["meta"])}
    a = rows["PETCT_0aa_01-01-2000-NA-PET-CT"]
    assert a["cohort"] == "LYMPHOMA"
    assert a["dsc"] == pytest.approx(2 * 18 / (31 + 23))
    assert a["fpv_ml"] == pytest.approx(3 * VOXEL_ML)
    assert a["fnv_ml"] == pytest.approx(4 * VOXEL_ML)
    assert (a["n_true_lesions"], a["detected"], a["missed"], a["n_pred_lesions"],
            a["fp_lesions"]) == (2, 1, 1, 2, 1)
    assert a["tmtv_diff_ml"] == pytest.approx((23 - 31) * VOXEL_ML)
    b = rows["PETCT_0bb_02-02-2001-NA-PET-CT"]
    assert b["cohort"] == "NEGATIVE"
    assert b["dsc"] == 0.0
    assert b["fpv_ml"] == pytest.approx(5 * VOXEL_ML)
    assert b["fnv_ml"] == 0.0


def test_non_binary_prediction_is_refused(tmp_path: Path) -> None:
    mask = _zeros()
    mask[1, 1, 1] = 2
    _write(tmp_path / "p" / "c1.mha", mask)
    _write(tmp_path / "t" / "c1.mha", _zeros())
    with pytest.raises(PetsegError, match=r"c1\.mha: holds values other than 0 and 1"):
        evaluate_folder(tmp_path / "p", tmp_path / "t")


# ---------------------------------------------------------------------------- summaries


def _row(case: str, cohort: str, dsc: float, fpv: float, fnv: float, lesions: int) -> dict:
    return {"case": case, "cohort": cohort, "dsc": dsc, "fpv_ml": fpv, "fnv_ml": fnv,
            "tmtv_diff_ml": fpv - fnv, "n_true_lesions": lesions, "n_pred_lesions": lesions,
            "detected": lesions, "missed": 0, "fp_lesions": 0}


def test_summary_counts_dsc_only_over_cases_with_lesions() -> None:
    rows = [
        _row("a", "LYMPHOMA", 0.2, 1.0, 0.0, 1),
        _row("b", "LYMPHOMA", 0.4, 3.0, 2.0, 2),
        _row("c", "LYMPHOMA", 0.9, 5.0, 4.0, 1),
        _row("d", "NEGATIVE", 0.0, 8.0, 0.0, 0),  # FP on an empty truth: DSC 0, left out
        _row("e", "NEGATIVE", math.nan, 0.0, 0.0, 0),
        _row("f", "MELANOMA", 0.5, 0.0, 0.0, 3),
    ]
    s = summarize(rows)["cohorts"]
    assert list(s) == ["LYMPHOMA", "MELANOMA", "NEGATIVE", "ALL"]
    lym = s["LYMPHOMA"]
    assert lym["dsc"]["mean"] == pytest.approx(0.5)
    assert lym["dsc"]["sd"] == pytest.approx(math.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 2))
    assert (lym["dsc"]["median"], lym["dsc"]["q1"], lym["dsc"]["q3"]) == pytest.approx(
        (0.4, 0.3, 0.65))
    assert lym["fpv_ml"]["mean"] == pytest.approx(3.0)
    neg = s["NEGATIVE"]
    assert (neg["n_cases"], neg["n_cases_with_lesions"], neg["dsc"]["n"]) == (2, 0, 0)
    assert math.isnan(neg["dsc"]["mean"])
    assert neg["fpv_ml"]["mean"] == pytest.approx(4.0)
    assert math.isnan(s["MELANOMA"]["dsc"]["sd"])  # one case: no sample SD
    every = s["ALL"]
    assert (every["n_cases"], every["n_cases_with_lesions"]) == (6, 4)
    assert every["dsc"]["mean"] == pytest.approx(0.5)
    assert every["fpv_ml"]["mean"] == pytest.approx(17.0 / 6)
    assert every["fnv_ml"]["mean"] == pytest.approx(1.0)
    assert every["lesions"]["sensitivity"] == 1.0
    table = markdown_table(summarize(rows))
    assert "| LYMPHOMA | 3 (3) | 0.500 ± 0.361 | 0.400 [0.300, 0.650] | 3.00 ± 2.00 |" in table
    assert "| NEGATIVE | 2 (0) | n/a | n/a | 4.00 ± 5.66 |" in table


def test_describe_ignores_nan() -> None:
    d = describe([1.0, math.nan, 3.0])
    assert (d["n"], d["mean"], d["median"]) == (2, 2.0, 2.0)
    assert describe([])["n"] == 0


def test_ranking_follows_the_challenge_formula() -> None:
    # Means (DSC over a and b, volumes over a, b and the negative case n):
    # m1 DSC .6 FPV 2 FNV 4; m2 .7, 6, 1; m3 the same as m1; m4 .1, 9, 6.
    def rows(d1: float, d2: float, fpv: float, fnv: float) -> list[dict]:
        return [_row("a", "", d1, fpv, fnv, 1), _row("b", "", d2, fpv, fnv, 1),
                _row("n", "", math.nan, fpv, 0.0, 0)]

    per_method = {
        "m1": rows(0.5, 0.7, 2.0, 6.0),
        "m2": rows(0.6, 0.8, 6.0, 1.5),
        "m3": rows(0.6, 0.6, 2.0, 6.0),
        "m4": [*rows(0.1, 0.1, 9.0, 9.0), _row("only-m4", "", 1.0, 0.0, 0.0, 1)],
    }
    ranks = {r["method"]: r for r in ranking(per_method)}
    assert ranks["m4"]["n_cases"] == 3  # its extra case is not shared: left out
    assert ranks["m2"]["dsc_mean"] == pytest.approx(0.7)
    assert ranks["m1"]["fnv_mean_ml"] == pytest.approx(4.0)
    assert (ranks["m2"]["rank_dsc"], ranks["m2"]["rank_fpv"], ranks["m2"]["rank_fnv"]) == (1, 3, 1)
    assert (ranks["m1"]["rank_dsc"], ranks["m1"]["rank_fpv"], ranks["m1"]["rank_fnv"]) == (2, 1, 2)
    assert ranks["m2"]["score"] == pytest.approx(0.5 + 0.75 + 0.25)
    assert ranks["m1"]["score"] == ranks["m3"]["score"] == pytest.approx(1 + 0.25 + 0.5)
    assert ranks["m4"]["score"] == pytest.approx(2 + 1 + 1)
    assert [r["method"] for r in ranking(per_method)][:1] == ["m2"]
    assert (ranks["m2"]["place"], ranks["m1"]["place"], ranks["m3"]["place"],
            ranks["m4"]["place"]) == (1, 2, 2, 4)


# --------------------------------------------------------------------------------- CLI


def test_cli_writes_per_case_csv_summary_and_table(study, capsys, caplog) -> None:
    out = study["tmp"] / "out"
    code = main(["evaluate", "--pred", str(study["pred"]), "--truth", str(study["truth"]),
                 "--metadata", str(study["meta"]), "--out", str(out)])
    assert code == 0
    rows = _read_csv(out / "per_case.csv")
    assert set(rows) == {"PETCT_0aa_01-01-2000-NA-PET-CT", "PETCT_0bb_02-02-2001-NA-PET-CT"}
    a = rows["PETCT_0aa_01-01-2000-NA-PET-CT"]
    assert a["method"] == "pred" and a["cohort"] == "LYMPHOMA"
    assert float(a["dsc"]) == pytest.approx(36 / 54)
    assert float(a["fnv_ml"]) == pytest.approx(4 * VOXEL_ML)
    assert a["pred_file"].endswith("PETCT_0aa_01-01-2000-NA-PET-CT.mha")
    assert a["truth_file"].endswith("SEG.nii.gz")

    summary = json.loads((out / "summary.json").read_text())
    method = summary["methods"]["pred"]
    assert method["n_paired"] == 2
    assert [Path(p).name for p in method["unpaired_predictions"]] == ["stray.mha"]
    assert len(method["unpaired_truths"]) == 1
    cohorts = method["summary"]["cohorts"]
    assert list(cohorts) == ["LYMPHOMA", "NEGATIVE", "ALL"]
    assert cohorts["NEGATIVE"]["dsc"]["mean"] is None  # no case with lesions
    assert cohorts["ALL"]["fpv_ml"]["mean"] == pytest.approx(4 * VOXEL_ML)
    assert cohorts["ALL"]["dsc"]["mean"] == pytest.approx(36 / 54)
    assert summary["ranking"] is None

    printed = capsys.readouterr()
    assert "## pred: 2 case(s), 2 unpaired file(s)" in printed.out
    assert "| LYMPHOMA | 1 (1) | 0.667 | 0.667 [0.667, 0.667] | 0.04 |" in printed.out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("1 prediction(s) without a truth mask" in w and "stray.mha" in w
               for w in warnings)
    assert any("1 truth case(s) without a prediction" in w and "PETCT_0cc" in w
               for w in warnings)


def test_cli_ranks_several_prediction_folders(study) -> None:
    perfect = study["tmp"] / "perfect"
    for case, path in find_masks(study["truth"]).items():
        write_image(sitk.ReadImage(str(path)), perfect / f"{case}.nii.gz")
    out = study["tmp"] / "out2"
    assert main(["evaluate", "--pred", str(study["pred"]), "--pred", str(perfect),
                 "--truth", str(study["truth"]), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["ranking"]] == ["perfect", "pred"]
    best = summary["ranking"][0]
    assert (best["place"], best["score"], best["dsc_mean"], best["fpv_mean_ml"]) == (1, 1.0, 1.0, 0)
    assert summary["ranking"][1]["n_cases"] == 2  # the shared cases only
    assert summary["methods"]["perfect"]["n_paired"] == 3
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert sorted({r["method"] for r in rows}) == ["perfect", "pred"]
    assert all(r["cohort"] == "" for r in rows)


def test_cli_refuses_a_prediction_on_another_grid(tmp_path: Path, capsys) -> None:
    truth = _zeros()
    truth[2:4, 2:4, 2:4] = 1
    shifted = Geometry(GEOMETRY.size, GEOMETRY.spacing,
                       (GEOMETRY.origin[0], GEOMETRY.origin[1] + 0.001, GEOMETRY.origin[2]),
                       GEOMETRY.direction)
    _write(tmp_path / "t" / "c1.mha", truth)
    _write(tmp_path / "p" / "c1.mha", truth, shifted)
    code = main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"petseg evaluate: error: {tmp_path / 'p' / 'c1.mha'}: grid differs "
                             f"from truth {tmp_path / 't' / 'c1.mha'}: origin (")
    assert err[0].endswith("pass --resample-pred")

    # Within the 1e-4 tolerance the grids count as equal.
    near = Geometry(GEOMETRY.size, GEOMETRY.spacing,
                    (GEOMETRY.origin[0] + 5e-5, *GEOMETRY.origin[1:]), GEOMETRY.direction)
    _write(tmp_path / "p" / "c1.mha", truth, near)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")]) == 0


def test_cli_resamples_a_finer_prediction_onto_the_truth(tmp_path: Path) -> None:
    truth = _zeros()
    truth[2:5, 3:6, 4:8] = 1  # 36 voxels
    pred = _zeros()
    pred[2:5, 3:6, 4:7] = 1  # 27 voxels inside the lesion
    pred[7, 9, 11] = 1  # 1-voxel false positive
    # Half the spacing, same origin and direction: fine voxel 2i sits on coarse voxel i.
    fine = Geometry((24, 20, 16), tuple(s / 2 for s in SPACING), GEOMETRY.origin,
                    GEOMETRY.direction)
    upsampled = pred.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    _write(tmp_path / "t" / "c1.nii.gz", truth)
    _write(tmp_path / "p" / "c1.mha", upsampled, fine)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")]) == 1

    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                 "--resample-pred", "--out", str(out)]) == 0
    row = _read_csv(out / "per_case.csv")["c1"]
    assert float(row["dsc"]) == pytest.approx(2 * 27 / (36 + 28))
    assert float(row["fpv_ml"]) == pytest.approx(VOXEL_ML)  # volumes on the truth grid
    assert float(row["fnv_ml"]) == 0.0
    assert json.loads((out / "summary.json").read_text())["resample_pred"] is True
