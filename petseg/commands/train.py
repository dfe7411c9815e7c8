"""`petseg train`: train one fold (GDFL, Adam + cosine, best-DSC checkpoint); DDP under torchrun."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train the network of one cross-validation fold from the preprocessed cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--cache", type=Path, required=True, help="cache from `petseg preprocess`")
    parser.add_argument("--splits", type=Path, required=True, help="split file from `petseg split`")
    parser.add_argument("--fold", type=int, required=True, help="the held-out fold")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN",
                        help="run folder (checkpoints, logs)")
    parser.add_argument("--config", type=Path, metavar="JSON",
                        help="training config (default: the paper's, resources/train_config.json; "
                             "with --resume: RUN/config.json)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. optimizer.epochs=2 (VALUE is JSON; "
                             "repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN/last.pt; --set may change optimizer.lr and the "
                             "other fields of docs/training.md's resume rules")
    parser.add_argument("--init", type=Path, metavar="CHECKPOINT",
                        help="start from these weights (a .safetensors of the same network, "
                             "e.g. weights/fold_0.safetensors) to fine-tune")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Build the config, train, print where the best checkpoint is."""
    from petseg.config import with_overrides
    from petseg.training.config import (
        load_run_config,
        load_training_config,
    )
    from petseg.training.loop import train

    run_config = args.out / "config.json"
    if args.config is None and args.resume and run_config.is_file():
        config = load_run_config(run_config)  # the run's own; --set changes fields of it
    else:
        config = load_training_config(args.config)
    if args.set:
        config = with_overrides(config, args.set, "resources/train_config.json",
                                "optimizer.epochs=2")
    result = train(config, args.cache, args.splits, args.fold, args.out, resume=args.resume,
                   device=args.device, progress=not args.quiet, init=args.init)
    if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
        dsc = result.best_metrics.get("mean_dsc", float("nan"))
        print(f"fold {args.fold}: best mean DSC {dsc:.4f} at epoch {result.best_epoch} -> "
              f"{args.out / 'best.safetensors'}")
    return 0
