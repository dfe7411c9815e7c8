"""Reading and writing images with their geometry; atomic writes.

Every file is read with SimpleITK (`.mha`, `.nii.gz`, `.nrrd`, ...). Writes go to a
temporary file in the target folder and are renamed into place, so a crash or an error
never leaves a partial file where a result is expected.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from petseg.errors import PetsegError

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
