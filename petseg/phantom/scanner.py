"""Scanner model: PET and CT grids as real scans have them, PET blur and noise, CT noise.

PET `full`: 400 x 400 x N voxels (N 250..330), 2.0364 x 2.0364 x 3.0 mm, LAS direction,
origin away from zero. CT: its own finer grid, 512 x 512 x M at ~0.98 x 0.98 x 3 mm
with a different origin; CTres = CT resampled onto the PET grid (linear, fill -1024 HU)
as the autoPET organisers made it. `small` keeps the same physical field of view on
96 x 96 x 128 PET voxels (CT 128 x 128 x M) for fast tests.

The anatomy is rendered on the PET grid itself; the CT is resampled from there onto its
own grid (so it is slightly smoother than a real CT of that pitch).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from petseg.io.geometry import LAS_DIRECTION, Geometry

PET_SPACING_MM: tuple[float, float, float] = (2.0364, 2.0364, 3.0)
PET_MATRIX: int = 400
SMALL_PET_MATRIX: tuple[int, int] = (96, 128)
"""Small grid: in-plane matrix and number of slices."""
CT_MATRIX: int = 512
SMALL_CT_MATRIX: int = 128
CT_FILL_HU: float = -1024.0
SIZES: tuple[str, ...] = ("small", "full")


@dataclasses.dataclass(frozen=True)
class Grids:
    """The grids of one study and where the patient lies on them.

    Attributes:
        pet: PET grid (SUV, SEG and CTres live here).
        ct: native CT grid.
        z_vertex: physical z (mm) of the patient's skull vertex.
        axis_x, axis_y: body-axis control points `(depth mm, physical mm)`.
        fwhm_mm: PET resolution (Gaussian FWHM).
        pet_noise: PET noise level c: noise std ~ c * sqrt(SUV) after blurring.
        ct_noise_hu: CT noise standard deviation (HU).
    """

    pet: Geometry
    ct: Geometry
    z_vertex: float
    axis_x: tuple[tuple[float, float], ...]
    axis_y: tuple[tuple[float, float], ...]
    fwhm_mm: float
    pet_noise: float
    ct_noise_hu: float


def make_grids(rng: np.random.Generator, size: str, d_top: float, d_bottom: float,
               weight: float, params: dict[str, float],
               direction: tuple[float, ...] = LAS_DIRECTION) -> Grids:
    """PET and CT grids for a patient scanned from depth `d_top` to `d_bottom` (mm).

    Every random number is drawn the same way for both sizes, so `small` and `full`
    show the same patient in the same place.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    slices = round((d_bottom - d_top) / PET_SPACING_MM[2]) + 1
    centre = rng.normal(0.0, 4.0, 2)
    z_low = float(rng.uniform(-1500.0, -650.0))
    ct_spacing = float(rng.choice([0.9765625, 0.9765625, 0.9765625, 0.95, 1.0]))
    ct_shift = rng.normal(0.0, 3.0, 2)
    fwhm = float(rng.uniform(5.8, 7.2))
    pet_noise = float(rng.uniform(0.09, 0.2) * (weight / 75.0) ** 0.5)
    ct_noise = float(rng.uniform(6.0, 16.0) * (weight / 75.0) ** 0.4)
    z_span = PET_SPACING_MM[2] * (slices - 1)
    if size == "full":
        n_xy, n_z = PET_MATRIX, slices
        sp_xy = PET_SPACING_MM[0]
        ct_n, ct_sp = CT_MATRIX, ct_spacing
    else:
        n_xy, n_z = SMALL_PET_MATRIX
        sp_xy = PET_SPACING_MM[0] * PET_MATRIX / n_xy
        ct_n, ct_sp = SMALL_CT_MATRIX, ct_spacing * CT_MATRIX / SMALL_CT_MATRIX
    sp_z = z_span / (n_z - 1)
    dirm = np.asarray(direction, float).reshape(3, 3)
    sign = np.diag(dirm)

    def origin(n: int, sp: float, c: np.ndarray) -> tuple[float, float]:
        half = 0.5 * (n - 1) * sp
        return float(c[0] - sign[0] * half), float(c[1] - sign[1] * half)

    ox, oy = origin(n_xy, sp_xy, centre)
    pet = Geometry(size=(n_xy, n_xy, n_z), spacing=(sp_xy, sp_xy, sp_z),
                   origin=(ox, oy, z_low if sign[2] > 0 else z_low + z_span),
                   direction=tuple(float(v) for v in direction))
    # CT: one slice more, half a slice lower, so it covers every PET slice.
    cx, cy = origin(ct_n, ct_sp, centre + ct_shift)
    ct_z0 = z_low - 0.5 * sp_z
    ct = Geometry(size=(ct_n, ct_n, n_z + 1), spacing=(ct_sp, ct_sp, sp_z),
                  origin=(cx, cy, ct_z0 if sign[2] > 0 else ct_z0 + sp_z * n_z),
                  direction=tuple(float(v) for v in direction))
    z_top = z_low + z_span
    z_vertex = z_top + d_top
    ax = float(centre[0] + params["axis_dx"])
    ay = float(centre[1] + params["axis_dy"])
    tx, ty = params["tilt_x"], params["tilt_y"]
    axis_x = ((-3000.0, ax - tx * 3000.0), (3000.0, ax + tx * 3000.0))
    axis_y = ((-3000.0, ay - ty * 3000.0), (3000.0, ay + ty * 3000.0))
    return Grids(pet=pet, ct=ct, z_vertex=z_vertex, axis_x=axis_x, axis_y=axis_y,
                 fwhm_mm=fwhm, pet_noise=pet_noise, ct_noise_hu=ct_noise)


