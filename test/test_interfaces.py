"""grand-challenge's /input/inputs.json: the slots it lists are read, the fixed folders
otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from image_fixtures import touch

from petseg.errors import PetsegError
from petseg.io.cases import CaseFiles, find_cases
from petseg.io.interfaces import Slot, image_slot_folders, read_slots


def socket(slug: str, relative_path: str, kind: str = "Image", key: str = "socket") -> dict:
    """One socket value as the platform writes it (only the fields read here, plus some)."""
    super_kind = "Image" if kind == "Image" else "File"
    return {"pk": 1, "file": None, "image": None, "value": None,
            key: {"slug": slug, "kind": kind, "super_kind": super_kind,
                  "relative_path": relative_path, "title": slug}}


def _inputs(root: Path, sockets: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "inputs.json").write_text(json.dumps(sockets))


def test_the_slots_give_the_case_files_wherever_they_lie(tmp_path) -> None:
    pet = touch(tmp_path / "images/pet-scan/a1b2.mha")
    ct = touch(tmp_path / "images/ct-scan/c3d4.mha")
    touch(tmp_path / "images/pet/decoy.mha")  # the fixed folder, not listed: ignored
    _inputs(tmp_path, [
        socket("positron-emission-tomography-pet", "images/pet-scan"),
        socket("computed-tomography-ct", "images/ct-scan", key="interface"),
        socket("lesion-clicks", "lesion-clicks.json", kind="Anything")])
    slots = read_slots(tmp_path)
    assert slots["lesion-clicks"] == Slot("lesion-clicks", "Anything", "File",
                                          tmp_path / "lesion-clicks.json")
    assert image_slot_folders(slots, tmp_path) == (tmp_path / "images/pet-scan",
                                                   tmp_path / "images/ct-scan")
    found = find_cases(tmp_path)
    # the listed click socket makes the case interactive, its file present or not
    assert found.single and found.cases == [
        CaseFiles("a1b2", pet, ct, clicks=tmp_path / "lesion-clicks.json")]
    without_clicks = tmp_path / "automatic"
    for name in ("images/pet-scan/a1b2.mha", "images/ct-scan/c3d4.mha"):
        touch(without_clicks / name)
    _inputs(without_clicks, [socket("positron-emission-tomography-pet", "images/pet-scan"),
                             socket("computed-tomography-ct", "images/ct-scan")])
    assert find_cases(without_clicks).cases[0].clicks is None


def test_without_inputs_json_the_fixed_folders_are_read(tmp_path) -> None:
    pet, ct = touch(tmp_path / "images/pet/x.mha"), touch(tmp_path / "images/ct/y.mha")
    assert read_slots(tmp_path) is None
    assert find_cases(tmp_path).cases == [CaseFiles("x", pet, ct)]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"inputs\.json: the platform's input list not valid JSON"),
    ('{"slug": "pet"}', r"inputs\.json: expected a list of input slots, found dict"),
    ('[{"socket": {"slug": "pet"}}]', r"inputs\.json: entry 0 names no slot with a slug and a "
                                      r"relative_path"),
    ('[{"socket": {"slug": "pet", "relative_path": "../etc"}}]',
     r"inputs\.json: slot 'pet' lies outside .* \(\.\./etc\)"),
])
def test_a_broken_inputs_json_is_one_clear_error(tmp_path, content, message) -> None:
    (tmp_path / "inputs.json").write_text(content)
    with pytest.raises(PetsegError, match=message):
        find_cases(tmp_path)


def test_missing_or_ambiguous_image_slots_are_named(tmp_path) -> None:
    _inputs(tmp_path / "a", [socket("positron-emission-tomography-pet", "images/pet")])
    with pytest.raises(PetsegError, match=r"inputs\.json: 0 image slots name the CT \(image "
                                          r"slots: positron-emission-tomography-pet"):
        find_cases(tmp_path / "a")
    _inputs(tmp_path / "b", [socket("pet-early", "images/pet-1"), socket("pet-late", "p2"),
                             socket("computed-tomography-ct", "images/ct")])
    with pytest.raises(PetsegError, match=r"2 image slots name the PET"):
        find_cases(tmp_path / "b")
    _inputs(tmp_path / "c", [socket("positron-emission-tomography-pet", "images/pet"),
                             socket("computed-tomography-ct", "images/ct")])
    touch(tmp_path / "c/images/pet/p.mha")
    with pytest.raises(PetsegError, match=r"c/images/ct: no image \(\.mha, \.nii\.gz, \.nrrd\) "
                                          r"in this slot of .*inputs\.json"):
        find_cases(tmp_path / "c")
