"""`petseg demo`: the main job on a bundled default (synthetic case, bundled weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment a seeded synthetic whole-body case with the bundled weights and score it"

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO_SEED = 20231
"""Phantom seed of the demo case; never used for training or validation phantoms."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `petseg demo`."""
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="output folder (default: ./demo_output)")
    parser.add_argument("--weights", type=Path, default=REPOSITORY / "weights",
                        help="fold checkpoints + manifest.json (default: the bundled weights/)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="phantom size (default: full, 400 x 400 x N PET)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    from petseg.config import InferenceConfig, load_json
    from petseg.demo import run_demo, summary_lines

    config_path = REPOSITORY / "resources" / "inference.json"
    config = load_json(InferenceConfig, config_path) if config_path.is_file() else None
    result = run_demo(args.out, args.weights, args.seed, size=args.size, config=config,
                      device=args.device)
    print("\n".join(summary_lines(result)))
    return 0
