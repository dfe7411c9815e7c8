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
    parser.add_argument("--folds", type=int, default=None,
                        help="number of folds (default 5; with --extend, that split's)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--cache", type=Path, metavar="CACHE",
                        help="split only the studies with a complete entry in this cache "
                             "(those `petseg preprocess` could not read are listed)")
    parser.add_argument("--extend", type=Path, metavar="JSON",
                        help="an existing split file: its studies keep their folds and only "
                             "the studies of --data it lacks are placed (so folds trained on "
                             "it can be fine-tuned on more data without validation leaks)")


def run(args: argparse.Namespace) -> int:
    """Discover the studies, read their cohorts, split and write the JSON file."""
    from petseg.errors import PetsegError
    from petseg.training.cache import is_cached
    from petseg.training.data import DEFAULT_COHORT, discover_studies, read_cohorts
    from petseg.training.splits import load_splits, make_splits, save_splits

    existing = None if args.extend is None else load_splits(args.extend)
    if existing is not None and args.folds not in (None, existing.folds):
        raise PetsegError(f"--folds {args.folds}: {args.extend} has {existing.folds} folds; "
                          "leave --folds out when extending a split")
    folds = args.folds or (5 if existing is None else existing.folds)
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
    if existing is not None:
        known = {e.key for e in existing.entries}
        studies = [s for s in studies if s.key not in known]
        if not studies:
            raise PetsegError(f"{args.data}: every study is in {args.extend} already; "
                              "nothing to add")
    if args.metadata is not None:
        cohorts = read_cohorts(args.metadata, studies)
    else:
        cohorts = {s.key: DEFAULT_COHORT for s in studies}
    splits = make_splits(studies, cohorts, folds=folds, seed=args.seed, existing=existing)
    save_splits(splits, args.out)
    patients = len({e.patient for e in splits.entries})
    added = "" if existing is None else f" ({len(studies)} added to {args.extend})"
    print(f"{len(splits.entries)} studies of {patients} patients in {folds} folds{added} "
          f"-> {args.out}")
    width = max(len(c) for c in splits.counts())
    print(f"{'cohort':<{width}}  " + " ".join(f"fold_{f:<2}" for f in range(folds)))
    for cohort, counts in splits.counts().items():
        print(f"{cohort:<{width}}  " + " ".join(f"{n:<7}" for n in counts))
    return 0
