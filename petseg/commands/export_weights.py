"""`petseg export-weights`: the folds' best checkpoints into the inference weights folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "gather fold runs into weights/fold_<f>.safetensors with a verified manifest.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="`petseg train` run folders, one per fold")
    parser.add_argument("--out", type=Path, required=True, metavar="WEIGHTS",
                        help="weights folder for `petseg predict`")
    parser.add_argument("--fp16", action="store_true",
                        help="store float16 weights (half the size)")
    parser.add_argument("--folds", type=int, default=None,
                        help="folds of the full ensemble (default: the split's)")


def run(args: argparse.Namespace) -> int:
    """Export and print the manifest's summary."""
    from petseg.checkpoint import read_manifest
    from petseg.training.export import export_weights

    manifest = export_weights(args.runs, args.out, fp16=args.fp16, n_folds=args.folds)
    data = read_manifest(manifest.parent)
    for name, entry in sorted(data["folds"].items()):
        dsc = entry["metrics"].get("mean_dsc")  # null: validated without lesions
        dsc = float("nan") if dsc is None else dsc
        print(f"{name}: {entry['file']} mean DSC {dsc:.4f} sha256 {entry['sha256'][:12]}")
    print(f"manifest: {manifest}")
    return 0
