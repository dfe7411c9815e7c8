"""Write a tiny random-weights fold ensemble (checkpoints + manifest.json) for tests.

    PYTHONPATH=. python test/random_weights.py OUT_DIR [--folds 5] [--seed 0]

The container test bakes it into the inference image when weights/ holds no trained
ensemble, and compares the container's mask with the host's prediction from the same
weights. The network is the paper's residual UNet at a tiny width, channels (4, 8, 16),
strides (2, 2), on a 6 mm grid, so both predictions take seconds on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from petseg.checkpoint import DSC_KEY, fold_name, save_checkpoint, write_manifest
from petseg.config import CLICK_CHANNELS, ModelConfig, NetworkConfig, PreprocessingConfig
from petseg.model import build_network

TINY_NETWORK = NetworkConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
COARSE_PREPROCESSING = PreprocessingConfig(target_spacing_mm=6.0)
"""A 6 mm network grid: 27 times fewer voxels than the paper's 2 mm, seconds per case."""


def make_random_weights(out_dir: str | Path, folds: int = 5, seed: int = 0,
                        clicks: bool = False) -> Path:
    """Replace `out_dir` with `folds` random checkpoints and their manifest; returns it.

    Fold `i` uses seed `seed + i` and records a made-up validation Dice `0.5 + 0.05 i`,
    so the weighted ensemble differs from the plain mean. `clicks`: a click-aware network
    (PET, CT and the two click maps).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    config = ModelConfig(network=TINY_NETWORK, preprocessing=COARSE_PREPROCESSING)
    if clicks:
        config = dataclasses.replace(
            config, network=dataclasses.replace(TINY_NETWORK, in_channels=4),
            preprocessing=dataclasses.replace(
                COARSE_PREPROCESSING, channel_order=("pet", "ct", *CLICK_CHANNELS)))
    files = []
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        network = build_network(config.network)
        files.append(save_checkpoint(
            out_dir / f"{fold_name(fold)}.safetensors", network.state_dict(), config,
            metrics={DSC_KEY: 0.5 + 0.05 * fold}, extra={"random": True, "seed": seed + fold},
        ))
    return write_manifest(out_dir, [f.name for f in files], n_folds=folds).parent


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = make_random_weights(args.out_dir, args.folds, args.seed)
    print(f"random weights: {args.folds} folds in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
