"""One synthetic PET/CT study: anatomy + physiology + lesions + scanner, from a seed."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

import numpy as np
import SimpleITK as sitk

from petseg.diagnoses import DIAGNOSES
from petseg.io.geometry import Geometry
from petseg.phantom.anatomy import Patient, Tissue, build_anatomy, draw_patient
from petseg.phantom.canvas import Canvas
from petseg.phantom.lesions import (
    LesionInfo,
    RenderTargets,
    place_and_render,
    plan_lesions,
)
from petseg.phantom.physiology import ct_density, draw_physiology, pet_activity
from petseg.phantom.scanner import (
    Grids,
    blur_sigma_vox,
    ct_image,
    ct_on_pet_grid,
    make_grids,
    pet_image,
)

COHORT_WEIGHTS: dict[str, float] = {"LYMPHOMA": 0.29, "LUNG_CANCER": 0.335, "MELANOMA": 0.375}
"""Relative frequency of the positive cohorts (autoPET: 145 / 168 / 188 studies)."""


@dataclasses.dataclass
class PhantomCase:
    """One synthetic whole-body FDG PET/CT study with its ground truth.

    Attributes:
        pet: SUV, float32, PET grid.
        ct: CT in HU, int16, on its own native grid.
        ctres: CT resampled onto the PET grid (linear, fill -1024 HU), int16.
        seg: lesion mask, uint8 0/1, PET grid.
        instances: lesion index per voxel (uint8, 0 = background), PET grid.
        organs: tissue label map (`anatomy.Tissue`, uint8), PET grid.
        lesions: one `LesionInfo` per lesion, index i is voxel value i in `instances`.
        cohort: LYMPHOMA, LUNG_CANCER, MELANOMA or NEGATIVE.
        patient_id: "PETCT_" + 10 hex digits (as autoPET subject ids).
        study_date: date of the scan.
        study_uid: a DICOM-style study instance UID.
        seed, study_seed: the patient's and the study's seeds.
        study_index: 0 for a patient's first study, 1 for a later one.
        size: "small" or "full".
        patient: the drawn patient (height, sex, age, build, ...).
        findings: physiological findings of this study (brown fat, injection site, ...).
    """

    pet: sitk.Image
    ct: sitk.Image
    ctres: sitk.Image
    seg: sitk.Image
    instances: sitk.Image
    organs: sitk.Image
    lesions: list[LesionInfo]
    cohort: str
    patient_id: str
    study_date: datetime.date
    study_uid: str
    seed: int
    study_seed: int
    study_index: int
    size: str
    patient: Patient
    findings: dict[str, float]

    @property
    def geometry(self) -> Geometry:
        """The PET grid."""
        return Geometry.of(self.pet)


def seed_digest(*parts: object) -> bytes:
    """SHA-256 (32 bytes) of the parts' `str` joined by ":": the one source of a phantom's
    patient id, UIDs, folder names and derived seeds, the same on every machine."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def patient_id_for(seed: int) -> str:
    """The autoPET-style subject id of the patient made from `seed`."""
    return "PETCT_" + seed_digest("patient", seed).hex()[:10]


def draw_cohort(seed: int, negative_fraction: float = 0.5) -> str:
    """The cohort of the patient made from `seed`: NEGATIVE with `negative_fraction`."""
    rng = np.random.default_rng([seed, 7])
    if rng.random() < negative_fraction:
        return "NEGATIVE"
    names = list(COHORT_WEIGHTS)
    w = np.array([COHORT_WEIGHTS[n] for n in names])
    return str(names[int(rng.choice(len(names), p=w / w.sum()))])


def _study_date(seed: int, study_index: int) -> datetime.date:
    rng = np.random.default_rng([seed, 6])
    day = datetime.date(2002, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 6570)))
    for _ in range(study_index):
        day += datetime.timedelta(days=int(rng.integers(60, 500)))
    return day


def generate_case(seed: int, size: str = "full", cohort: str | None = None) -> PhantomCase:
    """Make one synthetic whole-body FDG PET/CT study.

    Args:
        seed: the patient (and study); equal seeds give identical cases.
        size: "full" (400 x 400 x N PET voxels) or "small" (96 x 96 x 128, fast tests).
        cohort: LYMPHOMA, LUNG_CANCER, MELANOMA or NEGATIVE; None draws it from the
            seed, NEGATIVE for about half of the seeds.

    Returns:
        The case: PET (SUV), CT (native grid), CTres, SEG, lesions and metadata.
    """
    return generate_study(seed, seed, size=size, cohort=cohort, study_index=0)


