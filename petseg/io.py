"""Finding cases, reading and writing images with their geometry; atomic writes.

Every file is read with SimpleITK (`.mha`, `.nii.gz`, `.nrrd`, ...). Writes go to a
temporary file in the target folder and are renamed into place, so a crash or an error
never leaves a partial file where a result is expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.geometry import Geometry

if TYPE_CHECKING:
    from petseg.dicom_study import DicomStudy

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd")


def image_suffix(path: str | Path) -> str:
    """The image suffix of `path` (`.nii.gz` counts as one suffix), or '' if none is known."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def image_stem(path: str | Path) -> str:
    """File name without its image suffix (`case.nii.gz` -> `case`)."""
    name = Path(path).name
    suffix = image_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else Path(path).stem


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image; a missing, unreadable or non-3D file raises `PetsegError`."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"{path}: file not found; check the path")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise PetsegError(
            f"{path}: cannot be read as an image ({first[:120]}); replace the corrupt file"
        ) from None
    if image.GetDimension() != 3:
        raise PetsegError(
            f"{path}: is {image.GetDimension()}D, a 3D volume is needed; export the full volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PetsegError(f"{path}: has vector pixels; a scalar 3D volume is needed")
    return image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    The temporary name keeps `path`'s image suffix so writers choose the right format.
    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(path) or path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp and some writers (safetensors) leave 0600 files; results get the mode
        # a plain open() would give them, so another user (a container's) can read them
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write `image` atomically to `path` (format from the suffix); returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


# --------------------------------------------------------------------------- case discovery

GC_PET = ("images", "pet")
GC_CT = ("images", "ct")
AUTOPET_PET = "SUV"
AUTOPET_CT = "CTres"
_MODALITY_TOKEN = re.compile(r"(?:^|[_.\-])(?:pet|suv|ctres|ct|0000|0001)(?=$|[_.\-])")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")
LAYOUTS_HELP = (
    "expected images/pet/ + images/ct/ (one case, or pairs with matching file names), "
    "case folders in that layout, the autoPET layout <case>/<date>/SUV.nii.gz + CTres.nii.gz, "
    "or DICOM files of PET/CT studies"
)


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """One case's input files.

    Attributes:
        name: output name (`<name>.mha`): the PET file's stem in the challenge layout, the
            case folder's name or the autoPET `PETCT_<id>_<date>` path otherwise.
        pet: PET (SUV) image file, None if not found.
        ct: CT (HU) image file, None if not found.
        error: why the case cannot run (found while pairing), else None.
        dicom: for DICOM input, the study and its chosen series (`pet`, `ct` are None).
    """

    name: str
    pet: Path | None
    ct: Path | None
    error: str | None = None
    dicom: DicomStudy | None = None


@dataclasses.dataclass(frozen=True)
class CaseList:
    """Cases found under an input folder.

    Attributes:
        cases: in a stable (sorted) order.
        single: True for one case in the grand-challenge layout (the container's contract:
            any problem is fatal); False for a folder of cases (a bad case is reported and
            the others still run).
    """

    cases: list[CaseFiles]
    single: bool


def image_files(folder: Path) -> list[Path]:
    """Image files (known suffixes, not hidden) directly in `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and image_suffix(p))


def pairing_key(path: Path) -> str:
    """Name used to pair a PET with its CT: the stem without modality tokens (pet, ct, ...)."""
    return _MODALITY_TOKEN.sub("", image_stem(path).lower()) or image_stem(path).lower()


def safe_name(text: str) -> str:
    """`text` with characters other than letters, digits, '.', '_', '-' replaced by '_'."""
    return _UNSAFE.sub("_", text).strip("_.") or "case"


def _pair(folder: Path, pets: list[Path], cts: list[Path]) -> list[CaseFiles]:
    """Pair the PET and CT files of one `images/` folder; raises `PetsegError` if impossible."""
    pet_dir, ct_dir = folder.joinpath(*GC_PET), folder.joinpath(*GC_CT)
    if not pets:
        raise PetsegError(
            f"{pet_dir}: no PET image (.mha, .nii.gz, .nrrd); put the SUV image there"
        )
    if not cts:
        raise PetsegError(f"{ct_dir}: no CT image (.mha, .nii.gz, .nrrd); put the CT image there")
    if len(pets) == 1 and len(cts) == 1:
        return [CaseFiles(safe_name(image_stem(pets[0])), pets[0], cts[0])]
    for match in (image_stem, pairing_key):
        pet_keys = {match(p): p for p in pets}
        ct_keys = {match(p): p for p in cts}
        if (len(pet_keys) == len(pets) == len(cts) == len(ct_keys)
                and set(pet_keys) == set(ct_keys)):
            return [CaseFiles(safe_name(image_stem(pet_keys[k])), pet_keys[k], ct_keys[k])
                    for k in sorted(pet_keys)]
    raise PetsegError(
        f"{folder / 'images'}: {len(pets)} PET and {len(cts)} CT image(s) cannot be paired; "
        "give each PET and its CT the same file name, or put each case in its own folder "
        "(<case>/images/pet/, <case>/images/ct/)"
    )


def _challenge_layout(folder: Path) -> bool:
    return folder.joinpath(*GC_PET).is_dir() or folder.joinpath(*GC_CT).is_dir()


def _autopet_cases(root: Path) -> list[CaseFiles]:
    cases = []
    for pet in sorted(root.rglob(f"{AUTOPET_PET}.*")):
        if image_stem(pet) != AUTOPET_PET or not image_suffix(pet):
            continue
        cts = [p for p in image_files(pet.parent) if image_stem(p) == AUTOPET_CT]
        relative = pet.parent.relative_to(root)
        name = safe_name("_".join(relative.parts) if relative.parts else root.resolve().name)
        if not cts:
            cases.append(CaseFiles(name, pet, None, f"{pet.parent}: no {AUTOPET_CT} image "
                                   f"beside {pet.name}; add the CT resampled to the PET grid"))
        else:
            cases.append(CaseFiles(name, pet, cts[0]))
    return cases


def find_cases(input_dir: str | Path, weight_kg: float | None = None) -> CaseList:
    """Find the cases under `input_dir` (see `LAYOUTS_HELP`).

    A single case in the grand-challenge layout gives `single=True`; problems with it
    (missing PET or CT, unpairable files) raise `PetsegError`. In a folder of cases a
    problem with one case is recorded in its `error` instead. A folder of DICOM files
    gives one case per study (`petseg.dicom_study`); `weight_kg` stands in for a missing
    PatientWeight there.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise PetsegError(f"{root}: input folder not found; check --input")
    if _challenge_layout(root):
        cases = _pair(root, image_files(root.joinpath(*GC_PET)), image_files(root.joinpath(*GC_CT)))
        return CaseList(cases, single=len(cases) == 1)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and _challenge_layout(p))
    if subfolders:
        cases = []
        for folder in subfolders:
            try:
                found = _pair(folder, image_files(folder.joinpath(*GC_PET)),
                              image_files(folder.joinpath(*GC_CT)))
            except PetsegError as exc:
                cases.append(CaseFiles(safe_name(folder.name), None, None, str(exc)))
                continue
            if len(found) > 1:
                cases.append(CaseFiles(safe_name(folder.name), None, None,
                                       f"{folder}: {len(found)} PET/CT pairs; put one case per "
                                       "folder"))
            else:
                cases.append(dataclasses.replace(found[0], name=safe_name(folder.name)))
        return CaseList(cases, single=False)
    cases = _autopet_cases(root)
    if cases:
        return CaseList(cases, single=False)
    from petseg.dicom_study import find_dicom_cases

    cases = find_dicom_cases(root, weight_kg)
    if cases:
        return CaseList(cases, single=False)
    raise PetsegError(f"{root}: no cases found; {LAYOUTS_HELP}")


