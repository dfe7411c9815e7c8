"""The container's files: the output checker, the Dockerfile's pins and targets, the scripts.

Building and running the image is test.sh's part (scripts/container_test.sh); these tests
need no Docker daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from container_check import MASK_FOLDER, check_output, main

from petseg.io.geometry import LAS_DIRECTION, Geometry, grid_difference
from petseg.io.images import write_image

ROOT = Path(__file__).resolve().parents[1]
PET = Geometry(size=(12, 10, 8), spacing=(2.0364, 2.0364, 3.0), origin=(-11.2, 40.5, -700.0),
               direction=LAS_DIRECTION)
UUID_PET = "1b199d0c-0b6c-4e4e-9d5b-7f3a1a2b3c4d"
UUID_CT = "9f0e1d2c-3b4a-4958-8776-a5b4c3d2e1f0"


def lesion(shift: int = 0) -> np.ndarray:
    """A 4 x 4 x 4 cube of ones in a `[z, y, x]` volume of PET's size (64 voxels)."""
    array = np.zeros(tuple(reversed(PET.size)), dtype=np.uint8)
    array[2:6, 3:7, 4 + shift : 8 + shift] = 1
    return array


def make_case(tmp_path: Path, mask: np.ndarray | None = None, geometry: Geometry = PET,
              results: object = "default") -> tuple[Path, Path, Path]:
    """A container output, its input folder and the expected output (mask `lesion()`)."""
    inp, expected, out = tmp_path / "input", tmp_path / "expected", tmp_path / "output"
    pet = PET.image_from_array(np.ones(tuple(reversed(PET.size)), np.float32))
    write_image(pet, inp / "images" / "pet" / f"{UUID_PET}.mha")
    write_image(pet, inp / "images" / "ct" / f"{UUID_CT}.mha")
    write_image(PET.image_from_array(lesion()), expected / MASK_FOLDER / f"{UUID_PET}.mha")
    array = lesion() if mask is None else mask
    write_image(geometry.image_from_array(array), out / MASK_FOLDER / f"{UUID_PET}.mha")
    if results == "default":
        results = [{"name": UUID_PET, "error_messages": [],
                    "inputs": [{"filename": f"/input/images/pet/{UUID_PET}.mha"}]}]
    if results is not None:
        (out / "results.json").write_text(json.dumps(results))
    return out, inp, expected


def test_identical_output_passes_with_dice_one(tmp_path) -> None:
    report = check_output(*make_case(tmp_path))
    assert report.failures == []
    assert report.dice == 1.0
    assert (report.voxels, report.expected_voxels) == (64, 64)


def test_dice_is_computed_not_a_squared_difference(tmp_path) -> None:
    # One-voxel shift of a 4-voxel-wide cube: overlap 48 of 64 + 64 -> Dice 0.75.
    report = check_output(*make_case(tmp_path, mask=lesion(shift=1)))
    assert report.dice == pytest.approx(0.75)
    assert report.failures == [
        f"{tmp_path / 'output' / MASK_FOLDER / (UUID_PET + '.mha')}: Dice 0.7500 with "
        f"{tmp_path / 'expected' / MASK_FOLDER / (UUID_PET + '.mha')} < 0.99"
    ]
    assert check_output(*make_case(tmp_path / "b", mask=lesion(1)), min_dice=0.7).ok


def test_a_second_file_in_the_mask_folder_fails(tmp_path) -> None:
    out, inp, expected = make_case(tmp_path)
    (out / MASK_FOLDER / ".partial.tmp.mha").write_bytes(b"")
    report = check_output(out, inp, expected)
    assert report.failures == [
        f"{out / MASK_FOLDER}: holds 2 entries (.partial.tmp.mha, {UUID_PET}.mha); exactly one "
        "output mask file"
    ]


