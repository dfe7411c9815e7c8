"""DICOM -> SUV / HU on synthetic series written with pydicom from known numbers."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from petseg.cli import main
from petseg.errors import PetsegError
from petseg.io.dicom import parse_datetime, parse_time, read_ct_hu, read_pet_suv
from petseg.io.geometry import grid_difference
from petseg.io.images import read_image

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

WEIGHT_KG = 72.5
DOSE_BQ = 350e6
HALF_LIFE_S = 6586.2  # F-18
# 09:58:30 injection, 11:03:00 series start: 3870 s of decay
SUV_PER_10KBQ_START = 3.1128117  # 72500 / (350e6 * 2^(-3870/6586.2)) * 10000, by hand
SUV_PER_10KBQ_ADMIN = 2.0714286  # 72500 / 350e6 * 10000

GEOMETRIES = {
    # row cosine, column cosine, PixelSpacing [row gap, column gap], slice gap
    "LAS-like": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (2.0, 2.5), 3.0),
    # rotation by 0.3 rad about z after 0.2 rad about x: orthonormal, oblique
    "oblique": ((math.cos(0.3), math.sin(0.3), 0.0),
                (-math.sin(0.3) * math.cos(0.2), math.cos(0.3) * math.cos(0.2), math.sin(0.2)),
                (1.5, 2.0), 2.5),
}


def activity_bqml(points: np.ndarray) -> np.ndarray:
    """The test's PET activity (Bq/ml) at physical points `[..., 3]` (mm)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return 10000.0 * (1.0 + 0.004 * x + 0.002 * y + 0.003 * (z - 200.0)) + 2000.0


def ct_hu(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.round(-500.0 + 5.0 * x - 3.0 * y + 2.0 * z)


def slice_points(origin, row, col, pixel_spacing, gap, shape, k) -> np.ndarray:
    """Physical centres `[rows, cols, 3]` of slice k (rows along `col`, columns along `row`)."""
    normal = np.cross(row, col)
    r, c = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return (np.asarray(origin) + k * gap * normal + c[..., None] * pixel_spacing[1]
            * np.asarray(row) + r[..., None] * pixel_spacing[0] * np.asarray(col))


def write_series(folder: Path, modality: str, geometry: str, shape=(6, 5), n_slices=7,
                 origin=(-20.0, 30.0, 200.0), drop: tuple[str, ...] = (),
                 series_tags: dict | None = None, info_tags: dict | None = None,
                 slice_tags=None) -> None:
    """Write a single-frame series, files in shuffled order, one per slice.

    PET values are `activity_bqml` stored as int16 with a per-slice RescaleSlope; CT
    values are `ct_hu` stored with RescaleIntercept -1024.
    """
    row, col, pixel_spacing, gap = GEOMETRIES[geometry]
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(7).permutation(n_slices)
    for k in range(n_slices):
        points = slice_points(origin, row, col, pixel_spacing, gap, shape, k)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = "P1"
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [float(v) for v in points[0, 0]]
        ds.ImageOrientationPatient = [*row, *col]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = gap
        if modality == "PT":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PET_STORAGE
            values = activity_bqml(points)
            slope = float(np.abs(values).max()) / 32000.0
            stored = np.round(values / slope).astype(np.int16)
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", 0
            ds.Units, ds.DecayCorrection = "BQML", "START"
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.PatientWeight = WEIGHT_KG
            ds.SeriesDate, ds.SeriesTime = "20230412", "110300"
            ds.AcquisitionDate, ds.AcquisitionTime = "20230412", f"1103{k:02d}"
            info = Dataset()
            info.RadionuclideTotalDose = DOSE_BQ
            info.RadionuclideHalfLife = HALF_LIFE_S
            info.RadiopharmaceuticalStartTime = "095830"
            info.RadiopharmaceuticalStartDateTime = "20230412095830"
            for key, value in (info_tags or {}).items():
                setattr(info, key, value)
                if value is None:
                    delattr(info, key)
            ds.RadiopharmaceuticalInformationSequence = [info]
        else:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
            stored = (ct_hu(points) + 1024).astype(np.int16)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        for key, value in (series_tags or {}).items():
            setattr(ds, key, value)
        for key, value in (slice_tags(k) if slice_tags else {}).items():
            setattr(ds, key, value)
        for key in drop:
            delattr(ds, key)
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.save_as(folder / f"IM{order[k]:04d}.dcm", enforce_file_format=True)


def expected_image_points(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(image.GetSpacing())
    return index @ np.asarray(image.GetDirection()).reshape(3, 3).T + np.asarray(
        image.GetOrigin())


# ----------------------------------------------------------------------------- SUV

@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_pet_series_becomes_suv_with_its_geometry(tmp_path, geometry) -> None:
    write_series(tmp_path / "pet", "PT", geometry)
    image, parameters = read_pet_suv(tmp_path / "pet")
    row, col, pixel_spacing, gap = GEOMETRIES[geometry]
    assert image.GetSize() == (5, 6, 7)
    np.testing.assert_allclose(image.GetSpacing(), (pixel_spacing[1], pixel_spacing[0], gap))
    np.testing.assert_allclose(image.GetOrigin(), (-20.0, 30.0, 200.0), atol=1e-9)
    expected_direction = np.stack([row, col, np.cross(row, col)], axis=1).ravel()
    np.testing.assert_allclose(image.GetDirection(), expected_direction, atol=1e-9)
    suv = sitk.GetArrayFromImage(image)
    expected = activity_bqml(expected_image_points(image)) * SUV_PER_10KBQ_START / 1e4
    np.testing.assert_allclose(suv, expected, rtol=0.005)
    assert parameters.factor * 1e4 == pytest.approx(SUV_PER_10KBQ_START, rel=1e-6)
    assert parameters.reference_time == dt.datetime(2023, 4, 12, 11, 3, 0)
    assert parameters.injection_time == dt.datetime(2023, 4, 12, 9, 58, 30)
    assert image.GetPixelID() == sitk.sitkFloat32


def test_admin_decay_correction_does_not_decay_the_dose(tmp_path) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like", series_tags={"DecayCorrection": "ADMIN"})
    image, parameters = read_pet_suv(tmp_path / "pet")
    expected = activity_bqml(expected_image_points(image)) * SUV_PER_10KBQ_ADMIN / 1e4
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, rtol=0.005)
    assert parameters.decayed_dose_bq == DOSE_BQ


def test_images_already_in_suv_are_kept(tmp_path) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like", series_tags={"Units": "GML"},
                 drop=("PatientWeight",))
    image, parameters = read_pet_suv(tmp_path / "pet")
    assert parameters.factor == 1.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(image),
                               activity_bqml(expected_image_points(image)), rtol=0.005)