def generate_study(seed: int, study_seed: int, size: str = "full", cohort: str | None = None,
                   study_index: int = 0) -> PhantomCase:
    """One study of the patient `seed`; further studies of that patient differ in
    `study_seed` and `study_index` (physiology, lesions, noise and date change; the
    anatomy stays)."""
    if seed < 0 or study_seed < 0:
        raise ValueError(f"seeds must be non-negative, got {seed}, {study_seed}")
    if cohort is None:
        cohort = draw_cohort(seed)
    if cohort not in DIAGNOSES:
        raise ValueError(f"cohort must be one of {DIAGNOSES}, got {cohort!r}")
    prm = np.random.default_rng([seed, 0])
    patient = draw_patient(prm, cohort)
    grids: Grids = make_grids(prm, size, patient.d_top, patient.d_bottom, patient.weight,
                              patient.params)
    canvas = Canvas(grids.pet, grids.z_vertex, grids.axis_x, grids.axis_y)
    size_code = 0 if size == "small" else 1
    anatomy = build_anatomy(canvas, patient, np.random.default_rng([seed, 1, size_code]))
    study = [study_seed, study_index]
    phys = draw_physiology(np.random.default_rng([*study, 2]), anatomy)
    tex = np.random.default_rng([*study, 3, size_code])
    activity = pet_activity(anatomy, phys, tex)
    density = ct_density(anatomy, phys, tex)
    instances = np.zeros(canvas.shape, np.uint8)
    plans = plan_lesions(np.random.default_rng([*study, 4]), cohort)
    sigma = blur_sigma_vox(grids.pet, grids.fwhm_mm)
    targets = RenderTargets(pet=activity, ct=density, instances=instances, sigma_vox=sigma)
    rendered = place_and_render(plans, anatomy, targets, liver_hu=phys.hu[Tissue.LIVER])
    pet = pet_image(activity, grids, np.random.default_rng([*study, 5, size_code]))
    ct = ct_image(density, grids, np.random.default_rng([*study, 6, size_code]))
    del density, activity
    ctres = ct_on_pet_grid(ct, grids.pet)
    lesions = _lesion_infos(rendered, pet, canvas)
    seg = (instances > 0).astype(np.uint8)
    digest = seed_digest("study", seed, study_seed, study_index)
    uid = "1.3.6.1.4.1.14519.5.2.1." + str(int.from_bytes(digest[:12], "big"))
    return PhantomCase(
        pet=grids.pet.image_from_array(pet), ct=ct, ctres=ctres,
        seg=grids.pet.image_from_array(seg), instances=grids.pet.image_from_array(instances),
        organs=grids.pet.image_from_array(canvas.labels), lesions=lesions, cohort=cohort,
        patient_id=patient_id_for(seed), study_date=_study_date(seed, study_index),
        study_uid=uid, seed=seed, study_seed=study_seed, study_index=study_index, size=size,
        patient=patient, findings=dict(phys.flags) | {
            "spots": float(len(phys.spots)), "fwhm_mm": grids.fwhm_mm})


def _lesion_infos(rendered: list[dict[str, object]], pet: np.ndarray, canvas: Canvas,
                  ) -> list[LesionInfo]:
    voxel_ml = float(np.prod(canvas.spacing_zyx)) / 1000.0
    infos = []
    for index, facts in enumerate(rendered, start=1):
        box = facts["box"]
        mask = facts["mask"]
        plan = facts["plan"]
        values = pet[box][mask]
        idx = np.argwhere(mask).mean(axis=0) + np.array([s.start for s in box])
        k, j, i = idx
        centre = (float(np.interp(i, np.arange(canvas.x.size), canvas.x)),
                  float(np.interp(j, np.arange(canvas.y.size), canvas.y)),
                  float(np.interp(k, np.arange(canvas.z.size), canvas.z)))
        infos.append(LesionInfo(
            index=index, site=plan.site, centre_mm=centre,
            volume_ml=float(mask.sum()) * voxel_ml, requested_volume_ml=plan.volume_ml,
            suvmax=float(values.max()), suvmean=float(values.mean()), shape=plan.shape,
            necrotic=plan.necrotic, ct=plan.ct, near=plan.near))
    return infos