def test_missing_mask_folder_fails(tmp_path) -> None:
    out, inp, expected = make_case(tmp_path)
    shutil.rmtree(out / "images")
    report = check_output(out, inp, expected)
    assert report.failures == [f"{out / MASK_FOLDER}: missing; the output mask folder must exist"]


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        (Geometry(PET.size, PET.spacing, PET.origin), "direction"),
        (Geometry(PET.size, (2.0, 2.0, 3.0), PET.origin, LAS_DIRECTION), "spacing"),
        (Geometry(PET.size, PET.spacing, (-11.2, 40.5, -697.0), LAS_DIRECTION), "origin"),
    ],
)
def test_geometry_must_equal_the_pets(tmp_path, geometry, message) -> None:
    report = check_output(*make_case(tmp_path, geometry=geometry))
    assert len(report.failures) == 1
    assert "geometry differs from the input PET: " + message in report.failures[0]
    assert report.dice is None


def test_size_must_equal_the_pets(tmp_path) -> None:
    small = Geometry((12, 10, 7), PET.spacing, PET.origin, LAS_DIRECTION)
    report = check_output(*make_case(tmp_path, mask=lesion()[:7], geometry=small))
    assert report.failures[0].endswith("size (12, 10, 7) vs (12, 10, 8)")


def test_values_must_be_integer_zero_or_one(tmp_path) -> None:
    report = check_output(*make_case(tmp_path, mask=lesion() * 255))
    assert report.failures[0].endswith("voxels must be integers 0/1, found uint8 [0, 255]")
    floats = check_output(*make_case(tmp_path / "f", mask=lesion().astype(np.float32)))
    assert "found float32" in floats.failures[0]


def test_both_masks_empty_is_an_undefined_dice_not_a_pass(tmp_path) -> None:
    out, inp, expected = make_case(tmp_path, mask=np.zeros_like(lesion()))
    write_image(PET.image_from_array(np.zeros_like(lesion())),
                expected / MASK_FOLDER / f"{UUID_PET}.mha")
    report = check_output(out, inp, expected)
    assert np.isnan(report.dice)
    assert "both empty, Dice undefined" in report.failures[0]


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (None, "results.json: missing; write results.json listing the case"),
        ([{"name": "other-case", "error_messages": []}], f"does not name the case '{UUID_PET}'"),
        ([{"name": UUID_PET, "error_messages": ["CUDA out of memory"]}],
         "reports error(s): CUDA out of memory"),
    ],
)
def test_results_json_must_name_the_case_without_errors(tmp_path, results, message) -> None:
    report = check_output(*make_case(tmp_path, results=results))
    assert len(report.failures) == 1
    assert report.failures[0].endswith(message)
    assert report.dice == 1.0  # the mask itself was still checked


def test_command_line_exit_status(tmp_path, capsys) -> None:
    out, inp, expected = make_case(tmp_path)
    assert main([str(out), "--input", str(inp), "--expected", str(expected)]) == 0
    assert "Dice 1.0000 (64 voxels, expected 64)" in capsys.readouterr().out
    out, inp, expected = make_case(tmp_path / "bad", mask=lesion(shift=2))
    assert main([str(out), "--input", str(inp), "--expected", str(expected)]) == 1
    assert "FAIL" in capsys.readouterr().err


# ---- the Dockerfile and the scripts --------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_base_image_is_pinned_by_digest_and_matches_the_torch_pin() -> None:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, "Dockerfile needs ARG BASE_IMAGE=..."
    image = match.group(1)
    pinned = re.fullmatch(
        r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-runtime"
        r"@sha256:[0-9a-f]{64}", image)
    assert pinned, f"{image} is not an exact digest-pinned PyTorch runtime image"
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch_pin and pinned.group("torch") == torch_pin.group(1)


