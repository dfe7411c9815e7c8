"""Lesion statistics a nuclear-medicine reader expects: TMTV, TLG, SUVmax/mean/peak per lesion.

Lesions are the 18-connected components of the mask (the challenge's connectivity).
Positions are patient coordinates in mm as SimpleITK reports them: LPS, x growing to the
patient's left, y to posterior, z to the head. The body region of a lesion comes from a
coarse rule on where its centroid sits in the body seen on the PET (`BodyModel`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.clinical.pictures import axis_aligned_lps, mip_png
from petseg.clinical.uncertainty import fold_std
from petseg.io.geometry import check_same_grid
from petseg.io.images import atomic_path, write_image, write_json

log = logging.getLogger(__name__)

CONNECTIVITY: int = 18
PEAK_RADIUS_MM: float = 6.2
"""Radius of the 1 ml sphere for SUVpeak (PERCIST): 4/3 pi 6.2^3 = 998 mm^3."""
PEAK_SUBSAMPLES: int = 5
"""Sub-points per axis and voxel used to weigh each voxel by its share of the sphere."""
BODY_SUV: float = 0.3
"""PET voxels at or above this SUV count as body when locating the body regions."""
BODY_GRID_MM: float = 8.0
"""The body is located on blocks of at most this size (mean SUV per block)."""
REGIONS: tuple[str, ...] = ("head/neck", "thorax", "abdomen", "pelvis", "extremities")
REGION_BOUNDS: tuple[float, float, float] = (0.12, 0.40, 0.70)
"""Where thorax, abdomen and pelvis begin, as fractions of the trunk from the narrowest
neck slice (0) to the crotch (1). From adult proportions, as depth below the vertex in
fractions of stature: mid neck 0.15, sternal notch 0.195, diaphragm domes 0.29-0.30,
iliac crest 0.42, crotch 0.535."""
BLADDER_TO_CROTCH: float = 0.12
"""Crotch below the bladder, as a fraction of neck-to-bladder (bladder centre at a depth
of about 0.50 of stature)."""
CSV_COLUMNS: tuple[str, ...] = (
    "case", "lesion", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "region",
)


# ----------------------------------------------------------------------------- SUVpeak

def peak_kernel(spacing: Sequence[float], radius_mm: float = PEAK_RADIUS_MM,
                subsamples: int = PEAK_SUBSAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Voxel offsets and weights of a sphere of `radius_mm` on a grid of `spacing`.

    Each voxel is weighted by the fraction of its `subsamples^3` sub-points inside the
    sphere centred on voxel (0, 0, 0), so the weights times the voxel volume add up to
    the sphere's volume on any (anisotropic) grid.

    Args:
        spacing: voxel size (x, y, z) in mm.

    Returns:
        offsets `[K, 3]` int in numpy `[z, y, x]` order and weights `[K]` in (0, 1].
    """
    spacing_zyx = np.asarray(spacing, dtype=float)[::-1]
    reach = np.ceil(radius_mm / spacing_zyx + 0.5).astype(int)
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    sub = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    sub_points = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), axis=-1).reshape(-1, 3)
    # [K, S, 3] physical positions of every sub-point of every candidate voxel
    positions = (offsets[:, None, :] + sub_points[None, :, :]) * spacing_zyx
    inside = (np.square(positions).sum(axis=2) <= radius_mm**2).mean(axis=1)
    keep = inside > 0
    return offsets[keep], inside[keep]


def suv_peak_at(pet_zyx: np.ndarray, centre_zyx: Sequence[int],
                kernel: tuple[np.ndarray, np.ndarray]) -> float:
    """Weighted mean SUV in the sphere of `kernel` centred on voxel `centre_zyx`.

    Parts of the sphere outside the image are left out of the mean.
    """
    offsets, weights = kernel
    points = offsets + np.asarray(centre_zyx, dtype=int)
    inside = np.all((points >= 0) & (points < np.asarray(pet_zyx.shape)), axis=1)
    values = pet_zyx[tuple(points[inside].T)].astype(np.float64)
    return float(np.sum(values * weights[inside]) / np.sum(weights[inside]))


# ----------------------------------------------------------------------------- regions

