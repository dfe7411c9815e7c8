"""DICOM series -> images: PET in SUV (body weight) and CT in HU, with their geometry.

PET is read slice by slice with pydicom so every step of the SUV conversion is explicit:

    SUVbw = C * weight_g / dose_at_reference_Bq,   C = stored * RescaleSlope + RescaleIntercept

with C in Bq/ml (Units BQML), `weight_g` = PatientWeight (kg) x 1000, and the injected
dose (RadionuclideTotalDose, Bq) decayed with RadionuclideHalfLife from the injection
(RadiopharmaceuticalStartDateTime, or SeriesDate + RadiopharmaceuticalStartTime) to the
time the images are decay corrected to (Decay Correction, 0054,1102):
- START: the acquisition start: SeriesDate/SeriesTime, unless that lies after the
  earliest AcquisitionDate/AcquisitionTime of the series (a reprocessed series), in
  which case the earliest acquisition time (the QIBA vendor-neutral rule);
- ADMIN: the injection itself, so the dose is not decayed.
Images already in SUV (Units GML) are taken as they are. Slices are sorted along the
slice normal (ImageOrientationPatient row x column); spacing, origin and direction come
from ImagePositionPatient, ImageOrientationPatient and PixelSpacing. CT goes through
SimpleITK's GDCM series reader, which applies the rescale to HU.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from petseg.errors import PetsegError

log = logging.getLogger(__name__)

ENHANCED_PET_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
})
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SLICE_SPACING_TOLERANCE: float = 0.01
"""Largest relative deviation of one slice gap from the median gap."""

_TAGS: dict[str, str] = {
    "PatientWeight": "(0010,1030)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "DecayCorrection": "(0054,1102)",
    "Units": "(0054,1001)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "PixelSpacing": "(0028,0030)",
    "RescaleSlope": "(0028,1053)",
    "PixelData": "(7FE0,0010)",
}


def _missing(path: Path, keyword: str, fix: str) -> PetsegError:
    return PetsegError(f"{path}: DICOM tag {keyword} {_TAGS[keyword]} is missing or empty; {fix}")


def _require(ds: Dataset, keyword: str, path: Path, fix: str = "export the series with it") -> Any:
    value = ds.get(keyword)
    if value is None or value == "" or (isinstance(value, Sequence) and len(value) == 0):
        raise _missing(path, keyword, fix)
    return value


# ----------------------------------------------------------------------------- dates/times

def parse_time(text: str) -> dt.time:
    """DICOM TM ('HHMMSS.FFFFFF', shorter forms, or old 'HH:MM:SS') -> `datetime.time`."""
    text = str(text).strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        raise ValueError(f"not a DICOM time: {text!r}")
    hours, minutes, seconds = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    return dt.time(hours, minutes, min(seconds, 59), micro)


def parse_date(text: str) -> dt.date:
    """DICOM DA ('YYYYMMDD', or old 'YYYY.MM.DD') -> `datetime.date`."""
    text = str(text).strip().replace(".", "")
    return dt.datetime.strptime(text, "%Y%m%d").date()


def parse_datetime(text: str) -> dt.datetime:
    """DICOM DT ('YYYYMMDDHHMMSS.FFFFFF&ZZXX') -> naive `datetime` (offset dropped)."""
    text = str(text).strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    date = parse_date(text[:8])
    clock = parse_time(text[8:]) if len(text) > 8 else dt.time()
    return dt.datetime.combine(date, clock)


# ----------------------------------------------------------------------------- files

def dicom_headers(directory: Path) -> list[tuple[Path, Dataset]]:
    """(path, header without pixels) of every DICOM file under `directory`."""
    if not directory.is_dir():
        raise PetsegError(f"{directory}: not a folder; pass the folder holding the DICOM series")
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if DICOMDIR_SOP_CLASS in (ds.get("SOPClassUID"),
                                  ds.file_meta.get("MediaStorageSOPClassUID")):
            continue  # a DICOMDIR indexes files that lie in the tree themselves
        found.append((path, ds))
    return found


def _one_series(directory: Path, modality: str) -> list[tuple[Path, Dataset]]:
    """The files of the single `modality` series under `directory`."""
    headers = [(p, ds) for p, ds in dicom_headers(directory) if ds.get("Modality") == modality]
    if not headers:
        raise PetsegError(f"{directory}: no DICOM files of modality {modality}; "
                          f"pass the folder of the {modality} series")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        raise PetsegError(f"{directory}: holds {len(series)} {modality} series "
                          f"({', '.join(series)}); pass a folder with exactly one")
    return headers


# ----------------------------------------------------------------------------- geometry

@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """Grid of a stack of 2D slices, sorted along their normal.

    Attributes:
        order: indices of the input slices, from lowest to highest position along the normal.
        spacing: (column spacing, row spacing, slice spacing) in mm, SimpleITK order.
        origin: ImagePositionPatient of the first sorted slice, mm.
        direction: row cosine, column cosine and normal as columns, 9 floats row-major.
    """

    order: list[int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def slice_geometry(paths: Sequence[Path], headers: Sequence[Dataset]) -> SliceGeometry:
    """Sort slices and derive the 3D grid from IPP/IOP/PixelSpacing.

    Raises:
        PetsegError: missing tags, slices of different orientation, size or pixel
            spacing, two slices at one position, uneven gaps or a tilted stack.
    """
    first_path, first = paths[0], headers[0]
    orientation = np.asarray(_require(first, "ImageOrientationPatient", first_path), float)
    pixel_spacing = np.asarray(_require(first, "PixelSpacing", first_path), float)
    shape = (int(first.Rows), int(first.Columns))
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = []
    for path, ds in zip(paths, headers, strict=True):
        if not np.allclose(np.asarray(_require(ds, "ImageOrientationPatient", path), float),
                           orientation, atol=1e-4):
            raise PetsegError(f"{path}: ImageOrientationPatient differs from {first_path}; "
                              f"pass a folder with one series of parallel slices")
        if (int(ds.Rows), int(ds.Columns)) != shape or not np.allclose(
                np.asarray(_require(ds, "PixelSpacing", path), float), pixel_spacing):
            raise PetsegError(f"{path}: slice size or PixelSpacing differs from {first_path}; "
                              f"pass a folder with one series")
        positions.append(np.asarray(_require(ds, "ImagePositionPatient", path), float))
    positions_arr = np.asarray(positions)
    along = positions_arr @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along_sorted = along[order]
    if len(order) > 1:
        gaps = np.diff(along_sorted)
        if np.any(gaps < 1e-3):
            k = int(np.argmin(gaps))
            raise PetsegError(f"{paths[order[k + 1]]}: lies at the same position as "
                              f"{paths[order[k]]}; remove duplicate slices")
        slice_spacing = float(np.median(gaps))
        if np.any(np.abs(gaps - slice_spacing) > SLICE_SPACING_TOLERANCE * slice_spacing):
            raise PetsegError(f"{paths[order[0]]}: slice gaps are uneven "
                              f"({gaps.min():.3f}..{gaps.max():.3f} mm); a slice is missing")
        drift = positions_arr[order[-1]] - positions_arr[order[0]]
        in_plane = drift - (drift @ normal) * normal
        if np.linalg.norm(in_plane) > 0.01 * np.linalg.norm(drift):
            raise PetsegError(f"{paths[order[0]]}: slices are sheared (gantry tilt); "
                              f"resample the series to an orthogonal grid first")
    else:
        slice_spacing = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness")
                              or 1.0)
    direction = np.stack([row, col, normal], axis=1)
    return SliceGeometry(
        order=order,
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing),
        origin=tuple(float(v) for v in positions_arr[order[0]]),
        direction=tuple(float(v) for v in direction.ravel()),
    )


# ----------------------------------------------------------------------------- SUV

@dataclasses.dataclass(frozen=True)
class SuvParameters:
    """What the SUV (body weight) factor is made of.

    Attributes:
        units: Units of the stored values ("BQML" or "GML").
        weight_kg: patient weight.
        injected_dose_bq: RadionuclideTotalDose at injection.
        half_life_s: RadionuclideHalfLife.
        decay_correction: "START" or "ADMIN".
        injection_time: injection date and time.
        reference_time: the time images are decay corrected to.
        decayed_dose_bq: dose at `reference_time`.
        factor: multiply Bq/ml by this to get SUV (g/ml); 1 for GML.
    """

    units: str
    weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    decay_correction: str
    injection_time: dt.datetime | None
    reference_time: dt.datetime | None
    decayed_dose_bq: float
    factor: float


def _acquisition_datetime(ds: Dataset) -> dt.datetime | None:
    if ds.get("AcquisitionDateTime"):
        return parse_datetime(ds.AcquisitionDateTime)
    date = ds.get("AcquisitionDate") or ds.get("SeriesDate")
    if date and ds.get("AcquisitionTime"):
        return dt.datetime.combine(parse_date(date), parse_time(ds.AcquisitionTime))
    return None


def suv_parameters(paths: Sequence[Path], headers: Sequence[Dataset],
                   weight_kg: float | None = None) -> SuvParameters:
    """The SUVbw factor of a PET series from its headers.

    Args:
        paths, headers: the series' files and their headers (any order).
        weight_kg: patient weight overriding PatientWeight (for series without it).

    Raises:
        PetsegError: a needed tag missing (named with its file), unsupported units or
            decay correction, injection after the reference time.
    """
    path, ds = paths[0], headers[0]
    units = str(_require(ds, "Units", path)).strip().upper()
    if units == "GML":
        return SuvParameters(units, math.nan, math.nan, math.nan, "", None, None, math.nan, 1.0)
    if units != "BQML":
        raise PetsegError(f"{path}: Units (0054,1001) is {units}, only BQML (Bq/ml) or GML "
                          f"(SUV) can be converted; export the series in Bq/ml")
    if weight_kg is None:
        weight_kg = float(_require(ds, "PatientWeight", path, "pass --weight-kg"))
    if not weight_kg > 0:
        raise _missing(path, "PatientWeight", "pass --weight-kg")
    info = _require(ds, "RadiopharmaceuticalInformationSequence", path)[0]
    dose = float(_require(info, "RadionuclideTotalDose", path))
    half_life = float(_require(info, "RadionuclideHalfLife", path))
    if dose <= 0 or half_life <= 0:
        raise PetsegError(f"{path}: RadionuclideTotalDose or RadionuclideHalfLife is not "
                          f"positive; correct the series' dose information")
    decay_correction = str(_require(ds, "DecayCorrection", path)).strip().upper()
    if decay_correction == "ADMIN":
        return SuvParameters(units, weight_kg, dose, half_life, decay_correction, None, None,
                             dose, weight_kg * 1000.0 / dose)
    if decay_correction != "START":
        raise PetsegError(f"{path}: DecayCorrection (0054,1102) is {decay_correction}; only "
                          f"START and ADMIN are supported; export decay-corrected images")

    series_date = parse_date(_require(ds, "SeriesDate", path))
    series_start = dt.datetime.combine(series_date, parse_time(_require(ds, "SeriesTime", path)))
    acquisitions = [t for t in (_acquisition_datetime(h) for h in headers) if t is not None]
    reference = series_start
    if acquisitions and min(acquisitions) < series_start:
        reference = min(acquisitions)
    if info.get("RadiopharmaceuticalStartDateTime"):
        injection = parse_datetime(info.RadiopharmaceuticalStartDateTime)
    else:
        clock = parse_time(_require(info, "RadiopharmaceuticalStartTime", path))
        injection = dt.datetime.combine(series_date, clock)
        if injection > reference:  # injected before midnight, scanned after
            injection -= dt.timedelta(days=1)
    elapsed = (reference - injection).total_seconds()
    if elapsed < 0:
        raise PetsegError(f"{path}: injection ({injection}) is after the acquisition start "
                          f"({reference}); correct RadiopharmaceuticalStartDateTime")
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return SuvParameters(units, weight_kg, dose, half_life, decay_correction, injection,
                         reference, decayed, weight_kg * 1000.0 / decayed)


def _pixels(path: Path) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise _missing(path, "PixelData", "export the images, not only their headers")
    try:
        return ds, ds.pixel_array
    except Exception as exc:  # pydicom raises several types for undecodable data
        raise PetsegError(
            f"{path}: pixel data cannot be decoded ({type(exc).__name__}, transfer syntax "
            f"{ds.file_meta.get('TransferSyntaxUID', '?')}); decompress the series first, "
            f"e.g. with gdcmconv --raw"
        ) from None


def pet_series_suv(paths: Sequence[Path], headers: Sequence[Dataset],
                   weight_kg: float | None = None
                   ) -> tuple[sitk.Image, SuvParameters, SliceGeometry]:
    """The PET series made of `paths` (headers without pixels, any order) in SUV.

    Returns:
        (float32 SUV image, the conversion's parameters, the slice order and grid:
        image slice k is `paths[geometry.order[k]]`).

    Raises:
        PetsegError: one line naming the file and the missing tag or problem.
    """
    for path, ds in zip(paths, headers, strict=True):
        if ds.get("SOPClassUID") in ENHANCED_PET_SOP_CLASSES or int(
                ds.get("NumberOfFrames") or 1) > 1:
            raise PetsegError(f"{path}: multi-frame (enhanced) PET is not supported; "
                              f"export the series as single-frame PET images")
    geometry = slice_geometry(paths, headers)
    parameters = suv_parameters(paths, headers, weight_kg)
    slices = []
    for index in geometry.order:
        ds, stored = _pixels(paths[index])
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append((stored.astype(np.float64) * slope + intercept) * parameters.factor)
    image = sitk.GetImageFromArray(np.stack(slices).astype(np.float32))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image, parameters, geometry


def read_pet_suv(directory: str | Path, weight_kg: float | None = None
                 ) -> tuple[sitk.Image, SuvParameters]:
    """Read the one PET series under `directory` as a float32 SUV image.

    Args:
        directory: folder (searched recursively) with the PET series' files.
        weight_kg: patient weight in kg when the series lacks PatientWeight.

    Returns:
        (SUV image with the series' geometry, the parameters of the conversion).

    Raises:
        PetsegError: one line naming the file and the missing tag or problem.
    """
    directory = Path(directory)
    found = _one_series(directory, "PT")
    image, parameters, _ = pet_series_suv([p for p, _ in found], [ds for _, ds in found],
                                          weight_kg)
    log.info("%s: %d slices, %s, weight %.1f kg, dose %.1f MBq at injection, "
             "%.1f MBq at %s, SUV factor %.6g", directory, image.GetSize()[2],
             parameters.decay_correction or parameters.units, parameters.weight_kg,
             parameters.injected_dose_bq / 1e6, parameters.decayed_dose_bq / 1e6,
             parameters.reference_time, parameters.factor)
    return image, parameters


def ct_series_hu(paths: Sequence[Path], headers: Sequence[Dataset], label: Path) -> sitk.Image:
    """The CT series made of `paths` (headers without pixels, any order) in HU.

    Slices are sorted and checked like PET (`slice_geometry`); SimpleITK's GDCM reader
    applies RescaleSlope/RescaleIntercept and derives the geometry. `label` names the
    series in errors. Returns int16 when the values allow, else the reader's type.
    """
    # The same sorting and checks as for PET (uneven gaps, tilt); GDCM then reads.
    geometry = slice_geometry(paths, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(paths[i]) for i in geometry.order])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise PetsegError(f"{label}: CT series cannot be read ({last[:120]}); "
                          f"check the files") from None
    values = sitk.GetArrayViewFromImage(image)
    if (image.GetPixelID() != sitk.sitkInt16 and np.all(np.mod(values, 1) == 0)
            and values.min(initial=0) >= -32768 and values.max(initial=0) <= 32767):
        image = sitk.Cast(image, sitk.sitkInt16)
    return image


def read_ct_hu(directory: str | Path) -> sitk.Image:
    """Read the one CT series under `directory` in HU (int16 when the values allow).

    Raises:
        PetsegError: no CT series, several, or unreadable files.
    """
    directory = Path(directory)
    found = _one_series(directory, "CT")
    return ct_series_hu([p for p, _ in found], [ds for _, ds in found], directory)