def test_the_shipped_cuda_image_differs_from_the_tested_cpu_one_only_in_its_base() -> None:
    """Without a registry the container test builds on the local CPU base image: that tests
    the shipped CUDA image's stages only if BASE_IMAGE is the one thing that differs. Every
    stage starts from ${BASE_IMAGE} (once: the base stage) or an earlier stage, every
    `COPY --from` names an earlier stage, BASE_IMAGE is declared before the first FROM, and
    build.sh's build arguments are BASE_IMAGE and WEIGHTS_DIR only."""
    lines = DOCKERFILE.splitlines()
    first_from = min(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert any(line.startswith("ARG BASE_IMAGE=") for line in lines[:first_from])
    stages: list[str] = []
    for line in lines:
        if line.startswith("FROM "):
            match = re.fullmatch(r"FROM (\S+) AS ([a-z]+)", line)
            assert match, f"Dockerfile: unparsed stage line {line!r}"
            source, name = match.groups()
            assert source in stages or (source == "${BASE_IMAGE}" and not stages), line
            assert name not in stages, f"Dockerfile: stage {name} defined twice"
            stages.append(name)
        for source in re.findall(r"--from=(\S+)", line):
            assert source in stages, f"Dockerfile: {line!r} copies from no earlier stage"
    assert {"base", "train", "inference"} <= set(stages) and stages[0] == "base"
    build = (ROOT / "build.sh").read_text()
    assert set(re.findall(r'--build-arg "(\w+)=', build)) == {"BASE_IMAGE", "WEIGHTS_DIR"}
    assert "--build-arg" not in DOCKERFILE


def test_inference_is_the_last_stage_and_train_runs_petseg() -> None:
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.MULTILINE)
    assert stages[-1] == "inference"
    assert "train" in stages
    blocks = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)
    train = next(b for b in blocks if b.split("\n", 1)[0].endswith("AS train"))
    inference = blocks[-1]
    assert 'ENTRYPOINT ["petseg"]' in train
    assert 'ENTRYPOINT ["python", "process.py"]' in inference
    for block in (train, inference):
        assert re.search(r"^USER 10001:10001$", block, re.MULTILINE)  # not root
    assert "PYTHONUNBUFFERED=1" in DOCKERFILE


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    lines = DOCKERFILE.splitlines()
    first_code = min(i for i, line in enumerate(lines) if line.startswith("COPY petseg"))
    install = min(i for i, line in enumerate(lines) if "--requirement" in line)
    assert install < first_code


def test_every_copied_path_exists_and_enters_the_build_context() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"  # allowlist
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for line in DOCKERFILE.splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        for source in line.split()[1:-1]:
            if source.startswith("--") or "[" in source or "$" in source:
                continue  # flags, optional (`.wh[l]`) and build-arg paths
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
            assert source in allowed, f".dockerignore keeps {source} out of the build context"


@pytest.mark.parametrize("script", ["build.sh", "export.sh", "test.sh",
                                    "scripts/docker_setup.sh", "scripts/container_test.sh",
                                    "scripts/make_test_fixture.sh", "scripts/lint.sh"])
