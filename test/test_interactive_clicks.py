"""Click files, click maps and click points on the network grid."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import make_case, oblique_direction

from petseg.config import ModelConfig, NetworkConfig, PreprocessingConfig, from_dict, to_dict
from petseg.errors import PetsegError
from petseg.interactive import (
    CLICK_CHANNELS,
    CLICK_RADIUS_MM,
    Clicks,
    clicks_on_grid,
    read_click_file,
    render_click_maps,
)
from petseg.io.geometry import Geometry
from petseg.preprocessing import preprocess_case

CLICK_ORDER = ("pet", "ct", *CLICK_CHANNELS)


def click_model(order: tuple[str, ...] = CLICK_ORDER, in_channels: int = 4) -> ModelConfig:
    return ModelConfig(NetworkConfig(in_channels=in_channels),
                       PreprocessingConfig(channel_order=order))


def write_clicks(path: Path, points: list[dict]) -> Path:
    path.write_text(json.dumps({"version": {"major": 1, "minor": 0},
                                "type": "Multiple points", "points": points}))
    return path


PET = sitk.Image([20, 16, 12], sitk.sitkFloat32)


# --- the model config ---------------------------------------------------------------------


def test_click_aware_config_takes_clicks_and_round_trips() -> None:
    config = click_model()
    assert config.takes_clicks and not ModelConfig().takes_clicks
    assert config.preprocessing.image_channels == ("pet", "ct")
    assert from_dict(ModelConfig, to_dict(config)) == config


@pytest.mark.parametrize(("order", "in_channels", "message"), [
    (CLICK_ORDER, 2, r"network.in_channels 2 != 4 channels"),
    (("pet", "ct", "tumour_clicks"), 3, r"click channels come both, last"),
    (("pet", "tumour_clicks", "background_clicks", "ct"), 4, r"click channels come both, last"),
    (("pet", "ct", "background_clicks", "tumour_clicks"), 4, r"click channels come both, last"),
])
def test_click_channels_are_checked(order, in_channels, message) -> None:
    with pytest.raises(PetsegError, match=message):
        click_model(order, in_channels)


def test_preprocessing_leaves_the_click_channels_to_the_maps() -> None:
    pet, ct, _, _ = make_case(size=(32, 30, 28))
    plain = preprocess_case(pet, ct, PreprocessingConfig())
    clicked = preprocess_case(pet, ct, click_model().preprocessing)
    np.testing.assert_array_equal(clicked.image, plain.image)


# --- the click file -----------------------------------------------------------------------


def test_click_file_gives_points_in_itk_order(tmp_path) -> None:
    path = write_clicks(tmp_path / "lesion-clicks.json", [
        {"point": [19, 3, 11], "name": "tumor"},
        {"point": [0, 15, 2], "name": "background"},
        {"point": [5.0, 6, 7.0], "name": "tumor"},
    ])
    clicks = read_click_file(path, PET)
    assert clicks == Clicks(tumour=((19, 3, 11), (5, 6, 7)), background=((0, 15, 2),))
    assert clicks.counts() == {"tumour": 2, "background": 1}


def test_click_file_without_points_is_valid(tmp_path) -> None:
    clicks = read_click_file(write_clicks(tmp_path / "c.json", []), PET)
    assert clicks == Clicks() and clicks.counts() == {"tumour": 0, "background": 0}
    assert not clicks


def test_point_outside_the_image_is_a_warning_and_ignored(tmp_path, caplog) -> None:
    path = write_clicks(tmp_path / "c.json", [{"point": [20, 3, 4], "name": "tumor"},
                                              {"point": [1, 2, 3], "name": "background"}])
    with caplog.at_level(logging.WARNING):
        clicks = read_click_file(path, PET)
    assert clicks == Clicks(background=((1, 2, 3),))
    assert f"{path}: point 1 [20, 3, 4] (tumor) lies outside the PET image of [20, 16, 12]" \
        in caplog.text


@pytest.mark.parametrize(("point", "shown"), [
    ([1, 2], "[1, 2]"), ([1, float("nan"), 3], "[1, NaN, 3]"), ([1, 2, 3.5], "[1, 2, 3.5]"),
    (["1", 2, 3], '["1", 2, 3]'), ([1, True, 3], "[1, true, 3]"), (None, "null"),
])
def test_point_not_three_integers_names_file_and_point(tmp_path, point, shown) -> None:
    path = write_clicks(tmp_path / "c.json", [{"point": [1, 1, 1], "name": "tumor"},
                                              {"point": point, "name": "tumor"}])
    message = f"{path}: point 2 {{\"point\": {shown}, \"name\": \"tumor\"}} is not three integer"
    with pytest.raises(PetsegError) as error:
        read_click_file(path, PET)
    assert str(error.value).startswith(message)


def test_malformed_json_is_an_error(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"points": [{"point": [1, 2, 3], "name": "tumor"}')
    with pytest.raises(PetsegError, match=rf"^{broken}: click file not valid JSON"):
        read_click_file(broken, PET)
    with pytest.raises(PetsegError, match=r"without a \"points\" list"):
        read_click_file(write_clicks(tmp_path / "n.json", None), PET)  # type: ignore[arg-type]


# --- the click maps -----------------------------------------------------------------------


def dense_gaussian(point_zyx, shape, spacing_zyx, radius_mm) -> np.ndarray:
    """The map of one click computed over the whole volume (the reference)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    d2 = ((((grid - np.asarray(point_zyx)) * np.asarray(spacing_zyx)) ** 2).sum(-1))
    out = np.exp(-d2 / (2 * (radius_mm / 3) ** 2))
    out[d2 > radius_mm**2] = 0
    return out


