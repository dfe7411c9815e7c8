"""FDG physiology and CT densities: tissue labels -> SUV and HU volumes.

Typical FDG figures, drawn anew for every study: soft tissue 0.3..1, liver 1.5..3
(mildly textured), spleen ~0.85 x liver, grey matter 6..12, myocardium 1..12 (varies a
lot, sometimes patchy), kidneys 2.5..5 with a hotter pelvis, bladder 5..40, ureter
boluses, patchy bowel 1..4, red marrow ~1.5. The false-positive traps that a lesion
detector must learn to ignore are included: brown fat, tense muscles, tonsils and
salivary glands, injection-site extravasation, inflamed joints, reactive lymph nodes,
focal bowel and ureter activity.

CT: air -1000, lung ~-850 with vessels and a dependent gradient, fat ~-100, soft tissue
20..60, liver 50..70, cortical bone 700..1500 with marrow inside; no contrast agent.

All values are float32 `[z, y, x]` on the anatomy's grid (SUV before blurring and noise).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.ndimage as ndi

from petseg.phantom.anatomy import Anatomy, Tissue
from petseg.phantom.canvas import Box, exp32, label_in, segment_distance, smooth_noise

T = Tissue


@dataclasses.dataclass(frozen=True)
class Physiology:
    """Grid-independent uptake and density parameters of one study.

    Attributes:
        suv: mean SUV per tissue label (before texture).
        hu: mean HU per tissue label (before texture).
        flags: optional findings (brown fat, tense muscles, injection site, ...).
        spots: physiological focal uptake `(site, (u, v, d) mm, radius mm, SUV, ct_visible)`:
            never part of the lesion mask.
    """

    suv: dict[int, float]
    hu: dict[int, float]
    flags: dict[str, float]
    spots: list[tuple[str, tuple[float, float, float], float, float, bool]]


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_physiology(rng: np.random.Generator, anatomy: Anatomy) -> Physiology:
    """Draw one study's uptake levels, densities and physiological hot spots."""
    p = anatomy.patient
    young = p.age < 45
    liver = float(rng.uniform(1.5, 3.0))
    soft = float(rng.uniform(0.45, 1.0))
    myo_state = rng.random()
    myocardium = (float(rng.uniform(1.0, 2.5)) if myo_state < 0.35 else
                  float(rng.uniform(2.5, 6.0)) if myo_state < 0.65 else
                  float(rng.uniform(6.0, 12.0)))
    marrow = float(rng.uniform(1.1, 2.0)) * (float(rng.uniform(1.4, 2.2))
                                             if rng.random() < 0.12 else 1.0)
    bladder = _logu(rng, 5.0, 40.0)
    suv = {
        T.AIR: 0.0, T.SUBCUT_FAT: float(rng.uniform(0.15, 0.4)),
        T.FAT: float(rng.uniform(0.2, 0.45)), T.MUSCLE: soft * float(rng.uniform(0.7, 1.1)),
        T.SOFT: soft, T.LUNG: float(rng.uniform(0.3, 0.6)), T.AIRWAY: 0.05,
        T.CORTEX: float(rng.uniform(0.4, 0.7)), T.MARROW: marrow,
        T.YELLOW_MARROW: float(rng.uniform(0.3, 0.6)), T.CARTILAGE: 0.5,
        T.BRAIN_GREY: float(rng.uniform(6.0, 12.0)), T.BRAIN_WHITE: 0.0, T.CSF: 0.6,
        T.MYOCARDIUM: myocardium, T.BLOOD: float(rng.uniform(1.2, 2.2)), T.LIVER: liver,
        T.SPLEEN: liver * float(rng.uniform(0.75, 0.95)) * (
            float(rng.uniform(1.3, 1.9)) if rng.random() < 0.1 else 1.0),
        T.KIDNEY: float(rng.uniform(2.5, 5.0)), T.RENAL_PELVIS: _logu(rng, 4.0, 30.0),
        T.URETER: _logu(rng, 2.0, 25.0), T.BLADDER: bladder,
        T.BOWEL: float(rng.uniform(0.8, 2.2)), T.BOWEL_GAS: 0.15,
        T.STOMACH: float(rng.uniform(1.3, 3.5)), T.STOMACH_CONTENT: 0.3,
        T.GLAND: float(rng.uniform(1.5, 4.5)), T.BREAST: float(rng.uniform(0.5, 1.4)),
        T.PELVIC_ORGAN: float(rng.uniform(1.2, 2.5)) * (
            float(rng.uniform(1.0, 3.0)) if (p.sex == "F" and p.age < 50) else 1.0),
        T.TESTIS: float(rng.uniform(1.8, 4.0)), T.EYE: 0.4, T.GALLBLADDER: 0.4,
        T.PANCREAS: float(rng.uniform(1.0, 1.8)), T.TABLE: 0.0,
    }
    suv[T.BRAIN_WHITE] = suv[T.BRAIN_GREY] * float(rng.uniform(0.28, 0.42))
    older = min(max(p.age - 30, 0) / 50.0, 1.0)
    fatty_liver = rng.random() < 0.12
    hu = {
        T.AIR: -1000.0, T.SUBCUT_FAT: float(rng.uniform(-120, -85)),
        T.FAT: float(rng.uniform(-115, -80)), T.MUSCLE: float(rng.uniform(38, 60)),
        T.SOFT: float(rng.uniform(25, 55)), T.LUNG: float(rng.uniform(-880, -800)),
        T.AIRWAY: -990.0, T.CORTEX: float(rng.uniform(1100, 1500) - 350 * older),
        T.MARROW: float(rng.uniform(180, 320) - 100 * older),
        T.YELLOW_MARROW: float(rng.uniform(-70, 10)), T.CARTILAGE: float(rng.uniform(90, 180)),
        T.BRAIN_GREY: float(rng.uniform(34, 42)), T.BRAIN_WHITE: float(rng.uniform(24, 31)),
        T.CSF: float(rng.uniform(2, 12)), T.MYOCARDIUM: float(rng.uniform(40, 50)),
        T.BLOOD: float(rng.uniform(32, 48)),
        T.LIVER: float(rng.uniform(25, 45) if fatty_liver else rng.uniform(50, 70)),
        T.SPLEEN: float(rng.uniform(40, 52)), T.KIDNEY: float(rng.uniform(28, 38)),
        T.RENAL_PELVIS: float(rng.uniform(2, 15)), T.URETER: float(rng.uniform(5, 25)),
        T.BLADDER: float(rng.uniform(0, 15)), T.BOWEL: float(rng.uniform(15, 40)),
        T.BOWEL_GAS: float(rng.uniform(-980, -850)), T.STOMACH: float(rng.uniform(35, 50)),
        T.STOMACH_CONTENT: float(rng.uniform(5, 35)), T.GLAND: float(rng.uniform(10, 45)),
        T.BREAST: float(rng.uniform(15, 40)), T.PELVIC_ORGAN: float(rng.uniform(35, 55)),
        T.TESTIS: float(rng.uniform(25, 40)), T.EYE: float(rng.uniform(5, 15)),
        T.GALLBLADDER: float(rng.uniform(0, 20)), T.PANCREAS: float(rng.uniform(30, 48)),
        T.TABLE: float(rng.uniform(150, 450)),
    }
    flags = {
        "brown_fat": float(rng.random() < (0.2 if young else 0.06)),
        "brown_fat_suv": float(rng.uniform(2.0, 10.0)),
        "brown_fat_extent": float(rng.uniform(0.6, 1.4)),
        "tense_muscles": float(rng.random() < 0.15),
        "tense_muscle_factor": float(rng.uniform(1.8, 4.0)),
        "myocardium_patchy": float(rng.random() < 0.4),
        "bowel_hot": float(rng.uniform(0.0, 1.0)),
        "lung_vessels": float(rng.uniform(0.14, 0.2)),
        "calcified_aorta": float(p.age > 55 and rng.random() < 0.6),
        "muscle_fat_streaks": float(rng.uniform(0.0, 1.0)),
    }
    spots: list[tuple[str, tuple[float, float, float], float, float, bool]] = []
    pts = anatomy.points
    paths = anatomy.paths
    # Injection-site extravasation in an arm (antecubital fossa), if the arms are seen.
    arm = paths.get("arm_left") if rng.random() < 0.5 else paths.get("arm_right")
    if arm is not None and rng.random() < 0.15:
        c = arm[1] + np.array([0.0, -25.0, 0.0]) + rng.normal(0, 5, 3)
        spots.append(("injection_site", tuple(float(x) for x in c),
                      float(rng.uniform(4, 10)), _logu(rng, 5.0, 60.0), False))
    # Reactive lymph nodes: visible on CT, mild uptake, never annotated.
    for _ in range(int(rng.integers(0, 4))):
        site = str(rng.choice(["axilla_left", "axilla_right", "neck", "groin"]))
        if site == "groin":
            fh = pts.get("femoral_head_left" if rng.random() < 0.5 else "femoral_head_right")
            if fh is None:
                continue
            c = np.array(fh) + np.array([0.0, -45.0, -10.0])
        elif site == "neck":
            c = np.array(pts["neck"]) + np.array([float(rng.choice([-1, 1])) * 35.0, -5.0, 0.0])
        else:
            c = np.array(pts[site])
        c = c + rng.normal(0, 8, 3)
        spots.append(("reactive_node", tuple(float(x) for x in c), float(rng.uniform(3, 6)),
                      float(rng.uniform(1.3, 2.6)), True))
    # Inflamed joints (shoulders, hips) and focal bowel / colon activity.
    for name in ("femoral_head_left", "femoral_head_right"):
        if name in pts and rng.random() < 0.08:
            c = np.array(pts[name]) + np.array([0.0, 0.0, -20.0])
            spots.append(("joint", tuple(float(x) for x in c), float(rng.uniform(8, 14)),
                          float(rng.uniform(2.0, 4.5)), False))
    colon = paths.get("colon")
    if colon is not None:
        for _ in range(int(rng.integers(0, 4))):
            k = int(rng.integers(0, len(colon) - 1))
            t = float(rng.random())
            c = colon[k] * (1 - t) + colon[k + 1] * t
            spots.append(("bowel_focal", tuple(float(x) for x in c), float(rng.uniform(6, 14)),
                          float(rng.uniform(3.0, 9.0)), False))
    return Physiology(suv=suv, hu=hu, flags=flags, spots=spots)


