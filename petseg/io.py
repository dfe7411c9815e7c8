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

from petseg.errors import PetsegError, describe_os_error
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


SPACING_RANGE_MM = (0.1, 20.0)
"""Voxel sizes a PET or CT can have: scanners write 0.3-5 mm (CT) and 1.5-6 mm (PET); a
size outside this range is a header in the wrong unit (m, µm) or corrupt."""
ORTHONORMAL_TOLERANCE = 1e-3
"""Largest |D^T D - I| entry of a direction matrix; DICOM orientations carry about six
decimals, so real images are orthonormal to 1e-5."""


def _header_spacing(path: Path) -> list[float] | None:
    """Voxel sizes as written in the header (before the reader normalizes their signs).

    Read for MetaImage (`ElementSpacing`) and NIfTI (`pixdim`); None for other formats
    or an unreadable header.
    """
    import gzip
    import struct

    suffix = image_suffix(path)
    try:
        if suffix in (".mha", ".mhd"):
            with path.open("rb") as handle:
                head = handle.read(65536).decode("latin-1")
            match = re.search(r"^\s*Element(?:Spacing|Size)\s*=\s*(.+)$", head, re.MULTILINE)
            return [float(v) for v in match.group(1).split()] if match else None
        if suffix in (".nii", ".nii.gz"):
            opener = gzip.open if suffix == ".nii.gz" else open
            with opener(path, "rb") as handle:
                header = handle.read(348)
            for order in "<>":
                if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
                    return list(struct.unpack(order + "8f", header[76:108])[1:4])
    except (OSError, ValueError, EOFError):
        return None
    return None


def _read_failure(path: Path, exc: Exception) -> str:
    """One line saying why SimpleITK could not read the existing file `path`."""
    text = str(exc)
    if not os.access(path, os.R_OK):
        return (f"{path}: not readable by this user (uid {os.getuid()}); make it readable "
                "(chmod a+r) or run as its owner")
    size = path.stat().st_size
    if size == 0:
        return f"{path}: is empty (0 bytes); copy the file again"
    match = re.search(r"Refusing to change spacing from .* to \[?([^\]\n]*)", text)
    if match:
        return (f"{path}: voxel spacing [{match.group(1).strip()}] in the header is not "
                "positive; write the image with its true voxel size in mm")
    if "Bad direction" in text:
        return (f"{path}: the direction matrix in the header is singular (its axes are not "
                "independent); write the image with its scanner orientation")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return (f"{path}: is not an image SimpleITK can read, or its header is corrupt "
                f"({size:,} bytes); replace the file")
    voxels = int(np.prod(reader.GetSize()))
    item = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    with path.open("rb") as handle:
        head = handle.read(65536)
    marker = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", head)
    if marker and image_suffix(path) == ".mha" and b"CompressedData = True" not in head:
        return (f"{path}: is truncated: {size - marker.end():,} of {voxels * item:,} bytes of "
                "voxel data; copy the file again")
    return (f"{path}: is truncated or corrupt: the header describes {voxels:,} voxels "
            f"({' x '.join(map(str, reader.GetSize()))}), the file holds {size:,} bytes; "
            "copy the file again")


def _check_gzip_complete(path: Path, image: sitk.Image) -> None:
    """Refuse a truncated `.nii.gz`, which the NIfTI reader fills up silently.

    The gzip trailer holds the uncompressed size (mod 2**32); only when it disagrees with
    the header's voxel offset plus the voxels is the whole stream decompressed to decide.
    """
    import gzip
    import struct
    import zlib

    try:
        with gzip.open(path, "rb") as handle:
            header = handle.read(348)
        order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        offset = int(struct.unpack(order + "f", header[108:112])[0])
        with path.open("rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", handle.read(4))[0]
    except (OSError, EOFError, struct.error):
        return  # SimpleITK read it; nothing better to say
    item = sitk.GetArrayViewFromImage(image).itemsize
    expected = offset + image.GetNumberOfPixels() * item
    if trailer == expected % 2**32:
        return
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (EOFError, zlib.error, OSError):
        raise PetsegError(
            f"{path}: is truncated or corrupt: the compressed stream ends early "
            f"({path.stat().st_size:,} bytes on disk, {expected:,} expected uncompressed); "
            "copy the file again"
        ) from None


