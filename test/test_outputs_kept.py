"""Nothing computed is lost: a failing optional output (DICOM SEG, probability map, extras)
leaves the mask written, is recorded in results.json and makes the exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import finer_ct_geometry, lesion_truth, make_case
from random_weights import make_random_weights
from tiny_models import TINY, SuvThreshold

import petseg.io.dicom_seg
import petseg.runs.writers
from petseg.cli import main
from petseg.config import InferenceConfig, resolve_inference_config, save_json
from petseg.inference.predictor import Predictor
from petseg.io.cases import find_cases
from petseg.io.dicom_study import study_name
from petseg.io.images import write_image
from petseg.phantom.dicom import StudyTags, write_dicom_study
from petseg.runs import predict_folder

MASKS = Path("images/automated-petct-lesion-segmentation")
HIGHDICOM_FAILURE = "'FileDataset' object has no attribute 'PatientBirthDate'"


@pytest.fixture(scope="module")
def images() -> tuple[sitk.Image, sitk.Image]:
    pet = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))[0]
    ct = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0),
                   ct_geometry=finer_ct_geometry(pet, spacing=(2.5, 2.5, 3.0)))[1]
    return pet, ct


def _failing_seg(*args, **kwargs):
    raise AttributeError(HIGHDICOM_FAILURE)


def test_a_failing_dicom_seg_leaves_the_mask(tmp_path, images, monkeypatch) -> None:
    pet, ct = images
    written = write_dicom_study(tmp_path / "dicom", pet, ct, StudyTags(), seed=2)
    name = study_name(written.study_uid)
    weights = make_random_weights(tmp_path / "weights", folds=1)
    config = tmp_path / "inference.json"
    save_json(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25, threshold=0.5), config)
    arguments = ["predict", "--input", str(tmp_path / "dicom"), "--output", str(tmp_path / "out"),
                 "--weights", str(weights), "--config", str(config), "--device", "cpu"]
    assert main(arguments) == 0
    good_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / MASKS /
                                                          f"{name}.mha")))
    seg = tmp_path / "out" / "dicom-seg" / f"{name}.dcm"
    assert seg.is_file()
    monkeypatch.setattr(petseg.io.dicom_seg, "build_dicom_seg", _failing_seg)
    assert main(arguments) == 1
    mask = tmp_path / "out" / MASKS / f"{name}.mha"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(mask))), good_mask)
    assert not seg.exists()  # the earlier run's SEG does not pass for this run's
    [entry] = json.loads((tmp_path / "out" / "results.json").read_text())
    assert entry["error_messages"] == [
        f"DICOM SEG not written: AttributeError: {HIGHDICOM_FAILURE}"]
    assert entry["outputs"] == [{"type": "metaio_image", "filename": str(mask)}]
    assert entry["lesion_volume_ml"] == pytest.approx(good_mask.sum() * 4 * 4 * 6 / 1000)


def test_a_failing_probability_map_leaves_the_mask(tmp_path, images, monkeypatch) -> None:
    pet, ct = images
    for kind, image in (("pet", pet), ("ct", ct)):
        write_image(image, tmp_path / "in" / "images" / kind / f"case-{kind}.mha")
    predictor = Predictor([SuvThreshold()], TINY, resolve_inference_config(
        InferenceConfig(roi_size=(32, 32, 32), overlap=0.25)), device="cpu")
    stale = tmp_path / "out" / "probabilities" / "case-pet.mha"
    write_image(pet, stale)

    def full_disk(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
        if "probabilities" in str(path):
            raise OSError(28, "No space left on device")
        return write_image(image, path, compress)

    monkeypatch.setattr(petseg.runs.writers, "write_image", full_disk)
    [entry] = predict_folder(find_cases(tmp_path / "in"), tmp_path / "out", predictor,
                            save_probability=True)
    assert entry["error_messages"] == [
        "probability map not written: OSError: [Errno 28] No space left on device"]
    assert not stale.exists()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / MASKS /
                                                     "case-pet.mha")))
    truth = lesion_truth(sitk.GetArrayFromImage(pet))
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == [entry]


def test_an_implausible_result_is_flagged_in_the_log_and_results(tmp_path, images,
                                                               caplog) -> None:
    """A network that calls everything lesion (an untrained fold) gives a mask covering the
    whole body box: written, but flagged; a sane one is not flagged."""
    from tiny_models import Constant

    pet, ct = images
    for kind, image in (("pet", pet), ("ct", ct)):
        write_image(image, tmp_path / "in" / "images" / kind / f"case-{kind}.mha")
    settled = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32), overlap=0.25))
    with caplog.at_level("WARNING", logger="petseg.runs.writers"):
        [entry] = predict_folder(find_cases(tmp_path / "in"), tmp_path / "out",
                                Predictor([Constant(0.9)], TINY, settled, device="cpu"))
    assert entry["error_messages"] == []
    assert entry["implausible"].startswith(
        f"{entry['lesion_volume_ml']:.1f} ml of lesion is 100% of the body (")
    assert f"case case-pet: implausible result: {entry['implausible']}" in caplog.text
    assert (tmp_path / "out" / MASKS / "case-pet.mha").is_file()
    [sane] = predict_folder(find_cases(tmp_path / "in"), tmp_path / "out2",
                           Predictor([SuvThreshold()], TINY, settled, device="cpu"))
    assert "implausible" not in sane and sane["lesion_volume_ml"] > 0
