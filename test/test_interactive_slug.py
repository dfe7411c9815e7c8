"""The interactive slug is never missed: a click file (even an empty one), a click socket in
`inputs.json` whose file is absent, or the image built or run as the interactive algorithm
(`PETSEG_INTERACTIVE=1`) each send the mask to `images/tumor-lesion-segmentation/`; point
names other than "tumor" and "background" are ignored with a warning naming them."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import make_case

from petseg.cli import main
from petseg.interactive.clicks import read_click_file

AUTOMATIC = Path("images/automated-petct-lesion-segmentation/study-pet.mha")
INTERACTIVE = Path("images/tumor-lesion-segmentation/study-pet.mha")
ROOT = Path(__file__).resolve().parents[1]


def _case(folder: Path) -> Path:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    for kind, image in (("pet", pet), ("ct", ct)):
        (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "images" / kind / f"study-{kind}.mha"))
    return folder


def _predict(inp: Path, out: Path, weights: Path, config: Path) -> list[str]:
    assert main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), "--device", "cpu"]) == 0
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.mha"))


def _entry(out: Path) -> dict:
    [entry] = json.loads((out / "results.json").read_text())
    return entry


def test_an_empty_click_file_still_makes_the_case_interactive(tmp_path, weights, config,
                                                              caplog) -> None:
    inp = _case(tmp_path / "in")
    (inp / "lesion-clicks.json").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert _predict(inp, tmp_path / "out", weights, config) == [str(INTERACTIVE)]
    assert "empty click file; the case runs without clicks" in caplog.text
    assert _entry(tmp_path / "out")["clicks"] == {"file": str(inp / "lesion-clicks.json"),
                                                  "tumour": 0, "background": 0}


def test_a_listed_click_socket_without_its_file_makes_the_case_interactive(
        tmp_path, weights, config, caplog) -> None:
    inp = _case(tmp_path / "in")
    (inp / "inputs.json").write_text(json.dumps([
        {"socket": {"slug": slug, "kind": kind, "super_kind": super_kind, "relative_path": path}}
        for slug, kind, super_kind, path in (
            ("positron-emission-tomography-pet", "Image", "Image", "images/pet"),
            ("computed-tomography-ct", "Image", "Image", "images/ct"),
            ("lesion-clicks", "Anything", "File", "lesion-clicks.json"))]))
    with caplog.at_level(logging.WARNING):
        assert _predict(inp, tmp_path / "out", weights, config) == [str(INTERACTIVE)]
    assert "lists a click file that is absent" in caplog.text
    assert _entry(tmp_path / "out")["clicks"]["tumour"] == 0


def test_the_interactive_setting_makes_every_case_interactive(tmp_path, weights, config,
                                                              monkeypatch) -> None:
    inp = _case(tmp_path / "in")
    assert _predict(inp, tmp_path / "automatic", weights, config) == [str(AUTOMATIC)]
    monkeypatch.setenv("PETSEG_INTERACTIVE", "1")
    assert _predict(inp, tmp_path / "out", weights, config) == [str(INTERACTIVE)]
    assert _entry(tmp_path / "out")["clicks"] == {"file": None, "tumour": 0, "background": 0}
    np.testing.assert_array_equal(  # no clicks: the automatic answer, under the other slug
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / INTERACTIVE))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "automatic" / AUTOMATIC))))


def test_unknown_point_names_are_ignored_with_a_warning_naming_them(tmp_path, caplog) -> None:
    pet = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))[0]
    path = tmp_path / "lesion-clicks.json"
    path.write_text(json.dumps({"points": [
        {"point": [1, 2, 3], "name": "tumor"}, {"point": [4, 5, 6], "name": "lesion"},
        {"point": [7, 8, 9], "name": "lesion"}, {"point": [2, 2, 2], "name": "background"},
        {"point": [3, 3, 3]}]}))
    with caplog.at_level(logging.WARNING):
        clicks = read_click_file(path, pet)
    assert clicks.tumour == ((1, 2, 3),) and clicks.background == ((2, 2, 2),)
    assert (f'{path}: "lesion" (2 point(s)), null (1 point(s)): point name(s) neither "tumor" '
            f'nor "background"; those points are ignored') in caplog.text


def test_the_image_can_be_built_as_the_interactive_algorithm() -> None:
    """The inference stage turns the build argument into the run-time setting."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile[dockerfile.index("AS inference"):]
    assert re.search(r"^ARG PETSEG_INTERACTIVE=0$", stage, re.MULTILINE)
    assert re.search(r"^ENV PETSEG_INTERACTIVE=\$\{PETSEG_INTERACTIVE\}$", stage, re.MULTILINE)


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_the_setting_off_keeps_the_2023_slug(tmp_path, weights, config, monkeypatch,
                                             value) -> None:
    monkeypatch.setenv("PETSEG_INTERACTIVE", value)
    assert _predict(_case(tmp_path / "in"), tmp_path / "out", weights, config) == [
        str(AUTOMATIC)]
