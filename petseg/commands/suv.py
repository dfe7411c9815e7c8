"""`petseg suv`: PET DICOM series (Bq/ml) -> SUV image; CT DICOM series -> HU image."""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.errors import PetsegError

HELP = "convert a PET DICOM series to SUV (body weight) and a CT series to HU images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--pet-dicom", type=Path, required=True,
                        help="folder with one PET series (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="SUV image to write (.mha)")
    parser.add_argument("--ct-dicom", type=Path, default=None,
                        help="folder with one CT series (optional)")
    parser.add_argument("--ct-out", type=Path, default=None,
                        help="CT image to write in HU (.mha), with --ct-dicom")
    parser.add_argument("--weight-kg", type=float, default=None,
                        help="patient weight in kg, for series without PatientWeight")


def run(args: argparse.Namespace) -> int:
    """Read, convert and write atomically; nothing is written if any input is bad."""
    from petseg.io.dicom import read_ct_hu, read_pet_suv
    from petseg.io.images import write_image

    if (args.ct_dicom is None) != (args.ct_out is None):
        raise PetsegError("--ct-dicom and --ct-out go together; give both or neither")
    if args.weight_kg is not None and not args.weight_kg > 0:
        raise PetsegError(f"--weight-kg {args.weight_kg}: must be a positive weight in kg")
    pet, _ = read_pet_suv(args.pet_dicom, weight_kg=args.weight_kg)
    ct = read_ct_hu(args.ct_dicom) if args.ct_dicom is not None else None
    print(write_image(pet, args.out))
    if ct is not None:
        print(write_image(ct, args.ct_out))
    return 0