def check_geometry(image: sitk.Image, path: Path) -> None:
    """Refuse a header no scanner writes: negative, zero or implausible voxel sizes
    (`SPACING_RANGE_MM`) or a direction matrix that is not orthonormal."""
    written = _header_spacing(path)
    if written is not None and any(not v > 0 for v in written):
        raise PetsegError(
            f"{path}: voxel spacing {' '.join(f'{v:g}' for v in written)} in the header is "
            "not positive (a flip belongs in the direction matrix); write the image with "
            "positive spacing and its true direction"
        )
    spacing = np.asarray(image.GetSpacing(), float)
    low, high = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)) or np.any(spacing < low) or np.any(spacing > high):
        raise PetsegError(
            f"{path}: voxel spacing {' x '.join(f'{v:g}' for v in spacing)} mm is outside "
            f"{low:g}-{high:g} mm (a unit error or a corrupt header); write the image with "
            "its true voxel size in mm"
        )
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    error = np.abs(direction.T @ direction - np.eye(3)).max()
    if not np.isfinite(error) or error > ORTHONORMAL_TOLERANCE:
        raise PetsegError(
            f"{path}: direction matrix {np.round(direction, 4).tolist()} is not orthonormal "
            f"(off by {error:.3g}); write the image with its scanner orientation"
        )


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image; a missing, unreadable, truncated or non-3D file, or a header no
    scanner writes (`check_geometry`), raises `PetsegError`."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"{path}: file not found; check the path")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise PetsegError(_read_failure(path, exc)) from None
    if image.GetDimension() != 3:
        raise PetsegError(
            f"{path}: is {image.GetDimension()}D, a 3D volume is needed; export the full volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PetsegError(f"{path}: has vector pixels; a scalar 3D volume is needed")
    if image_suffix(path) == ".nii.gz":
        _check_gzip_complete(path, image)
    check_geometry(image, path)
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


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written there; else `PetsegError`
    naming the folder, why, and the fix. Returns `folder`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".petseg-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        owner = ""
        with contextlib.suppress(OSError):
            stat = folder.stat()
            owner = f", owned by uid {stat.st_uid} with mode {stat.st_mode & 0o7777:o}"
        raise PetsegError(
            f"{folder}: not writable by uid {os.getuid()} ({exc.strerror or exc}{owner}); "
            f"make it writable for this user (chown/chmod), or run the container as its owner "
            f"with --user $(id -u):$(id -g)"
        ) from None
    return folder


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


MIN_AXIAL_COVERAGE = 0.5
"""A CT covering less of the PET's axial length than this is refused: the attenuation-
correction CT of a PET/CT study spans the whole PET (autoPET's CTres: 100 %), so less
than half is another study, a cropped export or a broken header."""
WARN_AXIAL_COVERAGE = 0.95
"""Below this axial coverage the uncovered slices are treated as air: warned."""
MIN_TRANSAXIAL_COVERAGE = 0.25
"""Refused below this fraction of the PET's width in x or y: a CT's 50 cm field of view
covers 70 % or more of a 70 cm PET field of view."""


def check_overlap(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path) -> None:
    """Refuse a CT that covers too little of the PET (`MIN_AXIAL_COVERAGE`,
    `MIN_TRANSAXIAL_COVERAGE`), warn below `WARN_AXIAL_COVERAGE`.

    Extents are the voxels' physical boxes (centres +- half a voxel), so boxes that only
    touch in a plane cover 0 %.
    """
    def box(image: sitk.Image) -> np.ndarray:
        geometry = Geometry.of(image)
        centres = geometry.physical_extent_mm()
        half = 0.5 * np.abs(np.asarray(geometry.direction).reshape(3, 3)) @ geometry.spacing
        return np.stack([centres[0] - half, centres[1] + half])

    pet_box, ct_box = box(pet), box(ct)
    covered = np.minimum(pet_box[1], ct_box[1]) - np.maximum(pet_box[0], ct_box[0])
    fraction = np.clip(covered / (pet_box[1] - pet_box[0]), 0.0, 1.0)
    span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*ct_box, strict=True))
    pet_span = " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(*pet_box, strict=True))
    if fraction[2] < MIN_AXIAL_COVERAGE or min(fraction[:2]) < MIN_TRANSAXIAL_COVERAGE:
        raise PetsegError(
            f"{ct_path}: covers {100 * fraction[0]:.0f}% x {100 * fraction[1]:.0f}% x "
            f"{100 * fraction[2]:.0f}% (x, y, z) of the PET {pet_path.name} (CT {span} mm, "
            f"PET {pet_span} mm); check both images come from the same study and their "
            "headers (spacing, origin, direction)"
        )
    if fraction[2] < WARN_AXIAL_COVERAGE:
        log.warning("%s: covers only %.0f%% of the PET's axial length; the rest is treated as "
                    "air and lesions there may be missed", ct_path, 100 * fraction[2])


MAX_PLAUSIBLE_SUV = 500.0
"""A PET whose 99.9th percentile is above this is not in SUV (Bq/ml runs to thousands)."""
AIR_HU = -500.0
"""A whole-body CT in HU has air (about -1000 HU) around the body, below this."""
MIN_SUV_REFUSED = -0.5
"""1st percentile of a PET below this is refused: OSEM reconstructions are non-negative
and filtered ones dip a few hundredths of an SUV below 0 in air, so it is an offset."""
MIN_SUV_WARNED = -0.1
"""1st percentile below this (above `MIN_SUV_REFUSED`) is warned about."""
MIN_PET_LIKE, MAX_PET_LIKE = 1.0, 100.0
"""A 'CT' without air whose 99.9th percentile lies between these looks like an SUV image
(brain and bladder put a PET's above 1 SUV; bone puts a CT's above 100 HU)."""


