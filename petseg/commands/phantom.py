"""`petseg phantom`: write synthetic whole-body FDG PET/CT studies with known lesions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "write synthetic whole-body FDG PET/CT phantoms (challenge or autoPET layout)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `petseg phantom`."""
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="output folder (new or empty)")
    parser.add_argument("--cases", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, required=True,
                        help="dataset seed; the same seed writes identical files")
    parser.add_argument("--layout", choices=("challenge", "autopet"), required=True,
                        help="challenge: OUT/<case>/images/{pet,ct}/<uuid>.mha + truth/; "
                             "autopet: OUT/PETCT_<id>/<date>/{SUV,CTres,SEG,CT}.nii.gz + CSV")
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="full: 400x400xN PET voxels as real scans; small: 96x96x128 "
                             "(default: full)")
    parser.add_argument("--ct-grid", choices=("pet", "native"), default="pet",
                        help="challenge layout: CT on the PET grid (default) or its own grid")
    parser.add_argument("--negative-fraction", type=float, default=0.5,
                        help="share of lesion-free (NEGATIVE) studies (default: 0.5)")
    parser.add_argument("--preview", action="store_true",
                        help="also write OUT/previews/<name>.png (PET MIP + CT)")


def run(args: argparse.Namespace) -> int:
    """Generate and write the dataset; returns the exit status."""
    from petseg.phantom.layouts import write_dataset

    folders = write_dataset(args.out, cases=args.cases, seed=args.seed, layout=args.layout,
                            size=args.size, ct_grid=args.ct_grid,
                            negative_fraction=args.negative_fraction, preview=args.preview)
    log.info("wrote %d stud%s to %s", len(folders), "y" if len(folders) == 1 else "ies",
             args.out)
    return 0
