"""Training with simulated clicks: the click maps follow the patch's augmentation, the
automatic stream is untouched, and automatic weights widen to a click-aware network that
starts exactly where they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import TINY_MODEL, synthetic_cache, tiny_config

from petseg.checkpoint import load_checkpoint
from petseg.config import CLICK_CHANNELS, ClickEncoding, ModelConfig
from petseg.model import build_network
from petseg.training.augment import augment_sample, draw_params
from petseg.training.cache import load_volume
from petseg.training.click_simulation import ClickTrainingConfig
from petseg.training.clicks import TrainingClicks, add_click_inputs, automatic_model
from petseg.training.config import AugmentationConfig, load_training_config
from petseg.training.fold import initial_checkpoint
from petseg.training.loader import EpochLoader

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SPACING_ZYX = (2.0, 2.0, 2.0)


def click_model(model: ModelConfig) -> ModelConfig:
    """`model` with the two click channels added."""
    return ModelConfig(
        network=dataclasses.replace(model.network, in_channels=model.network.in_channels + 2),
        preprocessing=dataclasses.replace(
            model.preprocessing, channel_order=(*model.preprocessing.channel_order,
                                                *CLICK_CHANNELS)))


def lesion_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[2, 48, 40, 44]` image, an ellipsoid lesion of radii 3/3/4 voxels and its centre."""
    shape = (48, 40, 44)
    rng = np.random.default_rng(3)
    image = np.stack([1.0 + 0.1 * rng.standard_normal(shape),
                      0.5 + 0.02 * rng.standard_normal(shape)]).astype(np.float32)
    centre = np.array([22, 19, 24])
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    label = (((zz - centre[0]) / 3.0) ** 2 + ((yy - centre[1]) / 3.0) ** 2
             + ((xx - centre[2]) / 4.0) ** 2 <= 1.0).astype(np.uint8)
    image[0][label > 0] += 6.0
    return image, label, centre


STRONG = AugmentationConfig(patch_size=(32, 32, 32), positive_fraction=1.0, affine_prob=1.0,
                            elastic_prob=1.0, rotate_axial_rad=0.5, scale_range=0.2,
                            translate_voxels=8.0, gamma_prob=1.0, noise_prob=1.0)


def test_training_clicks_lie_in_the_patch_on_its_lesion_after_augmentation() -> None:
    """Clicks are drawn on the augmented patch: each tumour click on the patch's (moved)
    lesion, each background click off it, and every click drawn into the patch's maps."""
    image, label, _ = lesion_volume()
    for kind in ("points", "scribbles"):
        config = ClickTrainingConfig(no_click_fraction=0.0,
                                     scribble_fraction=1.0 if kind == "scribbles" else 0.0)
        simulation = TrainingClicks(config, encoding=ClickEncoding("ball", 2.0))
        drawn = []
        for seed in range(8):
            params = draw_params(np.random.default_rng(seed), label.shape, STRONG,
                                 np.flatnonzero(label))
            seen = []
            draw = simulation.draw
            simulation.draw = lambda *a, _d=draw, _s=seen: _s.append((a[0], _d(*a))) or _s[-1][1]
            maps = simulation.patch_maps(np.random.default_rng(100 + seed), SPACING_ZYX)
            out, out_label = augment_sample(image, label, params, STRONG, CPU, patch_maps=maps)
            simulation.draw = draw
            assert out.shape == (4, 32, 32, 32)
            lesion = out_label.numpy() > 0
            (drawn_on, (tumour, background)), = seen
            np.testing.assert_array_equal(drawn_on, out_label.numpy())  # the augmented patch
            assert lesion[tuple(tumour.T)].all() and not lesion[tuple(background.T)].any()
            for channel, points in ((2, tumour), (3, background)):
                assert (out[channel].numpy()[tuple(points.T)] == 1.0).all()  # drawn, in patch
                assert bool(out[channel].any()) == bool(len(points))
            drawn.append(len(tumour) + len(background))
        assert max(drawn) > 0, kind