def _lut(values: dict[int, float]) -> np.ndarray:
    table = np.zeros(256, np.float32)
    for k, v in values.items():
        table[int(k)] = v
    return table


def _noise(anatomy: Anatomy, tex: np.random.Generator, box: Box, corr_mm: float) -> np.ndarray:
    shape = tuple(s.stop - s.start for s in box)
    cells = [corr_mm / sp for sp in anatomy.canvas.spacing_zyx]
    return smooth_noise(tex, shape, cells)


def _tissue_noise(anatomy: Anatomy, tex: np.random.Generator, wanted: list[int],
                  corr_mm: float) -> tuple[Box, np.ndarray, np.ndarray] | None:
    """Smooth unit-variance noise sampled only at the voxels of the `wanted` tissues.

    A random lattice of pitch `corr_mm` is interpolated (linearly) at those voxels, so the
    cost follows the tissue's voxel count, not its bounding box (muscle, fat and marrow
    span the whole body).

    Returns:
        (box, mask within the box, noise values at the mask's voxels) or None.
    """
    box = anatomy.bbox(wanted)
    if box is None:
        return None
    mask = label_in(anatomy.labels[box], wanted)
    idx = np.nonzero(mask)
    cells = [max(corr_mm / sp, 1.0) for sp in anatomy.canvas.spacing_zyx]
    shape = [s.stop - s.start for s in box]
    lattice = tex.standard_normal([int(np.ceil(n / c)) + 2 for n, c in zip(shape, cells,
                                                                          strict=True)])
    coords = [i.astype(np.float32) / np.float32(c) for i, c in zip(idx, cells, strict=True)]
    values = ndi.map_coordinates(lattice.astype(np.float32), coords, order=1, mode="nearest")
    return box, mask, values / max(float(values.std()), 1e-6)


