"""The ensemble sliding-window engine against MONAI's stock sliding window, on the CPU."""

from __future__ import annotations

import itertools
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_synthetic import make_case
from monai.inferers import sliding_window_inference
from tiny_models import SuvThreshold, tiny_ensemble

from petseg import preprocessing
from petseg.cli import main
from petseg.config import (
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    resolve_inference_config,
)
from petseg.errors import PetsegError
from petseg.inference import engine, memory, plan
from petseg.inference.engine import run_ensemble
from petseg.inference.plan import FLIP_AXES, Plan, make_plan
from petseg.inference.predictor import Predictor
from petseg.model import build_network
from petseg.runs import loop, predict_folder

TINY = NetworkConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny convolutions on a shared 2-core machine: one thread avoids OpenMP spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_phantom(
    shape: tuple[int, int, int], lesions: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image `[2, D, H, W]` (PET-like SUV, CT-like [0, 1]) and its lesion mask `[D, H, W]`.

    An elliptic body cylinder along D with SUV ~1, spheres of SUV 3-8 inside it.
    """
    zz, yy, xx = torch.meshgrid(
        *[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"
    )
    _, h, w = shape
    body = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.42)) ** 2 < 1
    pet = body.float() * (1 + 0.3 * torch.rand(shape, generator=generator))
    lesion = torch.zeros(shape, dtype=torch.bool)
    for _ in range(lesions):
        centre = [int(torch.randint(4, s - 4, (1,), generator=generator)) for s in shape]
        radius = 1.5 + 3 * float(torch.rand(1, generator=generator))
        sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
        sphere = (sphere < radius**2) & body
        pet[sphere] = 3 + 5 * float(torch.rand(1, generator=generator))
        lesion |= sphere
    ct = torch.where(body, 0.5, 0.0) + 0.02 * torch.rand(shape, generator=generator)
    return torch.stack([pet, ct]), lesion


@pytest.fixture(scope="module")
def trained_ensemble() -> list[torch.nn.Module]:
    """Two tiny UNets trained for a few seconds to find the bright spheres (folds of a sort)."""
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    networks = []
    for _fold in range(2):
        network = build_network(TINY)
        optimiser = torch.optim.Adam(network.parameters(), 2e-2)
        for _step in range(30):
            pairs = [tiny_phantom((24, 24, 24), 3, generator) for _ in range(2)]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs]).long()
            loss = torch.nn.functional.cross_entropy(network(x), y, weight=torch.tensor([1.0, 5.0]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        networks.append(network.eval())
    return networks


def cfg(**changes: object) -> InferenceConfig:
    """The paper's inference settings with `changes`."""
    return InferenceConfig(**changes)  # type: ignore[arg-type]


def random_ensemble(count: int = 2) -> list[torch.nn.Module]:
    return [build_network(TINY).eval() for _ in range(count)]


def stock_probability(
    networks: list[torch.nn.Module],
    image: torch.Tensor,
    roi: tuple[int, int, int],
    weights: list[float] | None = None,
    mode: str = "gaussian",
) -> torch.Tensor:
    """The stock way: MONAI's sliding window per fold (fp32), then the (weighted) average."""
    weights = weights or [1.0] * len(networks)
    total = sum(weights)
    result = torch.zeros(image.shape[1:])
    for network, weight in zip(networks, weights, strict=True):
        with torch.no_grad():
            blended = sliding_window_inference(
                image[None],
                roi,
                1,
                lambda x, n=network: torch.softmax(n(x), 1),
                overlap=0.5,
                mode=mode,
            )
        result += blended[0, 1] * weight / total
    return result


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def pointwise_logits(x: torch.Tensor) -> torch.Tensor:
    """A trivial predictor: logits are the input plus one; lesion p = sigmoid(x1 - x0)."""
    return x + 1


def expected_pointwise(image: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(image[1] - image[0])


# --- reference mode is the stock result ------------------------------------------------------


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_reference_mode_equals_monai_weighted_average(blend: str) -> None:
    networks = random_ensemble(2)
    image = torch.rand(2, 24, 26, 30)
    roi = (16, 16, 16)
    expected = stock_probability(networks, image, roi, [0.7, 0.3], mode=blend)
    result = run_ensemble(
        networks,
        image,
        cfg(roi_size=roi, blend=blend, windows_per_batch=3),
        weights=[0.7, 0.3],
        device="cpu",
        bytes_per_voxel=100,
    )
    assert result.probability.shape == (24, 26, 30)
    assert result.probability.dtype == torch.float32
    assert torch.allclose(result.probability, expected, atol=1e-5, rtol=0)
    assert result.plan.window == roi
    assert result.plan.windows_per_batch == 3
    assert len(result.plan.starts) == 2 * 3 * 3


def test_reference_mode_pads_an_image_smaller_than_the_window_like_monai() -> None:
    networks = random_ensemble(1)
    image = torch.rand(2, 12, 20, 26)
    expected = stock_probability(networks, image, (16, 16, 16))
    result = run_ensemble(
        networks, image, cfg(roi_size=(16, 16, 16)), device="cpu", bytes_per_voxel=100
    )
    assert result.plan.pad == ((2, 2), (0, 0), (0, 0))
    assert torch.allclose(result.probability, expected, atol=1e-5, rtol=0)


def test_zero_weight_fold_drops_out_of_the_weighted_ensemble() -> None:
    networks = random_ensemble(2)
    image = torch.rand(2, 20, 20, 20)
    both = run_ensemble(
        networks,
        image,
        cfg(roi_size=(16,) * 3),
        weights=[0.0, 2.0],
        device="cpu",
        bytes_per_voxel=100,
    )
    second = run_ensemble(
        networks[1:], image, cfg(roi_size=(16,) * 3), device="cpu", bytes_per_voxel=100
    )
    assert torch.allclose(both.probability, second.probability, atol=1e-6, rtol=0)


def test_bad_ensemble_weights_are_a_clear_error() -> None:
    with pytest.raises(
        PetsegError, match=r"ensemble weights \[-1.0, 1.0\] must be finite, >= 0 and not all 0"
    ):
        run_ensemble(
            [pointwise_logits] * 2,
            torch.rand(2, 8, 8, 8),
            weights=[-1, 1],
            device="cpu",
            bytes_per_voxel=10,
        )


# --- exact stitching with a trivial predictor ------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "budget_gb", "batch"),
    [("reference", None, 1), ("reference", None, 4), ("fast", None, 1), ("fast", 2e-4, 2)],
)
def test_trivial_predictor_is_stitched_exactly(
    mode: str, budget_gb: float | None, batch: int
) -> None:
    image = torch.randn(2, 27, 35, 42)
    result = run_ensemble(
        [pointwise_logits],
        image,
        cfg(
            mode=mode,
            roi_size=(12, 12, 12),
            windows_per_batch=batch,
            memory_budget_gb=budget_gb,
            fast_overlap=4,
        ),
        size_divisor=4,
        bytes_per_voxel=40,
        device="cpu",
    )
    if mode == "fast" and budget_gb is None:
        assert result.plan.single_window
        assert result.plan.window == (28, 36, 44)  # padded to the divisor
    if budget_gb is not None:
        assert len(result.plan.starts) > 1
        assert result.plan.blend == "ramp"
    assert torch.allclose(result.probability, expected_pointwise(image), atol=1e-6, rtol=0)


def test_fast_tiles_cover_the_volume_with_the_requested_overlap() -> None:
    window, counts = plan.fast_window((64, 80, 200), 64 * 80 * 80, 16, 16, (32, 32, 32))
    assert math.prod(window) <= 64 * 80 * 80
    assert all(w % 16 == 0 for w in window)
    for length, w, n in zip((64, 80, 200), window, counts, strict=True):
        starts = plan.tile_starts(length, w, n)
        assert starts[0] == 0
        assert starts[-1] + w == length
        assert all(b - a <= w - 16 for a, b in itertools.pairwise(starts))


# --- skipped windows --------------------------------------------------------------------------


def test_windows_outside_the_body_are_skipped_without_changing_the_body() -> None:
    networks = random_ensemble(1)
    image = torch.rand(2, 16, 32, 32)
    body = np.zeros((16, 32, 32), dtype=bool)
    body[2:14, 2:12, 3:13] = True
    full = run_ensemble(networks, image, cfg(roi_size=(16,) * 3), device="cpu", bytes_per_voxel=100)
    skipped = run_ensemble(
        networks, image, cfg(roi_size=(16,) * 3), body_mask=body, device="cpu", bytes_per_voxel=100
    )
    # windows start at 0, 8, 16 along H and W; those starting at 16 hold no body voxel
    assert len(full.plan.starts) == 9
    assert skipped.plan.skipped == 5
    assert sorted(skipped.plan.starts) == [(0, 0, 0), (0, 0, 8), (0, 8, 0), (0, 8, 8)]
    inside = torch.from_numpy(body)
    assert torch.equal(skipped.probability[inside], full.probability[inside])
    # voxels that no kept window covers come out as 0
    assert float(skipped.probability[:, 24:, :].abs().max()) == 0.0
    assert float(skipped.probability[:, :, 24:].abs().max()) == 0.0


def test_body_mask_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"body mask shape \(8, 8, 9\) != image shape"):
        run_ensemble(
            [pointwise_logits],
            torch.rand(2, 8, 8, 8),
            cfg(roi_size=(4,) * 3),
            body_mask=np.ones((8, 8, 9), bool),
            device="cpu",
            bytes_per_voxel=10,
        )


