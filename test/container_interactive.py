"""The container on an interactive case: a click file in /input, the mask at the new slug.

    PYTHONPATH=. python test/container_interactive.py write test/input AUTOMATIC DEST
    PYTHONPATH=. python test/container_interactive.py check OUTPUT --input DEST \
        --automatic AUTOMATIC

`write` copies the case of `test/input` (images/pet, images/ct) to DEST and adds
`lesion-clicks.json` with one background click at the centre (distance-transform maximum)
of the largest component of the automatic mask in AUTOMATIC (an output folder of the same
case without clicks: the component a reader rejects as a false positive).
`check` (each failure one line; exit status 1 if any):
- `images/tumor-lesion-segmentation/` holds exactly one `.mha`, named as the PET, and the
  2023 folder `images/automated-petct-lesion-segmentation/` holds no file;
- the mask lies on the PET's grid with voxels in {0, 1};
- no voxel of the clicked automatic component is left;
- `results.json` lists the case without errors and with 0 tumour and 1 background point.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from container_check import only_file, verdict
from scipy.ndimage import distance_transform_edt

from petseg.errors import PetsegError
from petseg.io.geometry import grid_difference
from petseg.io.images import image_stem, read_image

AUTOMATIC_FOLDER = Path("images", "automated-petct-lesion-segmentation")
INTERACTIVE_FOLDER = Path("images", "tumor-lesion-segmentation")
CLICK_FILE = "lesion-clicks.json"


def _pet(input_dir: Path) -> Path:
    (pet,) = sorted((input_dir / "images" / "pet").glob("*.mha"))
    return pet


def _largest_component(mask_zyx: np.ndarray) -> np.ndarray:
    labels = cc3d.connected_components(mask_zyx > 0, connectivity=18)
    if labels.max() == 0:
        raise PetsegError("the automatic mask is empty: no component to click as background; "
                          "regenerate the expected output")
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def background_click(input_dir: Path, automatic_dir: Path) -> list[int]:
    """The (x, y, z) background click `write` puts into the click file."""
    pet = read_image(_pet(input_dir))
    (mask_path,) = sorted((automatic_dir / AUTOMATIC_FOLDER).glob("*.mha"))
    component = _largest_component(sitk.GetArrayFromImage(read_image(mask_path)))
    distance = distance_transform_edt(component, sampling=pet.GetSpacing()[::-1])
    centre = np.unravel_index(int(np.argmax(distance)), component.shape)
    return [int(v) for v in centre[::-1]]


def write(input_dir: Path, automatic_dir: Path, dest: Path) -> int:
    """Copy `input_dir`'s case to `dest` and add its click file."""
    point = background_click(input_dir, automatic_dir)
    shutil.copytree(input_dir / "images", dest / "images", dirs_exist_ok=True)
    (dest / CLICK_FILE).write_text(json.dumps({
        "version": {"major": 1, "minor": 0}, "type": "Multiple points",
        "points": [{"point": point, "name": "background"}]}))
    print(f"container interactive: background click {point} written to {dest / CLICK_FILE}")
    return 0


def _check_results(path: Path, case: str) -> list[str]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{path}: unreadable ({exc})"]
    if len(entries) != 1 or entries[0].get("name") != case or entries[0]["error_messages"]:
        return [f"{path}: expected one entry for {case!r} without errors, got {entries}"]
    clicks = entries[0].get("clicks") or {}
    if (clicks.get("tumour"), clicks.get("background")) != (0, 1):
        return [f"{path}: clicks {clicks}, expected 0 tumour and 1 background point used"]
    return []


def check(output_dir: Path, input_dir: Path, automatic_dir: Path) -> list[str]:
    """The failures of an interactive run's `output_dir` (see the module docstring)."""
    failures: list[str] = []
    pet_path = _pet(input_dir)
    leftover = [p for p in (output_dir / AUTOMATIC_FOLDER).rglob("*") if p.is_file()]
    if leftover:
        failures.append(f"{output_dir / AUTOMATIC_FOLDER}: holds {leftover}; an interactive "
                        "case writes only the tumor-lesion-segmentation slug")
    mask_path = only_file(output_dir / INTERACTIVE_FOLDER, "*.mha", failures)
    failures += _check_results(output_dir / "results.json", image_stem(pet_path))
    if mask_path is None:
        return failures
    if mask_path.name != f"{image_stem(pet_path)}.mha":
        failures.append(f"{mask_path}: not named as the PET ({pet_path.name})")
    mask, pet = read_image(mask_path), read_image(pet_path)
    difference = grid_difference(mask, pet)
    if difference:
        return [*failures, f"{mask_path}: geometry differs from the input PET: {difference}"]
    array = sitk.GetArrayFromImage(mask)
    if not np.isin(array, (0, 1)).all():
        return [*failures, f"{mask_path}: voxels must be 0/1, found {np.unique(array)[:5]}"]
    (automatic_path,) = sorted((automatic_dir / AUTOMATIC_FOLDER).glob("*.mha"))
    component = _largest_component(sitk.GetArrayFromImage(read_image(automatic_path)))
    left = int(array[component].sum())
    if left:
        failures.append(f"{mask_path}: {left} of {int(component.sum())} voxels of the "
                        "background-clicked component are left")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Command line: `write` or `check`; exit 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="the interactive input folder")
    w.add_argument("input", type=Path)
    w.add_argument("automatic", type=Path, help="output folder of the case without clicks")
    w.add_argument("dest", type=Path)
    c = sub.add_parser("check", help="an interactive run's output")
    c.add_argument("output", type=Path)
    c.add_argument("--input", type=Path, required=True, help="the interactive input folder")
    c.add_argument("--automatic", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "write":
        return write(args.input, args.automatic, args.dest)
    return verdict("interactive", check(args.output, args.input, args.automatic),
                   "the mask at the tumor-lesion-segmentation slug on the PET grid, the "
                   "background-clicked component removed")


if __name__ == "__main__":
    raise SystemExit(main())
