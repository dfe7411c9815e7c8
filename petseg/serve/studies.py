"""An uploaded volume -> the study it shows, and the map between the upload's axes and the PET's.

A viewer sends one volume as a bare array, `[C, a, b, c]`, with a spacing and no origin or
direction. 3D Slicer sends the PET as `[1, k, j, i]`, i.e. SimpleITK's numpy order `[z, y, x]`
with the spacing reversed; another viewer may send other axis orders. The server finds the
study on disk (the `--cases` folder, read as `petseg predict` reads it) whose PET the upload
is, and takes the CT and the full geometry from disk:

- shape: the upload's spatial shape is the PET's `[z, y, x]` shape under an axis order (any
  of the 6, each axis possibly reversed; the identity is tried first and wins ties);
- spacing: when the upload gives one, the axis order whose PET spacing it equals to 1 %
  (`SPACING_TOLERANCE`) wins a tie of content; a spacing that fits no order is logged and
  does not refuse the match (a viewer without the file's geometry sends 1 mm);
- content: the Pearson correlation of the upload with the PET, on every `STRIDE`-th voxel
  of each axis, is at least `MIN_CORRELATION` (0.99). A correlation, not a byte hash: the
  viewer may hold the PET in another type or unit (Bq/ml instead of SUV is a scale factor),
  and rounding does not matter.

An upload that correlates better with a study's CT than with any PET is refused with a line
saying to load the PET; one that matches nothing names what the folder holds. A 2-channel
upload `[2, z, y, x]` (SUV, CT on the same grid, SimpleITK's numpy order, spacing `[z, y, x]`)
is a study by itself: origin 0, identity direction.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.cases import CaseFiles, find_cases, read_case
from petseg.io.geometry import IDENTITY_DIRECTION, Geometry

log = logging.getLogger(__name__)

STRIDE = 4
"""Every STRIDE-th voxel per axis enters the content comparison."""
MIN_CORRELATION = 0.99
"""Pearson correlation an upload needs with a study's PET to be that PET."""
SPACING_TOLERANCE = 0.01
"""Relative difference allowed between the upload's spacing and the PET's, per axis."""


class NoStudyError(PetsegError):
    """The upload is no PET of the server's studies (the message says what to load)."""


@dataclasses.dataclass(frozen=True)
class Orientation:
    """How the upload's axes lie on the PET's `[z, y, x]` array.

    `upload = reverse(transpose(pet_zyx, axes), flips)`: upload axis i is PET axis
    `axes[i]`, read backwards where `flips[i]`.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def to_upload(self, zyx: np.ndarray) -> np.ndarray:
        """A PET-grid array `[z, y, x]` on the upload's axes (a view)."""
        moved = np.transpose(zyx, self.axes)
        return moved[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def from_upload(self, upload: np.ndarray) -> np.ndarray:
        """An array on the upload's axes back on the PET's `[z, y, x]` (a view)."""
        unflipped = upload[tuple(slice(None, None, -1) if f else slice(None)
                                 for f in self.flips)]
        return np.transpose(unflipped, np.argsort(self.axes))

    def pet_index(self, index: tuple[int, int, int], upload_shape: tuple[int, ...]
                  ) -> tuple[int, int, int]:
        """An upload voxel index -> the PET voxel index (x, y, z), SimpleITK's order."""
        zyx = [0, 0, 0]
        for axis, (value, size, flip) in enumerate(zip(index, upload_shape, self.flips,
                                                        strict=True)):
            zyx[self.axes[axis]] = size - 1 - int(value) if flip else int(value)
        return (zyx[2], zyx[1], zyx[0])

    def spacing(self, pet_spacing_xyz: tuple[float, ...]) -> np.ndarray:
        """The PET's spacing (x, y, z) on the upload's axes (mm)."""
        zyx = np.asarray(pet_spacing_xyz, float)[::-1]
        return zyx[list(self.axes)]


ORIENTATIONS: tuple[Orientation, ...] = tuple(
    Orientation(axes, flips)  # type: ignore[arg-type]
    for axes in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3))
"""Every axis order, the identity first."""


@dataclasses.dataclass
class Fingerprint:
    """What the index keeps of a study: its files, the PET's grid, strided PET and CT."""

    files: CaseFiles
    geometry: Geometry
    pet: np.ndarray  # [z, y, x][::STRIDE, ::STRIDE, ::STRIDE], float64
    ct: np.ndarray | None  # the same, where the CT shares the PET's shape


@dataclasses.dataclass
class MatchedStudy:
    """An upload's study: PET (SUV) and CT as petseg reads them, the upload's axes."""

    name: str
    pet: sitk.Image
    ct: sitk.Image
    orientation: Orientation
    upload_shape: tuple[int, int, int]


