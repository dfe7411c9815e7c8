"""Tumour lesions: where they sit per diagnosis, their shape, uptake and CT appearance.

A lesion is the top-k voxels of a smooth "lesion field" (one Gaussian ball, a stretched
one, several overlapping balls for lobulated nodes and conglomerates, plus surface
noise for irregular and spiculated masses) restricted to the tissues it may grow in.
Taking exactly k = volume / voxel volume voxels makes the annotated volume equal to the
drawn one up to one voxel. Uptake is heterogeneous (peak towards the centre, optional
necrotic core) and scaled so that the *blurred* SUVmax hits the drawn value.

Diagnosis groups (autoPET, `petseg.diagnoses`): LYMPHOMA (several to many nodes in nodal
stations, bulky masses, spleen/bone/extranodal), LUNG_CANCER (a lung primary,
hilar/mediastinal nodes, bone, liver, adrenal and lung metastases), MELANOMA (anywhere:
subcutaneous, nodal basins, lung, liver, bone, muscle, bowel), NEGATIVE (none).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from petseg.diagnoses import DIAGNOSES
from petseg.phantom.anatomy import BODY_SOFT, Anatomy, Tissue
from petseg.phantom.canvas import (
    Box,
    Canvas,
    exp32,
    label_in,
    power32,
    rotation,
    smooth_noise,
)

T = Tissue

HOT_ORGANS: dict[str, tuple[int, ...]] = {
    "bladder": (T.BLADDER,), "kidney": (T.KIDNEY, T.RENAL_PELVIS), "heart": (T.MYOCARDIUM,),
    "ureter": (T.URETER,), "brain": (T.BRAIN_GREY,),
}

_NODE = (T.FAT, T.SUBCUT_FAT, T.SOFT, T.GLAND)
# Tissues each site may grow into (first choice, then a relaxed set): lymph nodes sit in
# fat and push muscles aside only when large.
_ALLOWED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "node": (_NODE, (*_NODE, T.MUSCLE, T.LUNG, T.BOWEL)),
    "lung": ((T.LUNG,), (T.LUNG, *BODY_SOFT)),
    "liver": ((T.LIVER,), (T.LIVER, *BODY_SOFT)),
    "spleen": ((T.SPLEEN,), (T.SPLEEN, *BODY_SOFT)),
    "bone": ((T.MARROW, T.CORTEX, T.YELLOW_MARROW),
             (T.MARROW, T.CORTEX, T.YELLOW_MARROW, *BODY_SOFT)),
    "adrenal": ((T.FAT, T.SOFT), (*BODY_SOFT,)),
    "subcutaneous": ((T.SUBCUT_FAT,), (T.SUBCUT_FAT, T.MUSCLE)),
    "muscle": ((T.MUSCLE,), (T.MUSCLE, *BODY_SOFT)),
    "bowel": ((T.BOWEL, T.FAT), (T.BOWEL, T.BOWEL_GAS, *BODY_SOFT)),
}


@dataclasses.dataclass(frozen=True)
class LesionInfo:
    """One annotated lesion.

    Attributes:
        index: its value in the case's lesion-instance map (1..n).
        site: anatomical site, e.g. "node_axilla", "lung", "liver", "bone".
        centre_mm: centroid of its voxels, physical (x, y, z) mm.
        volume_ml: annotated volume (voxels in SEG x voxel volume).
        requested_volume_ml: the volume that was drawn.
        suvmax: maximum SUV inside the lesion in the final (blurred, noisy) PET.
        suvmean: mean SUV inside the lesion in the final PET.
        shape: "sphere", "ellipsoid", "lobulated" or "irregular".
        necrotic: whether it has a cold necrotic core.
        ct: CT appearance: "soft_tissue", "hypodense", "lytic", "sclerotic" or "occult".
        near: hot organ it was placed against ("" if none).
    """

    index: int
    site: str
    centre_mm: tuple[float, float, float]
    volume_ml: float
    requested_volume_ml: float
    suvmax: float
    suvmean: float
    shape: str
    necrotic: bool
    ct: str
    near: str

    def to_json(self) -> dict[str, object]:
        """Plain, rounded JSON form (stable bytes for identical lesions)."""
        return {
            "index": self.index, "site": self.site,
            "centre_mm": [round(c, 2) for c in self.centre_mm],
            "volume_ml": round(self.volume_ml, 4),
            "requested_volume_ml": round(self.requested_volume_ml, 4),
            "suvmax": round(self.suvmax, 3), "suvmean": round(self.suvmean, 3),
            "shape": self.shape, "necrotic": self.necrotic, "ct": self.ct, "near": self.near,
        }


@dataclasses.dataclass(frozen=True)
class LesionPlan:
    """Grid-independent description of a lesion before it is placed and rendered."""

    site: str
    volume_ml: float
    suvmax: float
    shape: str
    necrotic: bool
    ct: str
    near: str
    seed: int


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _kind(site: str) -> str:
    return "node" if site.startswith("node_") else site


def plan_lesions(rng: np.random.Generator, cohort: str) -> list[LesionPlan]:
    """Draw the lesions of one study: sites, volumes (ml), SUVmax, shapes, CT look."""
    if cohort == "NEGATIVE":
        return []
    sites: list[str] = []
    bulky: set[int] = set()
    if cohort == "LYMPHOMA":
        n = int(np.clip(round(math.exp(rng.normal(math.log(5.0), 0.65))), 1, 15))
        stations = ["node_neck", "node_supraclavicular", "node_axilla", "node_mediastinum",
                    "node_hilum", "node_paraaortic", "node_mesenteric", "node_iliac",
                    "node_inguinal", "spleen", "bone", "liver", "lung"]
        weights = np.array([16, 7, 12, 16, 4, 10, 6, 7, 8, 5, 5, 2, 2], float)
        chosen = rng.choice(len(stations), size=int(rng.integers(1, 5)), replace=False,
                            p=weights / weights.sum())
        for i in range(n):
            sites.append(stations[int(chosen[i % len(chosen)])])
        if rng.random() < 0.3:
            bulky.add(int(rng.integers(0, n)))
        vol_range, suv_range = (0.3, 30.0), (4.0, 25.0) if rng.random() < 0.8 else (2.5, 7.0)
    elif cohort == "LUNG_CANCER":
        sites.append("lung")
        bulky.add(0)
        for _ in range(int(rng.integers(0, 5))):
            sites.append(str(rng.choice(["node_hilum", "node_mediastinum",
                                         "node_supraclavicular"], p=[0.4, 0.5, 0.1])))
        if rng.random() < 0.45:
            for _ in range(int(rng.integers(1, 6))):
                sites.append(str(rng.choice(["bone", "liver", "adrenal", "lung", "subcutaneous"],
                                            p=[0.35, 0.25, 0.2, 0.15, 0.05])))
        sites = sites[:10]
        vol_range, suv_range = (0.3, 20.0), (3.0, 20.0)
    elif cohort == "MELANOMA":
        n = int(np.clip(round(math.exp(rng.normal(math.log(3.0), 0.8))), 1, 15))
        names = ["subcutaneous", "node_axilla", "node_inguinal", "node_neck", "node_iliac",
                 "node_mediastinum", "lung", "liver", "bone", "spleen", "muscle", "bowel",
                 "node_paraaortic"]
        weights = np.array([18, 12, 12, 8, 5, 5, 14, 8, 6, 3, 4, 3, 2], float)
        first = str(rng.choice(names, p=weights / weights.sum()))
        for _ in range(n):
            same = rng.random() < 0.4
            sites.append(first if same else str(rng.choice(names, p=weights / weights.sum())))
        vol_range, suv_range = (0.1, 25.0), (3.0, 20.0)
    else:
        raise ValueError(f"unknown cohort {cohort!r}; expected one of {DIAGNOSES}")
    plans = []
    for i, site in enumerate(sites):
        lo, hi = vol_range
        if site == "subcutaneous":
            hi = min(hi, 8.0)
        if i in bulky:
            lo, hi = (40.0, 200.0) if cohort == "LYMPHOMA" else (2.0, 150.0)
        volume = _logu(rng, lo, hi)
        s_lo, s_hi = suv_range
        if volume < 1.0:
            s_hi = max(s_lo + 1.0, 0.6 * s_hi)
        suvmax = _logu(rng, s_lo, s_hi)
        u = rng.random()
        if site == "lung" and i == 0 and cohort == "LUNG_CANCER":
            shape = "irregular" if u < 0.6 else "lobulated"
        else:
            shape = ("sphere" if u < 0.25 else "ellipsoid" if u < 0.55 else
                     "lobulated" if u < 0.85 else "irregular")
        necrotic = bool(volume > 12.0 and rng.random() < 0.45)
        ct = _ct_look(rng, site)
        near = _near_choice(rng, site)
        plans.append(LesionPlan(site=site, volume_ml=volume, suvmax=suvmax, shape=shape,
                                necrotic=necrotic, ct=ct, near=near,
                                seed=int(rng.integers(0, 2**31))))
    return plans


def _ct_look(rng: np.random.Generator, site: str) -> str:
    u = rng.random()
    if site == "bone":
        return "lytic" if u < 0.45 else "sclerotic" if u < 0.65 else "occult"
    if site in ("liver", "spleen"):
        return "hypodense" if u < 0.8 else "occult"
    return "soft_tissue"


def _near_choice(rng: np.random.Generator, site: str) -> str:
    options = {"node_iliac": ("bladder", "ureter"), "node_paraaortic": ("kidney", "ureter"),
               "node_mediastinum": ("heart",), "lung": ("heart",), "liver": ("kidney",),
               "node_inguinal": ("bladder",), "adrenal": ("kidney",), "node_hilum": ("heart",)}
    if site in options and rng.random() < 0.3:
        return str(rng.choice(options[site]))
    return ""


# -- placement -----------------------------------------------------------------------------
class _Sampler:
    """Random voxels of a tissue, cached per label set."""

    def __init__(self, anatomy: Anatomy):
        self.anatomy = anatomy
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def voxel(self, rng: np.random.Generator, wanted: Sequence[int]) -> tuple[float, ...] | None:
        key = tuple(sorted(int(w) for w in wanted))
        if key not in self._cache:
            self._cache[key] = np.flatnonzero(label_in(self.anatomy.labels, key))
        flat = self._cache[key]
        u = rng.random()
        if flat.size == 0:
            return None
        idx = np.unravel_index(int(flat[int(u * flat.size)]), self.anatomy.labels.shape)
        c = self.anatomy.canvas
        return c.to_patient(*c.physical_of(idx))


def _path_point(rng: np.random.Generator, path: np.ndarray, t_lo: float, t_hi: float,
                ) -> np.ndarray:
    t = rng.uniform(t_lo, t_hi) * (len(path) - 1)
    k = min(int(t), len(path) - 2)
    f = t - k
    return path[k] * (1 - f) + path[k + 1] * f


def _site_centre(rng: np.random.Generator, site: str, anatomy: Anatomy,
                 sampler: _Sampler) -> tuple[float, ...] | None:
    """A candidate lesion centre (patient coordinates, mm) for a site."""
    pts, paths, P = anatomy.points, anatomy.paths, anatomy.patient.params
    H = anatomy.patient.height
    side = 1.0 if rng.random() < 0.5 else -1.0
    name = "left" if side > 0 else "right"
    jit = rng.normal(0.0, 1.0, 3)
    if site == "node_neck":
        d = rng.uniform(P["chin"] * H - 15, P["shoulder"] * H - 15)
        return (side * rng.uniform(22, 42), rng.uniform(-5, 20) - 15, d)
    if site == "node_supraclavicular":
        d = rng.uniform(P["shoulder"] * H - 10, P["sternal_notch"] * H + 5)
        return (side * rng.uniform(35, 70), rng.uniform(-20, 25), d)
    if site == "node_axilla":
        c = np.array(pts[f"axilla_{name}"]) + jit * np.array([12, 18, 20])
        return tuple(c)
    if site == "node_mediastinum":
        k = rng.integers(0, 4)
        if k == 0 and "trachea" in paths:
            c = _path_point(rng, paths["trachea"], 0.6, 1.0) + np.array(
                [rng.choice([-16.0, 14.0]), 0.0, 0.0])
        elif k == 1 and "aortic_arch" in pts:
            c = np.array(pts["aortic_arch"]) + np.array([0.0, -24.0, 8.0])
        elif k == 2 and "carina" in pts:
            c = np.array(pts["carina"]) + np.array([0.0, 14.0, 24.0])
        elif "aortic_arch" in pts:
            c = np.array(pts["aortic_arch"]) + np.array([18.0, 8.0, 16.0])
        else:
            return None
        return tuple(c + jit * 5)
    if site == "node_hilum":
        key = f"hilum_{name}"
        return tuple(np.array(pts[key]) + jit * 6) if key in pts else None
    if site == "node_paraaortic" and "abdominal_aorta" in paths:
        c = _path_point(rng, paths["abdominal_aorta"], 0.3, 1.0)
        return tuple(c + np.array([side * rng.uniform(15, 24), rng.uniform(-4, 8), 0.0]))
    if site == "node_mesenteric":
        return (rng.uniform(-50, 50), rng.uniform(-60, -10), rng.uniform(0.39, 0.45) * H)
    if site == "node_iliac" and f"iliac_{name}" in paths:
        c = _path_point(rng, paths[f"iliac_{name}"], 0.25, 0.85)
        return tuple(c + np.array([side * rng.uniform(6, 14), rng.uniform(4, 14), 0.0]))
    if site == "node_inguinal" and f"iliac_{name}" in paths:
        c = paths[f"iliac_{name}"][-1]
        return tuple(c + np.array([side * rng.uniform(-5, 15), rng.uniform(-18, 0),
                                   rng.uniform(0, 35)]))
    if site == "adrenal" and f"adrenal_{name}" in pts:
        return tuple(np.array(pts[f"adrenal_{name}"]) + jit * 4)
    tissues = {"lung": (T.LUNG,), "liver": (T.LIVER,), "spleen": (T.SPLEEN,),
               "bone": (T.MARROW,), "subcutaneous": (T.SUBCUT_FAT,), "muscle": (T.MUSCLE,),
               "bowel": (T.BOWEL,)}
    if site in tissues:
        return sampler.voxel(rng, tissues[site])
    return None


def _against(rng: np.random.Generator, anatomy: Anatomy, organ: str, start: Sequence[float],
             radius: float) -> tuple[float, ...] | None:
    """A centre just outside `organ`, on the side facing `start`, so the lesion touches it."""
    labels = anatomy.labels
    canvas = anatomy.canvas
    wanted = HOT_ORGANS[organ]
    mask = label_in(labels, wanted)
    idx = np.argwhere(mask[:: 2, :: 2, :: 2]) * 2
    if idx.size == 0:
        return None
    phys = np.stack([canvas.x[idx[:, 2]], canvas.y[idx[:, 1]], canvas.z[idx[:, 0]]], axis=1)
    sx, sy, sz = canvas.to_physical(*start)
    dist = np.linalg.norm(phys - np.array([sx, sy, sz]), axis=1)
    near = idx[int(np.argmin(dist))]
    surface = np.array(canvas.physical_of(tuple(near)))
    direction = np.array([sx, sy, sz]) - surface
    norm = float(np.linalg.norm(direction))
    direction = direction / norm if norm > 1e-3 else rng.normal(0, 1, 3) / math.sqrt(3)
    centre = surface + direction * (0.75 * radius + 2.0)
    return canvas.to_patient(*centre)


# -- rendering -----------------------------------------------------------------------------
def _gaussian(array: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    return ndi.gaussian_filter(array, sigma_vox, mode="nearest", truncate=3.0)


def _lesion_field(rng: np.random.Generator, canvas: Canvas, box: Box,
                  centre: Sequence[float], radius: float, shape: str) -> np.ndarray:
    """Smooth field peaking at the lesion centre (patient coords); its top voxels form it."""
    U, V, D = canvas.patient_grids(box)
    rot = rotation(*rng.uniform(0, 2 * math.pi, 3))
    if shape == "sphere":
        stretch = np.ones(3)
    else:
        stretch = np.array([1.0, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0)])
        stretch /= np.prod(stretch) ** (1 / 3)
    balls = [(np.zeros(3), 1.0)]
    if shape in ("lobulated", "irregular"):
        for _ in range(int(rng.integers(2, 6))):
            offset = rng.normal(0, 1, 3)
            offset *= rng.uniform(0.35, 0.8) * radius / max(np.linalg.norm(offset), 1e-6)
            balls.append((offset, rng.uniform(0.45, 0.85)))
    du = U - centre[0]
    dv = V - centre[1]
    dd = D - centre[2]
    # Coordinates in the lesion's own (rotated, stretched) frame.
    local = [(du * rot[0, a] + dv * rot[1, a] + dd * rot[2, a]) / stretch[a] for a in range(3)]
    field = np.zeros(np.broadcast_shapes(U.shape, V.shape, D.shape), np.float32)
    for offset, scale in balls:
        sigma = 0.6 * radius * scale
        r2 = sum((local[a] - offset[a]) ** 2 for a in range(3))
        field += (scale * exp32(-0.5 * r2 / sigma**2)).astype(np.float32)
    amp = {"sphere": 0.03, "ellipsoid": 0.05, "lobulated": 0.08, "irregular": 0.22}[shape]
    corr = max(radius * (0.45 if shape == "irregular" else 0.8), 2.0)
    shape_vox = field.shape
    cells = [corr / sp for sp in canvas.spacing_zyx]
    field *= 1.0 + amp * smooth_noise(rng, shape_vox, cells)
    return field


@dataclasses.dataclass
class RenderTargets:
    """Volumes the lesions are rendered into (all `[z, y, x]` on the anatomy grid).

    Attributes:
        pet: unblurred SUV, modified in place.
        ct: HU, modified in place.
        instances: lesion index per voxel (uint8), filled in place.
        sigma_vox: the PET blur (Gaussian sigma in voxels, z/y/x) the scanner will apply.
    """

    pet: np.ndarray
    ct: np.ndarray
    instances: np.ndarray
    sigma_vox: tuple[float, float, float]


def render_lesion(plan: LesionPlan, index: int, centre: Sequence[float], anatomy: Anatomy,
                  targets: RenderTargets, liver_hu: float) -> dict[str, object] | None:
    """Render one lesion of `plan` around `centre` (patient coords, mm).

    Returns:
        The rendering facts (requested volume, voxels, ...) or None if it did not fit.
    """
    canvas = anatomy.canvas
    rng = np.random.default_rng([plan.seed, 1])
    voxel_ml = float(np.prod(canvas.spacing_zyx)) / 1000.0
    k = max(1, round(plan.volume_ml / voxel_ml))
    radius = (3.0 * plan.volume_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3)
    margin = 3.0 * max(s * sp for s, sp in zip(targets.sigma_vox, canvas.spacing_zyx,
                                               strict=True)) + 2 * max(canvas.spacing_zyx)
    half = 2.4 * radius + margin
    box = canvas.box_around(centre, (half, half, half))
    if box is None:
        return None
    field = _lesion_field(rng, canvas, box, centre, radius, plan.shape)
    labels = anatomy.labels[box]
    free = targets.instances[box] == 0
    kind = _kind(plan.site)
    strict, relaxed = _ALLOWED[kind]
    chosen = None
    for allowed in (strict, relaxed, tuple(range(1, 33))):
        ok = free & label_in(labels, allowed)
        if int(np.count_nonzero(ok)) < k:
            continue
        values = np.where(ok, field, -1.0).ravel()
        top = np.argpartition(values, values.size - k)[values.size - k:]
        if values[top].min() <= 0.02 * float(field.max()):
            continue  # would spread far from the centre: try a wider tissue set
        chosen = top
        break
    if chosen is None:
        return None
    mask = np.zeros(field.shape, bool)
    mask.ravel()[chosen] = True
    # Uptake profile: 0 at the border rising to 1 at the peak, heterogeneous, necrosis.
    fv = field[mask]
    lo, hi = float(fv.min()), float(fv.max())
    u = np.zeros(field.shape, np.float32)
    u[mask] = (fv - lo) / max(hi - lo, 1e-6)
    cells = [max(radius * 0.5, 2.0) / sp for sp in canvas.spacing_zyx]
    het = smooth_noise(rng, field.shape, cells)
    profile = (0.55 + 0.45 * power32(u, 0.6)) * np.clip(1.0 + 0.18 * het, 0.5, 1.5)
    necrotic_core = np.zeros(field.shape, bool)
    if plan.necrotic:
        necrotic_core = mask & (u > rng.uniform(0.45, 0.65))
        profile[necrotic_core] *= rng.uniform(0.1, 0.35)
    profile = np.where(mask, profile, 0.0).astype(np.float32)
    # Scale the uptake so that the blurred maximum inside the lesion is the drawn SUVmax.
    bg = targets.pet[box]
    sig = targets.sigma_vox
    b0 = _gaussian(bg, sig)
    b1 = _gaussian(profile, sig)
    b2 = _gaussian(np.where(mask, bg, 0.0).astype(np.float32), sig)
    base = (b0 - b2)[mask]
    shape1 = b1[mask]
    ring = ndi.binary_dilation(mask, iterations=2) & ~mask
    around = float(np.median(b0[ring])) if ring.any() else 0.0
    target = max(plan.suvmax, 2.5, 1.5 * around)
    lo_s, hi_s = 0.0, 10.0 * target / max(float(shape1.max()), 1e-3)
    for _ in range(40):
        mid = 0.5 * (lo_s + hi_s)
        if float(np.max(base + mid * shape1)) < target:
            lo_s = mid
        else:
            hi_s = mid
    scale = 0.5 * (lo_s + hi_s)
    bg[mask] = scale * profile[mask]
    targets.instances[box][mask] = index
    # CT appearance.
    ct = targets.ct[box]
    look = plan.ct
    hu_soft = rng.uniform(20.0, 45.0)
    if look == "soft_tissue":
        ct[mask] = hu_soft + 6.0 * het[mask]
    elif look == "hypodense":
        ct[mask] = liver_hu - rng.uniform(10.0, 35.0) + 4.0 * het[mask] if kind == "liver" else (
            ct[mask] - rng.uniform(5.0, 20.0))
    elif look == "lytic":
        ct[mask] = rng.uniform(20.0, 80.0) + 10.0 * het[mask]
    elif look == "sclerotic":
        ct[mask] = rng.uniform(400.0, 900.0) + 60.0 * het[mask]
    if plan.necrotic and look != "occult":
        ct[necrotic_core] = rng.uniform(8.0, 25.0)
    return {"voxels": int(k), "box": box, "mask": mask, "target": target}


def place_and_render(plans: Sequence[LesionPlan], anatomy: Anatomy, targets: RenderTargets,
                     liver_hu: float) -> list[dict[str, object]]:
    """Place every planned lesion at its site and render it; returns facts per lesion.

    Lesions that cannot be placed after several tries (a site outside the field of view,
    an organ that is absent) are dropped, so the list may be shorter than `plans`.
    """
    sampler = _Sampler(anatomy)
    rendered: list[dict[str, object]] = []
    for plan in plans:
        rng = np.random.default_rng([plan.seed, 0])
        radius = (3.0 * plan.volume_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3)
        for _attempt in range(12):
            centre = _site_centre(rng, plan.site, anatomy, sampler)
            if centre is None:
                continue
            near = plan.near
            if near:
                centre = _against(rng, anatomy, near, centre, radius) or centre
            idx = anatomy.canvas.index_of(anatomy.canvas.to_physical(*centre))
            if anatomy.labels[idx] == T.AIR or targets.instances[idx] != 0:
                continue
            facts = render_lesion(plan, len(rendered) + 1, centre, anatomy, targets, liver_hu)
            if facts is None:
                continue
            facts["plan"] = plan
            rendered.append(facts)
            break
    return rendered
