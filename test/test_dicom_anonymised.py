"""DICOM SEG of studies as anonymisers leave them, checked by an independent validator
(dciodvfy of Debian's dicom3tools)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from container_dicom import dciodvfy_errors
from inference_synthetic import finer_ct_geometry, make_case

from petseg.io.dicom_seg import (
    MANDATORY_MODULES,
    OPTIONAL_MODULE_ATTRIBUTES,
    TYPE2_ATTRIBUTES,
    complete_type2_attributes,
    write_dicom_seg,
)
from petseg.io.dicom_study import find_dicom_studies
from petseg.phantom.dicom import ANONYMISER_REMOVES, StudyTags, write_dicom_study

ANONYMISED = ANONYMISER_REMOVES
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def images() -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    pet, _, seg, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    ct = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0),
                   ct_geometry=finer_ct_geometry(pet, spacing=(2.5, 2.5, 3.0)))[1]
    return pet, ct, seg


def _seg_of(root: Path, images, removed: tuple[str, ...]) -> Path:
    """The SEG of a study written without `removed`; returns its path."""
    pet, ct, mask = images
    write_dicom_study(root / "study", pet, ct, StudyTags(removed=removed), seed=5)
    [study] = find_dicom_studies(root / "study")
    assert all(key not in study.pet.headers[0] for key in removed)
    return write_dicom_seg(study, mask, root / "seg.dcm")


def highdicom_tables() -> dict[str, dict[str, tuple[str, ...]]]:
    """`TYPE2_ATTRIBUTES`, `MANDATORY_MODULES` (as keys) and `OPTIONAL_MODULE_ATTRIBUTES` as
    highdicom's copy of the standard's tables gives them (its private module: only a test
    reads it), by the names of the petseg constants."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map

    attributes = get_module_attribute_map()
    modules = {m["key"]: m["usage"] for m in get_iod_module_map()["segmentation"]
               if m["ie"] in ("Patient", "Study")}
    roots = {key: [item for item in attributes[key] if not item["path"]] for key in modules}
    type2 = {key: tuple(i["keyword"] for i in items if i["type"] == "2")
             for key, items in roots.items()}
    type2 = {key: keywords for key, keywords in type2.items() if keywords}
    return {"TYPE2_ATTRIBUTES": type2,
            "MANDATORY_MODULES": {key: () for key in type2 if modules[key] == "M"},
            "OPTIONAL_MODULE_ATTRIBUTES": {key: tuple(i["keyword"] for i in roots[key])
                                           for key in type2 if modules[key] != "M"}}


def table_differences(ours: dict[str, tuple[str, ...]],
                      theirs: dict[str, tuple[str, ...]]) -> list[str]:
    """'module: petseg only [...], highdicom only [...]' for each module whose keywords
    differ (order aside), or that only one of the tables has."""
    found = []
    for key in sorted(set(ours) | set(theirs)):
        mine, other = set(ours.get(key, ["<no module>"])), set(theirs.get(key, ["<no module>"]))
        if mine != other:
            found.append(f"{key}: petseg only {sorted(mine - other)}, "
                         f"highdicom only {sorted(other - mine)}")
    return found


def test_the_type2_tables_match_highdicoms() -> None:
    theirs = highdicom_tables()
    ours = {"TYPE2_ATTRIBUTES": TYPE2_ATTRIBUTES,
            "MANDATORY_MODULES": {key: () for key in MANDATORY_MODULES},
            "OPTIONAL_MODULE_ATTRIBUTES": OPTIONAL_MODULE_ATTRIBUTES}
    differences = [f"{name} {line}" for name in ours
                   for line in table_differences(ours[name], theirs[name])]
    assert differences == [], "highdicom's tables changed: " + "; ".join(differences)
    # the comparison names what differs
    changed = {**TYPE2_ATTRIBUTES, "patient": ("PatientName", "PatientID", "PatientAge")}
    assert table_differences(changed, theirs["TYPE2_ATTRIBUTES"]) == [
        "patient: petseg only ['PatientAge'], highdicom only ['PatientBirthDate', 'PatientSex']"]
    assert table_differences({}, {"patient-study": ("PatientAge",)}) == [
        "patient-study: petseg only ['<no module>'], highdicom only ['PatientAge']"]


def test_the_type2_attributes_come_from_the_standard() -> None:
    found = TYPE2_ATTRIBUTES
    assert found["patient"] == ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
    assert set(found["general-study"]) == {"StudyDate", "StudyTime", "AccessionNumber",
                                           "ReferringPhysicianName", "StudyID"}
    assert set(ANONYMISED) <= {k for keys in found.values() for k in keys}