def _spot(anatomy: Anatomy, volume: np.ndarray, centre: tuple[float, float, float],
          radius: float, value: float, mode: str) -> None:
    """Add a Gaussian-edged ball (patient coords) to `volume` ('max' or 'set' inside)."""
    found = segment_distance(anatomy.canvas, centre, centre, pad=2.0 * radius)
    if found is None:
        return
    box, dist, _ = found
    region = volume[box]
    inside = dist <= radius
    if mode == "max":
        weight = exp32(-0.5 * (dist / max(radius * 0.6, 1e-3)) ** 2)
        np.maximum(region, (value * weight).astype(np.float32), out=region)
    else:
        region[inside] = value


def pet_activity(anatomy: Anatomy, phys: Physiology, tex: np.random.Generator) -> np.ndarray:
    """Noise-free, unblurred FDG uptake (SUV) `[z, y, x]` float32."""
    labels = anatomy.labels
    canvas = anatomy.canvas
    pet = _lut(phys.suv)[labels]
    flags = phys.flags
    # Mild liver and spleen texture, brain grey-matter variation, marrow heterogeneity.
    for wanted, corr, amp in (([T.LIVER, T.SPLEEN], 25.0, 0.07), ([T.BRAIN_GREY], 12.0, 0.1),
                              ([T.MARROW], 20.0, 0.12), ([T.MUSCLE], 60.0, 0.12),
                              ([T.GLAND], 15.0, 0.3), ([T.LUNG], 40.0, 0.1)):
        found = _tissue_noise(anatomy, tex, wanted, corr)
        if found is None:
            continue
        box, m, n = found
        region = pet[box]
        region[m] *= np.clip(1.0 + amp * n, 0.3, None)
    # Lungs: more activity in the dependent (posterior) parts.
    box = anatomy.bbox([T.LUNG])
    if box is not None:
        _, V, _ = canvas.patient_grids(box)
        m = labels[box] == T.LUNG
        region = pet[box]
        region[m] *= np.broadcast_to(1.0 + 0.002 * np.clip(V, -100, 100), m.shape)[m]
    # Myocardium: sometimes patchy (e.g. lateral wall hot, septum cold).
    box = anatomy.bbox([T.MYOCARDIUM])
    if box is not None and flags["myocardium_patchy"]:
        m = labels[box] == T.MYOCARDIUM
        region = pet[box]
        n = _noise(anatomy, tex, box, 30.0)
        region[m] *= np.clip(0.75 + 0.5 * n[m], 0.25, 1.8)
    # Bowel: patchy wall/content uptake; ureters: boluses of urine.
    for wanted, corr, lo, hi in (([T.BOWEL], 18.0, 0.35, 1.2 + 0.8 * flags["bowel_hot"]),
                                 ([T.URETER], 30.0, 0.08, 1.0), ([T.STOMACH], 25.0, 0.6, 1.3)):
        box = anatomy.bbox(wanted)
        if box is None:
            continue
        m = label_in(labels[box], wanted)
        region = pet[box]
        n = _noise(anatomy, tex, box, corr)[m]
        w = 1.0 / (1.0 + exp32(-2.5 * n))
        region[m] *= lo + (hi - lo) * w
    # Brown fat (deep cervical, supraclavicular, axillary, paravertebral depots) and tense
    # neck and shoulder muscles.
    P = anatomy.patient.params
    H = anatomy.patient.height
    box = canvas.box((-250, 250), (-200, 200), (P["chin"] * H, P["heart"] * H))
    if box is not None and (flags["brown_fat"] or flags["tense_muscles"]):
        lab = labels[box]
        region = pet[box]
        n = _noise(anatomy, tex, box, 10.0)
        U, V, D = canvas.patient_grids(box)
        neck = P["sternal_notch"] * H + 25 > D
        if flags["brown_fat"]:
            spine_v = anatomy.points.get("spine_t8", (0.0, 40.0, 0.0))[1]
            depot = (neck & (np.abs(U) > 20) & (np.abs(U) < 95)) | (
                (np.abs(U) > 18) & (np.abs(U) < 50) & (spine_v - 10 < V))
            m = label_in(lab, [T.FAT, T.SUBCUT_FAT]) & (n > flags["brown_fat_extent"]) & depot
            region[m] = flags["brown_fat_suv"] * np.clip(0.6 + 0.3 * n[m], 0.5, 1.3)
        if flags["tense_muscles"]:
            m = (lab == T.MUSCLE) & (n > 0.6) & neck
            region[m] *= flags["tense_muscle_factor"]
    for _site, centre, radius, value, _ in phys.spots:
        _spot(anatomy, pet, centre, radius, value, "max")
    return pet


