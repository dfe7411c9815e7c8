"""Check a container's /output against the grand-challenge contract and an expected mask.

    PYTHONPATH=. python test/container_check.py OUTPUT --input test/input \
        --expected test/expected_output

Checks (each failure is one line; exit status 1 if any):
- `images/automated-petct-lesion-segmentation/` holds exactly one file, a `.mha`;
- its geometry (size, spacing, origin, direction) equals the input PET's;
- its voxels are integers in {0, 1};
- its Dice with the expected mask is at least `--min-dice` (default 0.99);
- `results.json` exists, names the case (the PET's file name) and reports no error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.evaluation.metrics import dice
from petseg.io.geometry import grid_difference
from petseg.io.images import image_stem, read_image

MASK_FOLDER = Path("images", "automated-petct-lesion-segmentation")
PET_FOLDER = Path("images", "pet")
RESULTS_NAME = "results.json"
GEOMETRY_TOLERANCE = 1e-4
"""Absolute tolerance (mm, or direction cosine) for spacing, origin and direction."""


@dataclasses.dataclass
class CheckReport:
    """Outcome of `check_output`.

    Attributes:
        failures: one line per violated rule; empty means the output passes.
        dice: Dice of the output mask with the expected one (None if not computed).
        voxels: foreground voxels of the output mask (None if not read).
        expected_voxels: foreground voxels of the expected mask (None if not read).
    """

    failures: list[str] = dataclasses.field(default_factory=list)
    dice: float | None = None
    voxels: int | None = None
    expected_voxels: int | None = None

    @property
    def ok(self) -> bool:
        """True when no rule is violated."""
        return not self.failures


def single_file(folder: Path, what: str) -> tuple[Path | None, str | None]:
    """The only entry of `folder`, or None and a one-line reason."""
    if not folder.is_dir():
        return None, f"{folder}: missing; the {what} folder must exist"
    entries = sorted(folder.iterdir())
    if len(entries) != 1:
        names = ", ".join(e.name for e in entries) or "nothing"
        return None, f"{folder}: holds {len(entries)} entries ({names}); exactly one {what} file"
    return entries[0], None


def _check_results(path: Path, case: str) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing; write results.json listing the case"]
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid JSON ({exc})"]
    if case not in json.dumps(results):
        return [f"{path}: does not name the case {case!r}"]
    entries = results if isinstance(results, list) else [results]
    errors = [m for e in entries if isinstance(e, dict) for m in e.get("error_messages") or []]
    return [f"{path}: reports error(s): {'; '.join(map(str, errors))}"] if errors else []


def check_output(
    output_dir: str | Path, input_dir: str | Path, expected_dir: str | Path,
    min_dice: float = 0.99,
) -> CheckReport:
    """Check one container run's output folder (see the module docstring for the rules).

    Args:
        output_dir: what the container wrote to /output.
        input_dir: what it read from /input (`images/pet/<uuid>.mha`, `images/ct/...`).
        expected_dir: an output folder holding the expected mask.
        min_dice: lowest acceptable Dice with the expected mask.
    """
    output_dir, input_dir, expected_dir = Path(output_dir), Path(input_dir), Path(expected_dir)
    report = CheckReport()
    pet_path, problem = single_file(input_dir / PET_FOLDER, "input PET")
    if problem:
        report.failures.append(problem)
        return report
    assert pet_path is not None
    report.failures += _check_results(output_dir / RESULTS_NAME, image_stem(pet_path))

    mask_path, problem = single_file(output_dir / MASK_FOLDER, "output mask")
    if problem:
        report.failures.append(problem)
        return report
    assert mask_path is not None
    if not mask_path.name.endswith(".mha"):
        report.failures.append(f"{mask_path}: not a .mha file")
    expected_path, problem = single_file(expected_dir / MASK_FOLDER, "expected mask")
    if problem:
        report.failures.append(problem)
        return report
    assert expected_path is not None
    try:
        mask, pet, expected = (read_image(p) for p in (mask_path, pet_path, expected_path))
    except PetsegError as exc:
        report.failures.append(str(exc))
        return report

    difference = grid_difference(mask, pet, GEOMETRY_TOLERANCE)
    if difference:
        report.failures.append(f"{mask_path}: geometry differs from the input PET: {difference}")
        return report
    array = sitk.GetArrayFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer) or not np.isin(array, (0, 1)).all():
        values = np.unique(array)[:5]
        report.failures.append(
            f"{mask_path}: voxels must be integers 0/1, found {array.dtype} {values.tolist()}"
        )
        return report
    truth = sitk.GetArrayFromImage(expected)
    if truth.shape != array.shape:
        report.failures.append(f"{expected_path}: shape {truth.shape} != output {array.shape}")
        return report
    report.voxels, report.expected_voxels = int(array.sum()), int((truth > 0).sum())
    report.dice = dice(truth > 0, array > 0)
    if np.isnan(report.dice):
        report.failures.append(
            f"{expected_path}: expected and output masks are both empty, Dice undefined; "
            "regenerate the fixture with scripts/make_test_fixture.sh"
        )
    elif report.dice < min_dice:
        report.failures.append(
            f"{mask_path}: Dice {report.dice:.4f} with {expected_path} < {min_dice}"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: print the findings, exit 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the container's /output folder")
    parser.add_argument("--input", type=Path, required=True, help="the /input folder")
    parser.add_argument("--expected", type=Path, required=True,
                        help="output folder holding the expected mask")
    parser.add_argument("--min-dice", type=float, default=0.99)
    args = parser.parse_args(argv)
    report = check_output(args.output, args.input, args.expected, args.min_dice)
    return verdict("check", report.failures,
                   f"one mask on the PET grid, Dice {report.dice or 0.0:.4f} ({report.voxels} "
                   f"voxels, expected {report.expected_voxels}), results.json names the case")


def only_file(folder: Path, pattern: str, failures: list[str]) -> Path | None:
    """The one file of `folder` matching `pattern`, else None with a failure saying how many
    there are."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if len(found) != 1:
        failures.append(f"{folder}: holds {len(found)} {pattern} files, expected exactly one")
        return None
    return found[0]


def verdict(check: str, failures: list[str], ok: str) -> int:
    """Print each failure as `container CHECK: FAIL ...` on stderr, else `container CHECK:
    ok: OK` on stdout; the exit code (1 when something failed)."""
    for failure in failures:
        print(f"container {check}: FAIL {failure}", file=sys.stderr)
    if not failures:
        print(f"container {check}: ok: {ok}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