@pytest.mark.parametrize("removed", [(key,) for key in ANONYMISED]
                         + [ANONYMISED, ("PatientName", "PatientID", *ANONYMISED)],
                         ids=[*ANONYMISED, "all", "all-and-identity"])
def test_a_seg_of_an_anonymised_study_has_them_empty(tmp_path, images, removed) -> None:
    path = _seg_of(tmp_path, images, removed)
    ds = pydicom.dcmread(path)
    pet = pydicom.dcmread(next(p for p in (tmp_path / "study").rglob("*") if p.is_file()
                               and pydicom.dcmread(p, stop_before_pixels=True).Modality == "PT"))
    for key in ("PatientName", "PatientID", *ANONYMISED):
        if key in removed:
            assert key in ds and ds[key].value in ("", None), key
        else:
            assert ds[key].value == pet[key].value, key
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    assert frames.sum() == sitk.GetArrayViewFromImage(images[2]).sum()


def test_an_undefined_patient_sex_is_written_empty() -> None:
    source = pydicom.Dataset()
    source.PatientSex, source.StudyInstanceUID = "X", "1.2.3"
    completed = complete_type2_attributes(source)
    assert completed.PatientSex in ("", None) and source.PatientSex == "X"
    assert completed.PatientBirthDate in ("", None) and "PatientBirthDate" not in source
    whole = complete_type2_attributes(completed)
    assert whole is completed  # nothing left to complete: no copy


def test_clinical_trial_modules_are_completed_only_when_present() -> None:
    source = pydicom.Dataset()
    for key in ("PatientName", "PatientID", *ANONYMISED):
        setattr(source, key, "")
    assert complete_type2_attributes(source) is source
    source.ClinicalTrialSponsorName = "Sponsor"
    completed = complete_type2_attributes(source)
    assert {"ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName"} <= set(
        completed.dir())


@pytest.mark.skipif(DCIODVFY is None and os.environ.get("PETSEG_REQUIRE_DCIODVFY") != "1",
                    reason="dciodvfy not installed (Debian package dicom3tools; "
                           "scripts/system_setup.sh installs it)")
@pytest.mark.parametrize("removed", [(), ("PatientName", "PatientID", *ANONYMISED)],
                         ids=["complete", "anonymised"])
def test_dciodvfy_finds_no_error_in_the_seg(tmp_path, images, removed) -> None:
    assert DCIODVFY is not None, "PETSEG_REQUIRE_DCIODVFY=1 but dciodvfy is not on PATH"
    path = _seg_of(tmp_path, images, removed)
    assert dciodvfy_errors(path) == []
    broken = pydicom.dcmread(path)
    del broken.SegmentSequence  # the validator is awake: a SEG without segments is an error
    broken.save_as(tmp_path / "broken.dcm")
    assert dciodvfy_errors(tmp_path / "broken.dcm") != []


@pytest.fixture(scope="module")
def anonymised_prediction(tmp_path_factory, images) -> tuple[Path, Path]:
    """`petseg predict` on a study without the anonymised attributes: (mask, SEG) paths."""
    from random_weights import make_random_weights

    from petseg.cli import main
    from petseg.config import InferenceConfig, save_json
    from petseg.io.dicom_study import study_name

    root = tmp_path_factory.mktemp("anonymised")
    pet, ct, _ = images
    written = write_dicom_study(root / "dicom", pet, ct, StudyTags(removed=ANONYMISED), seed=3)
    save_json(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25, threshold=0.5),
              root / "inference.json")
    assert main(["predict", "--input", str(root / "dicom"), "--output", str(root / "out"),
                 "--weights", str(make_random_weights(root / "weights", folds=1)),
                 "--config", str(root / "inference.json"), "--device", "cpu"]) == 0
    name = study_name(written.study_uid)
    return (root / "out/images/automated-petct-lesion-segmentation" / f"{name}.mha",
            root / "out" / "dicom-seg" / f"{name}.dcm")


def test_predict_on_an_anonymised_study_writes_mask_and_seg(images,
                                                             anonymised_prediction) -> None:
    mask_path, seg_path = anonymised_prediction
    mask = sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == images[0].GetSize()
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG"
    assert seg.PatientBirthDate in ("", None)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    assert frames.sum() == sitk.GetArrayViewFromImage(mask).sum()


@pytest.mark.skipif(DCIODVFY is None and os.environ.get("PETSEG_REQUIRE_DCIODVFY") != "1",
                    reason="dciodvfy not installed (Debian package dicom3tools; "
                           "scripts/system_setup.sh installs it)")
def test_dciodvfy_finds_no_error_in_the_predicted_seg(anonymised_prediction) -> None:
    assert DCIODVFY is not None, "PETSEG_REQUIRE_DCIODVFY=1 but dciodvfy is not on PATH"
    assert dciodvfy_errors(anonymised_prediction[1]) == []