def test_click_map_is_a_physical_gaussian_in_a_local_box() -> None:
    shape, spacing = (20, 24, 28), (3.0, 2.0, 1.5)
    tumour = np.array([[4.0, 10.5, 7.25], [15.0, 20.0, 26.0]])
    background = np.array([[0.0, 0.0, 0.0]])
    maps = render_click_maps(tumour, background, shape, spacing)
    assert maps.dtype == np.float32 and maps.shape == (2, *shape)
    expected = np.maximum(*(dense_gaussian(p, shape, spacing, CLICK_RADIUS_MM) for p in tumour))
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)
    np.testing.assert_allclose(maps[1], dense_gaussian(background[0], shape, spacing,
                                                       CLICK_RADIUS_MM), atol=1e-6)
    assert maps[0, 15, 20, 26] == pytest.approx(1.0)
    # 18 mm reach: 6 voxels of 3 mm along z, 12 of 1.5 mm along x, nothing beyond
    assert maps[1, 6, 0, 0] > 0 and maps[1, 7, 0, 0] == 0
    assert maps[1, 0, 0, 12] > 0 and maps[1, 0, 0, 13] == 0


def test_a_ball_click_is_one_within_its_radius_and_zero_beyond() -> None:
    shape, spacing = (20, 24, 28), (3.0, 2.0, 1.5)
    point = np.array([[9.0, 11.0, 13.5]])
    maps = render_click_maps(point, np.zeros((0, 3)), shape, spacing, 6.0, "ball")
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    inside = (((grid - point[0]) * np.asarray(spacing)) ** 2).sum(-1) <= 36.0
    np.testing.assert_array_equal(maps[0], inside.astype(np.float32))
    assert int(inside.sum()) == 88 and not maps[1].any()
    with pytest.raises(ValueError, match="click shape 'disk': use one of"):
        render_click_maps(point, point, shape, spacing, 6.0, "disk")


def test_no_clicks_and_far_clicks_give_empty_maps() -> None:
    empty = np.zeros((0, 3))
    assert not render_click_maps(empty, empty, (5, 6, 7), (2.0, 2.0, 2.0)).any()
    far = np.array([[-50.0, 3.0, 3.0]])
    assert not render_click_maps(far, far, (5, 6, 7), (2.0, 2.0, 2.0)).any()