def _strided(array: np.ndarray) -> np.ndarray:
    return np.asarray(array[::STRIDE, ::STRIDE, ::STRIDE], np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of one shape; 0 where either is constant."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / norm if norm > 0 else 0.0


class StudyIndex:
    """The studies of a `--cases` folder, fingerprinted once at start.

    Args:
        folder: cases as `petseg predict --input` reads them; None: 2-channel uploads only.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.studies: list[Fingerprint] = []
        if folder is None:
            return
        for files in find_cases(folder).cases:
            try:
                case = read_case(files)
            except PetsegError as exc:
                log.warning("%s: not served: %s", files.name, exc)
                continue
            pet = sitk.GetArrayViewFromImage(case.pet)
            ct = sitk.GetArrayViewFromImage(case.ct)
            self.studies.append(Fingerprint(files, case.pet_geometry, _strided(pet),
                                            _strided(ct) if ct.shape == pet.shape else None))
        if not self.studies:
            raise PetsegError(f"--cases {folder}: no readable study (PET + CT) found there")
        log.info("serving %d stud(y/ies) of %s", len(self.studies), folder)

    def names(self) -> list[str]:
        return [study.files.name for study in self.studies]

    def match(self, image: np.ndarray, spacing: list[float] | None) -> MatchedStudy:
        """The study whose PET `image` `[1, a, b, c]` is, or a 2-channel study `[2, ...]`.

        Raises:
            NoStudyError: no PET of the index matches (the message says what to load).
        """
        if image.shape[0] == 2:
            return self._two_channels(image, spacing)
        volume = image[0]
        best: tuple[float, bool, Fingerprint, Orientation] | None = None
        ct_hit: Fingerprint | None = None
        for study in self.studies:
            for orientation in ORIENTATIONS:
                if not self._fits(study, orientation, volume.shape):
                    continue
                strided = _strided(orientation.from_upload(volume))
                score = correlation(strided, study.pet)
                same = self._same_spacing(study, orientation, spacing)
                if best is None or score > best[0] + 1e-9 or (
                        score >= best[0] - 1e-9 and same and not best[1]):
                    best = (score, same, study, orientation)
                if study.ct is not None and correlation(strided, study.ct) >= MIN_CORRELATION:
                    ct_hit = study
        if best is not None and best[0] >= MIN_CORRELATION:
            score, same, study, orientation = best
            if not same:
                log.warning("upload %s: spacing %s is not study %s's %s; matched by shape and "
                            "content", volume.shape, spacing, study.files.name,
                            orientation.spacing(study.geometry.spacing).tolist())
            case = read_case(study.files)
            log.info("upload %s is study %s (correlation %.4f, axes %s, flips %s)",
                     volume.shape, study.files.name, score, orientation.axes,
                     orientation.flips)
            return MatchedStudy(study.files.name, case.pet, case.ct, orientation,
                                tuple(volume.shape))  # type: ignore[arg-type]
        if ct_hit is not None:
            raise NoStudyError(f"the uploaded volume is the CT of study {ct_hit.files.name}; "
                               "load its PET (SUV) volume as the source image")
        raise NoStudyError(self._nothing_matches(volume.shape))

    @staticmethod
    def _fits(study: Fingerprint, orientation: Orientation, shape: tuple[int, ...]) -> bool:
        """The upload's shape is the study's PET under `orientation`."""
        zyx = tuple(study.geometry.size[::-1])
        return tuple(zyx[a] for a in orientation.axes) == tuple(shape)

    @staticmethod
    def _same_spacing(study: Fingerprint, orientation: Orientation,
                      spacing: list[float] | None) -> bool:
        """The upload's spacing (when given) is the PET's under `orientation`."""
        if spacing is None:
            return True
        expected = orientation.spacing(study.geometry.spacing)
        return bool(np.all(np.abs(np.asarray(spacing) - expected)
                           <= SPACING_TOLERANCE * expected))

    def _nothing_matches(self, shape: tuple[int, ...]) -> str:
        if not self.studies:
            return ("this server has no --cases folder: upload a 2-channel image [2, z, y, x] "
                    "(SUV, CT on the same grid)")
        held = ", ".join(f"{s.files.name} ({'x'.join(map(str, s.geometry.size[::-1]))})"
                         for s in self.studies[:10])
        return (f"the uploaded volume ({'x'.join(map(str, shape))} voxels) is no PET of the "
                f"server's studies: load the PET (SUV) of one of {held}")

    @staticmethod
    def _two_channels(image: np.ndarray, spacing: list[float] | None) -> MatchedStudy:
        """SUV and CT on the upload's grid `[z, y, x]` (spacing `[z, y, x]`, default 1 mm)."""
        if not np.isfinite(image).all():
            raise NoStudyError("the 2-channel upload holds NaN or infinite values; send finite "
                          "SUV and HU")
        spacing_xyz = tuple(float(s) for s in (spacing or [1.0, 1.0, 1.0])[::-1])
        geometry = Geometry(tuple(int(s) for s in image.shape[1:][::-1]),  # type: ignore[arg-type]
                            spacing_xyz, (0.0, 0.0, 0.0), IDENTITY_DIRECTION)
        pet = geometry.image_from_array(np.asarray(image[0], np.float32))
        ct = geometry.image_from_array(np.asarray(image[1], np.float32))
        return MatchedStudy("upload", pet, ct, Orientation(),
                            tuple(image.shape[1:]))  # type: ignore[arg-type]
