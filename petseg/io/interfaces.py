"""The input slots grand-challenge lists in `/input/inputs.json`.

The platform writes `inputs.json` beside the inputs: a list of socket values, each naming
its slot (`socket`, or `interface` on older platform versions) with a `slug`, a `kind`
("Image", "Anything", ...), a `super_kind` and the `relative_path` under /input where the
value lies (an image: a folder holding one file; other kinds: the file itself):

    [{"socket": {"slug": "positron-emission-tomography-pet", "kind": "Image",
                 "super_kind": "Image", "relative_path": "images/pet"}, ...}, ...]

`read_slots` maps each listed slot to its path; `image_slot_folders` picks the PET and CT
image slots by the modality their slug or folder names. Without `inputs.json` the fixed
folders `images/pet` and `images/ct` are used (`petseg.io.cases`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from petseg.errors import PetsegError
from petseg.io.images import read_json

INPUTS_JSON = "inputs.json"
_TOKENS = re.compile(r"[^a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Slot:
    """One input slot of `inputs.json`.

    Attributes:
        slug: the interface's slug, e.g. "positron-emission-tomography-pet".
        kind: its kind, e.g. "Image" or "Anything".
        super_kind: "Image", "File" or "Value".
        path: where its value lies: `input_dir / relative_path`.
    """

    slug: str
    kind: str
    super_kind: str
    path: Path

    def names(self, modality: str) -> bool:
        """True when the slug or the last part of the path has `modality` as a token
        ("pet" in "positron-emission-tomography-pet" or "images/pet")."""
        tokens = set(_TOKENS.split(self.slug.lower())) | set(_TOKENS.split(self.path.name.lower()))
        return modality in tokens


def read_slots(input_dir: str | Path) -> dict[str, Slot] | None:
    """The slots `input_dir/inputs.json` lists, by slug; None when there is no such file.

    Raises:
        PetsegError: the file is not JSON, not a list of socket values, or a slot lacks its
            slug or relative path, or points outside `input_dir`.
    """
    input_dir = Path(input_dir)
    path = input_dir / INPUTS_JSON
    if not path.is_file():
        return None
    fix = "it is written by grand-challenge; remove it to use images/pet and images/ct"
    data = read_json(path, "the platform's input list", fix)
    if not isinstance(data, list):
        raise PetsegError(f"{path}: expected a list of input slots, found "
                          f"{type(data).__name__}; {fix}")
    slots = {}
    for index, value in enumerate(data):
        socket = value.get("socket") or value.get("interface") if isinstance(value, dict) else None
        if not isinstance(socket, dict) or not socket.get("slug") or not isinstance(
                socket.get("relative_path"), str):
            raise PetsegError(f"{path}: entry {index} names no slot with a slug and a "
                              f"relative_path; {fix}")
        relative = Path(socket["relative_path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise PetsegError(f"{path}: slot {socket['slug']!r} lies outside {input_dir} "
                              f"({relative}); {fix}")
        slots[str(socket["slug"])] = Slot(str(socket["slug"]), str(socket.get("kind", "")),
                                          str(socket.get("super_kind", "")), input_dir / relative)
    return slots


def image_slot_folders(slots: dict[str, Slot], input_dir: str | Path) -> tuple[Path, Path]:
    """The folders of the PET and the CT image slot.

    Raises:
        PetsegError: no image slot, or more than one, names the PET (or the CT).
    """
    images = [s for s in slots.values() if s.super_kind.lower() == "image"
              or s.kind.lower() == "image"]
    found = []
    for modality in ("pet", "ct"):
        matching = [s for s in images if s.names(modality)]
        if len(matching) != 1:
            listed = ", ".join(f"{s.slug} ({s.path})" for s in images) or "none"
            raise PetsegError(
                f"{Path(input_dir) / INPUTS_JSON}: {len(matching)} image slots name the "
                f"{modality.upper()} (image slots: {listed}); give the algorithm one PET and "
                "one CT image input")
        found.append(matching[0].path)
    return found[0], found[1]


CLICK_FILE_NAME = "lesion-clicks.json"
"""The autoPET IV and V click socket's file (`relative_path`)."""


def click_slot_file(slots: dict[str, Slot]) -> Path | None:
    """The file of the click socket among `slots` (relative path `lesion-clicks.json`, or a
    non-image slot whose slug names clicks), whether or not it exists; None without one."""
    for slot in slots.values():
        is_image = slot.super_kind.lower() == "image" or slot.kind.lower() == "image"
        if slot.path.name == CLICK_FILE_NAME or (not is_image and "click" in slot.slug.lower()):
            return slot.path
    return None
