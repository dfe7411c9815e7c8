"""Click and scribble simulators: the autoPET IV rule, training patch clicks, autoPET V scribbles
(their equality with the organisers' own output: test_organisers_protocols.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from petseg.errors import PetsegError
from petseg.interactive.scribbles import (
    SCRIBBLE_SHAPES,
    largest_slice_component,
    organisers_scribble,
    simulate_scribble,
)
from petseg.interactive.simulate import (
    autopet_iv_clicks,
    high_uptake_mask,
    zyx_to_xyz,
)
from petseg.training.click_simulation import ClickTrainingConfig, patch_clicks

SHAPE = (40, 48, 56)
CENTRES = ((10, 12, 14), (28, 30, 40), (20, 38, 12))
RADII = (5, 3, 2)


def ball(centre, radius, shape=SHAPE) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth with three ball lesions, a PET with them and two hot organs outside them."""
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE, bool)
    for centre, radius in zip(CENTRES, RADII, strict=True):
        truth |= ball(centre, radius)
    pet = 1.0 + 0.05 * rng.random(SHAPE)
    pet[truth] = 8.0
    organs = np.zeros(SHAPE, bool)
    for centre, radius in (((6, 38, 46), 5), ((32, 9, 9), 4)):  # uptake peaked at the centre
        inside = ball(centre, radius)
        depth = ndimage.distance_transform_edt(inside)
        pet[inside] = 10.0 + depth[inside]
        organs |= inside
    return truth, pet, organs