def test_image_channels_are_those_of_the_automatic_sample() -> None:
    image, label, _ = lesion_volume()
    config = AugmentationConfig(patch_size=(24, 24, 24), gamma_prob=1.0, noise_prob=1.0,
                                affine_prob=1.0, elastic_prob=1.0)
    params = draw_params(np.random.default_rng(5), label.shape, config)
    plain, plain_label = augment_sample(image, label, params, config, CPU)
    clicks = TrainingClicks(ClickTrainingConfig(no_click_fraction=0.0))
    clicked, clicked_label = augment_sample(
        image, label, params, config, CPU,
        patch_maps=clicks.patch_maps(np.random.default_rng(1), SPACING_ZYX))
    np.testing.assert_allclose(clicked[:2].numpy(), plain.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(clicked_label.numpy(), plain_label.numpy())


def test_loader_with_clicks_keeps_the_automatic_stream(tmp_path: Path) -> None:
    cache, _ = synthetic_cache(tmp_path, n=4)
    volumes = [load_volume(cache, f"PETCT_{i:02d}/01-01-2001-NA-x", in_memory=True)
               for i in range(4)]
    config = tiny_config(patch=16)
    clicks = TrainingClicks(config.clicks)
    args = (volumes, config.augmentation, 2, 0, 0, 1, CPU)
    plain = list(EpochLoader(*args, threads=1))
    clicked = list(EpochLoader(*args, threads=1, clicks=clicks))
    again = list(EpochLoader(*args, threads=2, clicks=clicks))
    assert len(plain) == len(clicked) == 2
    for (image, label), (image_c, label_c), (image_a, _) in zip(plain, clicked, again,
                                                                 strict=True):
        assert image_c.shape == (2, 4, 16, 16, 16)
        np.testing.assert_allclose(image_c[:, :2].numpy(), image.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(label_c.numpy(), label.numpy())
        assert torch.equal(image_c[:, 2:], image_a[:, 2:])  # the clicks are reproducible


def test_click_config_is_the_paper_setting_with_clicks() -> None:
    auto = load_training_config(ROOT / "resources" / "train_config.json")
    clicks = load_training_config(ROOT / "resources" / "train_clicks.json")
    assert clicks.model.takes_clicks and not auto.model.takes_clicks
    assert clicks.model.network.in_channels == 4
    assert automatic_model(clicks.model) == auto.model
    assert dataclasses.replace(clicks, model=auto.model) == auto


def test_widened_weights_give_the_same_probabilities_at_zero_clicks() -> None:
    """A demo-width automatic network with trained weights (a bundled fold without its click
    inputs), widened: at zero clicks it gives the automatic network's probabilities."""
    fold = load_checkpoint(ROOT / "weights" / "fold_0.safetensors")
    model = fold.model_config if fold.model_config.takes_clicks else click_model(
        fold.model_config)
    auto = build_network(automatic_model(model).network).eval()
    auto.load_state_dict({k: fold.state_dict[k][:, :v.shape[1]] if v.ndim == 5 else
                          fold.state_dict[k] for k, v in auto.state_dict().items()})
    widened = build_network(model.network).eval()
    widened.load_state_dict(add_click_inputs(auto.state_dict(), model))
    rng = np.random.default_rng(0)
    image = torch.from_numpy(np.stack([rng.gamma(1.0, 2.0, (32, 32, 32)),
                                       rng.random((32, 32, 32))]).astype(np.float32))[None]
    with torch.no_grad():
        expected = torch.softmax(auto(image), 1)[:, 1]
        zero = torch.softmax(widened(torch.cat([image, torch.zeros_like(image)], 1)), 1)[:, 1]
        ones = torch.softmax(widened(torch.cat([image, torch.ones_like(image)], 1)), 1)[:, 1]
    np.testing.assert_allclose(zero.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    # the click channels are wired in (zero weights now, trainable)
    first = [k for k, v in widened.state_dict().items() if v.ndim == 5 and v.shape[1] == 4]
    assert len(first) == 2 and torch.equal(ones, zero)


def test_init_accepts_automatic_weights_for_a_click_model(tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_config(), model=click_model(TINY_MODEL))
    network = build_network(TINY_MODEL.network)
    from petseg.checkpoint import save_checkpoint

    path = tmp_path / "auto.safetensors"
    save_checkpoint(path, network.state_dict(), TINY_MODEL, {"mean_dsc": 0.5})
    assert initial_checkpoint(path, config).model_config == TINY_MODEL


def test_click_training_runs_from_automatic_weights_on_the_automatic_cache(tmp_path: Path) -> None:
    """The automatic cache serves the click model; with lr 0 the fine-tuned network keeps
    zero click weights and validates exactly as the automatic one at zero clicks."""
    from petseg.checkpoint import save_checkpoint
    from petseg.training.cache import check_cache_config
    from petseg.training.loop import train

    cache, splits = synthetic_cache(tmp_path, n=6)
    model = click_model(TINY_MODEL)
    check_cache_config(cache, model.preprocessing, create=False)  # image channels only
    torch.manual_seed(5)
    start = save_checkpoint(tmp_path / "auto.safetensors",
                            build_network(TINY_MODEL.network).state_dict(), TINY_MODEL,
                            {"mean_dsc": 0.5})
    auto = tiny_config(epochs=1)
    frozen = dataclasses.replace(auto, model=model, optimizer=dataclasses.replace(
        auto.optimizer, lr=0.0))
    clicked = train(frozen, cache, splits, 0, tmp_path / "clicks", device="cpu",
                    progress=False, init=start)
    plain = train(dataclasses.replace(auto, optimizer=frozen.optimizer), cache, splits, 0,
                  tmp_path / "auto", device="cpu", progress=False, init=start)
    best = load_checkpoint(tmp_path / "clicks" / "best.safetensors")
    assert best.model_config == model and best.meta["extra"]["init"]["file"] == "auto.safetensors"
    automatic = build_network(TINY_MODEL.network).state_dict()
    reading_input = [k for k, v in automatic.items() if v.shape != best.state_dict[k].shape]
    first = [best.state_dict[k] for k in reading_input]
    assert len(first) == 2 and all(v.shape[1] == 4 for v in first)
    assert all(float(v[:, 2:].abs().max()) == 0.0 for v in first)
    assert clicked.best_metrics["mean_dsc"] == pytest.approx(plain.best_metrics["mean_dsc"],
                                                             abs=1e-6)
