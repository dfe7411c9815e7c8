"""The click rule on masks, and clicks through the Predictor (click maps, the rule)."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_synthetic import make_case, oblique_direction
from scipy import ndimage
from tiny_models import TINY, Constant, SuvThreshold

from petseg.config import (
    CLICK_CHANNELS,
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    resolve_inference_config,
)
from petseg.inference.predictor import Predictor
from petseg.interactive.clicks import Clicks
from petseg.interactive.maps import CLICK_RADIUS_MM
from petseg.interactive.rule import (
    BALL_RADIUS_MM,
    MIN_CONTRAST,
    TUMOUR_FRACTION,
    TUMOUR_FRACTIONS,
    apply_click_rule,
    stroke_region,
    strokes,
)
from petseg.interactive.session import InteractiveSession

SPACING_XYZ = (2.0, 2.0, 3.0)


def ball(shape_zyx, centre_zyx, radius_mm, spacing_xyz=SPACING_XYZ) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij"), -1)
    d = (grid - np.asarray(centre_zyx)) * np.asarray(spacing_xyz[::-1])
    return (d ** 2).sum(-1) <= radius_mm ** 2


def xyz(zyx) -> tuple[int, int, int]:
    return (int(zyx[2]), int(zyx[1]), int(zyx[0]))


SHAPE = (30, 50, 60)
HOT = ball(SHAPE, (10, 20, 15), 9.0)
OTHER_HOT = ball(SHAPE, (10, 20, 32), 9.0)  # 34 mm away along x: a separate lesion


def suv_volume() -> np.ndarray:
    suv = np.ones(SHAPE, np.float32)
    suv[HOT] = 10.0
    suv[OTHER_HOT] = 12.0
    return suv


def test_tumour_click_outside_the_mask_adds_its_hot_region_only() -> None:
    suv, mask = suv_volume(), np.zeros(SHAPE, np.uint8)
    click = xyz(np.argwhere(HOT)[0])  # an edge voxel of the lesion; its maximum lies within
    out = apply_click_rule(mask, suv, Clicks(tumour=(click,)), SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool), HOT)
    assert not mask.any()  # the input is left alone


def test_tumour_click_region_follows_the_background_corrected_fraction() -> None:
    """A Gaussian lesion on SUV 1: the region is B + 0.41 (SUVmax - B), B the background
    (the shell 20-30 mm out holds SUV 1.00-1.01), not 41 % of the peak alone."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    d2 = (((grid - np.array([15, 25, 30])) * np.array([3.0, 2.0, 2.0])) ** 2).sum(-1)
    suv = (1.0 + 9.0 * np.exp(-d2 / (2 * 6.0 ** 2))).astype(np.float32)
    out = apply_click_rule(np.zeros(SHAPE, np.uint8), suv, Clicks(tumour=((33, 24, 15),)),
                           SPACING_XYZ).astype(bool)
    inner = suv >= 1.01 + TUMOUR_FRACTION * (suv.max() - 1.01)
    outer = suv >= 1.0 + TUMOUR_FRACTION * (suv.max() - 1.0)
    assert (out >= inner).all() and (out <= outer).all()
    assert 50 < inner.sum() <= out.sum() < (suv >= TUMOUR_FRACTION * suv.max()).sum()


def test_tumour_click_on_an_organ_gives_the_small_ball_only() -> None:
    """A hot slab through the whole volume (an organ): its region reaches the faces of the
    60 mm box at every fraction, so the click adds only the 5 mm ball (the earlier rule
    filled its 40 mm box)."""
    suv = np.ones(SHAPE, np.float32)
    suv[:, 20:30, :] = 20.0
    out = apply_click_rule(np.zeros(SHAPE, np.uint8), suv, Clicks(tumour=((5, 25, 15),)),
                           SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool), ball(SHAPE, (15, 25, 5), BALL_RADIUS_MM))


def test_tumour_click_inside_the_mask_or_on_cold_tissue() -> None:
    suv, mask = suv_volume(), HOT.astype(np.uint8)
    inside = xyz(np.argwhere(HOT)[5])
    np.testing.assert_array_equal(apply_click_rule(mask, suv, Clicks(tumour=(inside,)),
                                                   SPACING_XYZ), mask)
    cold = np.zeros(SHAPE, np.float32)  # no contrast: the ball
    out = apply_click_rule(np.zeros(SHAPE, np.uint8), cold, Clicks(tumour=((3, 4, 5),)),
                           SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool), ball(SHAPE, (5, 4, 3), BALL_RADIUS_MM))