# --- fast mode against the stock fp32 path, trained networks ---------------------------------


def test_fast_mode_mask_agrees_with_stock(trained_ensemble: list[torch.nn.Module]) -> None:
    image, truth = tiny_phantom((36, 44, 48), 8, torch.Generator().manual_seed(7))
    roi = (24, 24, 24)
    stock = stock_probability(trained_ensemble, image, roi) > 0.5
    assert dice(stock, truth) > 0.7  # the networks did learn the task

    reference = run_ensemble(
        trained_ensemble, image, cfg(roi_size=roi), device="cpu", bytes_per_voxel=100
    )
    assert dice(reference.probability > 0.5, stock) >= 0.99

    whole = run_ensemble(
        trained_ensemble, image, cfg(roi_size=roi, mode="fast"), device="cpu", bytes_per_voxel=100
    )
    assert whole.plan.single_window
    assert dice(whole.probability > 0.5, stock) >= 0.98

    tiled = run_ensemble(
        trained_ensemble,
        image,
        cfg(roi_size=roi, mode="fast", memory_budget_gb=7e-3, fast_overlap=12),
        device="cpu",
        bytes_per_voxel=100,
    )
    assert len(tiled.plan.starts) > 1
    assert len(tiled.plan.starts) < len(reference.plan.starts)
    assert dice(tiled.probability > 0.5, stock) >= 0.98


