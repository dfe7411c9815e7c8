"""Stock MONAI ensemble vs the engine, same volume, same weights, one run.

Stock: `monai.inferers.sliding_window_inference` per fold in fp32 (192^3 windows, overlap
0.5, Gaussian blending, softmax probability), folds one after another, then the average.
Engine: `petseg.inference.engine.run_ensemble` in each mode. Printed per method: wall time (best
of `--repeat`, after a warm-up), the ratio stock / method, peak memory (CUDA: peak
allocated; CPU: peak resident memory above the start), and the agreement with stock:
Dice of the masks (probability > 0.5) and the largest probability difference.

The input is a synthetic whole body (`petseg.phantom`) preprocessed as in the pipeline,
optionally zero-padded/cropped to `--shape`. Random weights unless `--weights`: with random
weights the probability hovers near 0.5, so the Dice of fast mode (whose windows see more
context than 192^3 windows) understates the agreement trained networks reach.

    python benchmarks/ensemble.py                       # CUDA: paper width, 496 x 208 x 304
    python benchmarks/ensemble.py --device cpu          # CPU: half width, 4 mm grid
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch
from common import (
    CPU_CHANNELS,
    PAPER_CHANNELS,
    PeakRSS,
    describe_machine,
    device_from,
    gib,
    peak_memory,
    print_table,
    random_networks,
    synchronize,
)

from petseg.config import InferenceConfig, PreprocessingConfig
from petseg.inference.engine import run_ensemble
from petseg.preprocessing import body_mask_for_windows

FACTS_SHAPE = (496, 208, 304)
"""The cropped whole body at 2 mm of the H100 measurements, `[D, H, W]`."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto", help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="network width (default: the paper's on CUDA, half on CPU)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--weights", type=str, default=None, metavar="DIR",
                        help="trained fold checkpoints + manifest.json instead of random "
                             "weights (DSC-weighted ensemble; --channels/--folds ignored)")
    parser.add_argument("--spacing", type=float, default=None,
                        help="grid spacing in mm (default 2 on CUDA, 4 on CPU)")
    parser.add_argument("--roi", type=int, default=None,
                        help="reference window edge in voxels (default 192 at 2 mm, 96 at 4 mm:"
                             " the same 384 mm)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                        help="zero-pad/crop the volume to this shape (default on CUDA: "
                             f"{FACTS_SHAPE}, the reference body; on CPU: as preprocessed)")
    parser.add_argument("--modes", nargs="+", default=["reference", "fast"],
                        choices=["reference", "fast"])
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16"], default="auto")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="engine memory budget (e.g. 14.5 to plan for a T4)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per method (best)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs per method first (default 1 on CUDA, 0 on CPU)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN autotune convolutions (all methods)")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    return parser.parse_args()


def phantom_volume(seed: int, spacing: float, shape: tuple[int, int, int] | None) -> np.ndarray:
    """Network input `[2, D, H, W]` (PET SUV, CT [0, 1]) of a synthetic whole body."""
    from petseg.phantom import generate_case
    from petseg.preprocessing import preprocess_case

    case = generate_case(seed, "small", cohort="LYMPHOMA")
    image = preprocess_case(case.pet, case.ct,
                            PreprocessingConfig(target_spacing_mm=spacing)).image
    if shape is None:
        return image
    out = np.zeros((image.shape[0], *shape), np.float32)
    src, dst = [], []
    for have, want in zip(image.shape[1:], shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def trained_networks(folder: str) -> tuple[list[torch.nn.Module], list[float], tuple[int, ...]]:
    """Fold networks from checkpoints (sha256-checked), their DSC weights and width."""
    from petseg.checkpoint import dsc_weights, load_ensemble
    from petseg.model import build_network

    checkpoints = load_ensemble(folder)
    network_config = checkpoints[0].model_config.network
    networks = []
    for checkpoint in checkpoints:
        network = build_network(network_config)
        network.load_state_dict(checkpoint.state_dict, strict=True)
        networks.append(network.eval())
    return networks, dsc_weights(checkpoints), tuple(network_config.channels)


def stock(networks: list[torch.nn.Module], image: torch.Tensor, roi: int,
          device: torch.device, weights: list[float] | None = None) -> torch.Tensor:
    """MONAI sliding window per fold (fp32), then the (weighted) average; `[D, H, W]`, CPU."""
    from monai.inferers import sliding_window_inference

    total = None
    batch = image[None].to(device)
    weights = weights or [1.0] * len(networks)
    for network, weight in zip(networks, weights, strict=True):
        with torch.inference_mode():
            blended = sliding_window_inference(
                batch, (roi,) * 3, 1, lambda x, n=network: torch.softmax(n(x), 1),
                overlap=0.5, mode="gaussian",
            )
        probability = blended[0, 1].float().cpu() * weight
        total = probability if total is None else total + probability
        del blended
    assert total is not None
    return total / sum(weights)


def timed(run, device: torch.device, repeat: int, warmup: int,  # type: ignore[no-untyped-def]
          sampler: PeakRSS | None):
    """`warmup` untimed runs, then the best of `repeat`; returns (result, seconds, peak)."""
    for _ in range(warmup):
        run()
    best = float("inf")
    result = None
    peak = 0
    for _ in range(repeat):
        with peak_memory(device, sampler) as memory:
            synchronize(device)
            start = time.perf_counter()
            result = run()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        peak = max(peak, memory["bytes"])
    return result, best, peak


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def choose_networks(args: argparse.Namespace, cuda: bool
                    ) -> tuple[list[torch.nn.Module], list[float] | None, tuple[int, ...]]:
    """(networks, their ensemble weights or None, channels): the trained folds of
    `--weights`, or `--folds` random networks of `--channels` (the paper's on CUDA)."""
    if args.weights:
        return trained_networks(args.weights)
    channels = tuple(args.channels or (PAPER_CHANNELS if cuda else CPU_CHANNELS))
    return random_networks(args.folds, channels), None, channels


def main() -> None:
    args = parse_args()
    device = device_from(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else int(cuda)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    spacing = args.spacing or (2.0 if cuda else 4.0)
    roi = args.roi or round(384 / spacing)
    shape = tuple(args.shape) if args.shape else (FACTS_SHAPE if cuda and spacing == 2 else None)

    image = torch.from_numpy(phantom_volume(args.seed, spacing, shape))
    body = body_mask_for_windows(image, PreprocessingConfig())
    networks, fold_weights, channels = choose_networks(args, cuda)
    stock_networks = [copy.deepcopy(n).to(device) for n in networks]  # untouched layout
    print(f"# ensemble benchmark: {describe_machine(device)}")
    voxels = image[0].numel() / 1e6
    print(f"volume {tuple(image.shape[1:])} at {spacing} mm ({voxels:.1f} M voxels),"
          f" {len(networks)} folds, channels {channels},"
          f" {'trained' if args.weights else 'random'} weights, reference window {roi}^3")

    sampler = PeakRSS() if not cuda else None
    rows = []
    with sampler or contextlib.nullcontext():
        reference_mask = None
        stock_probability = None
        stock_seconds = None
        if not args.no_stock:
            stock_probability, stock_seconds, peak = timed(
                lambda: stock(stock_networks, image, roi, device, fold_weights), device,
                args.repeat, warmup, sampler)
            reference_mask = stock_probability > 0.5
            rows.append(["stock MONAI fp32, fold by fold", f"{stock_seconds:.2f}", "1.00",
                         gib(peak), "1.0000", "0", "sliding_window_inference x folds"])
        stock_networks.clear()  # free the copies before the engine runs
        for mode in args.modes:
            config = InferenceConfig(roi_size=(roi,) * 3, mode=mode, precision=args.precision,
                                     memory_budget_gb=args.memory_budget_gb)
            result, seconds, peak = timed(
                lambda config=config: run_ensemble(networks, image, config, body_mask=body,
                                                   weights=fold_weights, device=device),
                device, args.repeat, warmup, sampler)
            probability = result.probability
            agreement = difference = "-"
            ratio = "-"
            if stock_probability is not None:
                agreement = f"{dice(probability > 0.5, reference_mask):.4f}"
                difference = f"{float((probability - stock_probability).abs().max()):.2g}"
                ratio = f"{stock_seconds / seconds:.2f}"
            rows.append([f"engine {mode} ({result.plan.precision})", f"{seconds:.2f}", ratio,
                         gib(peak), agreement, difference, result.plan.describe()])
    print_table(["method", "seconds", "stock / method", "peak GiB", "Dice vs stock",
                 "max |dp|", "plan"], rows)
    if sampler is not None:
        print(f"process peak RSS {gib(sampler.peak)} GiB")


if __name__ == "__main__":
    main()
