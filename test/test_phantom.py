"""Synthetic PET/CT phantoms: values, geometry, writers, determinism, preview, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk
from image_fixtures import file_digests

from petseg.cli import main
from petseg.diagnoses import DIAGNOSES
from petseg.errors import PetsegError
from petseg.io.geometry import LAS_DIRECTION, Geometry
from petseg.phantom import (
    draw_cohort,
    generate_case,
    render_preview,
    write_autopet_study,
    write_challenge_case,
    write_dataset,
)
from petseg.phantom.anatomy import Anatomy, Tissue
from petseg.phantom.canvas import Canvas
from petseg.phantom.layouts import METADATA_CSV, dataset_plan
from petseg.phantom.lesions import LesionPlan, RenderTargets, render_lesion
from petseg.phantom.scanner import blur_sigma_vox

T = Tissue
POSITIVE_SEED = 22  # LYMPHOMA: 12 lesions (neck, mediastinum, para-aortic, spleen)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


@pytest.fixture(scope="module")
def positive():
    return generate_case(POSITIVE_SEED, size="small", cohort="LYMPHOMA")


@pytest.fixture(scope="module")
def negative():
    return generate_case(2, size="small", cohort="NEGATIVE")


@pytest.fixture(scope="module")
def autopet_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("autopet") / "data"
    write_dataset(out, cases=3, seed=21, layout="autopet", size="small")
    return out


# -- determinism -----------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_different_seed_another_patient(tmp_path) -> None:
    a = write_dataset(tmp_path / "a", cases=1, seed=4, layout="challenge", size="small",
                      preview=True)
    write_dataset(tmp_path / "b", cases=1, seed=4, layout="challenge", size="small",
                  preview=True)
    digest_a = file_digests(tmp_path / "a")
    assert digest_a == file_digests(tmp_path / "b")
    assert len(digest_a) == 5  # pet, ct, truth, lesions.json, preview
    c = write_dataset(tmp_path / "c", cases=1, seed=5, layout="challenge", size="small")
    rec_a = json.loads((a[0] / "truth" / "lesions.json").read_text())
    rec_c = json.loads((c[0] / "truth" / "lesions.json").read_text())
    assert rec_a["patient_id"] != rec_c["patient_id"]
    assert rec_a["patient"] != rec_c["patient"]
    pet_a = _array(sitk.ReadImage(str(next((a[0] / "images" / "pet").glob("*.mha")))))
    pet_c = _array(sitk.ReadImage(str(next((c[0] / "images" / "pet").glob("*.mha")))))
    assert pet_a.shape == pet_c.shape
    assert not np.array_equal(pet_a, pet_c)


def test_autopet_writer_gives_identical_bytes(tmp_path, positive) -> None:
    first = write_autopet_study(positive, tmp_path / "a")
    second = write_autopet_study(positive, tmp_path / "b")
    assert first.relative_to(tmp_path / "a") == second.relative_to(tmp_path / "b")
    digest = file_digests(tmp_path / "a")
    assert sorted(digest) == sorted(
        f"{first.relative_to(tmp_path / 'a').as_posix()}/{n}.nii.gz"
        for n in ("CT", "CTres", "SEG", "SUV"))
    assert digest == file_digests(tmp_path / "b")


# -- lesions ---------------------------------------------------------------------------
def test_lesion_volumes_match_the_request_on_the_small_grid(positive) -> None:
    inst = _array(positive.instances)
    vml = _voxel_ml(positive.pet)
    assert len(positive.lesions) >= 2
    checked = 0
    for les in positive.lesions:
        voxels = int((inst == les.index).sum())
        assert les.volume_ml == pytest.approx(voxels * vml)
        # The grid quantises volumes to whole voxels of 0.5 ml: check where that is < 5 %.
        if les.requested_volume_ml >= max(1.0, 10 * vml):
            assert abs(les.volume_ml - les.requested_volume_ml) <= 0.1 * les.requested_volume_ml
            checked += 1
    assert checked >= 1
    assert np.array_equal(_array(positive.seg), (inst > 0).astype(np.uint8))


@pytest.mark.parametrize("shape", ["sphere", "ellipsoid", "lobulated", "irregular"])
@pytest.mark.parametrize("volume_ml", [1.0, 6.0, 40.0])
def test_rendered_lesion_has_requested_volume_and_suvmax_at_pet_resolution(
        shape: str, volume_ml: float) -> None:
    geometry = Geometry(size=(72, 72, 56), spacing=(2.0364, 2.0364, 3.0),
                        origin=(70.0, -70.0, -80.0), direction=LAS_DIRECTION)
    canvas = Canvas(geometry, z_vertex=0.0, axis_x=[(0, 0.0), (1, 0.0)],
                    axis_y=[(0, 0.0), (1, 0.0)])
    canvas.labels[:] = T.FAT
    anatomy = Anatomy(canvas=canvas, patient=None, points={}, paths={}, boxes={})
    pet = np.full(canvas.shape, 0.4, np.float32)
    targets = RenderTargets(pet=pet, ct=np.full(canvas.shape, -100.0, np.float32),
                            instances=np.zeros(canvas.shape, np.uint8),
                            sigma_vox=blur_sigma_vox(geometry, 6.5))
    plan = LesionPlan(site="node_axilla", volume_ml=volume_ml, suvmax=8.0, shape=shape,
                      necrotic=volume_ml > 20, ct="soft_tissue", near="", seed=7)
    facts = render_lesion(plan, 1, (0.0, 0.0, 0.0 - (-80.0 + 27 * 3.0)), anatomy, targets,
                          liver_hu=60.0)
    assert facts is not None
    mask = targets.instances == 1
    volume = mask.sum() * geometry.voxel_volume_ml
    assert abs(volume - volume_ml) <= 0.1 * volume_ml
    blurred = ndi.gaussian_filter(pet, targets.sigma_vox, mode="nearest", truncate=3.0)
    assert blurred[mask].max() == pytest.approx(8.0, rel=0.02)
    assert float(np.median(targets.ct[mask])) > 0.0  # soft tissue, not fat


def test_lesions_are_hotter_than_their_surroundings(positive) -> None:
    pet = _array(positive.pet)
    inst = _array(positive.instances)
    for les in positive.lesions:
        mask = inst == les.index
        ring = ndi.binary_dilation(mask, iterations=2) & (inst == 0)
        assert les.suvmax == pytest.approx(float(pet[mask].max()), rel=1e-5)
        assert les.suvmax > 1.3 * float(np.median(pet[ring])), les.site
        assert les.suvmax >= 2.0


def test_negative_cases_have_empty_seg(negative) -> None:
    assert negative.cohort == "NEGATIVE"
    assert negative.lesions == []
    assert int(_array(negative.seg).sum()) == 0


def test_cohorts_are_drawn_with_about_half_negative() -> None:
    drawn = [draw_cohort(seed) for seed in range(300)]
    assert set(drawn) == set(DIAGNOSES)
    assert 0.4 < drawn.count("NEGATIVE") / len(drawn) < 0.6


# -- physiology and CT -----------------------------------------------------------------
@pytest.mark.parametrize("which", ["positive", "negative"])
def test_bladder_and_brain_are_hotter_than_liver(which: str, request) -> None:
    case = request.getfixturevalue(which)
    pet = _array(case.pet)
    organs = _array(case.organs)
    liver = float(np.median(pet[organs == T.LIVER]))
    assert 1.0 < liver < 3.5
    assert float(np.median(pet[organs == T.BLADDER])) > 1.5 * liver
    assert float(np.percentile(pet[organs == T.BRAIN_GREY], 90)) > 1.5 * liver


def test_ct_values_are_in_range(positive) -> None:
    ct = _array(positive.ct)
    assert ct.dtype == np.int16
    assert ct.min() >= -1024 and ct.max() <= 3071
    ctres = _array(positive.ctres).astype(float)
    organs = _array(positive.organs)

    def median(label: int) -> float:
        return float(np.median(ctres[organs == label]))

    assert -950 < median(T.LUNG) < -650
    assert -130 < median(T.SUBCUT_FAT) < -60
    assert 20 < median(T.MUSCLE) < 70
    assert 20 < median(T.LIVER) < 75
    assert median(T.AIR) < -950
    assert float(np.percentile(ctres[organs == T.CORTEX], 90)) > 300


def _filled(mask: np.ndarray) -> np.ndarray:
    """Holes (lungs, bowel gas) filled in every axial slice."""
    return np.stack([ndi.binary_fill_holes(s) for s in mask])


def test_pet_and_ct_body_outlines_agree(positive) -> None:
    pet = _array(positive.pet)
    ctres = _array(positive.ctres)
    organs = _array(positive.organs)
    in_fov = ctres > -1024  # the CT's reconstruction circle (arms may fall outside)
    pet_body = _filled(pet > 0.1) & in_fov
    ct_body = _filled((ctres > -500) & (organs != T.TABLE))
    dice = 2 * (pet_body & ct_body).sum() / (pet_body.sum() + ct_body.sum())
    assert dice > 0.93
    shift = np.array(ndi.center_of_mass(pet_body)) - np.array(ndi.center_of_mass(ct_body))
    assert np.all(np.abs(shift) < 0.5)


# -- geometry --------------------------------------------------------------------------
def test_small_geometry(positive) -> None:
    pet = Geometry.of(positive.pet)
    assert pet.size[:2] == (96, 96) and pet.size[2] == 128
    assert pet.spacing[0] == pytest.approx(2.0364 * 400 / 96)
    assert pet.spacing[0] == pet.spacing[1]
    assert 5.8 < pet.spacing[2] < 7.8
    assert pet.direction == LAS_DIRECTION
    assert np.all(np.abs(pet.origin) > 1.0)
    for image in (positive.ctres, positive.seg, positive.instances, positive.organs):
        assert Geometry.of(image) == pet
    assert positive.pet.GetPixelID() == sitk.sitkFloat32
    assert positive.seg.GetPixelID() == sitk.sitkUInt8
    ct = Geometry.of(positive.ct)
    assert ct.size == (128, 128, 129)
    assert ct.spacing[0] < pet.spacing[0] and ct.spacing[2] == pytest.approx(pet.spacing[2])
    assert ct.origin != pet.origin
    pet_z = pet.physical_extent_mm()[:, 2]
    ct_z = ct.physical_extent_mm()[:, 2]
    assert ct_z[0] <= pet_z[0] and ct_z[1] >= pet_z[1]


@pytest.mark.slow
def test_full_case_geometry_and_lesions() -> None:
    case = generate_case(POSITIVE_SEED, size="full", cohort="MELANOMA")
    pet = Geometry.of(case.pet)
    assert pet.size[:2] == (400, 400) and 250 <= pet.size[2] <= 330
    assert pet.spacing == (2.0364, 2.0364, 3.0)
    assert pet.direction == LAS_DIRECTION
    assert np.all(np.abs(pet.origin) > 1.0)
    assert Geometry.of(case.ctres) == pet and Geometry.of(case.seg) == pet
    ct = Geometry.of(case.ct)
    assert ct.size[:2] == (512, 512) and ct.size[2] == pet.size[2] + 1
    assert 0.94 < ct.spacing[0] < 1.01 and ct.spacing[2] == 3.0
    inst = _array(case.instances)
    assert case.lesions
    for les in case.lesions:
        volume = (inst == les.index).sum() * pet.voxel_volume_ml
        if les.requested_volume_ml >= 1.0:
            assert abs(volume - les.requested_volume_ml) <= 0.1 * les.requested_volume_ml


# -- writers ---------------------------------------------------------------------------
def test_challenge_files_read_back_with_geometry(tmp_path, positive) -> None:
    paths = write_challenge_case(positive, tmp_path, "case_x")
    pet_geometry = Geometry.of(positive.pet)
    assert paths["pet"].parent == tmp_path / "case_x" / "images" / "pet"
    assert paths["truth"].name == paths["pet"].name
    assert paths["ct"].stem != paths["pet"].stem
    for role in ("pet", "ct", "truth"):
        assert Geometry.of(sitk.ReadImage(str(paths[role]))) == pet_geometry
    assert np.array_equal(_array(sitk.ReadImage(str(paths["pet"]))), _array(positive.pet))
    record = json.loads(paths["lesions"].read_text())
    assert record["cohort"] == "LYMPHOMA" and record["pet_uuid"] == paths["pet"].stem
    assert len(record["lesions"]) == len(positive.lesions)
    truth = _array(sitk.ReadImage(str(paths["truth"])))
    assert record["total_lesion_volume_ml"] == pytest.approx(
        truth.sum() * pet_geometry.voxel_volume_ml, abs=1e-3)
    native = write_challenge_case(positive, tmp_path, "case_n", ct_grid="native")
    assert Geometry.of(sitk.ReadImage(str(native["ct"]))) == Geometry.of(positive.ct)


def test_autopet_layout_nifti_and_metadata(autopet_dir) -> None:
    with (autopet_dir / METADATA_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    studies = sorted(autopet_dir.glob("PETCT_*/*"))
    assert len(rows) == len(studies) == 3
    assert {r["diagnosis"] for r in rows} <= set(DIAGNOSES)
    by_patient: dict[str, list[str]] = {}
    for row in rows:
        by_patient.setdefault(row["Subject ID"], []).append(row["Study Date"])
        folder = autopet_dir / row["study_location"]
        assert folder.is_dir() and folder.parent.name == row["Subject ID"]
        suv = sitk.ReadImage(str(folder / "SUV.nii.gz"))
        geometry = Geometry.of(suv)
        assert geometry.size[:2] == (96, 96)
        assert np.allclose(geometry.direction, LAS_DIRECTION)
        for name in ("CTres", "SEG"):
            other = Geometry.of(sitk.ReadImage(str(folder / f"{name}.nii.gz")))
            assert other.size == geometry.size
            assert np.allclose(other.spacing, geometry.spacing, atol=1e-4)
            assert np.allclose(other.origin, geometry.origin, atol=1e-3)
        assert Geometry.of(sitk.ReadImage(str(folder / "CT.nii.gz"))).size[0] == 128
        seg = _array(sitk.ReadImage(str(folder / "SEG.nii.gz")))
        assert (seg.sum() == 0) == (row["diagnosis"] == "NEGATIVE")
    repeated = [dates for dates in by_patient.values() if len(dates) > 1]
    assert len(repeated) == 1 and len(set(repeated[0])) == 2


def test_dataset_plan_negative_fraction_and_errors() -> None:
    plan = dataset_plan(10, seed=3, layout="challenge", negative_fraction=0.3)
    assert [p[2] for p in plan].count("NEGATIVE") == 3
    assert len({p[0] for p in plan}) == 10
    with pytest.raises(PetsegError, match=r"--negative-fraction 1.5: use a value in \[0, 1\]"):
        dataset_plan(2, seed=1, layout="challenge", negative_fraction=1.5)
    with pytest.raises(PetsegError, match="--cases 0: at least one case is needed"):
        dataset_plan(0, seed=1, layout="challenge")
    with pytest.raises(PetsegError, match="--seed -3: use a non-negative integer"):
        dataset_plan(2, seed=-3, layout="challenge")


# -- preview ---------------------------------------------------------------------------
def _flip_x(image: sitk.Image) -> sitk.Image:
    """The same physical image stored with the first axis reversed (LAS <-> RAS)."""
    flipped = sitk.Flip(image, [True, False, False])
    assert Geometry.of(flipped).direction != Geometry.of(image).direction
    return flipped


def test_preview_is_upright_and_independent_of_the_direction_matrix(positive) -> None:
    rgb = render_preview(positive.pet, positive.seg, positive.ctres)
    again = render_preview(_flip_x(positive.pet), _flip_x(positive.seg),
                           _flip_x(positive.ctres))
    assert np.array_equal(rgb, again)
    height, width, _ = rgb.shape
    mip = rgb[:, : (width - 4) // 2]
    red = (mip[..., 0] == 230) & (mip[..., 1] == 20)
    assert red.any()
    # The brain (hot, dark in the inverted MIP) is in the top fifth of the picture.
    dark_rows = np.flatnonzero((mip[..., 1] < 40).sum(axis=1) > 3)
    pet = _array(positive.pet)
    organs = _array(positive.organs)
    if (organs == T.BRAIN_GREY).any() and pet[organs == T.BRAIN_GREY].max() > 10:
        assert dark_rows.min() < 0.2 * height
    # The bladder is the hot spot in the lower half.
    bladder_rows = dark_rows[dark_rows > 0.5 * height]
    assert bladder_rows.size > 0
    # A prediction is outlined in its own colour; the CT panel is not empty.
    pred = sitk.BinaryDilate(positive.seg, [1, 1, 1])
    with_pred = render_preview(positive.pet, positive.seg, positive.ctres, pred=pred)
    blue = (with_pred[..., 0] == 0) & (with_pred[..., 1] == 170) & (with_pred[..., 2] == 255)
    assert blue[:, : (width - 4) // 2].any()
    assert rgb[:, (width + 4) // 2:].mean() > 20


# -- command line ----------------------------------------------------------------------
def test_cli_writes_a_dataset_and_reports_errors_in_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["phantom", str(out), "--cases", "1", "--seed", "9", "--layout", "challenge",
                 "--size", "small", "--preview", "--ct-grid", "native"]) == 0
    assert len(list(out.glob("case_000/images/pet/*.mha"))) == 1
    assert (out / "previews" / "case_000.png").is_file()
    assert main(["phantom", str(out), "--cases", "1", "--seed", "9", "--layout",
                 "challenge", "--size", "small"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"petseg phantom: error: {out}: exists and is not an empty folder; "
                   "choose a new output folder"]


# -- determinism across CPUs -------------------------------------------------------------
_DIGEST = """
import hashlib, sys
import SimpleITK as sitk
from petseg.phantom import generate_case
for seed in (2, 22):
    case = generate_case(seed, size="small")
    for image in (case.pet, case.ct, case.seg):
        print(seed, hashlib.sha256(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest())
"""


def _simd_targets() -> list[str]:
    """numpy's runtime-dispatched SIMD targets this CPU has (e.g. X86_V3, X86_V4)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


@pytest.mark.skipif(not _simd_targets(), reason="numpy dispatches no SIMD target on this CPU")
def test_phantom_is_bit_identical_with_and_without_simd_kernels() -> None:
    # numpy's float32 exp/power kernels differ in the last bit between SSE, AVX2 and
    # AVX-512; disabling the dispatched targets replays another CPU on this one.
    import os
    import subprocess
    import sys

    def digests(disabled: list[str]) -> str:
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(disabled)}
        result = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True,
                                text=True, timeout=300, check=True)
        return result.stdout

    targets = _simd_targets()
    full = digests([])
    assert len(full.splitlines()) == 6
    for keep in range(len(targets)):  # every narrower vector width down to the baseline
        assert digests(targets[keep:]) == full, f"differs without {targets[keep:]}"
