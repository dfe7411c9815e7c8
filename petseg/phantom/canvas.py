"""A voxel grid with patient coordinates, and the shape primitives anatomy is painted with.

Arrays are numpy `[z, y, x]`. Physical coordinates follow SimpleITK/DICOM (LPS): +x is the
patient's left, +y posterior, +z superior, in mm. Anatomy is described in *patient
coordinates* `(u, v, d)`: `u = x - cx(d)` (left positive), `v = y - cy(d)` (posterior
positive) and `d` = depth below the vertex of the skull in mm (feet positive). The body
axis `(cx(d), cy(d))` may drift with depth (a patient lying slightly askew), so the
mapping is a shear per slice and every primitive stays a cheap broadcast over
`[z, 1, x]`, `[z, y, 1]` and `[z, 1, 1]` arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from petseg.io.geometry import Geometry

Box = tuple[slice, slice, slice]
"""Index box `[z, y, x]` into the canvas arrays."""


def _axis_coordinates(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x, y, z of voxel centres along each index axis (diagonal directions only)."""
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3)):
        raise ValueError(f"phantom grids need an axis-aligned direction, got {geometry.direction}")
    coords = []
    for axis in range(3):
        index = np.arange(geometry.size[axis], dtype=np.float64)
        step = direction[axis, axis] * geometry.spacing[axis]
        coords.append(geometry.origin[axis] + index * step)
    return coords[0], coords[1], coords[2]


def _index_range(values: np.ndarray, lo: float, hi: float) -> slice | None:
    """Index slice of the entries of `values` (monotonic) that lie in [lo, hi]."""
    inside = np.flatnonzero((values >= lo) & (values <= hi))
    if inside.size == 0:
        return None
    return slice(int(inside[0]), int(inside[-1]) + 1)