def test_earliest_acquisition_is_the_reference_when_the_series_time_is_later(tmp_path) -> None:
    """A reprocessed series (SeriesTime 12:00) still decays to the 11:03:00 acquisition."""
    write_series(tmp_path / "pet", "PT", "LAS-like", series_tags={"SeriesTime": "120000"},
                 slice_tags=lambda k: {"AcquisitionTime": f"1103{k:02d}"})
    _, parameters = read_pet_suv(tmp_path / "pet")
    assert parameters.reference_time == dt.datetime(2023, 4, 12, 11, 3, 0)
    assert parameters.factor * 1e4 == pytest.approx(SUV_PER_10KBQ_START, rel=1e-6)


def test_injection_before_midnight_from_start_time_alone(tmp_path) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like",
                 series_tags={"SeriesDate": "20230413", "SeriesTime": "005500",
                              "AcquisitionDate": "20230413", "AcquisitionTime": "005500"},
                 info_tags={"RadiopharmaceuticalStartDateTime": None,
                            "RadiopharmaceuticalStartTime": "235000"})
    _, parameters = read_pet_suv(tmp_path / "pet")
    assert parameters.injection_time == dt.datetime(2023, 4, 12, 23, 50, 0)
    # 3900 s of decay, by hand: 72500 / (350e6 * 2^(-3900/6586.2)) * 1e4
    assert parameters.factor * 1e4 == pytest.approx(3.1226552, rel=1e-6)


def test_missing_weight_is_a_clear_error_and_can_be_given(tmp_path) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like", drop=("PatientWeight",))
    first = tmp_path / "pet" / "IM0000.dcm"
    with pytest.raises(PetsegError) as info:
        read_pet_suv(tmp_path / "pet")
    assert str(info.value) == (f"{first}: DICOM tag PatientWeight (0010,1030) is missing or "
                               f"empty; pass --weight-kg")
    image, _ = read_pet_suv(tmp_path / "pet", weight_kg=WEIGHT_KG)
    expected = activity_bqml(expected_image_points(image)) * SUV_PER_10KBQ_START / 1e4
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, rtol=0.005)


@pytest.mark.parametrize(("where", "tag", "code"), [
    ("info", "RadionuclideHalfLife", "(0018,1075)"),
    ("info", "RadionuclideTotalDose", "(0018,1074)"),
    ("series", "DecayCorrection", "(0054,1102)"),
    ("series", "Units", "(0054,1001)"),
    ("series", "RadiopharmaceuticalInformationSequence", "(0054,0016)"),
])
def test_missing_tags_are_named(tmp_path, where, tag, code) -> None:
    if where == "info":
        write_series(tmp_path / "pet", "PT", "LAS-like", info_tags={tag: None})
    else:
        write_series(tmp_path / "pet", "PT", "LAS-like", drop=(tag,))
    with pytest.raises(PetsegError) as info:
        read_pet_suv(tmp_path / "pet")
    assert str(info.value) == (f"{tmp_path / 'pet' / 'IM0000.dcm'}: DICOM tag {tag} {code} "
                               f"is missing or empty; export the series with it")


