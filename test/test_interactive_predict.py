"""Interactive cases through `petseg predict`: the click file found by name, `--clicks`, the
interactive slug, results.json, bad click files; and the container's interactive check."""

from __future__ import annotations

import json
from pathlib import Path

import container_interactive
import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import make_case

from petseg.cli import main
from petseg.errors import PetsegError
from petseg.io.cases import find_cases

AUTOMATIC = Path("images/automated-petct-lesion-segmentation")
INTERACTIVE = Path("images/tumor-lesion-segmentation")
PET_NAME = "1b7c5f4e-pet.mha"


def challenge_input(folder: Path) -> Path:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    for kind, image, name in (("pet", pet, PET_NAME), ("ct", ct, "e03d2a61-ct.mha")):
        (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "images" / kind / name), True)
    return folder


def click_file(path: Path, points: list) -> Path:
    path.write_text(json.dumps({"version": {"major": 1, "minor": 0},
                                "type": "Multiple points", "points": points}))
    return path


def predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> int:
    return main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def automatic(tmp_path_factory, weights, config) -> tuple[Path, Path]:
    """(input folder, output folder) of the case without clicks."""
    root = tmp_path_factory.mktemp("automatic")
    inp = challenge_input(root / "input")
    assert predict(inp, root / "output", weights, config) == 0
    return inp, root / "output"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_click_file_in_the_case_folder_makes_an_interactive_case(tmp_path, weights, config,
                                                                 automatic) -> None:
    """The container's check passes on a run of the container's input: a background click
    on the largest automatic component removes it, the mask goes to the new slug."""
    inp, automatic_out = automatic
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(automatic_out / AUTOMATIC / PET_NAME)))
    assert mask.any()
    interactive = tmp_path / "interactive"
    assert container_interactive.main(["write", str(inp), str(automatic_out),
                                       str(interactive)]) == 0
    # the platform's own JSON, listing the slots: never taken for the click file
    (interactive / "inputs.json").write_text(json.dumps([
        {"socket": {"slug": slug, "kind": kind, "super_kind": super_kind,
                    "relative_path": path}}
        for slug, kind, super_kind, path in (
            ("positron-emission-tomography-pet", "Image", "Image", "images/pet"),
            ("computed-tomography-ct", "Image", "Image", "images/ct"),
            ("lesion-clicks", "Anything", "File", "lesion-clicks.json"))]))
    out = tmp_path / "output"
    assert predict(interactive, out, weights, config) == 0
    assert files_under(out) == [str(INTERACTIVE / PET_NAME), "results.json"]
    assert container_interactive.check(out, interactive, automatic_out) == []
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["clicks"] == {"file": str(interactive / "lesion-clicks.json"),
                               "tumour": 0, "background": 1}
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(out / INTERACTIVE / PET_NAME)))
    component = container_interactive._largest_component(mask)
    np.testing.assert_array_equal(result[~component], mask[~component])  # the rest unchanged


def test_container_check_fails_when_the_component_stays(tmp_path, automatic) -> None:
    """The automatic output copied to the interactive slug: the clicked component is left."""
    inp, automatic_out = automatic
    interactive = tmp_path / "interactive"
    container_interactive.write(inp, automatic_out, interactive)
    fake = tmp_path / "fake"
    (fake / INTERACTIVE).mkdir(parents=True)
    (fake / INTERACTIVE / PET_NAME).write_bytes((automatic_out / AUTOMATIC / PET_NAME)
                                                .read_bytes())
    [entry] = json.loads((automatic_out / "results.json").read_text())
    (fake / "results.json").write_text(json.dumps([entry]))
    failures = container_interactive.check(fake, interactive, automatic_out)
    assert any("of the background-clicked component are left" in f for f in failures)
    assert any("expected 0 tumour and 1 background point used" in f for f in failures)


def test_zero_points_is_the_automatic_mask_at_the_new_slug(tmp_path, weights, config,
                                                           automatic) -> None:
    inp, automatic_out = automatic
    clicks = click_file(tmp_path / "clicks.json", [])
    out = tmp_path / "output"
    assert predict(inp, out, weights, config, "--clicks", str(clicks)) == 0
    assert files_under(out) == [str(INTERACTIVE / PET_NAME), "results.json"]
    assert not (out / AUTOMATIC).exists()  # no empty 2023 folder beside the new slug
    assert (out / INTERACTIVE / PET_NAME).read_bytes() != b""
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out / INTERACTIVE / PET_NAME))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(automatic_out / AUTOMATIC / PET_NAME))))
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["clicks"] == {"file": str(clicks), "tumour": 0, "background": 0}


def test_bad_click_file_is_one_line_and_no_mask(tmp_path, weights, config, automatic,
                                                capsys) -> None:
    inp, _ = automatic
    clicks = click_file(tmp_path / "clicks.json", [{"point": [1, 2], "name": "tumor"}])
    out = tmp_path / "output"
    assert predict(inp, out, weights, config, "--clicks", str(clicks)) == 1
    message = (f"{clicks}: point 1 {{\"point\": [1, 2], \"name\": \"tumor\"}} is not three "
               "integer voxel indices [x, y, z]")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"petseg predict: error: {message}")
    assert files_under(out) == ["results.json"]
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["error_messages"][0].startswith(message) and entry["outputs"] == []


def test_clicks_option_needs_a_single_case(tmp_path, weights, config, capsys) -> None:
    for name in ("a", "b"):
        challenge_input(tmp_path / "cases" / name)
    clicks = click_file(tmp_path / "clicks.json", [])
    assert predict(tmp_path / "cases", tmp_path / "out", weights, config,
                   "--clicks", str(clicks)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"petseg predict: error: --clicks {clicks}: the input holds 2 cases; give --clicks for "
        "a single case, or put a lesion-clicks.json into each case folder")


def test_case_folders_with_and_without_click_files(tmp_path) -> None:
    for name in ("a", "b"):
        challenge_input(tmp_path / name)
    click_file(tmp_path / "b" / "lesion-clicks.json", [])
    (tmp_path / "a" / "other.json").write_text("{}")
    cases = find_cases(tmp_path).cases
    assert [(c.name, c.clicks) for c in cases] == [
        ("a", None), ("b", tmp_path / "b" / "lesion-clicks.json")]
    two = tmp_path / "two"
    for kind in ("pet", "ct"):
        source = next((tmp_path / "a" / "images" / kind).glob("*.mha"))
        (two / "images" / kind).mkdir(parents=True)
        for case in ("first", "second"):
            (two / "images" / kind / f"{case}-{kind}.mha").write_bytes(source.read_bytes())
    click_file(two / "lesion-clicks.json", [])
    with pytest.raises(PetsegError, match=r"lesion-clicks.json: one click file for 2 cases"):
        find_cases(two)


@pytest.mark.parametrize("slug", [AUTOMATIC, INTERACTIVE])
def test_extras_may_lie_in_neither_mask_folder(tmp_path, weights, config, capsys,
                                               slug) -> None:
    out = tmp_path / "output"
    extras = out / slug / "reports"
    assert predict(tmp_path / "absent", out, weights, config, "--extras", str(extras)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"petseg predict: error: --extras {extras}: lies in the challenge mask folder "
        f"{(out / slug).resolve()}, which must hold only masks; choose another folder")
    assert not out.exists()