def test_scripts_are_strict_and_answer_help(script, tmp_path) -> None:
    path = ROOT / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    # --help works from any directory and needs no daemon.
    result = subprocess.run([str(path), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout or "usage" in result.stdout


def test_unknown_option_is_one_clear_line(tmp_path) -> None:
    result = subprocess.run([str(ROOT / "build.sh"), "--bogus"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr == "build.sh: unknown option '--bogus'; see ./build.sh --help\n"


# ---- the fixture and the test weights --------------------------------------------------

FIXTURE = ROOT / "test" / "input"


def only_image(folder: Path) -> Path:
    files = sorted(folder.iterdir())
    assert len(files) == 1, f"{folder}: {len(files)} files, expected one"
    return files[0]


def test_fixture_is_one_small_case_with_real_world_geometry() -> None:
    pet_path = only_image(FIXTURE / "images" / "pet")
    ct_path = only_image(FIXTURE / "images" / "ct")
    assert pet_path.suffix == ct_path.suffix == ".mha"
    assert pet_path.name != ct_path.name  # the challenge's two uuids differ
    pet = Geometry.of(sitk.ReadImage(str(pet_path)))
    ct = Geometry.of(sitk.ReadImage(str(ct_path)))
    assert pet.direction == LAS_DIRECTION  # first axis flipped, as real autoPET PET images
    assert ct == pet  # the CT on the PET grid keeps the fixture under 1 MB
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 1_000_000
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(pet_path)))
    assert suv.max() > 2.5 * np.median(suv)  # lesions stand out for the network to find


def test_fixture_regenerates_identically(tmp_path) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "make_test_fixture.sh"), "--input-only", "--input",
         str(tmp_path / "input")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PETSEG_PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    for kind in ("pet", "ct"):
        committed = only_image(FIXTURE / "images" / kind)
        fresh = only_image(tmp_path / "input" / "images" / kind)
        assert fresh.name == committed.name
        a, b = sitk.ReadImage(str(committed)), sitk.ReadImage(str(fresh))
        assert Geometry.of(a) == Geometry.of(b)
        assert a.GetPixelID() == b.GetPixelID()
        if kind == "ct":
            # int16 HU rounded from float arithmetic: equal on every CPU tried, but a one-ulp
            # difference at a .5 boundary would move a voxel by 1 HU, so allow that in at
            # most 1 voxel in 10,000 and nothing more.
            change = np.abs(sitk.GetArrayFromImage(a).astype(np.int32)
                            - sitk.GetArrayFromImage(b).astype(np.int32))
            assert change.max() <= 1 and np.count_nonzero(change) <= change.size // 10_000
        else:
            # The phantom rounds float64 exp/power to float32 so that CPUs agree bit for
            # bit (test_phantom.py checks it across numpy's SIMD targets); float64 kernels
            # may still differ by one float64 ulp between CPUs, which flips a float32
            # rounding about once per 2**29 values. 1e-5 SUV allows that and nothing a
            # reader of the image could see.
            np.testing.assert_allclose(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b),
                                       rtol=0, atol=1e-5)


@pytest.mark.skipif(not (ROOT / "test" / "expected_output").exists(),
                    reason="no expected output committed yet (scripts/make_test_fixture.sh)")
def test_expected_output_is_a_non_empty_mask_on_the_fixture_pet() -> None:
    pet = sitk.ReadImage(str(only_image(FIXTURE / "images" / "pet")))
    mask = sitk.ReadImage(str(only_image(ROOT / "test" / "expected_output" / MASK_FOLDER)))
    assert grid_difference(mask, pet) is None
    assert sitk.GetArrayFromImage(mask).sum() > 0


def test_random_weights_are_a_loadable_ensemble(tmp_path) -> None:
    from random_weights import TINY_NETWORK, make_random_weights

    from petseg.checkpoint import dsc_weights, load_ensemble

    out = make_random_weights(tmp_path / "w", folds=3, seed=7)
    checkpoints = load_ensemble(out)  # checks every sha256 against the manifest
    assert [c.meta["fold"] for c in checkpoints] == ["fold_0", "fold_1", "fold_2"]
    assert dsc_weights(checkpoints) == pytest.approx([0.5, 0.55, 0.6])
    assert all(c.model_config.network == TINY_NETWORK for c in checkpoints)
    name = next(k for k, v in checkpoints[0].state_dict.items() if v.ndim == 5)  # a conv
    assert not np.array_equal(checkpoints[0].state_dict[name], checkpoints[1].state_dict[name])
    again = load_ensemble(make_random_weights(tmp_path / "w", folds=3, seed=7))
    np.testing.assert_array_equal(again[2].state_dict[name], checkpoints[2].state_dict[name])


@pytest.mark.parametrize(("require", "status", "message"), [
    ("0", 0, "container_test: SKIPPED: no Docker daemon answers"),
    ("1", 1, "container_test: FAIL: no Docker daemon answers and PETSEG_REQUIRE_DOCKER=1"),
])
def test_container_test_without_a_daemon(tmp_path, require, status, message) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",
           "PETSEG_REQUIRE_DOCKER": require}
    result = subprocess.run([str(ROOT / "scripts" / "container_test.sh")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == status
    assert result.stderr.startswith(message)
