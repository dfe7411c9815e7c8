"""The container on DICOM: write the fixture case as scanner DICOM, then check what came out.

    PYTHONPATH=. python test/container_dicom.py write test/input DICOM_DIR [--anonymised]
    PYTHONPATH=. python test/container_dicom.py check OUTPUT --dicom DICOM_DIR \
        --expected test/expected_output

`write` turns the fixture's PET (SUV) and CT (HU) into one DICOM study (PET in Bq/ml,
CT in stored values, nested folders, meaningless names, an unrelated series beside them);
`--anonymised` leaves out what anonymisers delete (`ANONYMISER_REMOVES`).
`check` (each failure one line; exit status 1 if any):
- the mask folder holds exactly one `.mha` with, in patient space, a Dice of at least
  `--min-dice` (default 0.98) with the expected mask of the `.mha` fixture: the PET passes
  through 16-bit stored values with a per-slice rescale, which moves SUVs by up to about
  1e-4 of a slice's maximum, so a few voxels at the threshold may flip;
- `dicom-seg/` holds exactly one DICOM Segmentation whose frames reference instances of
  the written PET series, placed on those slices equal the mask, and whose study and
  patient equal the PET's (an attribute the PET lacks is present and empty in the SEG);
- dciodvfy (dicom3tools), when on PATH, finds no error in the SEG (PETSEG_REQUIRE_DCIODVFY=1:
  its absence is a failure);
- `results.json` lists one case, without errors, with the SEG among its outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from container_check import only_file, verdict

from petseg.evaluation.metrics import dice
from petseg.io.images import read_image
from petseg.phantom.dicom import ANONYMISER_REMOVES, StudyTags, write_dicom_study

MASK_FOLDER = Path("images", "automated-petct-lesion-segmentation")
SEG_FOLDER = Path("dicom-seg")


def write(input_dir: Path, dicom_dir: Path, anonymised: bool = False) -> int:
    """Write `input_dir`'s single PET/CT case as a DICOM study under `dicom_dir`."""
    (pet_path,), (ct_path,) = (sorted((input_dir / "images" / kind).glob("*.mha"))
                               for kind in ("pet", "ct"))
    tags = StudyTags(removed=ANONYMISER_REMOVES if anonymised else ())
    written = write_dicom_study(dicom_dir, read_image(pet_path), read_image(ct_path), tags,
                                seed=7)
    count = sum(len(files) for files in written.files.values())
    print(f"container dicom: wrote {count} files of study {written.study_uid} to {dicom_dir}")
    return 0


def _pet_instances(dicom_dir: Path) -> dict[str, pydicom.Dataset]:
    headers = {}
    for path in dicom_dir.rglob("*"):
        if path.is_file() and path.name != "DICOMDIR":
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if getattr(ds, "Modality", None) == "PT":
                headers[str(ds.SOPInstanceUID)] = ds
    return headers


def pet_uids_in_slice_order(headers: list[pydicom.Dataset]) -> list[str]:
    """SOPInstanceUIDs of PET headers sorted along their slice normal (the mask's z order)."""
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(headers,
                     key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))
    return [str(ds.SOPInstanceUID) for ds in ordered]