def boundary_voxels(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def test_iv_rule_clicks_component_centres_then_boundaries(case) -> None:
    truth, pet, organs = case
    tumour, background = autopet_iv_clicks(truth, pet)
    assert tumour.shape == (10, 3) and background.shape == (10, 3)
    assert {tuple(p) for p in tumour[:3]} == set(CENTRES)  # the EDT maxima of the balls
    edges = boundary_voxels(truth)
    assert edges[tuple(tumour[3:].T)].all()  # the budget filled with boundary voxels
    assert truth[tuple(tumour.T)].all()
    assert not truth[tuple(background.T)].any()
    assert high_uptake_mask(pet, truth)[tuple(background.T)].all()
    assert organs[tuple(background[:2].T)].all()  # the hot organs' centres come first
    again = autopet_iv_clicks(truth, pet)
    np.testing.assert_array_equal(again[0], tumour)  # the fixed seed: the same clicks
    other = autopet_iv_clicks(truth, pet, seed=7)[0]
    assert {tuple(p) for p in other[:3]} == set(CENTRES)
    assert not np.array_equal(other, tumour)


def test_iv_rule_picks_ten_of_many_components_and_none_without_lesions(case) -> None:
    _, pet, _ = case
    many = np.zeros(SHAPE, bool)
    many[2:38:3, 10, 10] = True  # 12 one-voxel lesions
    tumour, _ = autopet_iv_clicks(many, pet)
    assert len({tuple(p) for p in tumour}) == 10 and many[tuple(tumour.T)].all()
    tumour, background = autopet_iv_clicks(np.zeros(SHAPE, bool), pet)
    assert tumour.shape == (0, 3) and len(background) == 10


def test_click_index_order_lands_on_the_lesion_in_itk_order(case) -> None:
    truth, pet, _ = case
    image = sitk.GetImageFromArray(truth.astype(np.uint8))  # size (x, y, z) = (56, 48, 40)
    tumour, _ = autopet_iv_clicks(truth, pet)
    for x, y, z in zyx_to_xyz(tumour):
        assert image.GetPixel(x, y, z) == 1


def test_patch_clicks_centres_jitter_counts_and_empty_share(case) -> None:
    """Points: organisers' centres (moved by at most the jitter), on the lesions, counts
    falling from 0; background off the lesions; scribbles on the corrupted truth's errors."""
    truth, pet, _ = case
    truth = truth != 0
    points = dataclasses.replace(ClickTrainingConfig(no_click_fraction=0.0,
                                                     scribble_fraction=0.0,
                                                     organiser_fraction=1.0), jitter_voxels=0)
    counts = []
    for seed in range(40):
        tumour, background = patch_clicks(truth, pet, np.random.default_rng(seed), points)
        counts.append(len(tumour))
        assert truth[tuple(tumour.T)].all() and not truth[tuple(background.T)].any()
        assert {tuple(p) for p in tumour[:3]} <= set(CENTRES)  # unjittered: centres first
        assert len(background) <= 10
    assert min(counts) == 0 and max(counts) >= 5
    assert np.mean(np.array(counts) <= 3) > 0.5  # falling probability
    jittered = dataclasses.replace(points, jitter_voxels=2)
    moved = [tuple(p) for s in range(20) for p in patch_clicks(
        truth, pet, np.random.default_rng(s), jittered)[0][:1]]
    assert any(p not in CENTRES for p in moved) and all(truth[p] for p in moved)
    assert all(min(np.abs(np.subtract(p, c)).max() for c in CENTRES) <= 2 for p in moved)
    wider = dataclasses.replace(points, organiser_fraction=0.0)
    for seed in range(20):
        tumour, background = patch_clicks(truth, pet, np.random.default_rng(seed), wider)
        assert truth[tuple(tumour.T)].all() and not truth[tuple(background.T)].any()
    scribbles = ClickTrainingConfig(no_click_fraction=0.0, scribble_fraction=1.0)
    kinds = set()
    for seed in range(20):
        tumour, background = patch_clicks(truth, pet, np.random.default_rng(seed), scribbles)
        assert len(tumour) + len(background) > 0
        assert truth[tuple(tumour.T)].all() and not truth[tuple(background.T)].any()
        kinds |= {k for k, v in (("tumour", tumour), ("background", background)) if len(v)}
    assert kinds == {"tumour", "background"}
    never = ClickTrainingConfig(no_click_fraction=1.0)
    assert all(sum(map(len, patch_clicks(truth, pet, np.random.default_rng(s), never))) == 0
               for s in range(10))


def test_scribble_goes_to_the_largest_component_of_any_axial_slice() -> None:
    missed = ball(CENTRES[0], RADII[0])
    z, region = largest_slice_component(missed | ball((30, 10, 30), 2))
    assert z == CENTRES[0][0] and region.shape == (SHAPE[2], SHAPE[1])  # [x, y]
    assert np.array_equal(region.T.astype(bool), missed[z])
    for shape in SCRIBBLE_SHAPES:
        points = simulate_scribble(missed, shape)
        assert {p[2] for p in points} == {CENTRES[0][0]}
        assert all(missed[p[::-1]] for p in points) and points == sorted(points)
    # a round cross-section skeletonises to one voxel: the organisers then give it whole
    assert len(simulate_scribble(missed, "centerline")) == missed[CENTRES[0][0]].sum() == 81
    bar = np.zeros(SHAPE, bool)
    bar[20, 10:13, 5:45] = True  # 3 x 40 voxels: the skeleton is the middle row
    line = simulate_scribble(bar, "centerline")
    assert {(y, z) for _, y, z in line} == {(11, 20)} and 30 <= len(line) <= 32
    assert min(x for x, _, _ in line) > 5 and max(x for x, _, _ in line) < 44  # trimmed ends
    contour = simulate_scribble(missed, "boundary")
    inner = ndimage.binary_erosion(missed[CENTRES[0][0]])
    assert not any(inner[y, x] for x, y, _ in contour) and len(contour) >= 3
    assert simulate_scribble(np.zeros(SHAPE, bool), "random") is None
    with pytest.raises(ValueError, match="scribble shape 'zigzag'"):
        simulate_scribble(missed, "zigzag")


def test_longer_scribble_is_given_and_an_empty_error_fails(case) -> None:
    truth, _, _ = case
    prediction = (truth & ~ball(CENTRES[0], RADII[0])) | ball((30, 10, 30), 1)
    kind, points = organisers_scribble(truth, prediction, "random")
    assert kind == "tumour" and all(truth[p[::-1]] for p in points)
    prediction = truth | ball((30, 10, 30), 4)  # over-segmentation only
    assert organisers_scribble(truth, prediction, "boundary") is None  # the organisers' quirk
    kind, points = organisers_scribble(truth, prediction, "boundary", empty_error_fails=False)
    assert kind == "background" and not any(truth[p[::-1]] for p in points)
    assert organisers_scribble(truth, truth, "boundary", empty_error_fails=False) is None


def test_iv_rule_refuses_where_the_organisers_script_would_not_finish(case) -> None:
    truth, _, _ = case
    with pytest.raises(PetsegError, match=r"99\.75th percentile, where the organisers"):
        autopet_iv_clicks(truth, np.ones(SHAPE))