class Canvas:
    """Label map and coordinates of one grid, with the body axis of one patient.

    Attributes:
        geometry: the grid (SimpleITK order).
        x, y, z: physical coordinate (mm) of each index along the x, y, z array axes.
        d: depth below the vertex (mm) of each z index.
        cx, cy: body-axis position (mm) at each z index.
        labels: `[z, y, x]` uint8 tissue labels, painted in place.
    """

    def __init__(self, geometry: Geometry, z_vertex: float,
                 axis_x: Sequence[tuple[float, float]], axis_y: Sequence[tuple[float, float]]):
        """Args: axis_x/axis_y: control points `(d, position mm)` of the body axis."""
        self.geometry = geometry
        self.x, self.y, self.z = _axis_coordinates(geometry)
        self.z_vertex = float(z_vertex)
        self.d = self.z_vertex - self.z
        self._axis_x = np.asarray(axis_x, dtype=float)
        self._axis_y = np.asarray(axis_y, dtype=float)
        self.cx = self.axis_x(self.d)
        self.cy = self.axis_y(self.d)
        self.shape = (geometry.size[2], geometry.size[1], geometry.size[0])
        self.labels = np.zeros(self.shape, dtype=np.uint8)
        self.spacing_zyx = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])

    # -- coordinates ---------------------------------------------------------------------
    def axis_x(self, d: np.ndarray | float) -> np.ndarray:
        """Body-axis x (mm) at depth(s) `d`."""
        return np.interp(d, self._axis_x[:, 0], self._axis_x[:, 1])

    def axis_y(self, d: np.ndarray | float) -> np.ndarray:
        """Body-axis y (mm) at depth(s) `d`."""
        return np.interp(d, self._axis_y[:, 0], self._axis_y[:, 1])

    def to_physical(self, u: float, v: float, d: float) -> tuple[float, float, float]:
        """Patient coordinates (mm) -> physical (x, y, z) mm."""
        return (float(self.axis_x(d) + u), float(self.axis_y(d) + v), self.z_vertex - d)

    def to_patient(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """Physical (x, y, z) mm -> patient coordinates (u, v, d) mm."""
        d = self.z_vertex - z
        return (x - float(self.axis_x(d)), y - float(self.axis_y(d)), d)

    def index_of(self, point_xyz: Sequence[float]) -> tuple[int, int, int]:
        """Nearest `[z, y, x]` index of a physical point, clipped into the grid."""
        out = []
        for values, p in ((self.z, point_xyz[2]), (self.y, point_xyz[1]), (self.x, point_xyz[0])):
            out.append(int(np.clip(np.argmin(np.abs(values - p)), 0, values.size - 1)))
        return out[0], out[1], out[2]

    def physical_of(self, index_zyx: Sequence[int]) -> tuple[float, float, float]:
        """Physical (x, y, z) mm of a `[z, y, x]` voxel index."""
        k, j, i = index_zyx
        return float(self.x[i]), float(self.y[j]), float(self.z[k])

    # -- boxes ---------------------------------------------------------------------------
    def box(self, u: tuple[float, float], v: tuple[float, float],
            d: tuple[float, float]) -> Box | None:
        """Index box covering a patient-coordinate box (None if it misses the grid)."""
        sz = _index_range(self.d, min(d), max(d))
        if sz is None:
            return None
        cx = self.cx[sz]
        cy = self.cy[sz]
        sx = _index_range(self.x, float(cx.min()) + u[0], float(cx.max()) + u[1])
        sy = _index_range(self.y, float(cy.min()) + v[0], float(cy.max()) + v[1])
        if sx is None or sy is None:
            return None
        return sz, sy, sx

    def box_around(self, centre_uvd: Sequence[float], half: Sequence[float]) -> Box | None:
        """Index box of half-widths `half` (u, v, d mm) around a patient-coordinate point."""
        u, v, d = centre_uvd
        hu, hv, hd = half
        return self.box((u - hu, u + hu), (v - hv, v + hv), (d - hd, d + hd))

    def patient_grids(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates of a box as broadcastable float32 arrays.

        Returns:
            U `[z, 1, x]`, V `[z, y, 1]`, D `[z, 1, 1]` in mm.
        """
        sz, sy, sx = box
        d = self.d[sz]
        U = (self.x[sx][None, None, :] - self.cx[sz][:, None, None]).astype(np.float32)
        V = (self.y[sy][None, :, None] - self.cy[sz][:, None, None]).astype(np.float32)
        D = d[:, None, None].astype(np.float32)
        return U, V, D

    # -- painting ------------------------------------------------------------------------
    def paint(self, box: Box, mask: np.ndarray, label: int,
              only: Sequence[int] | None = None, never: Sequence[int] | None = None) -> int:
        """Set `label` where `mask` is true inside `box`; returns the voxels painted.

        Args:
            only: if given, only voxels currently holding one of these labels change.
            never: voxels currently holding one of these labels never change.
        """
        region = self.labels[box]
        mask = np.broadcast_to(mask, region.shape)
        if only is not None:
            mask = mask & label_in(region, only)
        if never is not None:
            mask = mask & ~label_in(region, never)
        region[mask] = label
        return int(np.count_nonzero(mask))


def label_in(labels: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """Boolean mask of voxels whose label is one of `wanted` (a 256-entry lookup)."""
    table = np.zeros(256, dtype=bool)
    table[list(wanted)] = True
    return table[labels]


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (radians) about the d, u and v axes, in patient coordinates (u, v, d)."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def ellipsoid_q(canvas: Canvas, centre: Sequence[float], radii: Sequence[float],
                rot: np.ndarray | None = None, pad: float = 1.0,
                ) -> tuple[Box, np.ndarray] | None:
    """Normalised squared radius `q` of an ellipsoid in patient coordinates.

    `q < 1` is inside. `rot` maps the ellipsoid's own axes to (u, v, d). The box spans
    `pad` times the largest radius.

    Returns:
        (box, q) with q a float32 array of the box's shape, or None outside the grid.
    """
    r_max = float(max(radii)) * pad
    box = canvas.box_around(centre, (r_max, r_max, r_max))
    if box is None:
        return None
    U, V, D = canvas.patient_grids(box)
    du, dv, dd = U - centre[0], V - centre[1], D - centre[2]
    if rot is None:
        q = (du / radii[0]) ** 2 + (dv / radii[1]) ** 2 + (dd / radii[2]) ** 2
    else:
        q = np.zeros(np.broadcast_shapes(du.shape, dv.shape, dd.shape), np.float32)
        for axis in range(3):
            comp = du * rot[0, axis] + dv * rot[1, axis] + dd * rot[2, axis]
            q += (comp / radii[axis]) ** 2
    return box, np.broadcast_to(q, np.broadcast_shapes(U.shape, V.shape, D.shape)).astype(
        np.float32, copy=False)


def segment_distance(canvas: Canvas, p0: Sequence[float], p1: Sequence[float], pad: float,
                     ) -> tuple[Box, np.ndarray, np.ndarray] | None:
    """Distance (mm) from each voxel of a padded box to the segment p0-p1 (patient coords).

    Returns:
        (box, distance, t) with t in [0, 1] the position of the closest point on the
        segment, or None when the box misses the grid.
    """
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    lo = np.minimum(p0, p1) - pad
    hi = np.maximum(p0, p1) + pad
    box = canvas.box((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))
    if box is None:
        return None
    U, V, D = canvas.patient_grids(box)
    axis = p1 - p0
    length2 = float(axis @ axis) or 1e-6
    du, dv, dd = U - p0[0], V - p0[1], D - p0[2]
    t = np.clip((du * axis[0] + dv * axis[1] + dd * axis[2]) / length2, 0.0, 1.0)
    dist2 = (du - t * axis[0]) ** 2 + (dv - t * axis[1]) ** 2 + (dd - t * axis[2]) ** 2
    return box, np.sqrt(dist2, dtype=np.float32), t


def paint_tube(canvas: Canvas, points: Sequence[Sequence[float]], radii: Sequence[float] | float,
               label: int, only: Sequence[int] | None = None,
               never: Sequence[int] | None = None, inner: tuple[float, int] | None = None,
               ) -> None:
    """Paint a tube along a polyline (patient coordinates) with per-point radii (mm).

    Args:
        inner: optional `(wall thickness mm, label)`: the lumen (radius minus the wall)
            gets that label, e.g. marrow inside cortical bone or gas inside bowel.
    """
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),))
    for a in range(len(pts) - 1):
        r0, r1 = rad[a], rad[a + 1]
        found = segment_distance(canvas, pts[a], pts[a + 1], pad=max(r0, r1) + 1.0)
        if found is None:
            continue
        box, dist, t = found
        radius = r0 + (r1 - r0) * t
        canvas.paint(box, dist <= radius, label, only=only, never=never)
        if inner is not None:
            wall, inner_label = inner
            canvas.paint(box, dist <= radius - wall, inner_label, only=[label])


def exp32(x: np.ndarray | float) -> np.ndarray:
    """`exp(x)` as float32, the same on every CPU.

    numpy picks float32 `exp`/`power` kernels by the CPU's SIMD width (SSE, AVX2,
    AVX-512), and they differ in the last bit; computed in float64 and rounded to
    float32, the kernels' sub-ulp differences vanish (a float64 ulp flips the float32
    rounding with probability about 2**-29 per value).
    """
    return np.exp(np.asarray(x, np.float64)).astype(np.float32)


def power32(x: np.ndarray, exponent: float) -> np.ndarray:
    """`x ** exponent` as float32, the same on every CPU (see `exp32`)."""
    return np.power(np.asarray(x, np.float64), exponent).astype(np.float32)


def _bspline_matrix(n_out: int, n_coarse: int) -> np.ndarray:
    """Cubic B-spline weights `[n_out, n_coarse]` sampling a lattice's interior evenly."""
    t = np.linspace(1.0, n_coarse - 2.0, n_out)
    x = np.abs(t[:, None] - np.arange(n_coarse)[None, :])
    w = np.where(x < 1.0, 2.0 / 3.0 - x**2 + 0.5 * x**3,
                 np.where(x < 2.0, (2.0 - x) ** 3 / 6.0, 0.0))
    # Unit variance at every output position for unit-variance lattice values.
    return (w / np.sqrt((w**2).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[float],
                 ) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit variance, on a box of `shape`.

    Random lattice values of pitch `cells` voxels (per axis) are interpolated with cubic
    B-splines, one separable matrix product per axis (fast even for large boxes).

    Returns:
        float32 array of `shape`.
    """
    shape = tuple(int(s) for s in shape)
    if min(cells) < 2.5:
        # Correlation of a few voxels at most: filtered white noise is cheaper than a
        # lattice as fine as the grid itself.
        sigma = [0.45 * float(c) if c > 1.0 else 0.0 for c in cells]
        field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma,
                                    mode="wrap", truncate=3.0)
        return field / max(float(field.std()), 1e-6)
    coarse_shape = tuple(int(np.ceil(s / max(float(c), 1.0))) + 3
                         for s, c in zip(shape, cells, strict=True))
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    w0, w1, w2 = (_bspline_matrix(s, c) for s, c in zip(shape, coarse_shape, strict=True))
    field = field @ w2.T                                     # [c0, c1, s2]
    field = np.tensordot(w1, field, axes=([1], [1]))         # [s1, c0, s2]
    field = np.tensordot(w0, field, axes=([1], [1]))         # [s0, s1, s2]
    return np.ascontiguousarray(field, dtype=np.float32)