# --- out-of-memory fallback -------------------------------------------------------------------


class FakeOOM:
    """Wraps a predictor; raises CUDA's out-of-memory error above a number of input voxels."""

    def __init__(self, predictor, max_voxels: int) -> None:  # type: ignore[no-untyped-def]
        self.predictor = predictor
        self.max_voxels = max_voxels
        self.failures = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * math.prod(x.shape[2:]) > self.max_voxels:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return self.predictor(x)


def test_out_of_memory_halves_the_batch_and_keeps_the_result() -> None:
    networks = random_ensemble(2)
    image = torch.rand(2, 20, 24, 24)
    plain = run_ensemble(
        networks, image, cfg(roi_size=(16,) * 3), device="cpu", bytes_per_voxel=100
    )
    flaky = [FakeOOM(n, 16**3) for n in networks]
    result = run_ensemble(
        flaky,
        image,
        cfg(roi_size=(16,) * 3, windows_per_batch=4),
        device="cpu",
        bytes_per_voxel=100,
    )
    assert result.fallbacks == ("windows_per_batch=2", "windows_per_batch=1")
    assert result.plan.windows_per_batch == 1
    assert torch.allclose(result.probability, plain.probability, atol=1e-6, rtol=0)


def test_out_of_memory_in_fast_mode_shrinks_the_window() -> None:
    image = torch.randn(2, 40, 48, 64)
    flaky = FakeOOM(pointwise_logits, 40 * 48 * 32)
    result = run_ensemble(
        [flaky],
        image,
        cfg(mode="fast", roi_size=(16,) * 3, fast_overlap=8),
        size_divisor=8,
        device="cpu",
        bytes_per_voxel=100,
    )
    assert flaky.failures >= 1
    assert result.fallbacks and result.fallbacks[0].startswith("budget_gb=")
    assert math.prod(result.plan.window) <= 40 * 48 * 32
    assert torch.allclose(result.probability, expected_pointwise(image), atol=1e-6, rtol=0)


def test_out_of_memory_with_nothing_left_to_shrink_is_a_clear_error() -> None:
    always = FakeOOM(pointwise_logits, 0)
    with pytest.raises(PetsegError, match=r"out of memory on cpu even with one \(8, 8, 8\) window"):
        run_ensemble(
            [always],
            torch.rand(2, 8, 8, 8),
            cfg(roi_size=(8,) * 3),
            device="cpu",
            bytes_per_voxel=10,
        )


