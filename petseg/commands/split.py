"""`petseg split`: the paper's cross-validation split (per cohort, patients kept whole)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "split studies into cross-validation folds, each cohort on its own, patients kept whole"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--data", type=Path, required=True, metavar="ROOT",
                        help="training data root (autoPET layout: PETCT_<id>/<date>/SUV, "
                             "CTres, SEG)")
    parser.add_argument("--metadata", type=Path, metavar="CSV",
                        help="clinical metadata CSV with a diagnosis column; without it all "
                             "studies form one cohort")
    parser.add_argument("--out", type=Path, required=True, metavar="JSON",
                        help="split file to write")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--cache", type=Path, metavar="CACHE",
                        help="split only the studies with a complete entry in this cache "
                             "(those `petseg preprocess` could not read are listed)")


def run(args: argparse.Namespace) -> int:
    """Discover the studies, read their cohorts, split and write the JSON file."""
    from petseg.errors import PetsegError
    from petseg.training.cache import is_cached
    from petseg.training.data import DEFAULT_COHORT, discover_studies, read_cohorts
    from petseg.training.splits import make_splits, save_splits

    studies = discover_studies(args.data)
    if args.cache is not None:
        left_out = [s.key for s in studies if not is_cached(args.cache, s.key)]
        if left_out:
            log.warning("%d studies have no entry in %s and are left out of the split: %s",
                        len(left_out), args.cache, ", ".join(left_out[:10])
                        + (" ..." if len(left_out) > 10 else ""))
        studies = [s for s in studies if is_cached(args.cache, s.key)]
        if not studies:
            raise PetsegError(f"{args.cache}: holds none of the studies in {args.data}; run "
                              "`petseg preprocess` first")
    if args.metadata is not None:
        cohorts = read_cohorts(args.metadata, studies)
    else:
        cohorts = {s.key: DEFAULT_COHORT for s in studies}
    splits = make_splits(studies, cohorts, folds=args.folds, seed=args.seed)
    save_splits(splits, args.out)
    patients = len({s.patient for s in studies})
    print(f"{len(studies)} studies of {patients} patients in {args.folds} folds -> {args.out}")
    width = max(len(c) for c in splits.counts())
    print(f"{'cohort':<{width}}  " + " ".join(f"fold_{f:<2}" for f in range(args.folds)))
    for cohort, counts in splits.counts().items():
        print(f"{cohort:<{width}}  " + " ".join(f"{n:<7}" for n in counts))
    return 0