@dataclasses.dataclass(frozen=True)
class BodyModel:
    """Where the body and its landmarks are on an LPS-oriented copy of the PET.

    The rule (coarse, on purpose; z is the axial slice index, growing to the head):
    1. Body = PET (means of blocks up to `BODY_GRID_MM`) >= `BODY_SUV`, holes filled
       slice by slice; body slices hold >= 1 % of the largest slice's body area.
    2. Neck: the smallest slice in the upper 45 % of the body that is < 45 % of the
       largest slice and < 80 % of a head above it (the head < 75 % of the largest);
       else the top of the body (a scan starting at the skull base).
    3. Crotch: going up from the lowest body slice, slices whose two largest in-plane
       components each hold >= 25 % of the slice are legs, and the crotch is the first
       slice above them. Without legs, the bladder (the blocks above half the hottest
       block's SUV in the lowest 40 % between neck and lowest slice, if that is > 3 x
       the body's median SUV) places it
       `BLADDER_TO_CROTCH` of neck-to-bladder lower; else the lowest body slice.
    4. `extremities`: more than 5 % of the trunk below a measured crotch (10 % below an
       estimated one), or in an in-plane component less than half the slice's largest
       (an arm).
    5. Else f = (neck - z) / (neck - crotch): `head/neck` f < 0.12, `thorax` < 0.40,
       `abdomen` < 0.70, else `pelvis` (`REGION_BOUNDS`).

    Attributes:
        reference: the LPS-oriented, block-averaged PET (identity direction) for
            point -> index mapping.
        body: bool `[z, y, x]` body mask on `reference`.
        top: z index of the top of the body, None if no body was found.
        neck: z index of the neck (or the top of the body).
        crotch: z index where the trunk ends.
        legs: True when the crotch was measured from leg slices.
    """

    reference: sitk.Image
    body: np.ndarray
    top: int | None
    neck: float
    crotch: float
    legs: bool

    @classmethod
    def of(cls, pet: sitk.Image, body_suv: float = BODY_SUV) -> BodyModel:
        """Locate the body and its landmarks on a PET (SUV) of any orientation."""
        reference = axis_aligned_lps(sitk.Cast(pet, sitk.sitkFloat32))
        # A coarse rule needs no fine grid: average blocks of about BODY_GRID_MM.
        shrink = [max(1, int(BODY_GRID_MM // s)) for s in reference.GetSpacing()]
        if max(shrink) > 1:
            reference = sitk.BinShrink(reference, shrink)
        suv = sitk.GetArrayViewFromImage(reference)
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1] = True
        body = ndimage.binary_fill_holes(suv >= body_suv, structure=in_plane)
        areas = body.sum(axis=(1, 2))
        if areas.max(initial=0) == 0:
            return cls(reference, body, None, 0.0, 0.0, False)
        slices = np.flatnonzero(areas >= 0.01 * areas.max())
        top, bottom = int(slices.max()), int(slices.min())
        neck = _neck(areas, top, bottom)
        z = bottom
        while z <= top and _two_legs(body[z]):
            z += 1
        if z > bottom:
            return cls(reference, body, top, neck, float(z), True)
        lower = slice(bottom, max(bottom + 1, int(bottom + 0.4 * (neck - bottom))))
        hot = np.where(body[lower], suv[lower], 0.0)
        peak = float(hot.max())
        crotch = float(bottom)
        if peak > 3.0 * np.median(suv[body]):
            # the bladder's centre: mean slice of the blocks above half its peak
            bladder = bottom + float(np.mean(np.nonzero(hot >= 0.5 * peak)[0]))
            if neck > bladder:
                crotch = max(crotch, bladder - BLADDER_TO_CROTCH * (neck - bladder))
        return cls(reference, body, top, neck, crotch, False)

    def region(self, point_mm: Sequence[float]) -> str:
        """The body region of a physical point (mm, LPS), one of `REGIONS` or "unknown"."""
        if self.top is None:
            return "unknown"
        x, y, z = self.reference.TransformPhysicalPointToContinuousIndex(
            [float(p) for p in point_mm])
        span = max(self.neck - self.crotch, 1.0)
        margin = (0.05 if self.legs else 0.1) * span
        if z < self.crotch - margin:
            return "extremities"
        k = int(np.clip(round(z), 0, self.body.shape[0] - 1))
        if _in_minor_component(self.body[k], y, x):
            return "extremities"
        fraction = (self.neck - z) / span
        if fraction < REGION_BOUNDS[0]:
            return "head/neck"
        if fraction < REGION_BOUNDS[1]:
            return "thorax"
        return "abdomen" if fraction < REGION_BOUNDS[2] else "pelvis"


_IN_PLANE_8 = np.ones((3, 3), dtype=bool)


def _neck(areas: np.ndarray, top: int, bottom: int) -> float:
    """z index of the narrowest neck slice, or `top` when no head sits above one.

    Neck candidates lie in the upper 45 % of the body, hold < 45 % of the largest slice's
    area and < 80 % of the widest slice above them, which must itself be < 75 % of the
    largest (a head, not a chest above a waist).
    """
    largest = float(areas.max())
    best, best_area = float(top), np.inf
    above = 0.0
    for k in range(top, int(top - 0.45 * (top - bottom)) - 1, -1):
        area = float(areas[k])
        if (area < 0.45 * largest and area < 0.8 * above and above < 0.75 * largest
                and area < best_area):
            best, best_area = float(k), area
        above = max(above, area)
    return best


def _two_legs(body_slice: np.ndarray) -> bool:
    """Whether an axial slice's two largest body components each hold >= 25 % of it."""
    labels, n = ndimage.label(body_slice, structure=_IN_PLANE_8)
    if n < 2:
        return False
    areas = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    return bool(areas[1] >= 0.25 * areas.sum())


def _in_minor_component(body_slice: np.ndarray, y: float, x: float) -> bool:
    """Whether (y, x) lies in (or nearest to) a component < half the slice's largest."""
    labels, n = ndimage.label(body_slice, structure=_IN_PLANE_8)
    if n < 2:
        return False
    rows, cols = np.nonzero(labels)
    nearest = np.argmin((rows - y) ** 2 + (cols - x) ** 2)
    areas = np.bincount(labels.ravel())
    return bool(areas[labels[rows[nearest], cols[nearest]]] < 0.5 * areas[1:].max())


# ----------------------------------------------------------------------------- report

def _measure_lesions(labels: np.ndarray, n: int, pet: sitk.Image,
                     unc_zyx: np.ndarray | None, voxel_ml: float) -> list[dict[str, Any]]:
    """One dict per connected component `1..n` of `labels` `[z, y, x]` on the PET grid,
    in label order, without its `lesion` number (see `lesion_report` for the keys)."""
    if not n:
        return []
    pet_zyx = sitk.GetArrayViewFromImage(pet)
    stats = cc3d.statistics(labels)
    kernel = peak_kernel(pet.GetSpacing())
    body = BodyModel.of(pet)
    lesions: list[dict[str, Any]] = []
    for index in range(1, n + 1):
        box = stats["bounding_boxes"][index]
        inside = labels[box] == index
        pet_box = pet_zyx[box]
        values = pet_box[inside].astype(np.float64)
        local = np.unravel_index(np.argmax(np.where(inside, pet_box, -np.inf)), inside.shape)
        hottest = tuple(int(s.start + i) for s, i in zip(box, local, strict=True))
        centroid = pet.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in stats["centroids"][index][::-1]])
        lesion: dict[str, Any] = {
            "n_voxels": int(values.size),
            "volume_ml": values.size * voxel_ml,
            "suv_max": float(values.max()),
            "suv_mean": float(values.mean()),
            "suv_peak": suv_peak_at(pet_zyx, hottest, kernel),
            "tlg": float(values.mean()) * values.size * voxel_ml,
            "centroid_mm": [float(c) for c in centroid],
            "suv_max_position_mm": [float(c) for c in
                                    pet.TransformIndexToPhysicalPoint(hottest[::-1])],
            "region": body.region(centroid),
        }
        if unc_zyx is not None:
            lesion["uncertainty_mean"] = float(unc_zyx[box][inside].mean())
        lesions.append(lesion)
    return lesions