def blur_sigma_vox(geometry: Geometry, fwhm_mm: float) -> tuple[float, float, float]:
    """Gaussian sigma in voxels along `[z, y, x]` for a PET resolution of `fwhm_mm`."""
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    sp = geometry.spacing
    return (sigma / sp[2], sigma / sp[1], sigma / sp[0])


def _noise_gain(sigma_vox: tuple[float, float, float]) -> float:
    """How much the PET blur shrinks the standard deviation of white noise."""
    probe = np.zeros((33, 33, 33), np.float64)
    probe[16, 16, 16] = 1.0
    kernel = ndi.gaussian_filter(probe, sigma_vox, mode="constant", truncate=3.0)
    return float(np.sqrt((kernel**2).sum()))


_POOL = 1 << 23


def add_noise(volume: np.ndarray, rng: np.random.Generator, scale: float | None = None,
              level: tuple[float, float] | None = None) -> None:
    """Add zero-mean Gaussian noise to a float32 `[z, y, x]` volume, in place.

    Args:
        scale: constant standard deviation, or
        level: `(c, floor)`: standard deviation `c * sqrt(max(v, 0) + floor)` of the
            voxel value v (Poisson-like).

    Slice by slice, each slice taking a window at a random offset into one pool of 8.4 M
    normal numbers: several times faster than drawing every voxel, with no visible
    repetition, and no whole-volume temporary.
    """
    plane = volume.shape[1] * volume.shape[2]
    small = volume.size <= _POOL
    pool = rng.standard_normal(volume.size if small else _POOL + plane, dtype=np.float32)
    offsets = (np.arange(volume.shape[0]) * plane if small
               else rng.integers(0, _POOL, volume.shape[0]))
    for k, off in enumerate(offsets):
        noise = pool[off:off + plane].reshape(volume.shape[1], volume.shape[2])
        if level is not None:
            c, floor = level
            std = np.maximum(volume[k], 0.0)
            std += floor
            np.sqrt(std, out=std)
            std *= c
            volume[k] += noise * std
        else:
            volume[k] += noise * np.float32(scale)


def pet_image(activity: np.ndarray, grids: Grids, rng: np.random.Generator) -> np.ndarray:
    """Blurred, noisy PET (SUV >= 0) `[z, y, x]` float32 from true activity (in place).

    Noise grows with activity (Poisson-like: std ~ c * sqrt(SUV) after blurring) and is
    correlated at the resolution scale because it is blurred with the image.
    """
    sigma = blur_sigma_vox(grids.pet, grids.fwhm_mm)
    add_noise(activity, rng, level=(grids.pet_noise / _noise_gain(sigma), 0.0))
    out = ndi.gaussian_filter(activity, sigma, mode="nearest", truncate=3.0)
    np.maximum(out, 0.0, out=out)
    return out


def _resample(image: sitk.Image, geometry: Geometry, pixel: int, fill: float,
              extrapolate: bool = True) -> sitk.Image:
    """Linear resampling onto `geometry` without allocating a reference image; outside
    `image`, its nearest voxel (`extrapolate`) or `fill`."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in geometry.size])
    f.SetOutputSpacing(geometry.spacing)
    f.SetOutputOrigin(geometry.origin)
    f.SetOutputDirection(geometry.direction)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(fill)
    f.SetOutputPixelType(pixel)
    f.SetUseNearestNeighborExtrapolator(extrapolate)
    return f.Execute(image)


def ct_image(density: np.ndarray, grids: Grids, rng: np.random.Generator) -> sitk.Image:
    """The native CT (int16 HU, its own grid) from densities on the PET grid (in place).

    Noise is added on the PET grid and interpolated onto the finer CT grid, which gives
    it some spatial correlation as in a reconstructed CT; voxels outside the CT's
    reconstruction circle read -1024 HU.
    """
    add_noise(density, rng, scale=grids.ct_noise_hu * 1.4)
    # Reconstruction circle of the CT, in physical x/y, applied on the PET grid.
    pet, ct = grids.pet, grids.ct
    radius = 0.5 * ct.size[0] * ct.spacing[0]
    cx = ct.origin[0] + ct.direction[0] * 0.5 * (ct.size[0] - 1) * ct.spacing[0]
    cy = ct.origin[1] + ct.direction[4] * 0.5 * (ct.size[1] - 1) * ct.spacing[1]
    xs = pet.origin[0] + pet.direction[0] * pet.spacing[0] * np.arange(pet.size[0])
    ys = pet.origin[1] + pet.direction[4] * pet.spacing[1] * np.arange(pet.size[1])
    outside = (ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2 > radius**2
    density[:, outside] = CT_FILL_HU
    np.clip(density, CT_FILL_HU, 3071.0, out=density)
    source = pet.image_from_array(density)
    return _resample(source, ct, sitk.sitkInt16, CT_FILL_HU)


def ct_on_pet_grid(ct: sitk.Image, pet_geometry: Geometry) -> sitk.Image:
    """CTres: the CT resampled onto the PET grid (linear, fill -1024 HU), int16."""
    return _resample(ct, pet_geometry, sitk.sitkInt16, CT_FILL_HU, extrapolate=False)
