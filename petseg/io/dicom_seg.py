"""The lesion mask of a DICOM study as a DICOM Segmentation object (highdicom).

One BINARY segment, "FDG-avid lesion": category SCT 49755003 "Morphologically Abnormal
Structure", type SCT 108369006 "Neoplasm", algorithm type AUTOMATIC, identified as
petseg with its version (family DCM 123110 "Artificial Intelligence"). Frames lie on the
PET slices and reference the PET instances (SOPInstanceUID) they were made from; slices
without lesion are left out (highdicom's `omit_empty_frames`); an empty mask keeps all
frames. Patient, study and frame-of-reference attributes are copied from the PET; a
type-2 attribute of those modules that an anonymiser deleted is written empty
(`complete_type2_attributes`), so the SEG stays valid and highdicom does not fail on it.

Series and instance UIDs are fresh for each run. With a seed they are derived from the
seed, the study, the PET series and the mask's bytes instead, so a rerun on the same
inputs with the same weights writes the same UIDs, and a different mask never reuses them.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from petseg import __version__
from petseg.errors import PetsegError
from petseg.io.dicom import slice_geometry
from petseg.io.dicom_study import DicomStudy
from petseg.io.images import atomic_path

logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name UIDs

SEG_FOLDER: tuple[str, ...] = ("dicom-seg",)
"""Where `petseg predict` writes `<case>.dcm`, under the output folder."""
SEGMENT_LABEL = "FDG-avid lesion"
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "petseg lesion segmentation"


PATIENT_SEXES = ("M", "F", "O")
"""PatientSex's defined terms; another value (anonymisers write e.g. "X") is written empty."""

TYPE2_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "patient": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "clinical-trial-subject": ("ClinicalTrialProtocolName", "ClinicalTrialSiteID",
                               "ClinicalTrialSiteName"),
    "general-study": ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                      "StudyID"),
    "clinical-trial-study": ("ClinicalTrialTimePointID",),
}
"""The root type-2 attributes (present, maybe empty) of the Segmentation IOD's Patient and
Study modules that have any, by module key, as the standard's tables list them (the ones
highdicom ships and copies the patient and study by; a test keeps the two equal)."""

MANDATORY_MODULES: tuple[str, ...] = ("patient", "general-study")
"""The modules of `TYPE2_ATTRIBUTES` the Segmentation IOD requires (usage M)."""

OPTIONAL_MODULE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "clinical-trial-subject": (
        "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
        "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence",
        "ClinicalTrialSiteID", "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID",
        "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
        "ClinicalTrialProtocolEthicsCommitteeName",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"),
    "clinical-trial-study": (
        "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
        "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
        "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
        "ConsentForClinicalTrialUseSequence"),
}
"""All root attributes (any type) of the other modules of `TYPE2_ATTRIBUTES` (usage U): a
source holding one of them has the module, whose type-2 attributes are then completed."""


def complete_type2_attributes(source: Dataset) -> Dataset:
    """`source`, or a copy of it in which every type-2 Patient/Study attribute the SEG copies
    (`TYPE2_ATTRIBUTES`) is present: empty where missing (an anonymised study), PatientSex
    empty where not a defined term. Modules used only when present (clinical trial) are
    completed only when `source` holds one of their attributes."""
    missing = [keyword for key, keywords in TYPE2_ATTRIBUTES.items()
               if key in MANDATORY_MODULES
               or any(k in source for k in OPTIONAL_MODULE_ATTRIBUTES.get(key, ()))
               for keyword in keywords if keyword not in source]
    bad_sex = str(source.get("PatientSex", "") or "") not in ("", *PATIENT_SEXES)
    if not missing and not bad_sex:
        return source
    completed = copy.deepcopy(source)
    for keyword in missing:
        setattr(completed, keyword, None)
    if bad_sex:
        completed.PatientSex = None
    return completed


def seg_uids(study: DicomStudy, mask_zyx: np.ndarray, seed: str | None) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID): random, or derived from `seed` + inputs + mask."""
    if seed is None:
        return generate_uid(), generate_uid()
    assert study.pet is not None
    digest = hashlib.sha256(np.ascontiguousarray(mask_zyx, np.uint8).tobytes()).hexdigest()
    parts = [seed, study.study_uid, study.pet.uid, digest]
    return (generate_uid(entropy_srcs=[*parts, "series"]),
            generate_uid(entropy_srcs=[*parts, "instance"]))


def build_dicom_seg(study: DicomStudy, mask: sitk.Image, seed: str | None = None,
                    parameters: dict[str, str] | None = None) -> hd.seg.Segmentation:
    """The DICOM SEG of `mask` (uint8 0/1 on the grid `petseg.io.dicom` reads the PET onto).

    Args:
        study: the study with its chosen PET series (headers suffice).
        mask: `[z, y, x]` = PET slice k (in slice order along the normal), row, column.
        seed: makes the UIDs reproducible (see the module docstring); None: fresh UIDs.
        parameters: algorithm parameters recorded in the segment (e.g. folds, threshold).

    Raises:
        PetsegError: the mask does not have the PET series' slices, rows and columns.
    """
    if study.pet is None:
        raise PetsegError(f"{study.folder}: no PET series to reference; cannot write a DICOM SEG")
    pet = study.pet
    order = slice_geometry(pet.paths, pet.headers).order
    source = [complete_type2_attributes(pet.headers[i]) for i in order]
    array = sitk.GetArrayFromImage(mask).astype(np.uint8)
    expected = (len(source), int(source[0].Rows), int(source[0].Columns))
    if array.shape != expected:
        raise PetsegError(f"{pet.paths[0]}: mask of {array.shape} voxels (z, y, x) does not "
                          f"match the PET series' {expected}; predict on this PET series")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="petseg", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="petseg", parameters=parameters or None)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    series_uid, instance_uid = seg_uids(study, array, seed)
    return hd.seg.Segmentation(
        source_images=source, pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=series_uid,
        series_number=SERIES_NUMBER, sop_instance_uid=instance_uid, instance_number=1,
        manufacturer="petseg", manufacturer_model_name="petseg",
        software_versions=__version__, device_serial_number=f"petseg-{__version__}",
        series_description=SERIES_DESCRIPTION, content_label="LESIONS",
        content_description="FDG-avid lesions segmented by petseg",
        omit_empty_frames=bool(array.any()))


def save_dicom_seg(seg: hd.seg.Segmentation, path: str | Path) -> Path:
    """Write a built DICOM SEG atomically to `path`; returns `path`."""
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def write_dicom_seg(study: DicomStudy, mask: sitk.Image, path: str | Path,
                    seed: str | None = None, parameters: dict[str, str] | None = None) -> Path:
    """`build_dicom_seg` then `save_dicom_seg`."""
    return save_dicom_seg(build_dicom_seg(study, mask, seed, parameters), path)