def test_unsupported_units_and_decay_correction_are_refused(tmp_path) -> None:
    write_series(tmp_path / "a", "PT", "LAS-like", series_tags={"Units": "CNTS"})
    with pytest.raises(PetsegError, match=r"Units \(0054,1001\) is CNTS, only BQML"):
        read_pet_suv(tmp_path / "a")
    write_series(tmp_path / "b", "PT", "LAS-like", series_tags={"DecayCorrection": "NONE"})
    with pytest.raises(PetsegError, match=r"DecayCorrection \(0054,1102\) is NONE; only START"):
        read_pet_suv(tmp_path / "b")


def test_series_problems_are_named(tmp_path) -> None:
    write_series(tmp_path / "two", "PT", "LAS-like")
    write_series(tmp_path / "two" / "more", "PT", "LAS-like")
    with pytest.raises(PetsegError, match=r"holds 2 PT series .*; pass a folder with exactly one"):
        read_pet_suv(tmp_path / "two")
    write_series(tmp_path / "gap", "PT", "LAS-like")
    by_position = sorted((tmp_path / "gap").iterdir(),
                         key=lambda f: pydicom.dcmread(f).ImagePositionPatient[2])
    by_position[3].unlink()  # a slice in the middle of the stack
    with pytest.raises(PetsegError, match=r"slice gaps are uneven \(3.000..6.000 mm\)"):
        read_pet_suv(tmp_path / "gap")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(PetsegError, match=r"^.*empty: no DICOM files of modality PT"):
        read_pet_suv(tmp_path / "empty")


def test_dicom_time_parsing() -> None:
    assert parse_time("095830.25") == dt.time(9, 58, 30, 250000)
    assert parse_time("0958") == dt.time(9, 58)
    assert parse_time("09:58:30") == dt.time(9, 58, 30)
    assert parse_datetime("20230412095830.5+0200") == dt.datetime(2023, 4, 12, 9, 58, 30, 500000)


# ----------------------------------------------------------------------------- CT

@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_ct_series_in_hu_shares_the_pet_geometry(tmp_path, geometry) -> None:
    """GDCM's CT geometry equals the PET geometry derived by hand from the same tags."""
    write_series(tmp_path / "ct", "CT", geometry)
    write_series(tmp_path / "pet", "PT", geometry)
    ct = read_ct_hu(tmp_path / "ct")
    pet, _ = read_pet_suv(tmp_path / "pet")
    assert grid_difference(ct, pet) is None
    assert ct.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), ct_hu(expected_image_points(ct)))


# ----------------------------------------------------------------------------- CLI

def test_suv_command_writes_both_images(tmp_path) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like")
    write_series(tmp_path / "ct", "CT", "LAS-like")
    code = main(["suv", "--pet-dicom", str(tmp_path / "pet"), "--out", str(tmp_path / "o" /
                 "pet.mha"), "--ct-dicom", str(tmp_path / "ct"), "--ct-out",
                 str(tmp_path / "o" / "ct.mha")])
    assert code == 0
    pet, ct = read_image(tmp_path / "o" / "pet.mha"), read_image(tmp_path / "o" / "ct.mha")
    expected = activity_bqml(expected_image_points(pet)) * SUV_PER_10KBQ_START / 1e4
    np.testing.assert_allclose(sitk.GetArrayFromImage(pet), expected, rtol=0.005)
    assert grid_difference(ct, pet) is None


def test_suv_command_error_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    write_series(tmp_path / "pet", "PT", "LAS-like", drop=("PatientWeight",))
    code = main(["suv", "--pet-dicom", str(tmp_path / "pet"), "--out",
                 str(tmp_path / "o" / "pet.mha")])
    assert code == 1
    assert capsys.readouterr().err == (
        f"petseg suv: error: {tmp_path / 'pet' / 'IM0000.dcm'}: DICOM tag PatientWeight "
        f"(0010,1030) is missing or empty; pass --weight-kg\n")
    assert not (tmp_path / "o").exists()


def test_written_files_are_real_dicom(tmp_path) -> None:
    """Guard for the fixture itself: pydicom reads back what the tests rely on."""
    write_series(tmp_path / "pet", "PT", "LAS-like")
    ds = pydicom.dcmread(tmp_path / "pet" / "IM0000.dcm")
    assert ds.Modality == "PT" and ds.pixel_array.shape == (6, 5)
    assert ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife == HALF_LIFE_S
