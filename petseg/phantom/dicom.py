"""Synthetic DICOM studies as a PET/CT scanner writes them, from SUV and HU images.

PET: one single-frame PET Image Storage file per slice in Bq/ml (Units BQML), stored as
int16 with a per-slice RescaleSlope, decay corrected to the series start (START), with
the radiopharmaceutical (FDG, F-18), injected dose, half-life, injection date/time,
series and acquisition times and PatientWeight, so that `petseg.io.dicom.read_pet_suv`
gives back the SUV image (to the int16 quantisation, below 1/32767 of a slice's maximum):

    Bq/ml = SUV x dose x 2^(-(series start - injection) / half-life) / (weight_kg x 1000)

CT: one CT Image Storage file per slice, stored value = HU + 1024 (int16) with
RescaleSlope 1 and RescaleIntercept -1024. Slices lie at the images' own voxel centres
(ImagePositionPatient), ImageOrientationPatient from the first two direction columns.

Files go under `out_dir/DATA/<hex>/<hex>/<hex>` with meaningless names, the series mixed
across folders, plus one unrelated Secondary Capture image of the same study; on request
also a non-attenuation-corrected PET, a CT covering part of the PET, or a DICOMDIR.
Everything derives from `seed`: the same seed writes identical files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from petseg.phantom.case import PhantomCase

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
F18_HALF_LIFE_S: float = 6586.2
CT_INTERCEPT: float = -1024.0
ANONYMISER_REMOVES: tuple[str, ...] = (
    "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyID")
"""What anonymisers delete besides names and IDs (`StudyTags.removed` of an anonymised
study); all type 2 in the DICOM SEG."""
AC_CORRECTIONS: tuple[str, ...] = ("DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM")
"""CorrectedImage (0028,0051) of an attenuation-corrected PET series."""


@dataclasses.dataclass(frozen=True)
class StudyTags:
    """Who and when: the patient, the scan and the injection.

    Attributes:
        patient_name, patient_id, birth_date (YYYYMMDD), sex: the patient module.
        weight_kg: PatientWeight; None leaves the tag out.
        study_uid: StudyInstanceUID; None derives one from the writer's seed.
        study_date: StudyDate, SeriesDate and AcquisitionDate.
        accession: AccessionNumber.
        injection: injection time (RadiopharmaceuticalStartDateTime), on `study_date`.
        series_start: PET SeriesTime, the decay-correction reference (START).
        dose_bq: RadionuclideTotalDose at injection.
        half_life_s: RadionuclideHalfLife.
        removed: patient and study attributes left out of every file, as an anonymiser
            deletes them (e.g. "PatientBirthDate", "StudyTime").
    """

    patient_name: str = "PHANTOM^PETSEG"
    patient_id: str = "PETCT_0000000000"
    birth_date: str = "19700101"
    sex: str = "O"
    weight_kg: float | None = 75.0
    study_uid: str | None = None
    study_date: dt.date = dt.date(2023, 4, 12)
    accession: str = "ACC0001"
    injection: dt.time = dt.time(9, 58, 30)
    series_start: dt.time = dt.time(11, 3, 0)
    dose_bq: float = 350e6
    half_life_s: float = F18_HALF_LIFE_S
    removed: tuple[str, ...] = ()

    def bqml_per_suv(self, weight_kg: float) -> float:
        """Bq/ml of one SUV: the decayed dose per gram of `weight_kg`."""
        start = dt.datetime.combine(self.study_date, self.series_start)
        elapsed = (start - dt.datetime.combine(self.study_date, self.injection)).total_seconds()
        return self.dose_bq * 2.0 ** (-elapsed / self.half_life_s) / (weight_kg * 1000.0)


@dataclasses.dataclass(frozen=True)
class WrittenStudy:
    """What `write_dicom_study` wrote.

    Attributes:
        study_uid: StudyInstanceUID of every series.
        series: series UID by role ("pet", "ct", "sc"[, "nac_pet", "partial_ct"]).
        files: the written files by role (after a DICOMDIR move, their final paths).
    """

    study_uid: str
    series: dict[str, str]
    files: dict[str, list[Path]]


class _Namer:
    """Meaningless nested file names from a seed: DATA/<2 hex>/<4 hex>/<8 hex>."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root, self.rng, self.used = root, np.random.default_rng([seed, 11]), set()

    def __call__(self) -> Path:
        while True:
            a, b, c = (int(v) for v in self.rng.integers(0, [3, 4, 2**32]))
            path = self.root / "DATA" / f"{a:02X}" / f"{b + 4096:04X}" / f"{c:08X}"
            if path not in self.used:
                self.used.add(path)
                return path