def test_background_click_removes_its_component_only() -> None:
    mask = (HOT | OTHER_HOT).astype(np.uint8)
    click = xyz(np.argwhere(OTHER_HOT)[-1])
    out = apply_click_rule(mask, suv_volume(), Clicks(background=(click,)), SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool), HOT)
    unchanged = apply_click_rule(mask, suv_volume(), Clicks(background=((0, 0, 0),)),
                                 SPACING_XYZ)
    np.testing.assert_array_equal(unchanged, mask)


def test_background_click_removes_a_component_far_beyond_its_first_box() -> None:
    """A winding component 120 mm long, touching the image border: all of it goes."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[3, 5, :] = 1  # along x, border to border
    mask[3:28, 5, 59] = 1  # then along z at the far end
    mask[27, 5:45, 59] = 1  # then along y
    mask[10, 30, 10] = 1  # another component
    out = apply_click_rule(mask, np.ones(SHAPE, np.float32), Clicks(background=((0, 5, 3),)),
                           SPACING_XYZ)
    assert out.sum() == 1 and out[10, 30, 10] == 1


def test_tumour_and_background_click_in_one_component_are_both_honoured() -> None:
    bar = np.zeros(SHAPE, bool)
    bar[10, 20, 5:45] = True  # 40 voxels along x, 2 mm each
    tumour, background = (8, 20, 10), (40, 20, 10)
    out = apply_click_rule(bar.astype(np.uint8), np.ones(SHAPE, np.float32),
                           Clicks(tumour=(tumour,), background=(background,)), SPACING_XYZ)
    kept = np.flatnonzero(out[10, 20])
    assert kept.tolist() == list(range(5, 25))  # not nearer x = 40 than x = 8: x <= 24
    assert out.sum() == len(kept)


# --- a body: liver, blood pool, muscle, noise ------------------------------------------------

BODY_SHAPE = (50, 100, 100)  # 150 x 200 x 200 mm at SPACING_XYZ
VOXEL_ML = float(np.prod(SPACING_XYZ)) / 1000


def body_pet(lesions: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(SUV, faint lesion, large lesion) `[z, y, x]`: muscle 0.7, liver 2.0 (x >= 110 mm), a
    blood-pool tube 1.5; a 5.65 ml lesion of SUVmax 3.45 in muscle 4 mm from the liver and a
    20 ml lesion of SUVmax 9.3 beside the tube; 6.5 mm FWHM blur, noise sd 0.15 sqrt(SUV)."""
    z, y, x = (axis * step for axis, step in zip(
        np.meshgrid(*(np.arange(n) for n in BODY_SHAPE), indexing="ij"), (3.0, 2.0, 2.0),
        strict=True))
    suv = np.full(BODY_SHAPE, 0.7, np.float32)
    suv[x >= 110] = 2.0
    suv[(y - 60) ** 2 + (x - 40) ** 2 <= 12.0 ** 2] = 1.5
    faint = (z - 75) ** 2 + (y - 140) ** 2 + (x - 96) ** 2 <= 10.88 ** 2
    large = (z - 75) ** 2 + (y - 60) ** 2 + (x - 80) ** 2 <= 16.88 ** 2
    if lesions:
        suv[faint], suv[large] = 2.7, 8.0
    sigma_mm = 6.5 / (2 * np.sqrt(2 * np.log(2)))
    suv = ndimage.gaussian_filter(suv, (sigma_mm / 3, sigma_mm / 2, sigma_mm / 2))
    noise = ndimage.gaussian_filter(
        np.random.default_rng(5).standard_normal(BODY_SHAPE).astype(np.float32), (0.67, 1, 1))
    suv += 0.15 * np.sqrt(np.maximum(suv, 0)) * noise / noise.std()
    return suv, faint, large


@pytest.fixture(scope="module")
def body() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return body_pet()


def dice_of(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a.astype(bool) & b).sum()) / float(a.astype(bool).sum() + b.sum())


