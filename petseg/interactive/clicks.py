"""The click file of the interactive challenges, and its points on another grid.

The organisers' file (`lesion-clicks.json`, `petseg.io.cases.GC_CLICKS`; the same schema
for autoPET IV clicks and autoPET V scribbles):

    {"version": {"major": 1, "minor": 0}, "type": "Multiple points",
     "points": [{"point": [x, y, z], "name": "tumor"},
                {"point": [x, y, z], "name": "background"}]}

A point is a voxel index of the PET image in SimpleITK's (x, y, z) order; a numpy array
from SimpleITK is indexed `[z, y, x]`, so the order flips exactly once, in
`clicks_on_grid`, through physical space.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.config import CLICK_CHANNELS
from petseg.errors import PetsegError
from petseg.io.cases import CaseFiles, is_interactive
from petseg.io.geometry import Geometry
from petseg.io.images import read_json

log = logging.getLogger(__name__)

__all__ = ["CLICK_CHANNELS", "Clicks", "clicks_on_grid", "read_click_file"]

POINT_NAMES: dict[str, str] = {"tumor": "tumour", "background": "background"}
"""The file's point names -> the `Clicks` field they fill."""

Index = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Clicks:
    """Tumour and background clicks as PET voxel indices (x, y, z), SimpleITK order."""

    tumour: tuple[Index, ...] = ()
    background: tuple[Index, ...] = ()

    def counts(self) -> dict[str, int]:
        """`{"tumour": n, "background": m}`: the number of points of each kind."""
        return {"tumour": len(self.tumour), "background": len(self.background)}

    def __bool__(self) -> bool:
        return bool(self.tumour or self.background)


FIX = "write it as {\"points\": [{\"point\": [x, y, z], \"name\": \"tumor\" or \"background\"}]}"


def _voxel_index(entry: Any, path: Path, number: int) -> Index:
    """The (x, y, z) integer index of point entry `number` (1-based) of `path`."""
    point = entry.get("point") if isinstance(entry, dict) else None
    # 109.0 is the integer 109 written by a tool that only has floats; 109.5 is no voxel
    valid = (isinstance(point, list) and len(point) == 3
             and all(isinstance(v, int | float) and not isinstance(v, bool)
                     and math.isfinite(v) and float(v).is_integer() for v in point))
    if not valid:
        raise PetsegError(f"{path}: point {number} {json_text(entry)} is not three integer "
                          f"voxel indices [x, y, z]; {FIX}")
    return tuple(int(v) for v in point)  # type: ignore[return-value]


def json_text(value: Any, limit: int = 80) -> str:
    """`value` as one line of JSON for a message, shortened to `limit` characters."""
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_click_file(path: Path, pet: sitk.Image) -> Clicks:
    """The clicks of an organisers' click file, checked against the PET image's size.

    Raises:
        PetsegError: the file is missing or not JSON, has no `points` list, or a point is
            not three integers; the message names the file and the point. A point outside
            the PET image, or whose `name` is neither "tumor" nor "background" (the
            organisers' evaluation reads only those two), is logged as a warning naming it
            and ignored. A file without points, or an empty file, is valid: no clicks.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        log.warning("%s: empty click file; the case runs without clicks", path)
        return Clicks()
    data = read_json(path, "click file", FIX)
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        raise PetsegError(f"{path}: click file without a \"points\" list; {FIX}")
    size = pet.GetSize()
    found: dict[str, list[Index]] = {"tumour": [], "background": []}
    unknown: dict[str, int] = {}
    for number, entry in enumerate(points, start=1):
        index = _voxel_index(entry, path, number)
        name = entry.get("name")
        if name not in POINT_NAMES:
            unknown[json_text(name)] = unknown.get(json_text(name), 0) + 1
            continue
        if not all(0 <= i < s for i, s in zip(index, size, strict=True)):
            log.warning("%s: point %d %s (%s) lies outside the PET image of %s voxels (x, y, z);"
                        " ignored", path, number, list(index), name, list(size))
            continue
        found[POINT_NAMES[name]].append(index)
    if unknown:
        log.warning("%s: %s: point name(s) neither \"tumor\" nor \"background\"; those points "
                    "are ignored", path, ", ".join(f"{n} ({c} point(s))"
                                                   for n, c in unknown.items()))
    return Clicks(tumour=tuple(found["tumour"]), background=tuple(found["background"]))


def case_clicks(files: CaseFiles, pet: sitk.Image) -> Clicks | None:
    """The clicks of a case: its click file's; none (an empty `Clicks`) for an interactive
    case whose listed click file is absent (warned) or for every case when
    `petseg.io.cases.INTERACTIVE_ENV` is set; None for an automatic case."""
    if files.clicks is not None:
        if files.clicks.exists():
            return read_click_file(files.clicks, pet)
        log.warning("%s: the input lists a click file that is absent; the case runs as "
                    "interactive without clicks", files.clicks)
        return Clicks()
    return Clicks() if is_interactive(files) else None


def indices_on_grid(indices_xyz: np.ndarray, pet: sitk.Image | Geometry,
                    grid: Geometry) -> np.ndarray:
    """PET voxel indices `[N, 3]` (x, y, z) -> continuous indices `[N, 3]` (z, y, x) of `grid`.

    Through physical space (mm): index -> origin + direction @ (index * spacing) on the PET,
    then the inverse on `grid`, so any spacing, origin and (oblique) direction of either
    grid is honoured.
    """
    source = pet if isinstance(pet, Geometry) else Geometry.of(pet)
    points = np.asarray(indices_xyz, float).reshape(-1, 3)
    pet_direction = np.asarray(source.direction, float).reshape(3, 3)
    physical = np.asarray(source.origin) + (points * np.asarray(source.spacing)) @ pet_direction.T
    grid_matrix = (np.asarray(grid.direction, float).reshape(3, 3)
                   * np.asarray(grid.spacing, float)[None, :])
    on_grid_xyz = np.linalg.solve(grid_matrix, (physical - np.asarray(grid.origin)).T).T
    return np.ascontiguousarray(on_grid_xyz[:, ::-1])


def clicks_on_grid(clicks: Clicks, pet: sitk.Image | Geometry,
                   geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(tumour, background) points as float `[N, 3]` continuous (z, y, x) indices of `geometry`
    (e.g. the preprocessed 2 mm network grid, `PreparedCase.grid`); `[0, 3]` when none."""
    return (indices_on_grid(np.array(clicks.tumour, float).reshape(-1, 3), pet, geometry),
            indices_on_grid(np.array(clicks.background, float).reshape(-1, 3), pet, geometry))