# --- the points on the network grid ---------------------------------------------------------


def test_click_on_a_lesion_voxel_lands_on_the_lesion_after_preprocessing() -> None:
    """Non-cubic PET with a flipped, oblique direction: the click (x, y, z) on a lesion voxel
    sits on the lesion of the 2 mm network grid; read as (z, y, x) it would miss it."""
    flip = np.diag([-1.0, 1.0, 1.0])
    direction = tuple((flip @ np.asarray(oblique_direction(25.0)).reshape(3, 3)).ravel())
    pet, ct, seg, _ = make_case(size=(56, 48, 36), direction=direction)
    suv, truth = sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(seg)
    lesion = np.argwhere(truth > 0)  # [z, y, x] rows
    swapped_in = (lesion[:, 2] < truth.shape[0]) & (lesion[:, 0] < truth.shape[2])
    swapped_hits = np.zeros(len(lesion), bool)
    swapped_hits[swapped_in] = truth[tuple(lesion[swapped_in][:, ::-1].T)] > 0
    candidates = lesion[~swapped_hits]  # lesion voxels whose (z, y, x) reading misses
    z, y, x = candidates[np.argmax(suv[tuple(candidates.T)])]
    click = (int(x), int(y), int(z))
    case = preprocess_case(pet, ct, click_model().preprocessing, seg=seg)
    assert case.label is not None
    tumour, background = clicks_on_grid(Clicks(tumour=(click,)), pet, case.grid)
    assert tumour.shape == (1, 3) and background.shape == (0, 3)
    point = tuple(int(v) for v in np.round(tumour[0]))
    assert case.label[point] == 1
    # the physical point agrees with SimpleITK's own transform
    physical = pet.TransformIndexToPhysicalPoint(click)
    grid_image = case.grid.reference_image()
    expected_xyz = grid_image.TransformPhysicalPointToContinuousIndex(physical)
    np.testing.assert_allclose(tumour[0], expected_xyz[::-1], atol=1e-6)
    swapped, _ = clicks_on_grid(Clicks(tumour=((int(z), int(y), int(x)),)), pet, case.grid)
    inside = all(0 <= round(v) < n for v, n in zip(swapped[0], case.label.shape, strict=True))
    assert not inside or case.label[tuple(round(v) for v in swapped[0])] == 0


def test_clicks_on_the_same_grid_are_the_indices_reversed() -> None:
    geometry = Geometry((20, 16, 12), (2.0364, 2.0364, 3.0), (5.0, -3.0, 7.0),
                        oblique_direction(30.0))
    tumour, background = clicks_on_grid(Clicks(((19, 3, 11),), ((0, 15, 2),)), geometry,
                                         geometry)
    np.testing.assert_allclose(tumour, [[11, 3, 19]], atol=1e-9)
    np.testing.assert_allclose(background, [[2, 15, 0]], atol=1e-9)


def test_a_click_costs_its_box_not_the_volume(monkeypatch) -> None:
    """Each click's Gaussian is evaluated in the 18 mm box around it only."""
    from petseg.interactive import maps

    sizes: list[int] = []
    exp = np.exp

    def recording_exp(values, *args, **kwargs):
        sizes.append(np.size(values))
        return exp(values, *args, **kwargs)

    monkeypatch.setattr(maps.np, "exp", recording_exp)
    points = np.array([[20.0, 30.0, 40.0], [60.0, 60.0, 60.0]])
    result = render_click_maps(points, points[:1], (100, 120, 140), (2.0, 2.0, 2.0))
    assert len(sizes) == 3 and max(sizes) <= 19 ** 3  # 2 * 9 + 1 voxels of 2 mm per axis
    assert result[0, 20, 30, 40] == 1 and result[0, 60, 60, 60] == 1