def _plan(**changes: object) -> Plan:
    base = dict(
        shape=(100, 100, 100),
        pad=((0, 0),) * 3,
        window=(192, 192, 192),
        starts=((0, 0, 0),),
        skipped=0,
        windows_per_batch=1,
        stitch="device",
        blend="gaussian",
        ramp=0,
        precision="fp16",
        buffer_bytes=10**9,
        window_bytes=2 * 10**9,
        estimated_bytes=3 * 10**9,
    )
    base.update(changes)
    return Plan(**base)  # type: ignore[arg-type]


def test_fallback_order_ends_with_cpu_stitching_on_cuda() -> None:
    cuda = torch.device("cuda", 0)
    roi = (192, 192, 192)
    assert plan.fallback(_plan(windows_per_batch=8), "reference", roi, cuda) == (
        "windows_per_batch",
        4,
    )
    big = _plan(shape=(300, 200, 480), window=(304, 208, 480))
    step = plan.fallback(big, "fast", roi, cuda)
    assert step == ("budget_gb", 2.0)  # buffers 1 GB + half of the 2 GB window
    assert plan.fallback(_plan(), "reference", roi, cuda) == ("stitch", "cpu")
    assert plan.fallback(_plan(stitch="cpu"), "reference", roi, cuda) is None


# --- memory planning --------------------------------------------------------------------------

PAPER_FP16_BYTES_PER_VOXEL = 5.9e9 / (304 * 208 * 496)
"""Peak of one fp16 whole-body forward of the paper's network on an H100, per voxel."""

T4_BUDGET = 14.5e9
"""What a T4 (16 GB, 15.1 GiB usable) has free for the engine after the CUDA context."""


def _t4_plan(shape: tuple[int, int, int], mode: str, budget_bytes: float = T4_BUDGET,
             bytes_per_voxel: float = PAPER_FP16_BYTES_PER_VOXEL * 1.25):
    """The plan for the paper's network in fp16 within a T4's memory budget (or another)."""
    return make_plan(
        shape,
        mode=mode,
        roi_size=(192,) * 3,
        overlap=0.5,
        blend="gaussian",
        windows_per_batch="auto",
        precision="fp16",
        stitch="auto",
        budget_bytes=budget_bytes,
        bytes_per_voxel=bytes_per_voxel,
        in_channels=2,
        size_divisor=16,
    )


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_plan_for_a_512x512x1000_volume_fits_a_t4(mode: str) -> None:
    plan = _t4_plan((1000, 512, 512), mode)
    assert plan.estimated_bytes <= T4_BUDGET
    assert plan.stitch == "device"  # 262 M voxels of buffers (2.6 GB) fit beside the windows
    assert plan.windows_per_batch >= 1
    if mode == "fast":
        assert math.prod(plan.window) > 192**3
        assert len(plan.starts) < 30


def test_fast_plan_is_one_forward_when_the_cropped_body_fits() -> None:
    plan = _t4_plan((248, 104, 152), "fast")
    assert plan.window == (256, 112, 160)
    assert plan.pad == ((4, 4), (4, 4), (4, 4))
    assert plan.single_window


def test_a_volume_too_big_for_the_device_is_stitched_on_the_cpu() -> None:
    plan = _t4_plan((1000, 512, 512), "reference", budget_bytes=4e9, bytes_per_voxel=200)
    assert plan.stitch == "cpu"
    assert plan.buffer_bytes == 0


def test_activation_cost_counts_the_tensors_alive_at_the_peak() -> None:
    network = torch.nn.Sequential(
        torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.Conv3d(6, 2, 3, padding=1)
    ).eval()
    cost = memory.activation_bytes_per_voxel(network, 2, "cpu", size_divisor=1)
    # float32 input (2 channels) + hidden map (6) + output (2) are alive together
    assert cost == pytest.approx((2 + 6 + 2) * 4)


def test_activation_cost_of_a_unet_exceeds_its_input_and_output() -> None:
    cost = memory.activation_bytes_per_voxel(build_network(TINY).eval(), 2, "cpu", size_divisor=4)
    assert cost > (2 + 2) * 4


# --- test-time augmentation -------------------------------------------------------------------


def test_flip_equivariant_predictor_is_unchanged_by_flips() -> None:
    image = torch.randn(2, 20, 22, 26)
    result = run_ensemble(
        [pointwise_logits], image, cfg(roi_size=(12,) * 3, tta=8), device="cpu", bytes_per_voxel=40
    )
    assert result.passes == 8
    # eight passes summed in float32: a few ulps more than one pass
    assert torch.allclose(result.probability, expected_pointwise(image), atol=5e-6, rtol=0)


