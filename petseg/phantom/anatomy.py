"""Whole-body anatomy: a patient drawn at random, painted as a tissue label map.

Every patient differs in height, build, fat, arm position, organ sizes and positions. The
anatomy is painted on any axis-aligned grid (`Canvas`), coarse or fine; all random
*parameters* come from one generator and never depend on the grid, so the `small` and
`full` versions of a case show the same patient. Shape textures (surface irregularity,
bowel loops, lung vessels) use a second, grid-dependent generator.

Lengths are in mm; depths `d` are measured from the vertex downwards (see `canvas`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi

from petseg.phantom.canvas import (
    Box,
    Canvas,
    ellipsoid_q,
    label_in,
    paint_tube,
    rotation,
    smooth_noise,
)


class Tissue(enum.IntEnum):
    """Tissue labels of the anatomy map (uint8)."""

    AIR = 0
    SUBCUT_FAT = 1
    FAT = 2
    MUSCLE = 3
    SOFT = 4
    LUNG = 5
    AIRWAY = 6
    CORTEX = 7
    MARROW = 8
    YELLOW_MARROW = 9
    CARTILAGE = 10
    BRAIN_GREY = 11
    BRAIN_WHITE = 12
    CSF = 13
    MYOCARDIUM = 14
    BLOOD = 15
    LIVER = 16
    SPLEEN = 17
    KIDNEY = 18
    RENAL_PELVIS = 19
    URETER = 20
    BLADDER = 21
    BOWEL = 22
    BOWEL_GAS = 23
    STOMACH = 24
    STOMACH_CONTENT = 25
    GLAND = 26
    BREAST = 27
    PELVIC_ORGAN = 28
    TESTIS = 29
    EYE = 30
    GALLBLADDER = 31
    PANCREAS = 32
    TABLE = 33


T = Tissue
BONE = (T.CORTEX, T.MARROW, T.YELLOW_MARROW)
BODY_SOFT = (T.SUBCUT_FAT, T.FAT, T.MUSCLE, T.SOFT)
"""Background tissues that organs and vessels may be painted over."""


@dataclasses.dataclass(frozen=True)
class Patient:
    """Grid-independent description of one patient (all lengths in mm).

    Attributes:
        sex: "M" or "F".
        age: years.
        height: body height.
        weight: kg, derived from height, build and fat (used for the metadata only).
        girth: lean body width relative to an average adult.
        fat: subcutaneous fat thickness relative to average (0.25 lean .. 4 obese).
        arms: "down" (along the body), "up" (above the head) or "none" (out of view).
        d_top, d_bottom: depth below the vertex of the first and last PET slice.
        params: every other drawn number (organ sizes, offsets, landmark depths).
    """

    sex: str
    age: int
    height: float
    weight: float
    girth: float
    fat: float
    arms: str
    d_top: float
    d_bottom: float
    params: dict[str, float]

    def frac(self, name: str) -> float:
        """Depth (mm) of a landmark given as a fraction of height in `params`."""
        return self.params[name] * self.height


# Landmark depths as fractions of body height (vertex = 0), before jitter.
_LANDMARKS: dict[str, float] = {
    "brain_centre": 0.060, "orbit": 0.068, "maxilla": 0.092, "skull_base": 0.085,
    "chin": 0.128, "larynx": 0.150, "thyroid": 0.162, "shoulder": 0.182,
    "sternal_notch": 0.195, "lung_apex": 0.170, "aortic_arch": 0.215, "carina": 0.240,
    "heart": 0.268, "dome_right": 0.287, "dome_left": 0.298, "t12": 0.342,
    "kidney_left": 0.366, "iliac_crest": 0.418, "bifurcation": 0.432,
    "sacrum_top": 0.455, "hip": 0.490, "pubis": 0.515, "crotch": 0.535, "knee": 0.745,
    "elbow": 0.370, "wrist": 0.475,
}


def draw_patient(rng: np.random.Generator, cohort: str) -> Patient:
    """A random adult patient and the PET scan range (grid-independent draws only)."""
    sex = "M" if rng.random() < 0.55 else "F"
    age_mean = {"LYMPHOMA": 45, "LUNG_CANCER": 66, "MELANOMA": 58}.get(cohort, 58)
    age = int(np.clip(rng.normal(age_mean, 14), 18, 90))
    height = float(np.clip(rng.normal(1765 if sex == "M" else 1640, 70), 1480, 1980))
    girth = float(np.clip(rng.normal(1.0 if sex == "M" else 0.92, 0.07), 0.78, 1.22))
    fat = float(np.clip(math.exp(rng.normal(0.0 if sex == "M" else 0.25, 0.5)), 0.25, 4.0))
    arms = str(rng.choice(["down", "up", "none"], p=[0.55, 0.35, 0.10]))
    params: dict[str, float] = {}
    for name, value in _LANDMARKS.items():
        params[name] = value + float(rng.normal(0.0, 0.004))
    params["dome_right"] += float(rng.normal(0.0, 0.008))
    params["dome_left"] = max(params["dome_left"] + float(rng.normal(0, 0.006)),
                              params["dome_right"] + 0.004)
    draws = {
        "ap": (1.0, 0.07), "head": (1.0, 0.04), "liver": (1.0, 0.12), "spleen": (1.0, 0.18),
        "kidney": (1.0, 0.1), "heart": (1.0, 0.1), "stomach": (1.0, 0.25),
        "lean_muscle": (1.0, 0.12), "neck_len": (1.0, 0.05), "arm_gap": (18.0, 14.0),
        "axis_dx": (0.0, 25.0), "axis_dy": (0.0, 18.0), "tilt_x": (0.0, 0.025),
        "tilt_y": (0.0, 0.02), "head_flex": (0.0, 12.0), "heart_yaw": (0.65, 0.15),
        "liver_shift": (0.0, 12.0), "kidney_drop": (18.0, 8.0), "mediast": (1.0, 0.12),
        "colon": (1.0, 0.15), "bowel_gas": (0.35, 0.15), "uterus": (1.0, 0.2),
        "psoas": (1.0, 0.15), "breast": (1.0, 0.35), "table_gap": (18.0, 8.0),
        "table_curve": (0.0012, 0.0004), "bladder_x": (0.0, 8.0),
    }
    for name, (mean, sd) in draws.items():
        params[name] = float(rng.normal(mean, sd))
    params["bladder_ml"] = float(math.exp(rng.uniform(math.log(50), math.log(650))))
    params["spleen"] *= 1.35 if (cohort == "LYMPHOMA" and rng.random() < 0.25) else 1.0
    params["no_kidney"] = float(rng.random() < 0.03) * (1.0 if rng.random() < 0.5 else -1.0)
    params["no_spleen"] = float(rng.random() < 0.02)
    params["wobble_phase"] = float(rng.uniform(0, 2 * math.pi))
    # Scan range: from above the vertex or the skull base down to the upper thighs.
    d_top = float(rng.uniform(-35, 25) if rng.random() < 0.6 else rng.uniform(25, 150))
    d_bottom = height * float(rng.uniform(0.555, 0.64))
    slices = int(np.clip(round((d_bottom - d_top) / 3.0) + 1, 250, 330))
    if d_top + 3.0 * (slices - 1) < 0.548 * height:
        d_top = 0.548 * height - 3.0 * (slices - 1)
    d_bottom = d_top + 3.0 * (slices - 1)
    bmi = 21.5 * girth**1.5 * (0.8 + 0.2 * fat)
    weight = bmi * (height / 1000.0) ** 2
    return Patient(sex=sex, age=age, height=height, weight=round(weight, 1), girth=girth,
                   fat=fat, arms=arms, d_top=d_top, d_bottom=d_bottom, params=params)


@dataclasses.dataclass
class Anatomy:
    """A painted patient.

    Attributes:
        canvas: the grid, its coordinates and the `[z, y, x]` uint8 label map.
        patient: the drawn parameters.
        points: named landmarks in patient coordinates (u, v, d) mm.
        paths: named polylines `[n, 3]` in patient coordinates (aorta, iliacs, ...).
        bowel_noise: a smooth field over the bowel box (drives patchy bowel uptake).
        boxes: index boxes of body regions (trunk, thorax, bowel).
    """

    canvas: Canvas
    patient: Patient
    points: dict[str, tuple[float, float, float]]
    paths: dict[str, np.ndarray]
    boxes: dict[str, Box]
    _objects: list[Box | None] | None = None

    @property
    def labels(self) -> np.ndarray:
        """`[z, y, x]` uint8 tissue labels."""
        return self.canvas.labels

    def bbox(self, wanted: Sequence[int]) -> Box | None:
        """Smallest index box holding every voxel of the `wanted` labels (None if absent)."""
        if self._objects is None:
            self._objects = list(ndi.find_objects(self.labels))
        boxes = [self._objects[w - 1] for w in wanted
                 if 0 < w <= len(self._objects) and self._objects[w - 1] is not None]
        if not boxes:
            return None
        return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                     for a in range(3))  # type: ignore[return-value]


def _interp(knots: Sequence[float], values: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    k = np.asarray(knots, float)
    v = np.asarray(values, float)
    return lambda d: np.interp(d, k, v)


class _Builder:
    """Paints one patient on one canvas; methods in painting order."""

    def __init__(self, canvas: Canvas, patient: Patient, tex: np.random.Generator):
        self.c = canvas
        self.p = patient
        self.tex = tex
        self.H = patient.height
        self.s = patient.height / 1750.0
        self.points: dict[str, tuple[float, float, float]] = {}
        self.paths: dict[str, np.ndarray] = {}
        self.boxes: dict[str, Box] = {}
        P = patient.params
        H = self.H
        g = patient.girth
        f = patient.fat
        fem = patient.sex == "F"
        ap = P["ap"]
        # Lean (muscle envelope) half-width and half-depth of the trunk along depth.
        knots = [P["chin"] - 0.01, P["larynx"], P["shoulder"] - 0.012, P["shoulder"] + 0.006,
                 P["sternal_notch"] + 0.02, 0.30, 0.36, P["iliac_crest"], P["hip"],
                 P["pubis"], P["crotch"], P["crotch"] + 0.012]
        a_m = [46, 48, 56, 150, 158, 148, 138, 132, 145, 148, 140, 70]
        b_m = [46, 50, 54, 82, 94, 100, 98, 92, 92, 96, 90, 50]
        chest_f = 0.9 if fem else 1.0
        hip_f = 1.08 if fem else 1.0
        a_m = [a * g * (chest_f if i < 6 else hip_f) for i, a in enumerate(a_m)]
        b_m = [b * g * ap for b in b_m]
        self.knots = [k * H for k in knots]
        self.a_m = _interp(self.knots, a_m)
        self.b_m = _interp(self.knots, b_m)
        fat_knots = [k * H for k in (0.12, 0.17, 0.22, 0.32, 0.40, 0.47, 0.53)]
        fat_mm = np.array([5, 7, 10, 12, 17, 19, 16], float) * f
        if fem:
            fat_mm *= np.array([1, 1, 1.1, 1.2, 1.3, 1.5, 1.5])
        self.fat = _interp(fat_knots, fat_mm)
        belly = max(0.0, f - 1.0) * 22.0 * (0.6 if fem else 1.0)
        self.belly = _interp([0.30 * H, 0.40 * H, 0.47 * H], [0.0, belly, 0.0])
        self.d_trunk = (P["chin"] * H - 15, (P["crotch"] + 0.012) * H)
        # Spine: vertebral-body centre v (posterior) along depth.
        self.spine_v = _interp(
            [P["skull_base"] * H, P["chin"] * H, P["shoulder"] * H, 0.27 * H, P["t12"] * H,
             0.40 * H, P["sacrum_top"] * H, P["pubis"] * H],
            [b * g * ap for b in (18, 14, 30, 48, 42, 30, 40, 70)])

    # -- helpers ---------------------------------------------------------------------
    def frac(self, name: str) -> float:
        return self.p.params[name] * self.H

    def noise(self, box: Box, corr_mm: float) -> np.ndarray:
        shape = tuple(s.stop - s.start for s in box)
        cells = [corr_mm / sp for sp in self.c.spacing_zyx]
        return smooth_noise(self.tex, shape, cells)

    def blob(self, label: int, centre: Sequence[float], radii: Sequence[float],
             rot: np.ndarray | None = None, rough: float = 0.0, corr: float = 30.0,
             only: Sequence[int] | None = None, never: Sequence[int] | None = None,
             clip: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
             shell: tuple[float, int] | None = None) -> tuple[Box, np.ndarray] | None:
        """Paint an ellipsoid with optional rough surface; returns (box, inside mask)."""
        found = ellipsoid_q(self.c, centre, radii, rot, pad=1.0 + rough)
        if found is None:
            return None
        box, q = found
        if rough > 0:
            q = q + rough * self.noise(box, corr)
        inside = q < 1.0
        if clip is not None:
            U, V, D = self.c.patient_grids(box)
            inside &= clip(U, V, D)
        self.c.paint(box, inside, label, only=only, never=never)
        if shell is not None:
            thickness, inner = shell
            r = float(min(radii))
            core = inside & (q < (1.0 - thickness / r) ** 2)
            self.c.paint(box, core, inner, only=[label])
        return box, inside

    def section(self, box: Box, a: np.ndarray, b_ant: np.ndarray, b_post: np.ndarray,
                p: float | np.ndarray = 2.0, u0: float = 0.0, v0: float = 0.0,
                ) -> np.ndarray:
        """Superellipse cross-sections per slice inside `box` (a, b per z index of box)."""
        U, V, _ = self.c.patient_grids(box)
        a = np.maximum(a, 1e-3)[:, None, None]
        b = np.where(v0 > V, np.maximum(b_ant, 1e-3)[:, None, None],
                     np.maximum(b_post, 1e-3)[:, None, None])
        pp = np.asarray(p, np.float32)
        if pp.ndim:
            pp = pp[:, None, None]
        return (np.abs(U - u0) / a) ** pp + (np.abs(V - v0) / b) ** pp <= 1.0

    def dbox(self, d0: float, d1: float, u: tuple[float, float], v: tuple[float, float],
             ) -> tuple[Box, np.ndarray] | None:
        box = self.c.box(u, v, (d0, d1))
        if box is None:
            return None
        return box, self.c.d[box[0]]

    # -- trunk and limbs -------------------------------------------------------------
    def trunk(self) -> None:
        P = self.p.params
        d0, d1 = self.d_trunk
        dd = np.linspace(d0, d1, 200)
        w = float(np.max(self.a_m(dd) + self.fat(dd))) * 1.06 + 2.0
        v_front = float(np.max(self.b_m(dd) + self.fat(dd) + self.belly(dd))) + 2.0
        v_back = float(np.max(self.b_m(dd) + 0.7 * self.fat(dd))) + 2.0
        found = self.dbox(d0, d1, (-w, w), (-v_front, v_back))
        if found is None:
            return
        box, d = found
        f = self.fat(d)
        a_m, b_m = self.a_m(d), self.b_m(d)
        # Round neck, boxier trunk.
        pw = np.interp(d, [self.frac("shoulder") - 20, self.frac("shoulder") + 20], [2.0, 2.5])
        wobble = 1.0 + 0.03 * np.sin(d / (90.0 * self.s) + P["wobble_phase"])
        outer = self.section(box, (a_m + f) * wobble, b_m + f + self.belly(d),
                             b_m + 0.7 * f, pw)
        self.c.paint(box, outer, T.SUBCUT_FAT, only=[T.AIR])
        self.c.paint(box, self.section(box, a_m, b_m, b_m, pw), T.MUSCLE, only=[T.SUBCUT_FAT])
        # Body cavity (thorax, abdomen, pelvis) inside the muscle wall.
        in_cav = (d > self.frac("lung_apex") - 10) & (d < self.frac("pubis") + 10)
        wall_l = np.interp(d, [self.frac("shoulder"), 0.25 * self.H, 0.45 * self.H],
                           [60.0, 16.0, 22.0]) * P["lean_muscle"]
        wall_p = np.interp(d, [0.25 * self.H, 0.40 * self.H, 0.47 * self.H], [22, 45, 60])
        a_c = np.where(in_cav, a_m - wall_l, 0.0)
        cav = self.section(box, a_c, b_m - 12.0, b_m - wall_p, pw)
        self.c.paint(box, cav, T.FAT, only=[T.MUSCLE])
        order = np.argsort(d)
        self.cav_a = _interp(d[order], a_c[order])
        self.cav_b_ant = _interp(d[order], (b_m - 12.0)[order])
        self.cav_b_post = _interp(d[order], (b_m - wall_p)[order])
        self.boxes["trunk"] = box
        # Paraspinal muscles and the posterior abdominal wall around the spine.
        U, V, _D = self.c.patient_grids(box)
        sv = self.spine_v(d)[:, None, None]
        para = (np.abs(U) < 38.0 * self.p.girth) & (sv - 14.0 < V)
        self.c.paint(box, para, T.MUSCLE, only=[T.FAT])
        # Breasts.
        if self.p.sex == "F" or self.p.fat > 2.0:
            size = max(0.3, P["breast"]) * (1.0 if self.p.sex == "F" else 0.4) * (
                0.7 + 0.3 * self.p.fat)
            dz = self.frac("heart") - 10
            for side in (-1, 1):
                u = side * (a_m.max() * 0.52)
                v = -float(self.b_m(dz)) - 8.0
                r = (55 * size**0.33, 38 * size**0.5, 52 * size**0.33)
                res = self.blob(T.SUBCUT_FAT, (u, v, dz), r, only=[T.AIR],
                                rot=rotation(yaw=side * 0.25))
                if res is not None:
                    bb, inside = res
                    gland = inside & (self.noise(bb, 14.0) > 0.3)
                    self.c.paint(bb, gland, T.BREAST, only=[T.SUBCUT_FAT])
        # Patient table (CT only): a curved carbon plate under the patient.
        self._table()

    def _table(self) -> None:
        P = self.p.params
        c = self.c
        d_mid = 0.45 * self.H
        y_back = float(self.c.axis_y(d_mid)) + float(self.b_m(d_mid)) + 0.7 * float(
            self.fat(d_mid))
        y0 = y_back + max(4.0, P["table_gap"])
        x0 = float(self.c.axis_x(d_mid))
        X = c.x[None, :] - x0
        Y = c.y[:, None]
        curve = y0 - max(P["table_curve"], 0.0004) * X**2
        plate = (np.abs(Y - curve) < 2.5) & (np.abs(X) < 230)
        plate |= (np.abs(Y - (curve + 45)) < 2.0) & (np.abs(X) < 210)
        rows = np.flatnonzero(plate.any(axis=1))
        cols = np.flatnonzero(plate.any(axis=0))
        if rows.size == 0 or cols.size == 0:
            return
        box = (slice(0, c.shape[0]), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        c.paint(box, plate[box[1], box[2]][None], T.TABLE, only=[T.AIR])

    def head_neck(self) -> None:
        P = self.p.params
        hs = P["head"] * self.s**0.3
        dh = self.frac("brain_centre")
        flex = P["head_flex"]
        # Cranium and face (skin/fat), then muscle inside the face and neck.
        cran = (0.0, flex * 0.3, dh)
        r_cran = (74 * hs, 94 * hs, 100 * hs)
        face_c = (0.0, -28 * hs + flex * 0.3, self.frac("maxilla") + 8)
        r_face = (58 * hs, 70 * hs, 62 * hs)
        self.blob(T.SUBCUT_FAT, cran, r_cran, only=[T.AIR])
        self.blob(T.SUBCUT_FAT, face_c, r_face, only=[T.AIR])
        self.blob(T.MUSCLE, face_c, [r - 6 for r in r_face], only=[T.SUBCUT_FAT])
        # Neck column from the skull base to the shoulders.
        neck_top = self.frac("skull_base")
        neck_bot = self.frac("shoulder")
        found = self.dbox(neck_top, neck_bot, (-90, 90), (-100, 100))
        if found is not None:
            box, d = found
            a = 50 * self.p.girth * np.ones_like(d) + self.fat(d)
            b = 54 * self.p.girth * np.ones_like(d) + self.fat(d)
            vv = np.interp(d, [neck_top, neck_bot], [flex * 0.5 + 5, 0.0])
            U, V, _ = self.c.patient_grids(box)
            m = ((U / a[:, None, None]) ** 2 + ((V - vv[:, None, None]) / b[:, None, None]) ** 2
                 ) <= 1.0
            self.c.paint(box, m, T.SUBCUT_FAT, only=[T.AIR])
            a2 = a - self.fat(d)
            b2 = b - self.fat(d)
            m2 = ((U / a2[:, None, None]) ** 2 + ((V - vv[:, None, None]) / b2[:, None, None])
                  ** 2) <= 1.0
            self.c.paint(box, m2, T.MUSCLE, only=[T.SUBCUT_FAT])
        # Skull: outer table, diploe (marrow) and inner table; brain inside.
        r_sk = [r - 5 for r in r_cran]
        res = self.blob(T.CORTEX, cran, r_sk, only=[T.SUBCUT_FAT, T.MUSCLE],
                        shell=(2.0, T.MARROW))
        r_in = [r - 7.5 for r in r_sk]
        self.blob(T.CORTEX, cran, r_in, only=[T.MARROW])
        brain_r = [r - 9.5 for r in r_sk]
        self.points["brain"] = cran
        res = ellipsoid_q(self.c, cran, brain_r)
        if res is not None:
            box, q = res
            q = q + 0.04 * self.noise(box, 8.0)
            U, V, _D = self.c.patient_grids(box)
            # Tentorium: the lowest, posterior part of the cranial cavity is cerebellum.
            brain = q < 1.0
            self.c.paint(box, brain, T.BRAIN_WHITE)
            depth = (1.0 - np.sqrt(np.clip(q, 0, 1))) * brain_r[0]
            grey = brain & (depth < 4.5 + 2.5 * self.noise(box, 6.0))
            self.c.paint(box, grey, T.BRAIN_GREY)
        # Skull base plate, cerebellum, deep grey nuclei, ventricles.
        cb = (0.0, 42 * hs, dh + 48 * hs)
        self.blob(T.BRAIN_GREY, cb, (52 * hs, 30 * hs, 24 * hs), only=[T.BRAIN_WHITE,
                                                                        T.BRAIN_GREY])
        for side in (-1, 1):
            self.blob(T.BRAIN_GREY, (side * 18 * hs, -4, dh + 6), (10, 22, 13),
                      only=[T.BRAIN_WHITE])
            self.blob(T.CSF, (side * 7 * hs, 6, dh - 8), (5, 28 * hs, 10), only=[T.BRAIN_WHITE,
                                                                             T.BRAIN_GREY])
        self.blob(T.CORTEX, (0, 12 * hs, self.frac("skull_base")), (60 * hs, 55 * hs, 9),
                  only=[T.SUBCUT_FAT, T.MUSCLE, T.BRAIN_WHITE, T.BRAIN_GREY], shell=(3.0,
                                                                                   T.MARROW))
        # Eyes, nasal cavity, maxillary sinuses, maxilla and mandible.
        do = self.frac("orbit")
        for side in (-1, 1):
            self.blob(T.EYE, (side * 32 * hs, -78 * hs, do), (12, 12, 12),
                      only=[T.MUSCLE, T.SUBCUT_FAT, T.CORTEX, T.MARROW])
            self.blob(T.AIR, (side * 27 * hs, -60 * hs, self.frac("maxilla") - 4),
                      (14, 16, 16), only=[T.MUSCLE])
        self.blob(T.AIR, (0, -72 * hs, self.frac("maxilla") - 14), (8, 18, 22), only=[T.MUSCLE])
        dm = self.frac("maxilla")
        arc = [(side * 40 * hs * math.cos(t), -28 * hs - 50 * hs * math.sin(t), dm)
               for side, t in ((1, 0.2), (1, 0.9), (1, 1.5), (-1, 1.5), (-1, 0.9), (-1, 0.2))]
        paint_tube(self.c, arc, 9.0, T.CORTEX, only=[T.MUSCLE, T.SUBCUT_FAT],
                   inner=(2.5, T.MARROW))
        dj = self.frac("chin") - 12
        mand = [(-44 * hs, 5, dm + 8), (-44 * hs, -10, dj), (-30 * hs, -60 * hs, dj + 4),
                (0, -78 * hs, dj + 6), (30 * hs, -60 * hs, dj + 4), (44 * hs, -10, dj),
                (44 * hs, 5, dm + 8)]
        paint_tube(self.c, mand, 7.5, T.CORTEX, only=[T.MUSCLE, T.SUBCUT_FAT],
                   inner=(2.5, T.MARROW))
        # Pharynx and larynx airway, then trachea (in the thorax, see mediastinum).
        sv = self.spine_v
        d_ph = [self.frac("maxilla") - 10, self.frac("chin"), self.frac("larynx")]
        pharynx = [(0.0, float(sv(d)) - 24, d) for d in d_ph]
        paint_tube(self.c, pharynx, [9, 8, 7], T.AIRWAY, only=[T.MUSCLE, T.SUBCUT_FAT])
        self.paths["pharynx"] = np.asarray(pharynx)
        # Tonsils, parotid and submandibular glands, thyroid.
        dt = self.frac("maxilla") + 18
        for side in (-1, 1):
            self.blob(T.GLAND, (side * 13, float(sv(dt)) - 26, dt), (6, 7, 10), only=[T.MUSCLE])
            self.blob(T.GLAND, (side * 46 * hs, -4, dm + 4), (12, 18, 24),
                      only=[T.MUSCLE, T.SUBCUT_FAT])
            self.blob(T.GLAND, (side * 30 * hs, -42 * hs, self.frac("chin") - 2), (11, 12, 10),
                      only=[T.MUSCLE, T.SUBCUT_FAT])
            dth = self.frac("thyroid")
            self.blob(T.GLAND, (side * 17, float(sv(dth)) - 36, dth), (8, 9, 20),
                      only=[T.MUSCLE, T.SUBCUT_FAT])
        self.points["neck"] = (0.0, 0.0, 0.5 * (self.frac("chin") + self.frac("shoulder")))

    def limbs(self) -> None:
        P = self.p.params
        g = self.p.girth
        fat_arm = 0.6 * float(self.fat(0.3 * self.H))
        gap = max(2.0, P["arm_gap"])
        if self.p.arms == "down":
            chest_a = float(self.a_m(0.30 * self.H) + self.fat(0.30 * self.H))
            hip_a = float(self.a_m(self.frac("hip")) + self.fat(self.frac("hip")))
            for side in (-1, 1):
                r_up = 40 * g + fat_arm
                r_lo = 33 * g + 0.7 * fat_arm
                x_sh = float(self.a_m(self.frac("shoulder") + 12)) - 8
                pts = [(side * x_sh, 5.0, self.frac("shoulder") + 10),
                       (side * (chest_a + gap + r_up), 12.0, self.frac("elbow")),
                       (side * (max(chest_a - 10, hip_a - 20) + gap + r_lo), -10.0,
                        self.frac("wrist")),
                       (side * (hip_a + gap + 0.6 * r_lo), -20.0, self.frac("wrist") + 170)]
                radii = [r_up + 8, r_up, r_lo, 0.75 * r_lo]
                self._limb(pts, radii, side, arm=True)
        elif self.p.arms == "up":
            hs = P["head"] * self.s**0.3
            for side in (-1, 1):
                r_up = 40 * g + fat_arm
                x_head = 74 * hs + 10 + gap * 0.7 + r_up
                pts = [(side * (float(self.a_m(self.frac("shoulder") + 10)) - 15), 10.0,
                        self.frac("shoulder") + 10),
                       (side * (x_head + 5), 15.0, self.frac("chin")),
                       (side * x_head, 5.0, -0.08 * self.H),
                       (side * (x_head - 30), -20.0, -0.22 * self.H)]
                radii = [r_up + 10, r_up, r_up - 4, 33 * g]
                self._limb(pts, radii, side, arm=True)
        # Thighs.
        for side in (-1, 1):
            hip_a = float(self.a_m(self.frac("hip")))
            r0 = 78 * g + 1.2 * float(self.fat(self.frac("crotch")))
            pts = [(side * (hip_a * 0.55), 5.0, self.frac("hip") - 20),
                   (side * (hip_a * 0.60), 0.0, self.frac("crotch") + 30),
                   (side * (hip_a * 0.52), -8.0, self.frac("knee"))]
            self._limb(pts, [r0, r0 - 4, 0.72 * r0], side, arm=False)

    def _limb(self, pts: Sequence[Sequence[float]], radii: Sequence[float], side: int,
              arm: bool) -> None:
        fat = 0.6 * float(self.fat(0.45 * self.H)) if arm else float(
            self.fat(self.frac("crotch")))
        paint_tube(self.c, pts, radii, T.SUBCUT_FAT, only=[T.AIR])
        muscle_r = [max(8.0, r - fat) for r in radii]
        paint_tube(self.c, pts, muscle_r, T.MUSCLE, only=[T.SUBCUT_FAT],
                   never=None)
        if arm:
            self.paths[f"arm_{'left' if side > 0 else 'right'}"] = np.asarray(pts)
            bone = [pts[0], pts[1]]
            paint_tube(self.c, bone, [11.0, 9.0], T.CORTEX, only=[T.MUSCLE, T.SUBCUT_FAT],
                       inner=(3.5, T.YELLOW_MARROW))
            self.blob(T.CORTEX, pts[0], (22, 22, 22), only=[T.MUSCLE, T.SUBCUT_FAT],
                      shell=(2.0, T.MARROW))
            for off in (-9.0, 9.0):
                fore = [(p[0] + off * 0.7, p[1] + off, p[2]) for p in pts[1:3]]
                paint_tube(self.c, fore, [7.0, 6.0], T.CORTEX, only=[T.MUSCLE, T.SUBCUT_FAT],
                           inner=(2.0, T.YELLOW_MARROW))
        else:
            self.paths[f"thigh_{'left' if side > 0 else 'right'}"] = np.asarray(pts)

    # -- thorax ----------------------------------------------------------------------
    def thorax(self) -> None:
        P = self.p.params
        H = self.H
        d_ap = self.frac("lung_apex")
        dr, dl = self.frac("dome_right"), self.frac("dome_left")
        d_low = max(dr, dl) + 95 * self.s
        found = self.dbox(d_ap - 5, d_low, (-260, 260), (-200, 200))
        if found is None:
            return
        box, d = found
        U, V, D = self.c.patient_grids(box)
        a_c = self.cav_a(d)[:, None, None]
        # Diaphragm: two domes, lower at the edges and posteriorly (recesses).
        ur = -0.45 * a_c
        ul = 0.45 * a_c
        k = 0.0055 / self.s
        dia_r = dr + k * (U - ur) ** 2 + 0.004 / self.s * (V + 10) ** 2 + 0.25 * np.maximum(V, 0)
        dia_l = dl + k * (U - ul) ** 2 + 0.004 / self.s * (V + 10) ** 2 + 0.25 * np.maximum(V, 0)
        dia = np.minimum(dia_r, dia_l)
        self.dia_params = (dr, dl, k)
        above = dia > D
        # Lung apices: paraboloid caps.
        cap = np.zeros(np.broadcast_shapes(U.shape, V.shape, D.shape), bool)
        for side in (-1, 1):
            cap |= ((U - side * 48 * self.s) ** 2 / 45.0**2 + (V - 10) ** 2 / 55.0**2
                    ) * 30.0 * self.s < np.maximum(D - d_ap, 0.0)
        medi = P["mediast"] * np.interp(D, [d_ap, self.frac("aortic_arch"), self.frac("heart")],
                                        [18.0, 26.0, 30.0])
        sv = self.spine_v(d)[:, None, None]
        lung = above & cap & (np.abs(U - 6.0) > medi) & label_in(self.c.labels[box], [T.FAT])
        lung &= ~((np.abs(U) < 32.0) & (sv - 30.0 < V))
        self.c.paint(box, lung, T.LUNG)
        self.boxes["thorax"] = box
        # Heart on the diaphragm, left-anterior, with pericardial fat.
        hs = P["heart"] * self.s
        dc = 0.5 * (dr + dl) - 48 * hs
        centre = (32.0 * hs, -0.3 * float(self.cav_b_ant(dc)), dc)
        rot = rotation(yaw=P["heart_yaw"], pitch=-0.5, roll=0.25)
        r_heart = (62 * hs, 50 * hs, 52 * hs)
        dia_fn = self._dia_fn(dr, dl, k)
        self.blob(T.FAT, centre, [r + 6 for r in r_heart], rot,
                  only=[T.LUNG, T.FAT], clip=lambda U, V, D: dia_fn(U, V) > D)
        self.blob(T.BLOOD, centre, r_heart, rot, only=[T.LUNG, T.FAT, T.MUSCLE],
                  clip=lambda U, V, D: dia_fn(U, V) - 2 > D)
        lv_c = tuple(np.asarray(centre) + rot @ np.array([14.0, 6.0, 6.0]) * hs)
        r_lv = (44 * hs, 30 * hs, 30 * hs)
        res = self.blob(T.MYOCARDIUM, lv_c, r_lv, rot, only=[T.BLOOD])
        wall = float(P["lean_muscle"]) * 10.0
        self.blob(T.BLOOD, lv_c, [r - wall for r in r_lv], rot, only=[T.MYOCARDIUM])
        self.points["heart"] = centre
        self.points["lv"] = lv_c
        del res
        # Great vessels, airways and oesophagus.
        d_arch = self.frac("aortic_arch")
        sv_arch = float(self.spine_v(d_arch))
        sv_dia = float(self.spine_v(dl))
        aorta = [(centre[0] - 25 * hs, centre[1] + 15, dc - 35 * hs),
                 (-8.0, -20.0, d_arch + 15), (0.0, -12.0, d_arch - 8),
                 (14.0, sv_arch - 40, d_arch - 5), (20.0, sv_arch - 28, d_arch + 20),
                 (18.0, float(self.spine_v(dc)) - 26, dc),
                 (10.0, sv_dia - 26, dl + 20)]
        r_ao = 13.0 + 0.05 * max(self.p.age - 40, 0)
        paint_tube(self.c, aorta, r_ao, T.BLOOD, only=[*list(BODY_SOFT), T.LUNG])
        self.aorta_thorax = aorta
        svc = [(-28.0, -12.0, self.frac("sternal_notch")), (-26.0, -10.0, dc - 40 * hs)]
        paint_tube(self.c, svc, 9.0, T.BLOOD, only=[*list(BODY_SOFT), T.LUNG])
        d_car = self.frac("carina")
        sv_car = float(self.spine_v(d_car))
        trachea = [(0.0, float(self.spine_v(self.frac("larynx"))) - 24, self.frac("larynx")),
                   (0.0, float(self.spine_v(self.frac("shoulder"))) - 25, self.frac("shoulder")),
                   (0.0, sv_car - 34, d_car)]
        paint_tube(self.c, trachea, 9.0, T.AIRWAY, only=[*list(BODY_SOFT), T.LUNG])
        bronchi = {}
        for side, drop in ((-1, 22.0), (1, 38.0)):
            end = (side * 48.0 * self.s, sv_car - 30, d_car + drop)
            paint_tube(self.c, [trachea[-1], end], [7.0, 5.5], T.AIRWAY,
                       only=[*list(BODY_SOFT), T.LUNG, T.BLOOD])
            bronchi[side] = end
        self.paths["trachea"] = np.asarray(trachea)
        self.points["carina"] = trachea[-1]
        self.points["hilum_right"] = bronchi[-1]
        self.points["hilum_left"] = bronchi[1]
        self.points["aortic_arch"] = (0.0, -12.0, d_arch - 8)
        oes = [(4.0, float(self.spine_v(self.frac("larynx"))) - 12, self.frac("larynx")),
               (6.0, sv_car - 18, d_car), (8.0, float(self.spine_v(dc)) - 16, dc),
               (22.0, sv_dia - 40, dl + 25)]
        paint_tube(self.c, oes, 6.5, T.SOFT, only=[*list(BODY_SOFT), T.LUNG])
        self.paths["aorta"] = np.asarray(aorta)
        del H, box

    def _dia_fn(self, dr: float, dl: float, k: float) -> Callable[[np.ndarray, np.ndarray],
                                                                  np.ndarray]:
        a = float(self.cav_a(0.5 * (dr + dl)))

        def fn(U: np.ndarray, V: np.ndarray) -> np.ndarray:
            r = dr + k * (U + 0.45 * a) ** 2 + 0.004 / self.s * (V + 10) ** 2
            lft = dl + k * (U - 0.45 * a) ** 2 + 0.004 / self.s * (V + 10) ** 2
            return np.minimum(r, lft) + 0.25 * np.maximum(V, 0)

        return fn

    # -- abdomen and pelvis ----------------------------------------------------------
    def abdomen(self) -> None:
        P = self.p.params
        H = self.H
        s = self.s
        dr, dl, k = self.dia_params if hasattr(self, "dia_params") else (
            self.frac("dome_right"), self.frac("dome_left"), 0.0055 / s)
        dia_fn = self._dia_fn(dr, dl, k)
        below = lambda U, V, D: dia_fn(U, V) + 2.0 < D  # noqa: E731
        cav = [T.FAT, T.MUSCLE]
        a_up = float(self.cav_a(dr + 60))
        b_up = float(self.cav_b_ant(dr + 60))
        # Liver: right lobe under the right dome, left lobe across the midline.
        ls = P["liver"] * s
        lc = (-0.42 * a_up + P["liver_shift"], -0.05 * b_up, dr + 78 * ls)
        self.blob(T.LIVER, lc, (0.62 * a_up * ls, 0.85 * b_up * ls, 88 * ls),
                  rotation(yaw=-0.2, roll=0.15), rough=0.12, corr=40, only=cav, clip=below)
        self.blob(T.LIVER, (0.15 * a_up, -0.5 * b_up, dr + 48 * ls),
                  (0.42 * a_up * ls, 0.38 * b_up, 42 * ls), rotation(yaw=0.3), rough=0.1,
                  only=cav, clip=below)
        self.points["liver"] = lc
        self.blob(T.GALLBLADDER, (-0.22 * a_up, -0.45 * b_up, dr + 110 * ls), (14, 16, 34),
                  rotation(pitch=0.4), only=[T.LIVER, T.FAT])
        # Spleen, stomach.
        if not P["no_spleen"]:
            ss = P["spleen"] * s
            sc = (0.70 * a_up, 0.32 * b_up, dl + 62 * ss)
            self.blob(T.SPLEEN, sc, (32 * ss, 58 * ss, 55 * ss), rotation(yaw=0.6), rough=0.1,
                      only=[*cav, T.LUNG], clip=below)
            self.points["spleen"] = sc
        st = max(P["stomach"], 0.4) * s
        stc = (0.36 * a_up, -0.28 * b_up, dl + 55 * s)
        res = self.blob(T.STOMACH, stc, (48 * st, 40 * st, 72 * st),
                        rotation(yaw=0.5, roll=-0.35), rough=0.08, only=cav, clip=below,
                        shell=(5.0, T.STOMACH_CONTENT))
        if res is not None:
            box, inside = res
            _, V, _ = self.c.patient_grids(box)
            gas = inside & (stc[1] - 10 * st > V) & label_in(self.c.labels[box],
                                                              [T.STOMACH_CONTENT])
            self.c.paint(box, gas, T.BOWEL_GAS)
        # Pancreas across the upper abdomen, in front of the spine.
        dk = self.frac("kidney_left")
        sv_k = float(self.spine_v(dk))
        pan = [(-40.0, sv_k - 55, dk - 5), (0.0, sv_k - 62, dk - 15), (55.0, sv_k - 40, dk - 30)]
        paint_tube(self.c, pan, [13.0, 10.0, 9.0], T.PANCREAS, only=[T.FAT])
        # Kidneys with the renal pelvis, ureters to the bladder.
        ks = P["kidney"] * s
        d_bl = self.frac("pubis") - 0.75 * (3 * P["bladder_ml"] * 1000 / 4 / math.pi) ** (1 / 3)
        v_bl = -float(self.cav_b_ant(d_bl)) + (3 * P["bladder_ml"] * 1000 / 4 / math.pi) ** (
            1 / 3) * 0.9 + 6
        for side, name in ((1, "left"), (-1, "right")):
            if P["no_kidney"] == side:
                continue
            dkk = dk + (0.0 if side > 0 else max(P["kidney_drop"], 0.0))
            kc = (side * 58 * s * self.p.girth, sv_k + 2, dkk)
            rot = rotation(yaw=side * 0.45, roll=side * 0.18, pitch=0.15)
            self.blob(T.KIDNEY, kc, (27 * ks, 24 * ks, 55 * ks), rot, rough=0.05,
                      only=[*cav, T.LIVER, T.SPLEEN])
            pc = (kc[0] - side * 9, kc[1] - 6, kc[2] + 4)
            self.blob(T.RENAL_PELVIS, pc, (9 * ks, 8 * ks, 20 * ks), rot, only=[T.KIDNEY])
            self.points[f"kidney_{name}"] = kc
            ur = [(pc[0] - side * 8, pc[1] - 4, pc[2] + 18),
                  (side * 38 * s, sv_k - 28, 0.40 * H),
                  (side * 48 * s, float(self.spine_v(0.46 * H)) - 40, 0.47 * H),
                  (side * 28, v_bl + 20, d_bl + 10)]
            paint_tube(self.c, ur, 2.8, T.URETER, only=[T.FAT, T.MUSCLE])
            self.paths[f"ureter_{name}"] = np.asarray(ur)
            self.points[f"adrenal_{name}"] = (kc[0] - side * 12, kc[1] - 8, dkk - 62 * ks)
        # Abdominal aorta, iliac arteries, inferior vena cava.
        d_bif = self.frac("bifurcation")
        sv_b = float(self.spine_v(d_bif))
        top = self.aorta_thorax[-1] if hasattr(self, "aorta_thorax") else (
            10.0, float(self.spine_v(dl)) - 26, dl + 20)
        aorta = [top, (8.0, sv_k - 30, dk), (5.0, sv_b - 28, d_bif)]
        paint_tube(self.c, aorta, [12.0, 11.0, 10.0], T.BLOOD, only=[*cav, T.PANCREAS])
        ivc = [(-22.0, float(self.spine_v(dr)) - 34, dr - 5), (-22.0, sv_k - 26, dk),
               (-12.0, sv_b - 22, d_bif + 10)]
        paint_tube(self.c, ivc, 11.0, T.BLOOD, only=[*cav, T.LIVER, T.PANCREAS])
        self.paths["abdominal_aorta"] = np.asarray(aorta)
        d_ing = self.frac("pubis") - 5
        for side, name in ((1, "left"), (-1, "right")):
            il = [aorta[-1], (side * 40 * s, float(self.spine_v(0.47 * H)) - 50, 0.47 * H),
                  (side * 75 * s, -float(self.cav_b_ant(d_ing)) + 25, d_ing),
                  (side * 85 * s, -float(self.b_m(d_ing)) + 30, d_ing + 40)]
            paint_tube(self.c, il, [8.0, 7.0, 6.5, 6.0], T.BLOOD, only=cav)
            self.paths[f"iliac_{name}"] = np.asarray(il)
        # Psoas muscles from T12 to the lesser trochanters.
        ps = max(P["psoas"], 0.6)
        for side in (-1, 1):
            pts = [(side * 24, float(self.spine_v(self.frac("t12"))) + 2, self.frac("t12")),
                   (side * 40 * s, float(self.spine_v(0.43 * H)) - 5, 0.43 * H),
                   (side * 62 * s, float(self.spine_v(0.48 * H)) - 40, 0.48 * H),
                   (side * 75 * s, -10.0, self.frac("crotch") + 20)]
            paint_tube(self.c, pts, [8.0 * ps, 22.0 * ps, 22.0 * ps, 18.0 * ps], T.MUSCLE,
                       only=[T.FAT, T.URETER])
        # Bladder and pelvic organs.
        r_bl = (3 * P["bladder_ml"] * 1000 / 4 / math.pi) ** (1 / 3)
        bc = (P["bladder_x"], v_bl, d_bl)
        self.blob(T.BLADDER, bc, (1.2 * r_bl, 0.85 * r_bl, 0.98 * r_bl),
                  only=[*cav, T.URETER, T.BLOOD], rough=0.05)
        self.points["bladder"] = bc
        self.bladder = (bc, r_bl)
        if self.p.sex == "M":
            self.blob(T.PELVIC_ORGAN, (0, bc[1] + 0.3 * r_bl, d_bl + 0.95 * r_bl + 10),
                      (20, 16, 17), only=cav)
            dt = self.frac("crotch") + 35
            for side in (-1, 1):
                tc = (side * 16, -float(self.b_m(self.frac("pubis"))) - 10, dt)
                self.blob(T.SUBCUT_FAT, tc, (32, 34, 34), only=[T.AIR])
                self.blob(T.TESTIS, tc, (14, 16, 20), only=[T.SUBCUT_FAT, T.MUSCLE])
        else:
            us = max(P["uterus"], 0.5)
            self.blob(T.PELVIC_ORGAN, (0, bc[1] + 0.8 * r_bl + 10, d_bl - 0.6 * r_bl),
                      (28 * us, 22 * us, 40 * us), rotation(pitch=0.6), only=cav)
        # Colon frame, then small-bowel loops filling the rest of the abdominal cavity.
        self._bowel(dr, dl, bc, r_bl)

    def _bowel(self, dr: float, dl: float, bc: Sequence[float], r_bl: float) -> None:
        P = self.p.params
        H = self.H
        s = self.s
        a = float(self.cav_a(0.42 * H))
        b = float(self.cav_b_ant(0.42 * H))
        cs = max(P["colon"], 0.6)
        d_hep = dr + 95 * s
        d_spl = dl + 70 * s
        d_rect = self.frac("crotch") - 10
        colon = [(-0.70 * a, -0.15 * b, 0.465 * H), (-0.72 * a, 0.0, d_hep),
                 (-0.35 * a, -0.70 * b, d_hep + 25), (0.1 * a, -0.75 * b, 0.40 * H),
                 (0.55 * a, -0.55 * b, d_spl + 10), (0.74 * a, 0.1 * b, d_spl),
                 (0.72 * a, 0.05 * b, 0.44 * H), (0.50 * a, -0.1 * b, 0.485 * H),
                 (0.10 * a, float(self.spine_v(0.47 * H)) - 60, 0.475 * H),
                 (0.0, float(self.spine_v(0.50 * H)) - 30, 0.505 * H),
                 (0.0, float(self.spine_v(d_rect)) - 35, d_rect)]
        radii = [30 * cs, 24 * cs, 23 * cs, 22 * cs, 23 * cs, 22 * cs, 20 * cs, 17 * cs,
                 16 * cs, 18 * cs, 17 * cs]
        paint_tube(self.c, colon, radii, T.BOWEL, only=[T.FAT], inner=(3.0, T.BOWEL_GAS))
        self.paths["colon"] = np.asarray(colon)
        # Colon content: gas, stool (mottled) or fluid, by a smooth field.
        d_lo = min(dr, dl) + 40
        d_hi = self.frac("pubis") + 20
        box = self.c.box((-a - 10, a + 10), (-b - 10, 200), (d_lo, d_hi))
        if box is None:
            return
        lab = self.c.labels[box]
        n1 = self.noise(box, 11.0)
        stool = (lab == T.BOWEL_GAS) & (n1 > 0.4 - P["bowel_gas"])
        lab[stool] = T.BOWEL
        # Small bowel: loops in the central abdomen, walls and content from two fields.
        U, V, D = self.c.patient_grids(box)
        sv = self.spine_v(self.c.d[box[0]])[:, None, None]
        n2 = self.noise(box, 9.0)
        region = (lab == T.FAT) & (sv - 18 > V) & (dr + 80 * s < D) & (
            np.abs(U) < 0.85 * a) & (bc[2] + 0.6 * r_bl > D)
        loops = region & (np.abs(n2) > 0.35)
        lab[loops] = T.BOWEL
        gas = loops & (n1 < -1.1 + P["bowel_gas"]) & (np.abs(n2) > 0.8)
        lab[gas] = T.BOWEL_GAS
        self.boxes["bowel"] = box

    # -- skeleton --------------------------------------------------------------------
    def skeleton(self) -> None:
        P = self.p.params
        H = self.H
        s = self.s
        g = self.p.girth
        d0 = self.frac("skull_base") + 12
        d1 = self.frac("sacrum_top")
        # Vertebral bodies: 5 cervical (C3-C7), 12 thoracic, 5 lumbar, scaled to fit.
        weights = [0.75] * 5 + list(np.linspace(0.85, 1.1, 12)) + [1.25] * 5
        unit = (d1 - d0) / sum(weights)
        top = d0
        never = [T.AIRWAY, T.BLOOD, T.LUNG]
        only = [*BODY_SOFT, T.LUNG, T.BLOOD, T.PANCREAS, T.URETER, T.KIDNEY]
        self.vertebrae: list[tuple[float, float]] = []
        for i, w in enumerate(weights):
            h = w * unit
            disc = 0.2 * h
            dc = top + 0.5 * (h - disc)
            v = float(self.spine_v(dc))
            ra = (16 + 9 * min(i, 20) / 20) * g
            rb = (11 + 8 * min(i, 20) / 20) * g
            found = self.c.box((-ra - 1, ra + 1), (v - rb - 1, v + rb + 1), (top, top + h))
            if found is not None:
                U, V, D = self.c.patient_grids(found)
                ell = (U / ra) ** 2 + ((V - v) / rb) ** 2
                body = (ell <= 1.0) & (top + h - disc > D)
                self.c.paint(found, body, T.CORTEX, only=only, never=never)
                core = (ell <= (1 - 2.0 / rb) ** 2) & (top + 1.5 < D) & (top + h - disc - 1.5 > D)
                self.c.paint(found, core, T.MARROW, only=[T.CORTEX])
                self.c.paint(found, (ell <= 1.0) & (top + h - disc <= D), T.CARTILAGE,
                             only=only, never=never)
            # Posterior arch around the canal, spinous and transverse processes.
            rc = 8.0 + 2.0 * (i < 5)
            vc = v + rb + rc + 1
            found = self.c.box((-rc - 8, rc + 8), (vc - rc - 8, vc + rc + 8), (top, top + h - disc))
            if found is not None:
                U, V, D = self.c.patient_grids(found)
                rr = np.sqrt(U**2 + (V - vc) ** 2)
                self.c.paint(found, (rr > rc) & (rr < rc + 6) & (vc - rc < V), T.CORTEX,
                             only=only, never=never)
                self.c.paint(found, rr <= rc, T.CSF, only=[*only, T.CORTEX], never=never)
            dm = top + 0.4 * h
            tip = (0, vc + rc + 22 + 6 * (i > 4), dm + 0.5 * h)
            paint_tube(self.c, [(0, vc + rc + 3, dm), tip], 4.5, T.CORTEX, only=only,
                       never=never, inner=(1.8, T.MARROW))
            span = 30.0 if 5 <= i < 17 else 22.0 + 16.0 * (i >= 17)
            for side in (-1, 1):
                paint_tube(self.c, [(side * (rc + 2), vc - 2, dm), (side * span * g, vc + 6, dm)],
                           4.5, T.CORTEX, only=only, never=never, inner=(1.8, T.MARROW))
            self.vertebrae.append((dc, v))
            top += h
        self.points["spine_l3"] = (0.0, self.vertebrae[19][1], self.vertebrae[19][0])
        self.points["spine_t8"] = (0.0, self.vertebrae[12][1], self.vertebrae[12][0])
        # Ribs: 12 pairs around the thoracic cavity, sloping down towards the front.
        for i in range(12):
            dc, v = self.vertebrae[5 + i]
            reach = [0.55, 0.75, 0.85, 0.9, 0.92, 0.9, 0.88, 0.78, 0.68, 0.58, 0.4, 0.3][i]
            drop = (35 + 60 * min(i, 6) / 6) * s
            for side in (-1, 1):
                pts = []
                for t in np.linspace(0.07, reach, 9):
                    th = t * math.pi
                    dd = dc + drop * t**1.3
                    A = max(float(self.cav_a(dd)), 40.0 + 8.0 * i) + 6.0
                    B = float(self.cav_b_post(dd) if th < math.pi / 2 else self.cav_b_ant(dd))
                    pts.append((side * A * math.sin(th), (B + 6.0) * math.cos(th), dd))
                paint_tube(self.c, pts, 5.0 + 0.5 * (i > 2), T.CORTEX, only=[*BODY_SOFT, T.LUNG],
                           inner=(1.8, T.MARROW))
                if reach > 0.6:
                    end = pts[-1]
                    cart = [end, (side * 22.0, -float(self.b_m(end[2])) + 14,
                                  min(end[2], self.frac("dome_right") - 10))]
                    paint_tube(self.c, cart, 4.5, T.CARTILAGE, only=[*BODY_SOFT, T.LUNG])
        # Sternum, clavicles, scapulae.
        dn = self.frac("sternal_notch")
        ds = self.frac("dome_right") - 5
        st = [(0, -float(self.b_m(d)) + 13, d) for d in np.linspace(dn, ds, 5)]
        paint_tube(self.c, st, [14, 11, 11, 10, 9], T.CORTEX, only=[*BODY_SOFT, T.LUNG],
                   inner=(1.8, T.MARROW))
        self.points["sternum"] = st[2]
        sh = self.frac("shoulder") + 8
        for side in (-1, 1):  # clavicle, scapula
            x_ac = float(self.a_m(sh)) - 22
            cl = [(side * 14, -float(self.b_m(dn)) + 18, dn - 4),
                  (side * 0.5 * x_ac, -float(self.b_m(dn)) + 10, dn - 12),
                  (side * x_ac, 10.0, sh - 6)]
            paint_tube(self.c, cl, 6.5, T.CORTEX, only=[*BODY_SOFT, T.LUNG],
                       inner=(1.8, T.MARROW))
            sc = (side * 0.55 * float(self.a_m(0.24 * H)), float(self.b_m(0.24 * H)) - 22,
                  0.232 * H)
            self.blob(T.CORTEX, sc, (48 * g, 5.0, 70 * s), rotation(yaw=-side * 0.45),
                      only=[*BODY_SOFT], shell=(1.6, T.MARROW))
            self.points[f"axilla_{'left' if side > 0 else 'right'}"] = (
                side * (float(self.a_m(0.215 * H)) - 45), 5.0, 0.215 * H)
        # Pelvis: sacrum, iliac wings, acetabula, pubic and ischial rami, femora.
        dsa = self.frac("sacrum_top")
        dcr = self.frac("crotch")
        sv_s = float(self.spine_v(dsa))
        for j in range(5):
            t = j / 4
            dd = dsa + t * (dcr - dsa) * 0.85
            w = (48 - 34 * t) * g
            vv = sv_s + 12 * t + 25 * t * t - 10
            self.blob(T.CORTEX, (0, vv, dd), (w, 13 - 5 * t, 15), rotation(pitch=-0.4 - 0.5 * t),
                      only=[*BODY_SOFT, T.BOWEL], shell=(2.0, T.MARROW))
        dh = self.frac("hip")
        a_p = float(self.a_m(dh))
        for side in (-1, 1):
            name = "left" if side > 0 else "right"
            cen = (side * 0.25 * a_p, sv_s - 25, self.frac("iliac_crest") + 55 * s)
            found = ellipsoid_q(self.c, cen, (0.62 * a_p, 72 * s, 62 * s),
                                rotation(yaw=-side * 0.35))
            if found is not None:
                box, q = found
                U, V, D = self.c.patient_grids(box)
                shell = (q < 1.0) & (q > 0.78) & (side * U > side * cen[0] + 8) & (
                    cen[2] + 25 > D) & (sv_s + 45 > V)
                self.c.paint(box, shell, T.CORTEX, only=[*BODY_SOFT, T.BOWEL])
                self.c.paint(box, shell & (q < 0.95) & (q > 0.84), T.MARROW, only=[T.CORTEX])
            fh = (side * 0.62 * a_p, -5.0, dh)
            self.points[f"femoral_head_{name}"] = fh
            self.blob(T.CORTEX, (fh[0] - side * 4, fh[1], fh[2] - 6), (34, 34, 30),
                      only=[*BODY_SOFT], shell=(2.0, T.MARROW))
            self.blob(T.CORTEX, fh, (24 * s, 24 * s, 24 * s), only=[*BODY_SOFT, T.MARROW],
                      shell=(2.0, T.MARROW))
            sym = (side * 8, -float(self.b_m(self.frac("pubis"))) + 26, self.frac("pubis"))
            paint_tube(self.c, [(fh[0] - side * 18, fh[1] - 18, fh[2] + 8), sym], 10.0,
                       T.CORTEX, only=[*BODY_SOFT], inner=(2.0, T.MARROW))
            paint_tube(self.c, [(fh[0] - side * 5, fh[1] + 22, fh[2] + 14),
                                (side * 0.45 * a_p, 40.0, dcr + 5)], 12.0, T.CORTEX,
                       only=[*BODY_SOFT], inner=(2.0, T.MARROW))
            gt = (side * (0.62 * a_p + 38), 5.0, dh + 16)
            paint_tube(self.c, [fh, gt], [16.0, 18.0], T.CORTEX, only=[*BODY_SOFT, T.MARROW],
                       inner=(2.5, T.MARROW))
            thigh = self.paths.get(f"thigh_{name}")
            knee = (thigh[-1][0], thigh[-1][1], thigh[-1][2]) if thigh is not None else (
                side * 70, 0.0, self.frac("knee"))
            paint_tube(self.c, [gt, (gt[0] - side * 10, 2.0, dh + 60), knee], [17, 14, 14],
                       T.CORTEX, only=[*BODY_SOFT], inner=(4.5, T.YELLOW_MARROW))
        self.points["sacrum"] = (0.0, sv_s, dsa + 30)
        del P


def build_anatomy(canvas: Canvas, patient: Patient, tex: np.random.Generator) -> Anatomy:
    """Paint `patient` onto `canvas` (in place) and return the anatomy with its landmarks.

    Args:
        canvas: an empty canvas whose body axis and vertex come from the patient.
        patient: drawn with `draw_patient`.
        tex: generator for grid-dependent textures (surface roughness, bowel loops).
    """
    b = _Builder(canvas, patient, tex)
    b.trunk()
    b.head_neck()
    b.limbs()
    b.thorax()
    b.abdomen()
    b.skeleton()
    return Anatomy(canvas=canvas, patient=patient, points=b.points, paths=b.paths,
                   boxes=b.boxes)
