"""`petseg calibrate`: choose each ensemble's probability threshold on phantom cases."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

HELP = ("score both ensembles on phantom cases at several thresholds and record the best "
        "per ensemble in the weights' manifest.json")

CANDIDATES = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
"""Thresholds `petseg calibrate` chooses from by default."""


def add_options(parser: argparse.ArgumentParser, weights: Path | None, cases: int,
                  seed: int, thresholds: Sequence[float] | None) -> None:
    """Options shared by `petseg calibrate` and `scripts/evaluate_weights.py`, with their
    defaults (`weights` None: required)."""
    parser.add_argument("--weights", type=Path, default=weights, required=weights is None,
                        metavar="DIR",
                        help="folder with fold checkpoints and manifest.json"
                        + (f" (default: {weights})" if weights else ""))
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="work folder: phantoms, predictions, summary.json")
    parser.add_argument("--cases", type=int, default=cases,
                        help=f"phantom cases, about half negative (default {cases})")
    parser.add_argument("--seed", type=int, default=seed,
                        help=f"phantom seed (default {seed})")
    parser.add_argument("--config", type=Path, default=None, metavar="JSON",
                        help="inference settings JSON (default: resources/inference.json)")
    parser.add_argument("--mode", choices=("reference", "fast"), default=None,
                        help="engine mode (default: the config's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="phantom size (small: a quick check, not a result)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=thresholds,
                        help="probability thresholds to score (default: "
                        + (" ".join(map(str, thresholds)) if thresholds else "the config's, "
                           "else each ensemble's calibrated one, else 0.5") + ")")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options (a calibration seed, not the reporting one)."""
    add_options(parser, weights=None, cases=30, seed=555000, thresholds=CANDIDATES)


def run(args: argparse.Namespace) -> int:
    """Check the thresholds, score them, write the chosen ones into the manifest."""
    from petseg.checkpoint import read_manifest
    from petseg.commands.predict import DEFAULT_CONFIG
    from petseg.training.calibration import check_thresholds, inference_config
    from petseg.training.calibration import run as calibrate

    thresholds = check_thresholds(args.thresholds, "--thresholds")
    read_manifest(args.weights)  # a wrong --weights fails before the phantoms are made
    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    calibrate(args, inference_config(config_path, args.mode), thresholds, calibrate=True)
    return 0