# --------------------------------------------------------------------------- reading a case


@dataclasses.dataclass(frozen=True)
class Case:
    """A case read from disk: PET (SUV, float32) and CT (HU) with their files."""

    files: CaseFiles
    pet: sitk.Image
    ct: sitk.Image

    @property
    def pet_geometry(self) -> Geometry:
        """The PET's grid (the output mask's grid)."""
        return Geometry.of(self.pet)


def clean_non_finite(image: sitk.Image, path: Path, fill: float) -> sitk.Image:
    """Replace NaN/inf voxels by `fill` (with a warning naming the file and the count)."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    array = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count == 0:
        return image
    log.warning("%s: %d non-finite voxel(s) (NaN/inf) set to %g", path, count, fill)
    clean = np.where(bad, np.asarray(fill, array.dtype), array)
    out = sitk.GetImageFromArray(clean)
    out.CopyInformation(image)
    return out


def check_overlap(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path) -> None:
    """Refuse a CT that does not overlap the PET physically; warn if it covers little of it.

    The CT's transaxial field of view is often smaller than the PET's, so only the axial
    (z) coverage is warned about (below half of the PET's length).
    """
    pet_box = Geometry.of(pet).physical_extent_mm()
    ct_box = Geometry.of(ct).physical_extent_mm()
    tolerance = np.asarray(pet.GetSpacing()).max()
    low = np.maximum(pet_box[0], ct_box[0])
    high = np.minimum(pet_box[1], ct_box[1])
    if np.any(high < low - tolerance):
        span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*ct_box, strict=True))
        pet_span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*pet_box, strict=True))
        raise PetsegError(
            f"{ct_path}: does not overlap the PET {pet_path.name} (CT {span} mm, PET "
            f"{pet_span} mm); check both images come from the same study"
        )
    pet_length = pet_box[1][2] - pet_box[0][2]
    if pet_length > 0 and (high[2] - low[2]) < 0.5 * pet_length:
        log.warning("%s: covers only %.0f%% of the PET's axial length; the rest is treated as air",
                    ct_path, 100 * max(0.0, high[2] - low[2]) / pet_length)


MAX_PLAUSIBLE_SUV = 500.0
"""A PET whose 99.9th percentile is above this is not in SUV (Bq/ml runs to thousands)."""
AIR_HU = -500.0
"""A whole-body CT in HU has air (about -1000 HU) around the body, below this."""


def check_units(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path) -> None:
    """Refuse a PET that cannot be SUV; warn about a CT without air (likely not in HU).

    Judged on every 4th voxel along each axis (a whole-body volume has millions).
    """
    sample = sitk.GetArrayViewFromImage(pet)[::4, ::4, ::4]
    high = float(np.percentile(sample, 99.9))
    if high > MAX_PLAUSIBLE_SUV:
        raise PetsegError(
            f"{pet_path}: 99.9th percentile {high:.0f}, far above any SUV (Bq/ml?); convert "
            "the PET to body-weight SUV first (`petseg suv` does it from DICOM)"
        )
    low = float(np.percentile(sitk.GetArrayViewFromImage(ct)[::4, ::4, ::4], 1))
    if low > AIR_HU:
        log.warning("%s: no air in the CT (1st percentile %.0f HU, above %.0f HU); if it is "
                    "not in HU, apply its rescale slope and intercept first",
                    ct_path, low, AIR_HU)


def read_case(files: CaseFiles, ct_fill_hu: float = -1024.0) -> Case:
    """Read and check one case: both 3D and readable, NaNs cleaned, PET and CT overlapping,
    the PET plausibly in SUV (`check_units`).

    The PET comes back as float32 SUV with non-finite voxels set to 0; the CT keeps its
    pixel type, non-finite voxels set to `ct_fill_hu`.
    """
    if files.dicom is not None:
        from petseg.dicom_study import read_dicom_case

        return read_dicom_case(files, ct_fill_hu)
    if files.error:
        raise PetsegError(files.error)
    if files.pet is None or files.ct is None:
        raise PetsegError(f"case {files.name}: PET or CT file missing; {LAYOUTS_HELP}")
    pet = clean_non_finite(sitk.Cast(read_image(files.pet), sitk.sitkFloat32), files.pet, 0.0)
    ct = clean_non_finite(read_image(files.ct), files.ct, ct_fill_hu)
    check_overlap(pet, ct, files.pet, files.ct)
    check_units(pet, ct, files.pet, files.ct)
    return Case(files=files, pet=pet, ct=ct)


# ------------------------------------------------------------------------------ JSON


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats turned into None and tuples, paths, numpy scalars into
    their JSON types (for `write_json(strict=False)`)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _non_finite_at(value: Any, where: str = "") -> str | None:
    """JSON path (`a.b[2]`) of the first NaN/inf float in `value`, None if there is none."""
    if isinstance(value, float):
        return None if np.isfinite(value) else (where or "the top level")
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list | tuple) else ())
    for key, item in items:
        found = _non_finite_at(item, f"{where}[{key}]" if isinstance(key, int)
                               else f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def write_json(data: Any, path: str | Path, strict: bool = True, indent: int = 2) -> Path:
    """Write `data` as JSON atomically (no partial file on any error); returns `path`.

    Args:
        data: dicts, lists, str, int, float, bool, None.
        path: the file to write (folders created).
        strict: refuse NaN and infinity (`ValueError` naming the value's place); False
            writes them as null on purpose, and paths, tuples and numpy scalars as JSON.
        indent: spaces per nesting level.

    Raises:
        ValueError: a non-finite float with `strict`.
        TypeError: a value JSON cannot hold (an object, a set).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if not strict:
            data = json_safe(data)
        elif (bad := _non_finite_at(data)) is not None:
            raise ValueError(f"{path}: {bad} is NaN or infinite, which strict JSON cannot "
                             "hold; store a number or null")
        tmp.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n",
                       encoding="utf-8")
    return path


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed content of JSON file `path`.

    Args:
        path: the file.
        what: what the file is, for the message ('split file'); '' when its name says it.
        fix: how the user repairs a missing or corrupt file ('create it with `petseg split`').

    Raises:
        PetsegError: one line naming the file and `fix`, when the file is missing,
            unreadable or not valid JSON.
    """
    path = Path(path)
    subject = f"{what} " if what else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PetsegError(f"{path}: {subject}not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PetsegError(f"{path}: {subject}not valid JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise PetsegError(f"{path}: {subject}cannot be read ({exc.strerror}); {fix}") from None