def _percentiles(image: sitk.Image, q: list[float]) -> list[float]:
    """Percentiles of every 4th voxel along each axis (a whole-body volume has millions)."""
    sample = sitk.GetArrayViewFromImage(image)[::4, ::4, ::4]
    return [float(v) for v in np.percentile(sample, q)]


def check_units(pet: sitk.Image, ct: sitk.Image, pet_path: Path, ct_path: Path,
                pet_pixel: str = "32-bit float") -> None:
    """Refuse a PET that cannot be SUV or a CT that cannot be HU; warn where it may suffer.

    Refused: PET and CT swapped (air in HU in the "PET"), a "CT" that looks like SUV, a
    PET in Bq/ml (`MAX_PLAUSIBLE_SUV`), a PET stored as integers (`pet_pixel`, SUV's
    decimals lost), SUV offset below 0 (`MIN_SUV_REFUSED`). Warned: slightly negative SUV
    (`MIN_SUV_WARNED`), a CT without air (`AIR_HU`).
    """
    pet_low, pet_high = _percentiles(pet, [1, 99.9])
    ct_low, ct_high = _percentiles(ct, [1, 99.9])
    ct_is_pet_like = ct_low > MIN_SUV_REFUSED and MIN_PET_LIKE < ct_high < MAX_PET_LIKE
    if pet_low < AIR_HU:
        if ct_is_pet_like or ct_low > AIR_HU:
            raise PetsegError(
                f"{pet_path}: looks like a CT (1st percentile {pet_low:.0f}, air in HU) and "
                f"{ct_path.name} like a PET; the PET and CT folders look swapped: put the "
                "SUV image under images/pet and the CT under images/ct"
            )
        raise PetsegError(
            f"{pet_path}: looks like a CT (1st percentile {pet_low:.0f}, air in HU), not an "
            "SUV PET; put the PET (SUV) there"
        )
    if ct_is_pet_like:
        raise PetsegError(
            f"{ct_path}: looks like a PET (values {ct_low:.2g} to {ct_high:.2g}, no air), not "
            "a CT in HU; put the study's CT there"
        )
    if pet_high > MAX_PLAUSIBLE_SUV:
        raise PetsegError(
            f"{pet_path}: 99.9th percentile {pet_high:.0f}, far above any SUV (Bq/ml?); convert "
            "the PET to body-weight SUV first (`petseg suv` does it from DICOM)"
        )
    if "int" in pet_pixel:
        raise PetsegError(
            f"{pet_path}: stored as {pet_pixel} values, which lose SUV's decimals; write the "
            "PET as float32 SUV (`petseg suv` does it from DICOM)"
        )
    if pet_low < MIN_SUV_REFUSED:
        raise PetsegError(
            f"{pet_path}: 1st percentile {pet_low:.2f} SUV; SUV is not negative beyond "
            f"reconstruction noise (>= {MIN_SUV_REFUSED:g}), so an offset or a wrong rescale "
            "was applied; write the PET as body-weight SUV"
        )
    if pet_low < MIN_SUV_WARNED:
        log.warning("%s: 1st percentile %.2f SUV, more negative than reconstruction noise; "
                    "the mask may suffer", pet_path, pet_low)
    if ct_low > AIR_HU:
        log.warning("%s: no air in the CT (1st percentile %.0f HU, above %.0f HU); if it is "
                    "not in HU, apply its rescale slope and intercept first",
                    ct_path, ct_low, AIR_HU)


def read_case(files: CaseFiles, ct_fill_hu: float = -1024.0) -> Case:
    """Read and check one case: both 3D and readable with plausible headers, NaNs cleaned,
    the PET plausibly in SUV and the CT in HU (`check_units`), the CT covering the PET
    (`check_overlap`).

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
    pet_raw = read_image(files.pet)
    pet = clean_non_finite(sitk.Cast(pet_raw, sitk.sitkFloat32), files.pet, 0.0)
    ct = clean_non_finite(read_image(files.ct), files.ct, ct_fill_hu)
    check_units(pet, ct, files.pet, files.ct, pet_raw.GetPixelIDTypeAsString())
    check_overlap(pet, ct, files.pet, files.ct)
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
    except PermissionError as exc:  # the fix is the file's mode, not its content
        raise PetsegError(describe_os_error(exc)) from None
    except OSError as exc:
        raise PetsegError(f"{path}: {subject}cannot be read ({exc.strerror}); {fix}") from None
