#!/usr/bin/env python3
"""Score an ensemble on held-out phantom cases, as the paper's Table 2 (both ensembles).

    python scripts/evaluate_weights.py --weights weights/ --out OUT [--cases 20]
        [--seed 777000] [--size full] [--config resources/inference.json]
        [--thresholds 0.5 0.7 ...] [--calibrate]

The held-out report of `petseg calibrate` (`petseg.training.calibration`, which describes the
outputs): the same phantoms, predictions and numbers on the reporting seed, without
touching the manifest unless `--calibrate` is given. Without `--thresholds` each
ensemble is scored at its own threshold (the config's, else the calibrated one, else
0.5). Run it with the project's Python, where `petseg` is installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.commands.calibrate import add_options
from petseg.errors import PetsegError
from petseg.training.calibration import (
    check_thresholds,
    choose_thresholds,
    inference_config,
    run,
    thresholds_per_ensemble,
)

REPOSITORY = Path(__file__).resolve().parents[1]

__all__ = ["choose_thresholds", "main", "thresholds_per_ensemble"]


def main(argv: list[str] | None = None) -> int:
    """Parse the options, score, and with `--calibrate` record the thresholds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, weights=REPOSITORY / "weights", cases=20, seed=777000,
                  thresholds=None)
    parser.add_argument("--calibrate", action="store_true",
                        help="write the best of --thresholds per ensemble into the weights' "
                        "manifest (use a calibration seed, not the reporting one)")
    args = parser.parse_args(argv)
    try:
        thresholds = check_thresholds(args.thresholds, "--calibrate" if args.calibrate else None)
    except PetsegError as exc:
        parser.error(str(exc))
    config = inference_config(args.config or REPOSITORY / "resources" / "inference.json",
                              args.mode)
    run(args, config, thresholds, calibrate=args.calibrate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