def test_faint_lesion_click_gives_a_region_near_its_volume(body) -> None:
    """41 % of SUVmax 3.45 is 1.41, below the liver beside it (the earlier rule filled its
    box: 172 ml). Background-corrected, at 0.41 the region still joins the noisy liver 4 mm
    away (it reaches the box's faces), at 0.5 it closes: the lesion's core, within a factor
    2 of its 5.65 ml (2.98 ml), and nothing outside it."""
    suv, faint, _ = body
    assert TUMOUR_FRACTION * suv[faint].max() < 2.0 and 3.3 < suv[faint].max() < 3.6
    centre = np.argwhere(faint).mean(0).round().astype(int)
    out = apply_click_rule(np.zeros(BODY_SHAPE, np.uint8), suv,
                           Clicks(tumour=(xyz(centre),)), SPACING_XYZ)
    assert 0.5 * faint.sum() < out.sum() < 2 * faint.sum()
    assert out[faint].sum() == out.sum() and dice_of(out, faint) > 0.65
    found = stroke_region(suv, centre, np.array(SPACING_XYZ[::-1]))
    assert 0.7 < found.background < 0.85 and found.fraction == 0.5  # B: the muscle


@pytest.mark.parametrize("tissue, centre_zyx", [("liver", (25, 50, 80)),
                                                 ("muscle", (25, 80, 20)),
                                                 ("blood pool", (25, 30, 20))])
def test_click_in_low_contrast_tissue_gives_the_ball(body, tissue, centre_zyx) -> None:
    suv = body[0]
    """Liver and muscle: SUVmax within 10 mm under twice the shell's median; the blood-pool
    tube (SUVmax 2.0 on muscle 0.74) runs through the volume, so no fraction closes it."""
    found = stroke_region(suv, np.array(centre_zyx), np.array(SPACING_XYZ[::-1]))
    assert found.fraction is None
    assert (found.peak < MIN_CONTRAST * found.background) == (tissue != "blood pool")
    out = apply_click_rule(np.zeros(BODY_SHAPE, np.uint8), suv,
                           Clicks(tumour=(xyz(centre_zyx),)), SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool),
                                  ball(BODY_SHAPE, centre_zyx, BALL_RADIUS_MM))
    assert abs(out.sum() * VOXEL_ML - 4 / 3 * np.pi * 0.5 ** 3) < 0.1  # 0.52 ml


def count_growths(monkeypatch) -> dict[str, int]:
    """Counts the rule's labellings and distance transforms while the test runs."""
    from petseg.interactive import rule

    calls = {"label": 0, "distance": 0}
    label, distance = rule.cc3d.connected_components, rule.ndimage.distance_transform_edt

    def counted_label(*args, **kwargs):
        calls["label"] += 1
        return label(*args, **kwargs)

    def counted_distance(*args, **kwargs):
        calls["distance"] += 1
        return distance(*args, **kwargs)

    monkeypatch.setattr(rule.cc3d, "connected_components", counted_label)
    monkeypatch.setattr(rule.ndimage, "distance_transform_edt", counted_distance)
    return calls


def border_ring(lesion: np.ndarray, core: np.ndarray) -> np.ndarray:
    """`[n, 3]` (z, y, x) voxels of the lesion's missed border on its central slice, in
    order around the centre (neighbours follow each other: a drawn stroke)."""
    z = int(np.argwhere(lesion)[:, 0].mean().round())
    ring = np.argwhere(lesion[z] & ~core[z])
    angle = np.arctan2(*(ring - ring.mean(0)).T)
    return np.column_stack([np.full(len(ring), z), ring[np.argsort(angle)]])


def test_border_scribble_grows_one_region(body, monkeypatch) -> None:
    """16 points along the missed border of the 20 ml lesion: one stroke, one region (one
    distance transform, at most one labelling per fraction), the lesion and no more."""
    suv, _, large = body
    core = ndimage.binary_erosion(large, iterations=2)
    scribble = border_ring(large, core)[:16]
    assert len(strokes(scribble)) == 1
    calls = count_growths(monkeypatch)
    out = apply_click_rule(core.astype(np.uint8), suv,
                           Clicks(tumour=tuple(xyz(p) for p in scribble)), SPACING_XYZ)
    assert calls["distance"] == 1 and 1 <= calls["label"] <= len(TUMOUR_FRACTIONS)
    assert dice_of(core, large) < 0.65 and dice_of(out, large) > 0.9
    assert out.sum() < 1.2 * large.sum()


