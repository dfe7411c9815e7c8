"""DICOM in, DICOM SEG out: synthetic scanner DICOM, series choice, predict, the SEG read back."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from container_dicom import pet_uids_in_slice_order as uids_in_slice_order
from image_fixtures import file_digests
from inference_synthetic import finer_ct_geometry, make_case
from random_weights import make_random_weights

from petseg import __version__
from petseg.cli import main
from petseg.config import InferenceConfig, save_json
from petseg.io.cases import find_cases
from petseg.io.dicom import pet_series_suv
from petseg.io.dicom_seg import build_dicom_seg
from petseg.io.dicom_study import find_dicom_studies, study_name
from petseg.io.geometry import Geometry
from petseg.phantom import generate_case
from petseg.phantom.dicom import StudyTags, write_dicom_study, write_phantom_dicom

MASKS = Path("images/automated-petct-lesion-segmentation")


def pet_uids_in_slice_order(paths: list[Path]) -> list[str]:
    """SOPInstanceUIDs of PET files sorted along their slice normal (the mask's z order)."""
    return uids_in_slice_order([pydicom.dcmread(p, stop_before_pixels=True) for p in paths])


def _predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> int:
    return main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Two tiny random folds on a 6 mm grid: seconds per phantom on a CPU."""
    return make_random_weights(tmp_path_factory.mktemp("model") / "weights", folds=2)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "inference.json"
    save_json(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25, threshold=0.5), path)
    return path


@pytest.fixture(scope="module")
def phantom():
    return generate_case(3, "small", cohort="LUNG_CANCER")


# ----------------------------------------------------------------------------- the writer

def test_phantom_dicom_reads_back_as_the_phantom(tmp_path, phantom) -> None:
    written = write_phantom_dicom(phantom, tmp_path / "dicom")
    files = sorted(p for p in (tmp_path / "dicom").rglob("*") if p.is_file())
    assert len(files) == 128 + 129 + 1  # PET slices, CT slices, a screen capture
    assert all(p.suffix == "" and len(p.relative_to(tmp_path / "dicom").parts) == 4
               for p in files)
    [study] = find_dicom_studies(tmp_path / "dicom")
    assert study.study_uid == phantom.study_uid
    assert (study.pet.uid, study.ct.uid) == (written.series["pet"], written.series["ct"])
    first = pydicom.dcmread(study.pet.paths[0])
    assert (first.Units, first.DecayCorrection, float(first.PatientWeight)) == (
        "BQML", "START", 62.5)
    info = first.RadiopharmaceuticalInformationSequence[0]
    assert (float(info.RadionuclideHalfLife), float(info.RadionuclideTotalDose)) == (6586.2, 350e6)
    suv, parameters, _ = pet_series_suv(study.pet.paths, study.pet.headers)
    # 62.5 kg, 350 MBq decayed over 3870 s: 62500 / (350e6 * 2^(-3870/6586.2))
    assert parameters.factor == pytest.approx(2.6834584e-4, rel=1e-6)
    back = sitk.GetArrayFromImage(sitk.Resample(suv, phantom.pet, sitk.Transform(),
                                                sitk.sitkNearestNeighbor))
    truth = sitk.GetArrayFromImage(phantom.pet)
    assert np.abs(back - truth).max() <= truth.max() / 32767 * 1.01  # int16 quantisation
    ct = pydicom.dcmread(study.ct.paths[0])
    assert (ct.RescaleSlope, ct.RescaleIntercept) == (1, -1024)


# ----------------------------------------------------------------------------- series choice

def test_series_choice_and_dicomdir(tmp_path, phantom) -> None:
    written = write_phantom_dicom(phantom, tmp_path / "dicom", nac_pet=True, partial_ct=True,
                                  dicomdir=True)
    assert (tmp_path / "dicom" / "DICOMDIR").is_file()
    [study] = find_dicom_studies(tmp_path / "dicom")
    assert study.pet.uid == written.series["pet"]
    assert study.ct.uid == written.series["ct"]
    assert study.choices == (
        "PET: PT series 3 'PET WB AC' (128 files): attenuation corrected",
        "PT series 4 'PET WB NAC' skipped: not attenuation corrected "
        "(CorrectedImage DECY/DTIM/RAN/NORM)",
        "CT: CT series 2 'CT low dose WB' (129 files): covers 100.0% of the PET's axial extent",
        "CT series 5 'CT chest diagnostic' skipped: covers 33.1% of the PET's axial extent",
    )


# ----------------------------------------------------------------------------- predict

def section(phantom, slices: int = 40) -> tuple[sitk.Image, sitk.Image]:
    """PET and native CT of `slices` PET slices around the slice with most lesion voxels."""
    per_slice = sitk.GetArrayViewFromImage(phantom.seg).sum(axis=(1, 2))
    low = int(np.clip(np.argmax(per_slice) - slices // 2, 0, len(per_slice) - slices))
    pet = phantom.pet[:, :, low: low + slices]
    z = sorted(pet.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, slices - 1))
    ct_z = [phantom.ct.TransformIndexToPhysicalPoint((0, 0, k))[2]
            for k in range(phantom.ct.GetSize()[2])]
    keep = [k for k, v in enumerate(ct_z) if z[0] - 10 <= v <= z[1] + 10]
    return pet, phantom.ct[:, :, min(keep): max(keep) + 1]


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, phantom, weights, config):
    """`petseg predict` on a phantom section's DICOM (plus extras) and `petseg suv` + predict."""
    root = tmp_path_factory.mktemp("dicom_run")
    pet, ct = section(phantom)
    written = write_phantom_dicom(phantom, root / "dicom", nac_pet=True, pet_suv=pet, ct_hu=ct)
    before = file_digests(root / "dicom")
    code = _predict(root / "dicom", root / "out", weights, config, "--extras",
                    str(root / "extras"))
    after = file_digests(root / "dicom")
    for role in ("pet", "ct"):  # one folder per series for `petseg suv`
        (root / role).mkdir()
        for path in written.files[role]:
            shutil.copy(path, root / role / path.name)
    name = study_name(phantom.study_uid)
    assert main(["suv", "--pet-dicom", str(root / "pet"), "--out",
                 str(root / "mha/images/pet" / f"{name}.mha"), "--ct-dicom", str(root / "ct"),
                 "--ct-out", str(root / "mha/images/ct" / f"{name}.mha")]) == 0
    assert _predict(root / "mha", root / "out_mha", weights, config) == 0
    return {"root": root, "written": written, "code": code, "before": before,
            "after": after, "name": name}


def test_predict_on_dicom_equals_suv_then_predict(dicom_run, phantom) -> None:
    root, name = dicom_run["root"], dicom_run["name"]
    assert dicom_run["code"] == 0
    assert dicom_run["before"] == dicom_run["after"]  # the input is not modified
    mask = sitk.ReadImage(str(root / "out" / MASKS / f"{name}.mha"))
    reference = sitk.ReadImage(str(root / "out_mha" / MASKS / f"{name}.mha"))
    assert Geometry.of(mask) == Geometry.of(reference)
    values = sitk.GetArrayFromImage(mask)
    np.testing.assert_array_equal(values, sitk.GetArrayFromImage(reference))
    assert 0 < values.sum() < values.size  # a real mask, neither empty nor everything
    [entry] = json.loads((root / "out" / "results.json").read_text())
    written = dicom_run["written"]
    assert entry["name"] == name and entry["error_messages"] == []
    assert entry["outputs"] == [
        {"type": "metaio_image", "filename": str(root / "out" / MASKS / f"{name}.mha")},
        {"type": "dicom_seg", "filename": str(root / "out" / "dicom-seg" / f"{name}.dcm")}]
    assert entry["dicom"]["study_instance_uid"] == phantom.study_uid
    assert entry["dicom"]["pet_series"]["series_instance_uid"] == written.series["pet"]
    assert entry["dicom"]["ct_series"]["series_instance_uid"] == written.series["ct"]
    assert entry["dicom"]["choices"][1].startswith("PT series 4 'PET WB NAC' skipped")
    assert [i["series_instance_uid"] for i in entry["inputs"]] == [
        written.series["pet"], written.series["ct"]]
    report = json.loads((root / "extras" / f"{name}_lesions.json").read_text())
    assert report["study"]["PatientID"] == phantom.patient_id
    assert report["study"]["StudyInstanceUID"] == phantom.study_uid
    assert report["study"]["PatientName"] == "PHANTOM^3"


def test_dicom_seg_reads_back_onto_the_pet(dicom_run) -> None:
    root, name, written = dicom_run["root"], dicom_run["name"], dicom_run["written"]
    path = root / "out" / "dicom-seg" / f"{name}.dcm"
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "out" / MASKS / f"{name}.mha")))
    pet_uids = pet_uids_in_slice_order(written.files["pet"])
    pet = pydicom.dcmread(written.files["pet"][0])
    # pydicom: every frame references one PET instance; placed there it equals the mask
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "StudyInstanceUID", "StudyDate", "AccessionNumber", "FrameOfReferenceUID"):
        assert ds[key].value == pet[key].value, key
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    placed = np.zeros_like(mask)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        placed[pet_uids.index(source.ReferencedSOPInstanceUID)] = frame
    np.testing.assert_array_equal(placed, mask)
    [segment] = ds.SegmentSequence
    assert (segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("49755003", "108369006")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("petseg", __version__)
    assert ds.SeriesInstanceUID not in (written.series["pet"], written.series["ct"])
    # highdicom: the same pixels by source instance, in PET slice order
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(pet_uids, segment_numbers=[1],
                                               ignore_spatial_locations=True)
    np.testing.assert_array_equal(pixels[..., 0], mask)
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(pet_uids)


def test_seg_uids_are_fresh_unless_seeded(dicom_run) -> None:
    root = dicom_run["root"]
    [study] = find_dicom_studies(root / "dicom")
    mask = sitk.ReadImage(str(root / "out" / MASKS / f"{dicom_run['name']}.mha"))
    uids = [(s.SeriesInstanceUID, s.SOPInstanceUID) for s in (
        build_dicom_seg(study, mask), build_dicom_seg(study, mask),
        build_dicom_seg(study, mask, seed="site-1"), build_dicom_seg(study, mask, seed="site-1"),
        build_dicom_seg(study, mask, seed="site-2"),
        build_dicom_seg(study, sitk.Cast(mask * 0, sitk.sitkUInt8), seed="site-1"))]
    assert uids[2] == uids[3]
    assert len({*uids}) == 5 and len({u for pair in uids for u in pair}) == 10
    one_slice = np.zeros(sitk.GetArrayViewFromImage(mask).shape, np.uint8)
    one_slice[20, 30:40, 30:40] = 1  # slices without lesion are left out
    image = sitk.GetImageFromArray(one_slice)
    image.CopyInformation(mask)
    assert int(build_dicom_seg(study, image).NumberOfFrames) == 1


# ----------------------------------------------------------------------------- bad DICOM

def test_bad_studies_are_reported_and_the_rest_run(tmp_path, weights, config, caplog,
                                                  capsys) -> None:
    pet, _, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    ct = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0),
                   ct_geometry=finer_ct_geometry(pet, spacing=(2.5, 2.5, 3.0)))[1]
    root = tmp_path / "mixed"  # four studies written into one folder tree
    studies = {kind: write_dicom_study(root, pet, ct, StudyTags(
        patient_name=f"DOE^{kind.upper()}", patient_id=f"ID-{kind}",
        weight_kg=None if kind == "no_weight" else 75.0), seed=seed)
        for seed, kind in enumerate(("good", "no_pet", "no_weight", "gap"))}
    for path in studies["no_pet"].files["pet"]:
        path.unlink()
    gap_uids = pet_uids_in_slice_order(studies["gap"].files["pet"])
    [middle] = [p for p in studies["gap"].files["pet"]
                if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == gap_uids[10]]
    middle.unlink()
    names = {kind: study_name(w.study_uid) for kind, w in studies.items()}
    assert sorted(c.name for c in find_cases(root).cases) == sorted(names.values())

    with caplog.at_level(logging.INFO):
        code = _predict(root, tmp_path / "out", weights, config)
    assert code == 1
    entries = {e["name"]: e for e in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert entries[names["good"]]["error_messages"] == []
    assert (tmp_path / "out" / "dicom-seg" / f"{names['good']}.dcm").is_file()
    assert entries[names["no_pet"]]["error_messages"] == [
        f"{root / 'DATA'}: study has no PET series (Modality PT; its series: CT series 2 "
        f"'CT low dose WB' (53 files), OT series 99 'Dose report screen' (1 files)); export "
        f"the study with its attenuation-corrected PET"]
    weight_file = sorted(studies["no_weight"].files["pet"])[0]
    assert entries[names["no_weight"]]["error_messages"] == [
        f"{weight_file}: DICOM tag PatientWeight (0010,1030) is missing or empty; "
        f"pass --weight-kg"]
    [gap] = entries[names["gap"]]["error_messages"]
    assert "slice gaps are uneven (6.000..12.000 mm); a slice is missing" in gap
    for kind in ("no_pet", "no_weight", "gap"):
        assert f"case {names[kind]} failed: " in caplog.text
        assert not (tmp_path / "out" / MASKS / f"{names[kind]}.mha").exists()
        assert entries[names[kind]]["outputs"] == []
    assert sorted(p.name for p in (tmp_path / "out" / MASKS).iterdir()) == [
        f"{names['good']}.mha"]
    assert (f"case {names['good']}: reading the DICOM study's PET and CT series"
            in caplog.text)
    # nothing about the patients on stderr (names and ids stay in the output folder)
    logged = caplog.text + capsys.readouterr().err
    assert "DOE^" not in logged and "ID-" not in logged

    # the weight given on the command line rescues the study without PatientWeight
    assert _predict(root, tmp_path / "out2", weights, config, "--weight-kg", "75",
                    "--no-dicom-seg") == 1
    entries = {e["name"]: e for e in json.loads((tmp_path / "out2" / "results.json").read_text())}
    assert entries[names["no_weight"]]["error_messages"] == []
    assert not (tmp_path / "out2" / "dicom-seg").exists()
    same = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / MASKS / f"{n}.mha")))
            for out, n in (("out", names["good"]), ("out2", names["no_weight"]))]
    np.testing.assert_array_equal(*same)  # same images, same weight: the same mask