def _seg_matches_mask(seg_path: Path, mask: sitk.Image, pets: dict[str, pydicom.Dataset],
                      failures: list[str]) -> None:
    """The SEG's frames, placed on the PET slices by referenced instance, equal `mask`."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(pet_uids_in_slice_order(list(pets.values())),
                                               segment_numbers=[1],
                                               ignore_spatial_locations=True)[..., 0]
    if not np.array_equal(pixels, sitk.GetArrayFromImage(mask)):
        failures.append(f"{seg_path}: its frames placed on the PET slices differ from the mask")


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines for `path` (its report goes to stderr)."""
    binary = shutil.which("dciodvfy")
    assert binary is not None
    report = subprocess.run([binary, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (report.stdout + report.stderr).splitlines()
            if line.startswith("Error")]


def _seg_is_valid(seg_path: Path, seg: pydicom.Dataset, pet: pydicom.Dataset | None,
                  failures: list[str]) -> None:
    """Patient and study as the PET's (empty where the PET lacks them); no dciodvfy error."""
    for tag in ("StudyInstanceUID", "PatientID", *ANONYMISER_REMOVES):
        if pet is not None and tag not in pet:
            if tag not in seg or seg[tag].value not in ("", None):
                failures.append(f"{seg_path}: {tag}, missing in the PET, is not empty")
        elif pet is None or getattr(seg, tag, None) != getattr(pet, tag):
            failures.append(f"{seg_path}: {tag} differs from the PET's")
    if shutil.which("dciodvfy") is not None:
        failures += [f"{seg_path}: dciodvfy: {line}" for line in dciodvfy_errors(seg_path)]
    elif os.environ.get("PETSEG_REQUIRE_DCIODVFY") == "1":
        failures.append("dciodvfy not on PATH and PETSEG_REQUIRE_DCIODVFY=1; run "
                        "scripts/system_setup.sh")


def check(output: Path, dicom_dir: Path, expected_dir: Path, min_dice: float) -> list[str]:
    """One line per violated rule of the module docstring; empty when all hold."""
    failures: list[str] = []
    mask_path = only_file(output / MASK_FOLDER, "*.mha", failures)
    expected_path = only_file(expected_dir / MASK_FOLDER, "*.mha", failures)
    seg_path = only_file(output / SEG_FOLDER, "*.dcm", failures)
    if mask_path and expected_path:
        mask, expected = read_image(mask_path), read_image(expected_path)
        # the DICOM PET's grid may order the slices the other way: compare in patient space
        on_expected = sitk.Resample(mask, expected, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        score = dice(sitk.GetArrayFromImage(expected) > 0, sitk.GetArrayFromImage(on_expected) > 0)
        if not score >= min_dice:
            failures.append(f"{mask_path}: Dice {score:.4f} with {expected_path} < {min_dice}")
    pets = _pet_instances(dicom_dir)
    if seg_path:
        seg = pydicom.dcmread(seg_path)
        referenced = {item.DerivationImageSequence[0].SourceImageSequence[0]
                      .ReferencedSOPInstanceUID for item in seg.PerFrameFunctionalGroupsSequence}
        if seg.Modality != "SEG" or not referenced or not referenced <= set(pets):
            failures.append(f"{seg_path}: not a SEG whose frames reference the PET instances")
        if mask_path and not failures:
            _seg_matches_mask(seg_path, read_image(mask_path), pets, failures)
        _seg_is_valid(seg_path, seg, next(iter(pets.values()), None), failures)
    results_path = output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    kinds = [o.get("type") for e in results for o in e.get("outputs", [])]
    if len(results) != 1 or results[0].get("error_messages") or "dicom_seg" not in kinds:
        failures.append(f"{results_path}: expected one case without errors and with a dicom_seg"
                        f" output, found {json.dumps(results)[:300]}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Command line: `write` or `check`, see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("write")
    make.add_argument("input", type=Path)
    make.add_argument("dicom", type=Path)
    make.add_argument("--anonymised", action="store_true",
                      help="leave out what anonymisers delete (ANONYMISER_REMOVES)")
    inspect = commands.add_parser("check")
    inspect.add_argument("output", type=Path)
    inspect.add_argument("--dicom", type=Path, required=True)
    inspect.add_argument("--expected", type=Path, required=True)
    inspect.add_argument("--min-dice", type=float, default=0.98)
    args = parser.parse_args(argv)
    if args.command == "write":
        return write(args.input, args.dicom, args.anonymised)
    return verdict("dicom", check(args.output, args.dicom, args.expected, args.min_dice),
                   "one mask on the PET grid, one SEG referencing the PET, results.json lists "
                   "the case")


if __name__ == "__main__":
    raise SystemExit(main())
