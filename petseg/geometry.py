"""Image geometry (size, spacing, origin, direction) carried beside the voxel arrays.

Axis conventions: SimpleITK speaks (x, y, z); numpy arrays from
`sitk.GetArrayFromImage` are indexed [z, y, x]. A `Geometry` always stores the
SimpleITK (x, y, z) order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError

LAS_DIRECTION: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
"""Direction cosines with the first axis flipped against RAS, as real autoPET PET images."""

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The physical grid of a 3D image, in SimpleITK's (x, y, z) order.

    Attributes:
        size: voxels per axis.
        spacing: voxel size in mm per axis.
        origin: physical position (mm) of voxel (0, 0, 0)'s centre.
        direction: 3x3 direction cosines, row-major, 9 floats.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """The geometry of a SimpleITK image."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Stamp spacing, origin and direction onto `image` (whose size must match)."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image size {image.GetSize()} != geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array_zyx: np.ndarray) -> sitk.Image:
        """A SimpleITK image with this geometry from a `[z, y, x]` numpy array."""
        return self.apply(sitk.GetImageFromArray(array_zyx))

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid, for use as a resampling reference."""
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        return self.apply(image)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in ml (spacing product in mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    def physical_extent_mm(self) -> np.ndarray:
        """Axis-aligned physical bounding box `[[min x, y, z], [max x, y, z]]` of voxel centres."""
        size = np.asarray(self.size, dtype=float) - 1.0
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
        corners = corners * size
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        points = np.asarray(self.origin) + (corners * np.asarray(self.spacing)) @ direction.T
        return np.stack([points.min(axis=0), points.max(axis=0)])


GRID_TOLERANCE_MM: float = 1e-3
"""Spacing and origin may differ by this much (mm) between images on 'the same' grid."""
DIRECTION_TOLERANCE: float = 1e-4


def grid_difference(image: sitk.Image, reference: sitk.Image) -> str:
    """'' when both images share size, spacing, origin and direction, else what differs."""
    if tuple(image.GetSize()) != tuple(reference.GetSize()):
        return f"size {image.GetSize()} vs {reference.GetSize()}"
    checks = (
        ("spacing", image.GetSpacing(), reference.GetSpacing(), GRID_TOLERANCE_MM),
        ("origin", image.GetOrigin(), reference.GetOrigin(), GRID_TOLERANCE_MM),
        ("direction", image.GetDirection(), reference.GetDirection(), DIRECTION_TOLERANCE),
    )
    for name, a, b, tolerance in checks:
        if not np.allclose(a, b, rtol=0.0, atol=tolerance):
            return f"{name} {tuple(round(v, 4) for v in a)} vs {tuple(round(v, 4) for v in b)}"
    return ""


def check_same_grid(image: sitk.Image, reference: sitk.Image, name: str,
                    reference_name: str) -> None:
    """Raise `PetsegError` naming `name` when `image` is not on `reference`'s grid."""
    difference = grid_difference(image, reference)
    if difference:
        raise PetsegError(
            f"{name}: not on the grid of {reference_name} ({difference}); "
            f"resample it onto that grid first"
        )