def test_2000_point_scribble_is_one_stroke_with_one_growth(body, monkeypatch) -> None:
    """2,000 points painted over the 20 ml lesion's border, on all its slices and two voxels
    beyond: one stroke, one growth, a bounded region (the cost follows the strokes)."""
    suv, _, large = body
    core = ndimage.binary_erosion(large, iterations=2)
    paint = np.argwhere(ndimage.binary_dilation(large, iterations=2) & ~core)
    assert len(paint) >= 2000
    scribble = paint[np.random.default_rng(0).permutation(len(paint))[:2000]]
    assert len(strokes(scribble)) == 1
    calls = count_growths(monkeypatch)
    out = apply_click_rule(core.astype(np.uint8), suv,
                           Clicks(tumour=tuple(xyz(p) for p in scribble)), SPACING_XYZ)
    assert calls["distance"] == 1 and 1 <= calls["label"] <= len(TUMOUR_FRACTIONS)
    painted = np.zeros(BODY_SHAPE, bool)
    painted[tuple(scribble.T)] = True
    assert out[painted].all() and out[large].mean() > 0.95
    assert not out[~(large | painted)].any()  # the lesion and the painted voxels, no more


def test_strokes_from_a_points_list() -> None:
    """Same-kind points at most 2 voxels apart along every axis chain into one stroke."""
    line = [(10, 5, k) for k in range(0, 12, 2)]  # every other voxel: one stroke
    far = [(10, 5, 15)]  # 3 voxels beyond the line's end: its own stroke
    diagonal = [(0, 0, 0), (1, 1, 1), (3, 3, 3), (1, 1, 1)]  # a duplicate dropped
    found = strokes(np.array(diagonal + line + far))
    assert [s.tolist() for s in found] == [[[0, 0, 0], [1, 1, 1], [3, 3, 3]],
                                           [list(p) for p in line], [list(far[0])]]
    assert strokes(np.zeros((0, 3), int)) == []


def test_background_marks_alone_keep_a_lesion_free_case_empty(monkeypatch) -> None:
    """A lesion-free body: background marks (clicks and a scribble) on an empty mask add
    nothing; on a mask with two false positives they remove the one they touch, exactly."""
    suv = body_pet(lesions=False)[0]
    marks = [(25, 50, 80), (25, 20, 20), (25, 30, 20)]
    marks += [(20, 40, k) for k in range(30, 70)]  # a 40-point background scribble
    clicks = Clicks(background=tuple(xyz(p) for p in marks))
    calls = count_growths(monkeypatch)
    assert not apply_click_rule(np.zeros(BODY_SHAPE, np.uint8), suv, clicks, SPACING_XYZ).any()
    assert calls == {"label": 0, "distance": 0}
    touched = ball(BODY_SHAPE, (20, 40, 50), 8.0)
    untouched = ball(BODY_SHAPE, (35, 80, 50), 8.0)
    out = apply_click_rule((touched | untouched).astype(np.uint8), suv, clicks, SPACING_XYZ)
    np.testing.assert_array_equal(out.astype(bool), untouched)


def test_background_marks_on_a_lesion_rim_trim_it_and_keep_the_lesion(body) -> None:
    """A lesion over-segmented by a 6 mm rim: a background scribble on the rim removes the
    rim and keeps the lesion's core (one component, no fragment); a mark on the lesion's hot
    core removes the whole component."""
    suv, _, large = body
    grown = ndimage.binary_dilation(large, iterations=3)
    rim_slice = np.argwhere(large).mean(0).round().astype(int)
    ring = grown[rim_slice[0]] & ~ndimage.binary_dilation(large, iterations=2)[rim_slice[0]]
    scribble = [(rim_slice[0], y, x) for y, x in np.argwhere(ring)[:12]]
    out = apply_click_rule(grown.astype(np.uint8), suv,
                           Clicks(background=tuple(xyz(p) for p in scribble)), SPACING_XYZ)
    kept = out.astype(bool)
    assert cc3d.connected_components(out, connectivity=18).max() == 1
    assert not kept[tuple(np.asarray(scribble).T)].any()
    assert dice_of(kept, large) > dice_of(grown, large)
    assert kept.sum() < grown.sum() and (kept & large).sum() > 0.6 * large.sum()
    peak = np.unravel_index(np.argmax(np.where(large, suv, 0)), suv.shape)
    gone = apply_click_rule(grown.astype(np.uint8), suv, Clicks(background=(xyz(peak),)),
                            SPACING_XYZ)
    assert not gone.any()


# --- through the Predictor ------------------------------------------------------------------