def test_flips_are_undone_for_a_predictor_that_is_not_flip_equivariant() -> None:
    image = torch.randn(2, 16, 16, 20)

    def shift_w(x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=4)

    result = run_ensemble(
        [shift_w], image, cfg(mode="fast", tta=2), device="cpu", bytes_per_voxel=40, size_divisor=4
    )
    assert result.plan.single_window and result.passes == 2
    logit = image[1] - image[0]
    expected = torch.sigmoid(torch.roll(logit, 1, 2)) + torch.sigmoid(torch.roll(logit, -1, 2))
    assert torch.allclose(result.probability, expected / 2, atol=1e-6, rtol=0)


def test_flip_order_starts_with_identity_and_left_right() -> None:
    assert FLIP_AXES[0] == () and FLIP_AXES[1] == (2,)
    assert len(set(FLIP_AXES)) == 8


class FakeClock:
    """`time.perf_counter` stand-in that a predictor advances by one second per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("budget", "passes"), [(0.5, 1), (3.5, 3), (100.0, 8)])
def test_time_budget_sets_the_number_of_flip_passes(
    monkeypatch: pytest.MonkeyPatch, budget: float, passes: int
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(engine.time, "perf_counter", clock)

    def one_second(x: torch.Tensor) -> torch.Tensor:
        clock.now += 1.0
        return x + 1

    image = torch.randn(2, 12, 12, 12)
    result = run_ensemble(
        [one_second],
        image,
        cfg(mode="fast", time_budget_s=budget),
        device="cpu",
        bytes_per_voxel=40,
        size_divisor=4,
    )
    assert result.passes == passes
    assert result.pass_seconds == 1.0
    assert torch.allclose(result.probability, expected_pointwise(image), atol=1e-6, rtol=0)


# --- the engine inside the pipeline -----------------------------------------------------------


def test_body_mask_for_windows_counts_everything_denser_than_air() -> None:
    hu = np.array([-1024.0, -1000.0, -950.0, -850.0, -800.0, 40.0, 1500.0])
    scaled = (np.clip(hu, -1024, 1024) + 1024) / 2048
    image = np.stack([np.zeros_like(scaled), scaled]).reshape(2, 1, 1, -1).astype(np.float32)
    mask = preprocessing.body_mask_for_windows(image, PreprocessingConfig())
    assert mask is not None
    assert mask.ravel().tolist() == [False, False, False, True, True, True, True]
    pet_only = PreprocessingConfig(channel_order=("pet",))
    assert preprocessing.body_mask_for_windows(image[:1], pet_only) is None


def test_predictor_in_fast_mode_gives_the_reference_mask() -> None:
    pet, ct, seg, _ = make_case()
    model = ModelConfig(network=TINY)
    masks = {}
    for mode in ("reference", "fast"):
        config = resolve_inference_config(cfg(roi_size=(32,) * 3, mode=mode))
        predictor = Predictor([SuvThreshold()], model, config, device="cpu")
        masks[mode] = sitk.GetArrayFromImage(predictor.predict(pet, ct).mask)
    np.testing.assert_array_equal(masks["fast"], masks["reference"])
    assert dice(torch.from_numpy(masks["fast"] > 0), torch.from_numpy(
        sitk.GetArrayFromImage(seg) > 0)) >= 0.97


def test_predictor_windows_follow_the_model_config_not_the_wrapper() -> None:
    """A network seen through a wrapper without `strides` (as DDP or a compiled module
    shows it) still gets windows whose sizes its model config's strides divide."""
    shapes: list[tuple[int, ...]] = []

    class Wrapped(SuvThreshold):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape[2:]))
            return super().forward(x)

    config = resolve_inference_config(cfg(roi_size=(32,) * 3, mode="fast", tta=1))
    predictor = Predictor([Wrapped()], ModelConfig(network=TINY), config, device="cpu")
    image = torch.rand(2, 37, 33, 29)
    probability = predictor.probability(image).probability
    assert probability.shape == (37, 33, 29)
    assert shapes and all(size % 4 == 0 for shape in shapes for size in shape), shapes


