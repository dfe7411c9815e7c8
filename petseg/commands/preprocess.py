"""`petseg preprocess`: every study once through the inference preprocessing, cached."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

HELP = "prepare every training study once (2 mm grid, float16 .npy) into a cache folder"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT",
                        help="training data root (autoPET layout)")
    parser.add_argument("--out", type=Path, required=True, metavar="CACHE",
                        help="cache folder (created; finished studies are skipped)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel processes (default: the number of cores)")
    parser.add_argument("--config", type=Path, metavar="JSON",
                        help="training config whose model.preprocessing to use "
                             "(default: the paper's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Prepare the studies; report failures; exit 1 only if nothing could be cached."""
    from petseg.training.cache import build_cache, cached_keys
    from petseg.training.config import load_training_config
    from petseg.training.data import discover_studies

    config = load_training_config(args.config)
    studies = discover_studies(args.data)

    def report(key: str, reason: str) -> None:
        log.warning("skipped %s: %s", key, reason)

    summary = build_cache(studies, args.out, config.model.preprocessing,
                          workers=max(1, args.workers), progress=not args.quiet,
                          on_failure=report)
    print(f"{len(summary.written)} prepared, {len(summary.skipped)} already cached, "
          f"{len(summary.failed)} failed, of {len(studies)} studies -> {args.out}")
    for key, reason in summary.failed:
        print(f"  failed: {key}: {reason}")
    return 1 if summary.failed and not cached_keys(args.out) else 0