def _numbered_largest_first(lesions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`lesions` sorted by size (then SUVmax), each led by its `lesion` number 1..n."""
    ordered = sorted(lesions, key=lambda item: (-item["n_voxels"], -item["suv_max"]))
    return [{"lesion": number, **item} for number, item in enumerate(ordered, start=1)]


def _region_counts(lesions: list[dict[str, Any]]) -> dict[str, int]:
    """Lesions per body region (`REGIONS` order), with `unknown` only when there are any."""
    regions = {name: sum(item["region"] == name for item in lesions)
               for name in (*REGIONS, "unknown")}
    if not regions["unknown"]:
        del regions["unknown"]
    return regions


def lesion_report(mask: sitk.Image, pet: sitk.Image,
                  uncertainty: sitk.Image | None = None) -> dict[str, Any]:
    """Per-lesion and whole-body statistics of a lesion mask on its PET.

    Args:
        mask: lesion mask on the PET grid (> 0 is lesion).
        pet: PET in SUV (body weight), any direction matrix.
        uncertainty: voxel-wise ensemble standard deviation on the PET grid, or None.

    Returns:
        A JSON-ready dict: `n_lesions`, `tmtv_ml`, `tlg` (sum of SUVmean x ml),
        `suv_max`, `regions` (lesion count per region), `voxel_volume_ml`,
        `connectivity`, `units`, and `lesions`: one dict per lesion, largest first, with
        `lesion` (1..n), `n_voxels`, `volume_ml`, `suv_max`, `suv_mean`, `suv_peak`,
        `tlg`, `centroid_mm` and `suv_max_position_mm` ([x, y, z] LPS mm), `region`,
        and `uncertainty_mean` when `uncertainty` is given.

    Raises:
        PetsegError: mask or uncertainty not on the PET grid.
    """
    check_same_grid(mask, pet, "mask", "the PET")
    if uncertainty is not None:
        check_same_grid(uncertainty, pet, "uncertainty map", "the PET")
    unc_zyx = sitk.GetArrayViewFromImage(uncertainty) if uncertainty is not None else None
    labels, n = cc3d.connected_components(
        sitk.GetArrayViewFromImage(mask) > 0, connectivity=CONNECTIVITY, return_N=True)
    voxel_ml = float(np.prod(pet.GetSpacing())) / 1000.0
    lesions = _numbered_largest_first(_measure_lesions(labels, n, pet, unc_zyx, voxel_ml))
    return {
        "n_lesions": n,
        "tmtv_ml": sum(item["volume_ml"] for item in lesions),
        "tlg": sum(item["tlg"] for item in lesions),
        "suv_max": max((item["suv_max"] for item in lesions), default=None),
        "regions": _region_counts(lesions),
        "voxel_volume_ml": voxel_ml,
        "connectivity": CONNECTIVITY,
        "units": {"volume": "ml", "suv": "g/ml (body weight)", "tlg": "SUV x ml",
                  "position": "mm, patient LPS (x to left, y to posterior, z to head)"},
        "lesions": lesions,
    }


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits, recursively, for readable files."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def write_report_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write a report (from `lesion_report`, optionally with "case") as JSON, atomically."""
    return write_json(_rounded(report), path)


def write_report_csv(report: dict[str, Any], path: str | Path) -> Path:
    """Write one CSV row per lesion (`CSV_COLUMNS`, + `uncertainty_mean` if present)."""
    path = Path(path)
    lesions = report["lesions"]
    columns = list(CSV_COLUMNS)
    if any("uncertainty_mean" in item for item in lesions):
        columns.append("uncertainty_mean")
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for item in _rounded(lesions):
            x, y, z = item["centroid_mm"]
            row = {key: item.get(key) for key in columns}
            row.update(case=report.get("case", ""), centroid_x_mm=x, centroid_y_mm=y,
                       centroid_z_mm=z)
            writer.writerow(row)
    return path


def extras_paths(out_dir: str | Path, case_name: str) -> dict[str, Path]:
    """The files `write_extras` writes for case `case_name` in `out_dir`, by kind:
    "json", "csv", "png" and (from two or more folds) "uncertainty"."""
    out_dir = Path(out_dir)
    return {"json": out_dir / f"{case_name}_lesions.json",
            "csv": out_dir / f"{case_name}_lesions.csv",
            "png": out_dir / f"{case_name}_mip.png",
            "uncertainty": out_dir / f"{case_name}_uncertainty.mha"}


def write_case_report(case_name: str, pet: sitk.Image, mask: sitk.Image,
                      out_dir: str | Path, uncertainty: sitk.Image | None = None,
                      identifiers: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `<case>_lesions.json`, `<case>_lesions.csv` and `<case>_mip.png` into `out_dir`.

    `identifiers` (a DICOM study's patient and study attributes) go into the JSON as
    `"study"`.

    Returns:
        {"json": ..., "csv": ..., "png": ...} paths.
    """
    report = {"case": case_name, **({"study": dict(identifiers)} if identifiers else {}),
              **lesion_report(mask, pet, uncertainty)}
    targets = extras_paths(out_dir, case_name)
    paths = {
        "json": write_report_json(report, targets["json"]),
        "csv": write_report_csv(report, targets["csv"]),
        "png": mip_png(pet, mask, targets["png"], uncertainty=uncertainty),
    }
    log.info("%s: %d lesion(s), TMTV %.2f ml, TLG %.1f", case_name, report["n_lesions"],
             report["tmtv_ml"], report["tlg"])
    return paths


def write_extras(case_name: str, pet: sitk.Image, mask: sitk.Image, out_dir: str | Path,
                 fold_probabilities: list[sitk.Image] | None = None,
                 identifiers: dict[str, str] | None = None) -> dict[str, Path]:
    """All clinical outputs of one predicted case, outside the challenge output folder.

    Writes the lesion JSON + CSV + MIP PNG (`write_case_report`) and, with two or more
    fold probabilities on the PET grid, `<case>_uncertainty.mha` (their voxel-wise
    standard deviation, float32), which also feeds the report and the picture.
    `identifiers` go into the lesion JSON (`write_case_report`). An uncertainty map an
    earlier run left for the case is removed when this one writes none.

    Returns:
        {"json", "csv", "png"[, "uncertainty"]} -> written paths.
    """
    uncertainty = None
    written: dict[str, Path] = {}
    target = extras_paths(out_dir, case_name)["uncertainty"]
    if fold_probabilities is not None and len(fold_probabilities) >= 2:
        uncertainty = fold_std(fold_probabilities)
        written["uncertainty"] = write_image(uncertainty, target)
    else:
        target.unlink(missing_ok=True)
        if fold_probabilities:
            log.info("%s: one fold model, no uncertainty map", case_name)
    return {**write_case_report(case_name, pet, mask, out_dir, uncertainty, identifiers),
            **written}