def ct_density(anatomy: Anatomy, phys: Physiology, tex: np.random.Generator) -> np.ndarray:
    """Noise-free CT densities (HU) `[z, y, x]` float32 on the anatomy grid."""
    labels = anatomy.labels
    canvas = anatomy.canvas
    hu = phys.hu
    ct = _lut(hu)[labels]
    flags = phys.flags
    # Lungs: a dependent density gradient and branching vessels (crossing zero-surfaces
    # of two smooth random fields are curves), thicker near the hila.
    box = anatomy.bbox([T.LUNG])
    if box is not None:
        m = labels[box] == T.LUNG
        U, V, D = canvas.patient_grids(box)
        region = ct[box]
        grad = np.broadcast_to(0.35 * np.clip(V + 60, 0, 200), m.shape)
        region[m] += grad[m]
        n1 = _noise(anatomy, tex, box, 15.0)
        n2 = _noise(anatomy, tex, box, 15.0)
        hilum = anatomy.points.get("carina", (0.0, 0.0, float(D.mean())))
        dist = np.sqrt((np.abs(U) - 45.0) ** 2 + (V - hilum[1]) ** 2 + (D - hilum[2] - 30) ** 2)
        width = flags["lung_vessels"] * np.clip(1.4 - dist / 180.0, 0.55, 1.4)
        vessel = m & (np.abs(n1) < width) & (np.abs(n2) < width)
        region[vessel] = np.float32(hu[T.BLOOD] - 30.0)
    # Texture: marrow, bowel and stomach content, liver, breast; cortex varies voxel-wise.
    for wanted, corr, amp in (([T.MARROW], 12.0, 40.0), ([T.BOWEL], 8.0, 18.0),
                              ([T.STOMACH_CONTENT], 10.0, 40.0), ([T.LIVER], 25.0, 4.0),
                              ([T.BREAST], 6.0, 15.0)):
        found = _tissue_noise(anatomy, tex, wanted, corr)
        if found is None:
            continue
        box, m, n = found
        ct[box][m] += amp * n
    cortex = labels == T.CORTEX
    ct[cortex] += tex.normal(0.0, 120.0, int(cortex.sum())).astype(np.float32)
    if flags["muscle_fat_streaks"] > 0.3:
        found = _tissue_noise(anatomy, tex, [T.MUSCLE], 7.0)
        if found is not None:
            box, m, n = found
            region = ct[box]
            values = region[m]
            values[np.abs(n) < 0.06 * flags["muscle_fat_streaks"]] = np.float32(hu[T.FAT])
            region[m] = values
    # Calcified plaques in the aortic wall of older patients.
    aorta = anatomy.paths.get("abdominal_aorta")
    if flags["calcified_aorta"] and aorta is not None:
        for k in range(len(aorta) - 1):
            for t in (0.2, 0.5, 0.8):
                c = aorta[k] * (1 - t) + aorta[k + 1] * t + np.array([7.0, 6.0, 0.0])
                _spot(anatomy, ct, tuple(float(x) for x in c), 2.5, 600.0, "set")
    for _site, centre, radius, _, ct_visible in phys.spots:
        if ct_visible:
            _spot(anatomy, ct, centre, radius, hu[T.SOFT], "set")
    return ct