def test_an_fp16_overflow_reruns_the_plan_in_fp32(monkeypatch, caplog) -> None:
    """A network whose fp16 forward overflows on the hottest windows (inf logits, NaN
    probability): the engine notices on the device and reruns the plan in fp32, whose
    result is the one returned."""
    import contextlib
    import dataclasses

    in_fp16 = []

    @contextlib.contextmanager
    def recording_autocast(device, precision):
        in_fp16.append(precision == "fp16")
        yield

    class OverflowsInFp16(SuvThreshold):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = super().forward(x)
            if in_fp16[-1] and x[:, 0].max() > 6.0:  # beyond 65,504 in fp16
                logits[:, 1] = math.inf
                logits[:, 0] = math.inf
            return logits

    settings = engine._settings
    monkeypatch.setattr(engine, "_settings", lambda *args: dataclasses.replace(
        settings(*args), precision="fp16"))  # as on CUDA
    monkeypatch.setattr(engine, "autocast", recording_autocast)
    image, _ = tiny_phantom((24, 40, 40), 4, torch.Generator().manual_seed(3))
    assert image[0].max() > 6.0
    config = cfg(roi_size=(16, 16, 16), overlap=0.25, tta=2)
    with caplog.at_level("WARNING", logger="petseg.inference.engine"):
        result = run_ensemble([OverflowsInFp16()], image, config, device="cpu",
                              bytes_per_voxel=1e3)
    assert result.fallbacks == ("precision=fp32",) and result.plan.precision == "fp32"
    assert "fp16 overflow with" in caplog.text and "rerunning in fp32" in caplog.text
    monkeypatch.setattr(engine, "_settings", settings)
    expected = run_ensemble([OverflowsInFp16()], image, config, device="cpu",
                            bytes_per_voxel=1e3)
    assert expected.fallbacks == () and torch.isfinite(expected.probability).all()
    torch.testing.assert_close(result.probability, expected.probability, rtol=0, atol=0)


def _write_case(folder: Path, name: str, pet: sitk.Image, ct: sitk.Image) -> None:
    for modality, image in (("pet", pet), ("ct", ct)):
        (folder / name / "images" / modality).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / name / "images" / modality / f"{name}.mha"), True)


def test_folder_mode_reads_the_next_case_while_predicting(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    for name in ("case_a", "case_b", "case_c"):
        _write_case(tmp_path / "input", name, pet, ct)
    started: dict[str, threading.Event] = {n: threading.Event() for n in
                                           ("case_a", "case_b", "case_c")}
    overlapped: list[bool] = []
    read_case = loop.read_case

    def recording_read(files, fill_hu):  # type: ignore[no-untyped-def]
        started[files.name].set()
        return read_case(files, fill_hu)

    monkeypatch.setattr(loop, "read_case", recording_read)
    config = resolve_inference_config(cfg(roi_size=(32,) * 3))
    predictor = Predictor([SuvThreshold()], ModelConfig(network=TINY), config, device="cpu")
    predict = predictor.predict
    order = iter(["case_b", "case_c", None])

    def waiting_predict(*args, **kwargs):  # type: ignore[no-untyped-def]
        upcoming = next(order)
        if upcoming is not None:  # the next read must start while this case is predicted
            overlapped.append(started[upcoming].wait(timeout=10))
        return predict(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict", waiting_predict)
    from petseg.io.cases import find_cases

    results = predict_folder(find_cases(tmp_path / "input"), tmp_path / "out", predictor)
    assert overlapped == [True, True]
    assert [r["name"] for r in results] == ["case_a", "case_b", "case_c"]
    assert all(r["error_messages"] == [] for r in results)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "weights"
    tiny_ensemble(folder)
    return folder


def test_predict_command_takes_mode_and_time_budget(tmp_path: Path, tiny_weights: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    _write_case(tmp_path / "input", "case", pet, ct)
    settings = tmp_path / "inference.json"
    settings.write_text(json.dumps({"roi_size": [32, 32, 32], "overlap": 0.25}))
    common = ["predict", "--input", str(tmp_path / "input" / "case"), "--weights",
              str(tiny_weights), "--config", str(settings), "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "ref")]) == 0
    assert main([*common, "--output", str(tmp_path / "fast"), "--mode", "fast",
                 "--time-budget", "600"]) == 0
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(next(
        (tmp_path / out / "images/automated-petct-lesion-segmentation").glob("*.mha")))))
        for out in ("ref", "fast")]
    assert masks[0].shape == masks[1].shape == sitk.GetArrayFromImage(pet).shape
    assert main([*common, "--output", str(tmp_path / "bad"), "--time-budget", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "petseg predict: error: time budget 0.0 s: must be positive")
    assert not (tmp_path / "bad").exists()
