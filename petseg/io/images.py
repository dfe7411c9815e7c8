"""Reading and writing images with their geometry; atomic writes; JSON files.

Every file is read with SimpleITK (`.mha`, `.nii.gz`, `.nrrd`, ...) and its header checked
(`read_image`). Writes go to a temporary file in the target folder and are renamed into
place, so a crash or an error never leaves a partial file where a result is expected.
Finding and reading whole cases is `petseg.io.cases`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError, describe_os_error

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


def _header_spacing(image: sitk.Image, path: Path) -> list[float] | None:
    """Voxel sizes as written in the header of `path` (before the reader normalizes their
    signs), `image` being what SimpleITK read from it.

    MetaImage `ElementSpacing` from the file, NIfTI `pixdim` from the metadata the reader
    keeps; None for other formats or an unreadable header.
    """
    if image.HasMetaDataKey("pixdim[1]"):  # NIfTI
        return [float(image.GetMetaData(f"pixdim[{axis}]")) for axis in (1, 2, 3)]
    if image_suffix(path) in (".mha", ".mhd"):
        try:
            with path.open("rb") as handle:
                head = handle.read(65536).decode("latin-1")
            match = re.search(r"^\s*Element(?:Spacing|Size)\s*=\s*(.+)$", head, re.MULTILINE)
            return [float(v) for v in match.group(1).split()] if match else None
        except (OSError, ValueError):
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
    import zlib

    try:
        offset = int(float(image.GetMetaData("vox_offset")))
        with path.open("rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(handle.read(4), "little")
    except (OSError, RuntimeError, ValueError):
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
    written = _header_spacing(image, path)
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


def read_images(*paths: str | Path) -> list[sitk.Image]:
    """`read_image` of each path, all at once: SimpleITK releases the GIL while it reads
    and decompresses, so a PET and its CT take the time of the larger file, not the sum.
    The first failing path (in the given order) raises."""
    if len(paths) < 2:
        return [read_image(path) for path in paths]
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="petseg-image") as pool:
        return list(pool.map(read_image, paths))


def process_umask() -> int:
    """This process's file-creation mask, read without changing it (Linux reports it in
    /proc/self/status; elsewhere it is set and put back, which is not thread-safe)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


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
        os.chmod(tmp, 0o666 & ~process_umask())
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
        raise PetsegError(describe_os_error(exc, reading=True)) from None
    except OSError as exc:
        raise PetsegError(f"{path}: {subject}cannot be read ({exc.strerror}); {fix}") from None