CLICK_MODEL = ModelConfig(
    network=NetworkConfig(in_channels=4, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    preprocessing=PreprocessingConfig(channel_order=("pet", "ct", *CLICK_CHANNELS)))


class TumourMapNetwork(torch.nn.Module):
    """Lesion where the tumour click map exceeds 0.5; records the channels it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.channels.append(int(x.shape[1]))
        return torch.cat([torch.zeros_like(x[:, :1]), 20.0 * (x[:, 2:3] - 0.5)], dim=1)


def predictor(network: torch.nn.Module, model: ModelConfig = TINY, tta: int = 1) -> Predictor:
    config = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32), mode="fast",
                                                      tta=tta))
    return Predictor([network], model, config, device="cpu")


def oblique_case():
    flip = np.diag([-1.0, 1.0, 1.0])
    direction = tuple((flip @ np.asarray(oblique_direction(25.0)).reshape(3, 3)).ravel())
    return make_case(size=(56, 48, 36), direction=direction)


def test_click_aware_network_gets_the_click_maps_at_the_clicked_place() -> None:
    pet, ct, _, _ = oblique_case()
    network = TumourMapNetwork()
    click = (30, 20, 14)
    clicked = InteractiveSession(predictor(network, CLICK_MODEL)).predict(
        pet, ct, Clicks(tumour=(click,)))
    mask = sitk.GetArrayFromImage(clicked.mask)
    assert set(network.channels) == {4}
    assert mask[click[::-1]] == 1
    assert cc3d.connected_components(mask, connectivity=18).max() == 1
    # the map is above 0.5 within sigma * sqrt(2 ln 2) of the click: a 7.06 mm ball
    radius_cm = CLICK_RADIUS_MM / 3 * np.sqrt(2 * np.log(2)) / 10
    volume_ml = mask.sum() * np.prod(pet.GetSpacing()) / 1000
    assert abs(volume_ml - 4 / 3 * np.pi * radius_cm ** 3) < 0.25 * 4 / 3 * np.pi * radius_cm ** 3
    unclicked = predictor(network, CLICK_MODEL).predict(pet, ct)
    assert not sitk.GetArrayFromImage(unclicked.mask).any()
    # flipped passes flip the click maps with the images: the same mask
    flipped = InteractiveSession(predictor(network, CLICK_MODEL, tta=8)).predict(
        pet, ct, Clicks(tumour=(click,)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(flipped.mask), mask)


def test_predictor_applies_the_rule_for_automatic_weights() -> None:
    pet, ct, seg, _ = oblique_case()
    suv, truth = sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(seg)
    lesions = cc3d.connected_components(truth, connectivity=18)
    assert lesions.max() == 2
    automatic = sitk.GetArrayFromImage(predictor(SuvThreshold()).predict(pet, ct).mask)
    assert all((automatic[lesions == k]).any() for k in (1, 2))
    peak_2 = np.unravel_index(np.argmax(np.where(lesions == 2, suv, 0)), suv.shape)
    background = xyz(peak_2)  # on the component's hot core: all of it goes
    corrected = InteractiveSession(predictor(SuvThreshold())).predict(
        pet, ct, Clicks(background=(background,)))
    out = sitk.GetArrayFromImage(corrected.mask)
    assert not out[lesions == 2].any()
    np.testing.assert_array_equal(out[lesions != 2], automatic[lesions != 2])
    assert corrected.mask.GetDirection() == pet.GetDirection()
    # a network that finds nothing: a tumour click on a lesion centre adds its region
    peak = np.unravel_index(np.argmax(np.where(lesions == 1, suv, 0)), suv.shape)
    clicks = Clicks(tumour=(xyz(peak),))
    added = sitk.GetArrayFromImage(
        InteractiveSession(predictor(Constant(0.01))).predict(pet, ct, clicks).mask)
    np.testing.assert_array_equal(added, apply_click_rule(np.zeros_like(added), suv, clicks,
                                                          pet.GetSpacing()))
    assert added[peak] == 1 and added.sum() == added[lesions == 1].sum() > 300  # the core


def test_background_click_labels_a_box_around_a_small_component(monkeypatch) -> None:
    """A small component in a large image: labelled in the box around the click only."""
    from petseg.interactive import rule

    shapes: list[tuple[int, ...]] = []
    label = rule.cc3d.connected_components

    def recording(volume, *args, **kwargs):
        shapes.append(volume.shape)
        return label(volume, *args, **kwargs)

    monkeypatch.setattr(rule.cc3d, "connected_components", recording)
    mask = np.zeros((200, 200, 200), np.uint8)
    mask[100:104, 100:104, 100:104] = 1
    mask[10, 10, 10] = 1
    out = apply_click_rule(mask, np.ones(mask.shape, np.float32),
                           Clicks(background=((101, 101, 101),)), (2.0, 2.0, 2.0))
    assert out.sum() == 1 and out[10, 10, 10] == 1
    assert shapes == [(33, 33, 33)]  # 32 mm = 16 voxels of 2 mm either side
