"""Case discovery (three layouts), reading a case and its plausibility checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import GEOMETRY, body_ct, body_suv, touch, write_volume

from petseg.errors import PetsegError
from petseg.io.cases import CaseFiles, find_cases, pairing_key, read_case, safe_name
from petseg.io.geometry import LAS_DIRECTION, Geometry


def test_single_challenge_case_is_named_after_the_pet_uuid(tmp_path) -> None:
    pet = touch(tmp_path / "images/pet/9ec5-aa01.mha")
    ct = touch(tmp_path / "images/ct/77b2-0c3f.mha")
    touch(tmp_path / "images/pet/.9ec5-aa01.mha.tmp123.mha")  # a hidden leftover
    found = find_cases(tmp_path)
    assert found.single
    assert found.cases == [CaseFiles("9ec5-aa01", pet, ct)]


def test_several_challenge_cases_are_paired_by_name(tmp_path) -> None:
    for stem in ("b", "a"):
        touch(tmp_path / f"images/pet/{stem}.nii.gz")
        touch(tmp_path / f"images/ct/{stem}.nrrd")
    found = find_cases(tmp_path)
    assert not found.single
    assert [(c.name, c.pet.name, c.ct.name) for c in found.cases] == [
        ("a", "a.nii.gz", "a.nrrd"), ("b", "b.nii.gz", "b.nrrd")]


@pytest.mark.parametrize(("pets", "cts"), [
    (("p1_pet.mha", "p2_pet.mha"), ("p1_ct.mha", "p2_ct.mha")),
    (("p1_0000.nii.gz", "p2_0000.nii.gz"), ("p1_0001.nii.gz", "p2_0001.nii.gz")),
    (("p1-SUV.mha", "p2-SUV.mha"), ("p1-CTres.mha", "p2-CTres.mha")),
])
def test_modality_tokens_are_ignored_when_pairing(tmp_path, pets, cts) -> None:
    for name in pets:
        touch(tmp_path / "images/pet" / name)
    for name in cts:
        touch(tmp_path / "images/ct" / name)
    found = find_cases(tmp_path)
    assert [pairing_key(c.pet) for c in found.cases] == ["p1", "p2"]
    assert [pairing_key(c.ct) for c in found.cases] == ["p1", "p2"]


def test_two_pets_with_one_ct_are_refused_with_the_fix(tmp_path) -> None:
    touch(tmp_path / "images/pet/a.mha")
    touch(tmp_path / "images/pet/b.mha")
    touch(tmp_path / "images/ct/c.mha")
    with pytest.raises(PetsegError) as info:
        find_cases(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'images'}: 2 PET and 1 CT image(s) cannot be paired; give each PET and "
        "its CT the same file name, or put each case in its own folder (<case>/images/pet/, "
        "<case>/images/ct/)"
    )


def test_missing_ct_or_pet_names_the_folder(tmp_path) -> None:
    touch(tmp_path / "images/pet/a.mha")
    with pytest.raises(PetsegError, match=r"images/ct: no CT image \(\.mha, \.nii\.gz, \.nrrd\)"):
        find_cases(tmp_path)
    (tmp_path / "images/pet/a.mha").unlink()
    touch(tmp_path / "images/ct/a.mha")
    with pytest.raises(PetsegError, match=r"images/pet: no PET image"):
        find_cases(tmp_path)


def test_folder_of_case_folders_records_a_bad_case_and_keeps_the_rest(tmp_path) -> None:
    touch(tmp_path / "case_1/images/pet/u1.mha")
    touch(tmp_path / "case_1/images/ct/u2.mha")
    touch(tmp_path / "case 2/images/pet/u3.mha")
    (tmp_path / "notes").mkdir()  # a folder that is no case
    found = find_cases(tmp_path)
    assert not found.single
    bad, good = found.cases  # sorted by folder name: "case 2" < "case_1"
    assert (good.name, good.pet.name, good.ct.name, good.error) == ("case_1", "u1.mha",
                                                                     "u2.mha", None)
    assert bad.name == "case_2" and bad.pet is None
    assert bad.error.endswith("case 2/images/ct: no CT image (.mha, .nii.gz, .nrrd); put the "
                              "CT image there")
    with pytest.raises(PetsegError, match="case 2/images/ct: no CT image"):
        read_case(bad)


def test_autopet_nifti_layout(tmp_path) -> None:
    date = "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    pet = touch(tmp_path / "PETCT_0af7ffe12a" / date / "SUV.nii.gz")
    ct = touch(tmp_path / "PETCT_0af7ffe12a" / date / "CTres.nii.gz")
    touch(tmp_path / "PETCT_0af7ffe12a" / date / "SEG.nii.gz")
    touch(tmp_path / "PETCT_1b2c" / "01-01-2001" / "SUV.nii.gz")
    found = find_cases(tmp_path)
    assert not found.single
    first, second = found.cases
    assert first == CaseFiles(
        "PETCT_0af7ffe12a_08-12-2005-NA-PET-CT_Ganzkoerper_primaer_mit_KM-10445", pet, ct)
    assert second.name == "PETCT_1b2c_01-01-2001"
    assert "no CTres image beside SUV.nii.gz" in second.error


def test_nothing_found_and_missing_input_are_clear_errors(tmp_path) -> None:
    touch(tmp_path / "readme.txt")
    with pytest.raises(PetsegError, match=r"no cases found; expected images/pet/"):
        find_cases(tmp_path)
    with pytest.raises(PetsegError, match="input folder not found; check --input"):
        find_cases(tmp_path / "absent")


def test_safe_name() -> None:
    assert safe_name("PETCT_1/08-12 2005 (x)") == "PETCT_1_08-12_2005_x"
    assert safe_name("...") == "case"


def _case_files(tmp_path: Path, pet: np.ndarray, ct: np.ndarray,
                ct_geometry: Geometry = GEOMETRY) -> CaseFiles:
    return CaseFiles("c", write_volume(tmp_path / "images/pet/p.mha", pet),
                     write_volume(tmp_path / "images/ct/c.mha", ct, ct_geometry))


def test_a_pet_not_in_suv_is_refused_and_a_ct_without_air_warned_about(tmp_path,
                                                                         caplog) -> None:
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 1.0, (8, 9, 10)).astype(np.float32)  # SUV-like, max ~15
    ct = np.full(suv.shape, -1000.0, np.float32)
    ct[2:6, 2:7, 2:8] = 40.0
    with caplog.at_level(logging.WARNING, logger="petseg.io.cases"):
        read_case(_case_files(tmp_path / "ok", suv, ct))
    assert "no air" not in caplog.text
    files = _case_files(tmp_path / "bq", suv * 5000.0, ct)  # Bq/ml at ~5 kBq/ml per SUV
    with pytest.raises(PetsegError, match=r"p\.mha: 99\.9th percentile \d+, far above any SUV "
                                          r"\(Bq/ml\?\); convert the PET to body-weight SUV"):
        read_case(files)
    with caplog.at_level(logging.WARNING, logger="petseg.io.cases"):
        read_case(_case_files(tmp_path / "raw", suv, ct + 1024.0))  # stored values, no rescale
    assert "c.mha: no air in the CT (1st percentile 24 HU, above -500 HU)" in caplog.text


def test_read_case_cleans_non_finite_voxels_with_a_warning(tmp_path, caplog) -> None:
    pet = body_suv()
    pet[0, 0, :3] = np.nan
    pet[1, 1, 1] = np.inf
    ct = body_ct().astype(np.float32)
    ct[2, 2, 2] = np.nan
    files = _case_files(tmp_path, pet, ct)
    with caplog.at_level(logging.WARNING, logger="petseg.io.cases"):
        case = read_case(files, ct_fill_hu=-1024.0)
    pet_out = sitk.GetArrayFromImage(case.pet)
    ct_out = sitk.GetArrayFromImage(case.ct)
    assert case.pet.GetPixelID() == sitk.sitkFloat32
    assert pet_out[0, 0, :3].tolist() == [0, 0, 0] and pet_out[1, 1, 1] == 0
    assert pet_out.sum() == pytest.approx(body_suv().sum(), rel=1e-6)  # those were air
    assert ct_out[2, 2, 2] == -1024.0 and np.isfinite(ct_out).all()
    assert f"{files.pet}: 4 non-finite voxel(s) (NaN/inf) set to 0" in caplog.text
    assert f"{files.ct}: 1 non-finite voxel(s) (NaN/inf) set to -1024" in caplog.text
    assert Geometry.of(case.pet) == GEOMETRY

@pytest.mark.parametrize(("origin", "size"), [
    ((-10.0, 20.0, 500.0), (10, 9, 8)),  # elsewhere
    ((-10.0, 20.0, -324.0), (10, 9, 8)),  # boxes touching in one plane
    ((-10.0, 20.0, -300.0), (10, 9, 3)),  # 3 of 8 slices
    ((-10.0 + 18.3, 20.0, -300.0), (10, 9, 8)),  # x shifted by 9 of 10 columns
])
def test_read_case_refuses_a_ct_covering_too_little_of_the_pet(tmp_path, origin, size) -> None:
    ct_grid = Geometry(size, GEOMETRY.spacing, origin, LAS_DIRECTION)
    ct = np.full(tuple(reversed(size)), -1000, np.int16)
    files = _case_files(tmp_path, body_suv(), ct, ct_grid)
    with pytest.raises(PetsegError, match=r"images/ct/c\.mha: covers \d+% x \d+% x \d+% "
                                          r"\(x, y, z\) of the PET p\.mha \(CT .* mm\);"
                                          r" check both images "
                                          r"come from the same study"):
        read_case(files)


def test_read_case_warns_when_the_ct_misses_some_slices(tmp_path, caplog) -> None:
    short = Geometry((10, 9, 6), GEOMETRY.spacing, GEOMETRY.origin, LAS_DIRECTION)
    files = _case_files(tmp_path, body_suv(), body_ct()[:6], short)
    with caplog.at_level(logging.WARNING, logger="petseg.io.cases"):
        read_case(files)
    assert "c.mha: covers only 75% of the PET's axial length" in caplog.text


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16])
def test_an_integer_pet_is_refused(tmp_path, dtype) -> None:
    files = _case_files(tmp_path, np.round(body_suv()).astype(dtype), body_ct())
    with pytest.raises(PetsegError, match=r"p\.mha: stored as \d+-bit (un)?signed integer values, "
                                          r"which lose SUV's decimals; write the PET as float32"):
        read_case(files)


def test_negative_suv_is_refused_or_warned_about(tmp_path, caplog) -> None:
    with pytest.raises(PetsegError, match=r"p\.mha: 1st percentile -1\.00 SUV; SUV is not "
                                          r"negative beyond reconstruction noise"):
        read_case(_case_files(tmp_path / "a", body_suv(-1.0), body_ct()))
    with caplog.at_level(logging.WARNING, logger="petseg.io.cases"):
        read_case(_case_files(tmp_path / "b", body_suv(-0.3), body_ct()))
        read_case(_case_files(tmp_path / "c", body_suv(-0.02), body_ct()))
    assert caplog.text.count("more negative than reconstruction noise") == 1
    assert "b/images/pet/p.mha: 1st percentile -0.30 SUV" in caplog.text


def test_a_small_image_is_checked_on_every_voxel(tmp_path) -> None:
    """An offset that a sample of every 4th voxel per axis would not see (the voxels on
    that lattice are clean) is still refused: a small image is read whole."""
    suv = body_suv()
    off_lattice = np.ones(suv.shape, bool)
    off_lattice[::4, ::4, ::4] = False
    suv[off_lattice] = -1.0
    with pytest.raises(PetsegError, match=r"p\.mha: 1st percentile -1\.00 SUV"):
        read_case(_case_files(tmp_path, suv, body_ct()))


def test_swapped_or_wrong_modalities_are_named(tmp_path) -> None:
    suv, ct = body_suv(), body_ct().astype(np.float32)
    with pytest.raises(PetsegError, match=r"p\.mha: looks like a CT \(1st percentile -1000, air "
                                          r"in HU\) and c\.mha like a PET; the PET and CT "
                                          r"folders look swapped"):
        read_case(_case_files(tmp_path / "a", ct, suv))
    with pytest.raises(PetsegError, match=r"p\.mha: looks like a CT .*, not an SUV PET"):
        read_case(_case_files(tmp_path / "b", ct, ct))
    with pytest.raises(PetsegError, match=r"c\.mha: looks like a PET \(values 0 to [\d.]+, "
                                          r"no air\), not a CT in HU"):
        read_case(_case_files(tmp_path / "c", suv, suv))




@pytest.mark.parametrize("depth", ["dataset", "patient", "study"])
def test_an_autopet_case_is_named_after_its_patient(tmp_path, depth) -> None:
    """Whichever folder --input names, the case is `PETCT_<id>_<date>`, the name the
    evaluation gives its ground truth, never the date folder alone."""
    date = "07-18-2006-NA-PET-CT Ganzkoerper  primaer mit KM-26153"
    study = tmp_path / "PETCT_2910954e61" / date
    pet, ct = touch(study / "SUV.nii.gz"), touch(study / "CTres.nii.gz")
    root = {"dataset": tmp_path, "patient": study.parent, "study": study}[depth]
    [case] = find_cases(root).cases
    assert case == CaseFiles(
        "PETCT_2910954e61_07-18-2006-NA-PET-CT_Ganzkoerper_primaer_mit_KM-26153", pet, ct)
