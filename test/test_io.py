"""Case discovery (three layouts), reading and checking a case, atomic writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.geometry import LAS_DIRECTION, Geometry
from petseg.io import (
    CaseFiles,
    find_cases,
    pairing_key,
    read_case,
    read_image,
    safe_name,
    write_image,
    write_json,
)

GEOMETRY = Geometry((10, 9, 8), (2.0364, 2.0364, 3.0), (-10.0, 20.0, -300.0), LAS_DIRECTION)


def _write(path: Path, values: np.ndarray | None = None, geometry: Geometry = GEOMETRY) -> Path:
    if values is None:
        values = np.zeros(tuple(reversed(geometry.size)), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(geometry.image_from_array(values), str(path))
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_single_challenge_case_is_named_after_the_pet_uuid(tmp_path) -> None:
    pet = _touch(tmp_path / "images/pet/9ec5-aa01.mha")
    ct = _touch(tmp_path / "images/ct/77b2-0c3f.mha")
    _touch(tmp_path / "images/pet/.9ec5-aa01.mha.tmp123.mha")  # a hidden leftover
    found = find_cases(tmp_path)
    assert found.single
    assert found.cases == [CaseFiles("9ec5-aa01", pet, ct)]


def test_several_challenge_cases_are_paired_by_name(tmp_path) -> None:
    for stem in ("b", "a"):
        _touch(tmp_path / f"images/pet/{stem}.nii.gz")
        _touch(tmp_path / f"images/ct/{stem}.nrrd")
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
        _touch(tmp_path / "images/pet" / name)
    for name in cts:
        _touch(tmp_path / "images/ct" / name)
    found = find_cases(tmp_path)
    assert [pairing_key(c.pet) for c in found.cases] == ["p1", "p2"]
    assert [pairing_key(c.ct) for c in found.cases] == ["p1", "p2"]


def test_two_pets_with_one_ct_are_refused_with_the_fix(tmp_path) -> None:
    _touch(tmp_path / "images/pet/a.mha")
    _touch(tmp_path / "images/pet/b.mha")
    _touch(tmp_path / "images/ct/c.mha")
    with pytest.raises(PetsegError) as info:
        find_cases(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'images'}: 2 PET and 1 CT image(s) cannot be paired; give each PET and "
        "its CT the same file name, or put each case in its own folder (<case>/images/pet/, "
        "<case>/images/ct/)"
    )


def test_missing_ct_or_pet_names_the_folder(tmp_path) -> None:
    _touch(tmp_path / "images/pet/a.mha")
    with pytest.raises(PetsegError, match=r"images/ct: no CT image \(\.mha, \.nii\.gz, \.nrrd\)"):
        find_cases(tmp_path)
    (tmp_path / "images/pet/a.mha").unlink()
    _touch(tmp_path / "images/ct/a.mha")
    with pytest.raises(PetsegError, match=r"images/pet: no PET image"):
        find_cases(tmp_path)


def test_folder_of_case_folders_records_a_bad_case_and_keeps_the_rest(tmp_path) -> None:
    _touch(tmp_path / "case_1/images/pet/u1.mha")
    _touch(tmp_path / "case_1/images/ct/u2.mha")
    _touch(tmp_path / "case 2/images/pet/u3.mha")
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
    pet = _touch(tmp_path / "PETCT_0af7ffe12a" / date / "SUV.nii.gz")
    ct = _touch(tmp_path / "PETCT_0af7ffe12a" / date / "CTres.nii.gz")
    _touch(tmp_path / "PETCT_0af7ffe12a" / date / "SEG.nii.gz")
    _touch(tmp_path / "PETCT_1b2c" / "01-01-2001" / "SUV.nii.gz")
    found = find_cases(tmp_path)
    assert not found.single
    first, second = found.cases
    assert first == CaseFiles(
        "PETCT_0af7ffe12a_08-12-2005-NA-PET-CT_Ganzkoerper_primaer_mit_KM-10445", pet, ct)
    assert second.name == "PETCT_1b2c_01-01-2001"
    assert "no CTres image beside SUV.nii.gz" in second.error


def test_nothing_found_and_missing_input_are_clear_errors(tmp_path) -> None:
    _touch(tmp_path / "readme.txt")
    with pytest.raises(PetsegError, match=r"no cases found; expected images/pet/"):
        find_cases(tmp_path)
    with pytest.raises(PetsegError, match="input folder not found; check --input"):
        find_cases(tmp_path / "absent")


def test_safe_name() -> None:
    assert safe_name("PETCT_1/08-12 2005 (x)") == "PETCT_1_08-12_2005_x"
    assert safe_name("...") == "case"


def _case_files(tmp_path: Path, pet: np.ndarray, ct: np.ndarray,
                ct_geometry: Geometry = GEOMETRY) -> CaseFiles:
    return CaseFiles("c", _write(tmp_path / "images/pet/p.mha", pet),
                     _write(tmp_path / "images/ct/c.mha", ct, ct_geometry))


def test_a_pet_not_in_suv_is_refused_and_a_ct_without_air_warned_about(tmp_path,
                                                                         caplog) -> None:
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 1.0, (8, 9, 10)).astype(np.float32)  # SUV-like, max ~15
    ct = np.full(suv.shape, -1000.0, np.float32)
    ct[2:6, 2:7, 2:8] = 40.0
    with caplog.at_level(logging.WARNING, logger="petseg.io"):
        read_case(_case_files(tmp_path / "ok", suv, ct))
    assert "no air" not in caplog.text
    files = _case_files(tmp_path / "bq", suv * 5000.0, ct)  # Bq/ml at ~5 kBq/ml per SUV
    with pytest.raises(PetsegError, match=r"p\.mha: 99\.9th percentile \d+, far above any SUV "
                                          r"\(Bq/ml\?\); convert the PET to body-weight SUV"):
        read_case(files)
    with caplog.at_level(logging.WARNING, logger="petseg.io"):
        read_case(_case_files(tmp_path / "raw", suv, ct + 1024.0))  # stored values, no rescale
    assert "c.mha: no air in the CT (1st percentile 24 HU, above -500 HU)" in caplog.text


def test_read_case_cleans_non_finite_voxels_with_a_warning(tmp_path, caplog) -> None:
    pet = np.ones((8, 9, 10), np.float32)
    pet[0, 0, :3] = np.nan
    pet[1, 1, 1] = np.inf
    ct = np.zeros((8, 9, 10), np.float32)
    ct[2, 2, 2] = np.nan
    files = _case_files(tmp_path, pet, ct)
    with caplog.at_level(logging.WARNING, logger="petseg.io"):
        case = read_case(files, ct_fill_hu=-1024.0)
    pet_out = sitk.GetArrayFromImage(case.pet)
    ct_out = sitk.GetArrayFromImage(case.ct)
    assert case.pet.GetPixelID() == sitk.sitkFloat32
    assert pet_out[0, 0, :3].tolist() == [0, 0, 0] and pet_out[1, 1, 1] == 0
    assert pet_out.sum() == pet.size - 4
    assert ct_out[2, 2, 2] == -1024.0 and np.isfinite(ct_out).all()
    assert f"{files.pet}: 4 non-finite voxel(s) (NaN/inf) set to 0" in caplog.text
    assert f"{files.ct}: 1 non-finite voxel(s) (NaN/inf) set to -1024" in caplog.text
    assert Geometry.of(case.pet) == GEOMETRY


def _body_suv(shift: float = 0.0) -> np.ndarray:
    """An SUV volume `[8, 9, 10]`: air (0) around a body of gamma-distributed uptake."""
    suv = np.zeros((8, 9, 10), np.float32)
    suv[1:7, 2:8, 2:9] = np.random.default_rng(0).gamma(2.0, 1.0, (6, 6, 7))
    return suv + np.float32(shift)


def _body_ct() -> np.ndarray:
    ct = np.full((8, 9, 10), -1000, np.int16)
    ct[1:7, 2:8, 2:9] = 40
    ct[3:5, 4:6, 4:6] = 700  # bone
    return ct


@pytest.mark.parametrize(("origin", "size"), [
    ((-10.0, 20.0, 500.0), (10, 9, 8)),  # elsewhere
    ((-10.0, 20.0, -324.0), (10, 9, 8)),  # boxes touching in one plane
    ((-10.0, 20.0, -300.0), (10, 9, 3)),  # 3 of 8 slices
    ((-10.0 + 18.3, 20.0, -300.0), (10, 9, 8)),  # x shifted by 9 of 10 columns
])
def test_read_case_refuses_a_ct_covering_too_little_of_the_pet(tmp_path, origin, size) -> None:
    ct_grid = Geometry(size, GEOMETRY.spacing, origin, LAS_DIRECTION)
    ct = np.full(tuple(reversed(size)), -1000, np.int16)
    files = _case_files(tmp_path, _body_suv(), ct, ct_grid)
    with pytest.raises(PetsegError, match=r"images/ct/c\.mha: covers \d+% x \d+% x \d+% "
                                          r"\(x, y, z\) of the PET p\.mha \(CT .* mm\);"
                                          r" check both images "
                                          r"come from the same study"):
        read_case(files)


def test_read_case_warns_when_the_ct_misses_some_slices(tmp_path, caplog) -> None:
    short = Geometry((10, 9, 6), GEOMETRY.spacing, GEOMETRY.origin, LAS_DIRECTION)
    files = _case_files(tmp_path, _body_suv(), _body_ct()[:6], short)
    with caplog.at_level(logging.WARNING, logger="petseg.io"):
        read_case(files)
    assert "c.mha: covers only 75% of the PET's axial length" in caplog.text


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16])
def test_an_integer_pet_is_refused(tmp_path, dtype) -> None:
    files = _case_files(tmp_path, np.round(_body_suv()).astype(dtype), _body_ct())
    with pytest.raises(PetsegError, match=r"p\.mha: stored as \d+-bit (un)?signed integer values, "
                                          r"which lose SUV's decimals; write the PET as float32"):
        read_case(files)


def test_negative_suv_is_refused_or_warned_about(tmp_path, caplog) -> None:
    with pytest.raises(PetsegError, match=r"p\.mha: 1st percentile -1\.00 SUV; SUV is not "
                                          r"negative beyond reconstruction noise"):
        read_case(_case_files(tmp_path / "a", _body_suv(-1.0), _body_ct()))
    with caplog.at_level(logging.WARNING, logger="petseg.io"):
        read_case(_case_files(tmp_path / "b", _body_suv(-0.3), _body_ct()))
        read_case(_case_files(tmp_path / "c", _body_suv(-0.02), _body_ct()))
    assert caplog.text.count("more negative than reconstruction noise") == 1
    assert "b/images/pet/p.mha: 1st percentile -0.30 SUV" in caplog.text


def test_swapped_or_wrong_modalities_are_named(tmp_path) -> None:
    suv, ct = _body_suv(), _body_ct().astype(np.float32)
    with pytest.raises(PetsegError, match=r"p\.mha: looks like a CT \(1st percentile -1000, air "
                                          r"in HU\) and c\.mha like a PET; the PET and CT "
                                          r"folders look swapped"):
        read_case(_case_files(tmp_path / "a", ct, suv))
    with pytest.raises(PetsegError, match=r"p\.mha: looks like a CT .*, not an SUV PET"):
        read_case(_case_files(tmp_path / "b", ct, ct))
    with pytest.raises(PetsegError, match=r"c\.mha: looks like a PET \(values 0 to [\d.]+, "
                                          r"no air\), not a CT in HU"):
        read_case(_case_files(tmp_path / "c", suv, suv))


def _edit_header(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    return path


def _mha(path: Path, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = GEOMETRY.image_from_array(_body_suv())
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 2.0364 -2.0364 3",
     r"voxel spacing 2\.0364 -2\.0364 3 in the header is not positive \(a flip belongs in the "
     r"direction matrix\)"),
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 0 2.0364 3",
     r"voxel spacing \[0, 2\.0364, 3\] in the header is not positive"),
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 2.0364 2.0364 300",
     r"voxel spacing 2\.0364 x 2\.0364 x 300 mm is outside 0\.1-20 mm"),
    (b"TransformMatrix = -1 0 0 0 1 0 0 0 1", b"TransformMatrix = -1 0 0 -1 0 0 0 0 1",
     r"the direction matrix in the header is singular"),
    (b"TransformMatrix = -1 0 0 0 1 0 0 0 1", b"TransformMatrix = -2 0 0 0 1 0 0 0 1",
     r"direction matrix \[\[-2\.0, 0\.0, 0\.0\], .* is not orthonormal \(off by 3\)"),
])
def test_headers_no_scanner_writes_are_refused(tmp_path, old, new, message) -> None:
    path = _edit_header(_mha(tmp_path / "p.mha"), old, new)
    with pytest.raises(PetsegError, match=r"p\.mha: " + message):
        read_image(path)


def test_negative_nifti_pixdim_is_refused(tmp_path) -> None:
    import gzip
    import struct

    path = tmp_path / "p.nii.gz"
    sitk.WriteImage(GEOMETRY.image_from_array(_body_suv()), str(path))
    header = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", header, 80, -2.0364)  # pixdim[1]
    path.write_bytes(gzip.compress(bytes(header)))
    with pytest.raises(PetsegError, match=r"p\.nii\.gz: voxel spacing -2\.0364 2\.0364 3 in the "
                                          r"header is not positive"):
        read_image(path)


def test_truncated_empty_and_corrupt_files_say_so(tmp_path) -> None:
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(PetsegError, match=r"flat\.mha: is 2D, a 3D volume is needed"):
        read_image(flat)
    raw = _mha(tmp_path / "raw.mha")
    raw.write_bytes(raw.read_bytes()[:-1000])
    with pytest.raises(PetsegError, match=r"raw\.mha: is truncated: 1,880 of 2,880 bytes of voxel "
                                          r"data; copy the file again$"):
        read_image(raw)
    packed = _mha(tmp_path / "packed.mha", compress=True)
    packed.write_bytes(packed.read_bytes()[:-100])
    size = packed.stat().st_size
    with pytest.raises(PetsegError, match=rf"packed\.mha: is truncated or corrupt: the header "
                                          rf"describes 720 voxels \(10 x 9 x 8\), the file holds "
                                          rf"{size:,} bytes; copy the file again$"):
        read_image(packed)
    nifti = tmp_path / "p.nii.gz"
    sitk.WriteImage(GEOMETRY.image_from_array(_body_suv()), str(nifti))
    nifti.write_bytes(nifti.read_bytes()[:-200])
    with pytest.raises(PetsegError, match=r"p\.nii\.gz: is truncated or corrupt"):
        read_image(nifti)
    with pytest.raises(PetsegError, match=r"empty\.mha: is empty \(0 bytes\); copy the file"):
        read_image(_touch(tmp_path / "empty.mha"))
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(PetsegError, match=r"junk\.nrrd: is not an image SimpleITK can read, or its "
                                          r"header is corrupt \(190 bytes\); replace the file"):
        read_image(junk)


def test_atomic_writes_leave_no_partial_file(tmp_path) -> None:
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "out/results.json")
    assert list((tmp_path / "out").iterdir()) == []
    write_json([{"name": "a"}], tmp_path / "out/results.json")
    assert json.loads((tmp_path / "out/results.json").read_text()) == [{"name": "a"}]
    path = write_image(GEOMETRY.reference_image(), tmp_path / "out/m.mha")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.mha", "results.json"]
    assert Geometry.of(read_image(path)) == GEOMETRY


def test_atomic_writes_give_files_the_plain_open_mode(tmp_path) -> None:
    """Results are readable by other users (umask 022 gives 0644), even where the writer
    replaces the temporary file with a 0600 one, as safetensors does."""
    import os
    import stat

    import torch

    from petseg.checkpoint import save_checkpoint
    from petseg.config import ModelConfig

    old_umask = os.umask(0o022)
    try:
        image = write_image(GEOMETRY.reference_image(), tmp_path / "m.mha")
        report = write_json({"a": 1}, tmp_path / "r.json")
        weights = save_checkpoint(tmp_path / "fold_0.safetensors", {"w": torch.zeros(2)},
                                  ModelConfig(), {"mean_dsc": 0.5})
    finally:
        os.umask(old_umask)
    for path in (image, report, weights):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_write_json_refuses_nan_in_strict_mode_and_leaves_no_file(tmp_path) -> None:
    target = tmp_path / "out" / "summary.json"
    data = {"folds": {"fold_0": {"metrics": {"mean_dsc": float("nan")}}}, "n": [1, 2]}
    with pytest.raises(ValueError, match=r"summary\.json: folds\.fold_0\.metrics\.mean_dsc is "
                                         r"NaN or infinite, which strict JSON cannot hold"):
        write_json(data, target)
    with pytest.raises(ValueError, match=r"values\[1\] is NaN or infinite"):
        write_json({"values": [0.5, float("-inf")]}, target)
    assert list((tmp_path / "out").iterdir()) == []
    write_json(data, target, strict=False)
    assert json.loads(target.read_text()) == {"folds": {"fold_0": {"metrics": {"mean_dsc": None}}},
                                             "n": [1, 2]}


def test_write_json_maps_numpy_paths_and_tuples_only_on_purpose(tmp_path) -> None:
    data = {"spacing": (np.float32(2.5), np.int64(3)), "file": tmp_path / "a.mha"}
    with pytest.raises(TypeError):
        write_json(data, tmp_path / "strict.json")
    path = write_json(data, tmp_path / "loose.json", strict=False, indent=1)
    assert json.loads(path.read_text()) == {"spacing": [2.5, 3], "file": str(tmp_path / "a.mha")}
    assert path.read_text().startswith('{\n "spacing": [\n  2.5,')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.json"]


def test_write_json_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    target = write_json({"version": 1}, tmp_path / "manifest.json")
    with pytest.raises(ValueError):
        write_json({"version": float("nan")}, target)
    with pytest.raises(TypeError):
        write_json({"version": object()}, target)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_read_json_names_the_file_and_the_fix(tmp_path) -> None:
    from petseg.io import read_json

    fix = "recreate it with `petseg split`"
    missing = tmp_path / "splits.json"
    with pytest.raises(PetsegError) as raised:
        read_json(missing, "split file", fix)
    assert str(raised.value) == f"{missing}: split file not found; {fix}"
    missing.write_text('{"folds": 5,')
    with pytest.raises(PetsegError) as raised:
        read_json(missing, "split file", fix)
    message = str(raised.value)
    assert message.startswith(f"{missing}: split file not valid JSON (Expecting ")
    assert message.endswith(f"); {fix}") and "\n" not in message
    missing.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(PetsegError, match=r"splits\.json: not valid JSON \(.*utf-8"):
        read_json(missing, "", fix)
    with pytest.raises(PetsegError, match=r": cannot be read \(Is a directory\); restore it"):
        read_json(tmp_path, "", "restore it")
    missing.write_text('{"folds": 5, "seed": [1, 2.5]}')
    assert read_json(missing, "split file", fix) == {"folds": 5, "seed": [1, 2.5]}
