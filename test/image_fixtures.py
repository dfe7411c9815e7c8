"""Small synthetic images for the image-reading and case tests: a LAS grid, an SUV body
and its CT, written to `.mha`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.io.geometry import LAS_DIRECTION, Geometry

GEOMETRY = Geometry((10, 9, 8), (2.0364, 2.0364, 3.0), (-10.0, 20.0, -300.0), LAS_DIRECTION)
"""A 10 x 9 x 8 voxel grid with 2.0364 x 2.0364 x 3 mm voxels, flipped in x (LAS)."""


def write_volume(path: Path, values: np.ndarray | None = None,
                 geometry: Geometry = GEOMETRY) -> Path:
    """Write `values` `[z, y, x]` (zeros if None) on `geometry` to `path`; returns `path`."""
    if values is None:
        values = np.zeros(tuple(reversed(geometry.size)), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(geometry.image_from_array(values), str(path))
    return path


def touch(path: Path) -> Path:
    """An empty file at `path` (folders created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def body_suv(shift: float = 0.0) -> np.ndarray:
    """An SUV volume `[8, 9, 10]`: air (0) around a body of gamma-distributed uptake."""
    suv = np.zeros((8, 9, 10), np.float32)
    suv[1:7, 2:8, 2:9] = np.random.default_rng(0).gamma(2.0, 1.0, (6, 6, 7))
    return suv + np.float32(shift)


def body_ct() -> np.ndarray:
    """A CT `[8, 9, 10]` int16 in HU: air (-1000) around soft tissue (40) with bone (700)."""
    ct = np.full((8, 9, 10), -1000, np.int16)
    ct[1:7, 2:8, 2:9] = 40
    ct[3:5, 4:6, 4:6] = 700  # bone
    return ct


def file_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of each file's bytes and mode under `root`: two trees are
    byte-identical when these are equal, and a tree is untouched when they do not change."""
    return {path.relative_to(root).as_posix():
            hashlib.sha256(path.read_bytes() + f":{path.stat().st_mode}".encode()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}