def _base(tags: StudyTags, study_uid: str, modality: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.PatientName, ds.PatientID = tags.patient_name, tags.patient_id
    ds.PatientBirthDate, ds.PatientSex = tags.birth_date, tags.sex
    if tags.weight_kg is not None:
        ds.PatientWeight = f"{tags.weight_kg:g}"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = tags.study_date.strftime("%Y%m%d")
    ds.StudyTime = tags.injection.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber = "1", tags.accession
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = "petseg phantom"
    for keyword in tags.removed:
        delattr(ds, keyword)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_series(image: sitk.Image, stored_and_tags, ds_for_slice, name: _Namer,
                  uid_entropy: list[object]) -> list[Path]:
    """One file per slice k of `image` (numpy axis 0): geometry tags + pixel data."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    values = sitk.GetArrayViewFromImage(image)
    paths = []
    for k in range(values.shape[0]):
        ds = ds_for_slice(k)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[*map(str, uid_entropy), "sop", str(k)])
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint(
            (0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        stored = stored_and_tags(ds, np.asarray(values[k], np.float64))
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=16)
        paths.append(_save(ds, name()))
    return paths


def write_dicom_study(out_dir: str | Path, pet_suv: sitk.Image, ct_hu: sitk.Image,
                      tags: StudyTags = StudyTags(), seed: int = 0, nac_pet: bool = False,
                      partial_ct: bool = False, dicomdir: bool = False) -> WrittenStudy:
    """Write a PET/CT study as scanner DICOM under `out_dir` (see the module docstring).

    Args:
        pet_suv: PET in SUV (float, any grid); written in Bq/ml with `tags`' dose and
            weight (75 kg for the conversion when `tags.weight_kg` is None).
        ct_hu: CT in HU on its own grid.
        nac_pet: also write a non-attenuation-corrected PET series (0.4 x the values,
            CorrectedImage without ATTN), as scanners export beside the corrected one.
        partial_ct: also write a second CT series holding only the middle third of
            `ct_hu`'s slices (a diagnostic CT of part of the body).
        dicomdir: lay the files out as a DICOM File-set with a DICOMDIR instead.

    Returns:
        The UIDs and files written.
    """
    out_dir = Path(out_dir)
    study_uid = tags.study_uid or generate_uid(entropy_srcs=[str(seed), "study"])
    frame_uid = generate_uid(entropy_srcs=[str(seed), "frame"])
    name = _Namer(out_dir if not dicomdir else Path(tempfile.mkdtemp(prefix=".petseg-dcm-")),
                  seed)
    scale = tags.bqml_per_suv(tags.weight_kg or 75.0)
    series: dict[str, str] = {}
    files: dict[str, list[Path]] = {}

    def pet_series(role: str, number: int, description: str, corrections: tuple[str, ...],
                   factor: float) -> None:
        uid = series[role] = generate_uid(entropy_srcs=[str(seed), role])

        def header(k: int) -> Dataset:
            ds = _base(tags, study_uid, "PT", PET_STORAGE)
            ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid, frame_uid
            ds.SeriesNumber, ds.SeriesDescription = number, description
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SeriesTime = ds.AcquisitionTime = tags.series_start.strftime("%H%M%S")
            ds.AcquisitionDate = ds.SeriesDate
            ds.Units, ds.DecayCorrection = "BQML", "START"
            ds.CorrectedImage = list(corrections)
            if "ATTN" in corrections:
                ds.AttenuationCorrectionMethod = "CT-based"
            info = Dataset()
            info.Radiopharmaceutical = "Fluorodeoxyglucose"
            nuclide = Dataset()
            nuclide.CodeValue, nuclide.CodingSchemeDesignator = "C-111A1", "SRT"
            nuclide.CodeMeaning = "^18^Fluorine"
            info.RadionuclideCodeSequence = [nuclide]
            info.RadionuclideTotalDose = f"{tags.dose_bq:.6g}"
            info.RadionuclideHalfLife = f"{tags.half_life_s:g}"
            info.RadionuclidePositronFraction = "0.9686"
            info.RadiopharmaceuticalStartTime = tags.injection.strftime("%H%M%S")
            info.RadiopharmaceuticalStartDateTime = (
                tags.study_date.strftime("%Y%m%d") + tags.injection.strftime("%H%M%S"))
            ds.RadiopharmaceuticalInformationSequence = [info]
            return ds

        def stored(ds: Dataset, suv: np.ndarray) -> np.ndarray:
            bqml = suv * scale * factor
            slope = float(np.abs(bqml).max()) / 32767.0 or 1.0
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
            return np.round(bqml / float(f"{slope:.10g}")).clip(-32768, 32767).astype(np.int16)

        files[role] = _write_series(pet_suv, stored, header, name, [seed, role])

    def ct_series(role: str, number: int, description: str, image: sitk.Image) -> None:
        uid = series[role] = generate_uid(entropy_srcs=[str(seed), role])

        def header(k: int) -> Dataset:
            ds = _base(tags, study_uid, "CT", CT_STORAGE)
            ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid, frame_uid
            ds.SeriesNumber, ds.SeriesDescription = number, description
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SeriesTime = ds.AcquisitionTime = "105500"
            ds.KVP = "120"
            return ds

        def stored(ds: Dataset, hu: np.ndarray) -> np.ndarray:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", f"{CT_INTERCEPT:g}", "HU"
            return np.round(hu - CT_INTERCEPT).clip(-32768, 32767).astype(np.int16)

        files[role] = _write_series(image, stored, header, name, [seed, role])

    ct_series("ct", 2, "CT low dose WB", ct_hu)
    pet_series("pet", 3, "PET WB AC", AC_CORRECTIONS, 1.0)
    if nac_pet:
        pet_series("nac_pet", 4, "PET WB NAC", ("DECY", "DTIM", "RAN", "NORM"), 0.4)
    if partial_ct:
        n = ct_hu.GetSize()[2]
        ct_series("partial_ct", 5, "CT chest diagnostic", ct_hu[:, :, n // 3: 2 * n // 3])
    sc = _base(tags, study_uid, "OT", SECONDARY_CAPTURE_STORAGE)
    series["sc"] = sc.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), "sc"])
    sc.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sc", "sop"])
    sc.SeriesNumber, sc.InstanceNumber, sc.SeriesDescription = 99, 1, "Dose report screen"
    sc.ConversionType = "WSD"
    sc.set_pixel_data(np.full((16, 16), 128, np.uint8), photometric_interpretation="MONOCHROME2",
                      bits_stored=8)
    files["sc"] = [_save(sc, name())]
    if dicomdir:
        files = _as_file_set(files, name.root, out_dir)
    return WrittenStudy(study_uid, series, files)


def _as_file_set(files: dict[str, list[Path]], staging: Path, out_dir: Path
                 ) -> dict[str, list[Path]]:
    """Move the staged files into a DICOM File-set with a DICOMDIR at `out_dir`."""
    file_set = FileSet()
    uids = {role: [file_set.add(path).SOPInstanceUID for path in paths]
            for role, paths in files.items()}
    file_set.write(out_dir)
    shutil.rmtree(staging)
    written = {instance.SOPInstanceUID: Path(instance.path) for instance in file_set}
    return {role: [written[uid] for uid in found] for role, found in uids.items()}


def write_phantom_dicom(case: PhantomCase, out_dir: str | Path, **options: object
                        ) -> WrittenStudy:
    """`write_dicom_study` of a phantom: its SUV, native CT, patient id, weight and date.

    `options` go to `write_dicom_study` (seed defaults to the phantom's; `pet_suv` and
    `ct_hu` replace its images, e.g. by a section of them).
    """
    tags = StudyTags(patient_name=f"PHANTOM^{case.seed}", patient_id=case.patient_id,
                     sex=case.patient.sex, weight_kg=round(case.patient.weight, 1),
                     study_uid=case.study_uid, study_date=case.study_date)
    options = {"seed": case.seed, "tags": tags, "pet_suv": case.pet, "ct_hu": case.ct,
               **options}
    return write_dicom_study(out_dir, **options)  # type: ignore[arg-type]
