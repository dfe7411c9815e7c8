"""`petseg report`: lesion statistics (JSON + CSV) and a MIP picture of one case."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "lesion report (TMTV, TLG, SUVmax/mean/peak per lesion) and MIP picture of a mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--mask", type=Path, required=True,
                        help="lesion mask on the PET grid (> 0 is lesion)")
    parser.add_argument("--pet", type=Path, required=True, help="PET in SUV")
    parser.add_argument("--uncertainty", type=Path, default=None,
                        help="ensemble standard deviation map on the PET grid (optional)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", default=None,
                        help="case name for the output files (default: the mask's file stem)")


def run(args: argparse.Namespace) -> int:
    """Write `<case>_lesions.json`, `<case>_lesions.csv` and `<case>_mip.png`."""
    from petseg.clinical.report import write_case_report
    from petseg.io.geometry import check_same_grid
    from petseg.io.images import image_stem, read_image

    pet = read_image(args.pet)
    mask = read_image(args.mask)
    check_same_grid(mask, pet, str(args.mask), str(args.pet))
    uncertainty = None
    if args.uncertainty is not None:
        uncertainty = read_image(args.uncertainty)
        check_same_grid(uncertainty, pet, str(args.uncertainty), str(args.pet))
    name = args.name or image_stem(args.mask)
    for path in write_case_report(name, pet, mask, args.out, uncertainty).values():
        print(path)
    return 0
