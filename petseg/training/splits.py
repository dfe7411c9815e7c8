"""Cross-validation splits: each cohort split into folds on its own, patients kept whole.

Fold f of every cohort together form fold f (the paper's scheme). Within a cohort the
patients are shuffled with the seed, then placed largest first into the fold that holds
the fewest of that cohort's studies so far (ties: fewest studies overall, then the lower
fold), so each cohort is spread as evenly as its patients allow and no patient's studies
are split across folds. The split file is plain JSON, written once and reused.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np

from petseg.errors import PetsegError
from petseg.io.images import read_json, write_json
from petseg.training.data import Study, patient_cohort

SPLITS_FORMAT = "petseg-splits/1"


@dataclasses.dataclass(frozen=True)
class SplitEntry:
    """One study's place in the split: its key, patient, cohort and validation fold."""

    key: str
    patient: str
    cohort: str
    fold: int


@dataclasses.dataclass(frozen=True)
class Splits:
    """A k-fold split of studies; fold f is validated on and trained without."""

    folds: int
    seed: int
    entries: tuple[SplitEntry, ...]

    def validation_keys(self, fold: int) -> list[str]:
        """Study keys held out in `fold` (sorted)."""
        self._check_fold(fold)
        return sorted(e.key for e in self.entries if e.fold == fold)

    def training_keys(self, fold: int) -> list[str]:
        """Study keys trained on when `fold` is held out (sorted)."""
        self._check_fold(fold)
        return sorted(e.key for e in self.entries if e.fold != fold)

    def counts(self) -> dict[str, list[int]]:
        """`{cohort: [studies in fold 0, ..., fold k-1]}`."""
        out: dict[str, list[int]] = defaultdict(lambda: [0] * self.folds)
        for e in self.entries:
            out[e.cohort][e.fold] += 1
        return dict(sorted(out.items()))

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.folds:
            raise PetsegError(f"fold {fold} does not exist; the split has folds "
                              f"0..{self.folds - 1}")


def make_splits(studies: list[Study], cohorts: dict[str, str], folds: int = 5,
                seed: int = 0, existing: Splits | None = None) -> Splits:
    """Split `studies` into `folds` folds per cohort, keeping each patient in one fold.

    Args:
        studies: the studies to split.
        cohorts: `{study key: cohort}` for the studies not in `existing`; a patient's
            cohort is the most frequent among its studies.
        folds: number of folds (>= 2); ignored with `existing` (its number is kept).
        seed: shuffling seed.
        existing: a split to extend: its studies keep their folds, a new study of a
            patient it holds joins that patient's fold, and new patients fill the folds
            so that each cohort stays as even as they allow. Folds trained on `existing`
            thus keep every study they validated on out of their training set.
    """
    placed = {} if existing is None else {e.key: e for e in existing.entries}
    folds = folds if existing is None else existing.folds
    if folds < 2:
        raise PetsegError(f"--folds {folds}: at least 2 folds are needed")
    new = [s for s in studies if s.key not in placed]
    patients = patient_cohort(cohorts, new)
    fold_of = {e.patient: e.fold for e in placed.values()}
    if existing is None and len(patients) < folds:
        raise PetsegError(f"{len(patients)} patients cannot fill {folds} folds; use fewer folds")
    studies_of: dict[str, list[Study]] = defaultdict(list)
    for study in new:
        studies_of[study.patient].append(study)
    rng = np.random.default_rng(seed)
    by_cohort: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(patients):
        if patient not in fold_of:
            by_cohort[patients[patient]].append(patient)

    total = [0] * folds
    in_cohort: dict[str, list[int]] = defaultdict(lambda: [0] * folds)
    for entry in placed.values():
        total[entry.fold] += 1
        in_cohort[entry.cohort][entry.fold] += 1
    for patient in patients:
        if patient in fold_of:  # a known patient's new study joins the patient's fold
            total[fold_of[patient]] += len(studies_of[patient])
            in_cohort[patients[patient]][fold_of[patient]] += len(studies_of[patient])
    for cohort in sorted(by_cohort):
        members = [by_cohort[cohort][i] for i in rng.permutation(len(by_cohort[cohort]))]
        members.sort(key=lambda p: -len(studies_of[p]))  # stable: shuffled order among equals
        counts = in_cohort[cohort]
        for patient in members:
            fold = min(range(folds), key=lambda f: (counts[f], total[f], f))
            fold_of[patient] = fold
            counts[fold] += len(studies_of[patient])
            total[fold] += len(studies_of[patient])
    entries = list(placed.values()) + [
        SplitEntry(key=s.key, patient=s.patient, cohort=cohorts[s.key], fold=fold_of[s.patient])
        for s in new
    ]
    return Splits(folds=folds, seed=seed, entries=tuple(sorted(entries, key=lambda e: e.key)))


def save_splits(splits: Splits, path: str | Path) -> Path:
    """Write the split as JSON (atomically)."""
    path = Path(path)
    data = {
        "format": SPLITS_FORMAT,
        "folds": splits.folds,
        "seed": splits.seed,
        "counts": splits.counts(),
        "studies": [dataclasses.asdict(e) for e in splits.entries],
    }
    return write_json(data, path, indent=1)


def load_splits(path: str | Path) -> Splits:
    """Read and check a split file written by `save_splits`."""
    path = Path(path)
    data = read_json(path, "split file", "recreate it with `petseg split`")
    if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT:
        raise PetsegError(f"{path}: not a petseg split file; create one with `petseg split`")
    try:
        folds = int(data["folds"])
        entries = tuple(SplitEntry(key=str(e["key"]), patient=str(e["patient"]),
                                   cohort=str(e["cohort"]), fold=int(e["fold"]))
                        for e in data["studies"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PetsegError(f"{path}: malformed split file ({exc!r}); recreate it with "
                          "`petseg split`") from None
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise PetsegError(f"{path}: a study is listed twice; recreate it with `petseg split`")
    patient_folds: dict[str, set[int]] = defaultdict(set)
    for e in entries:
        if not 0 <= e.fold < folds:
            raise PetsegError(f"{path}: study {e.key} has fold {e.fold} outside 0..{folds - 1}")
        patient_folds[e.patient].add(e.fold)
    split_patients = sorted(p for p, f in patient_folds.items() if len(f) > 1)
    if split_patients:
        raise PetsegError(f"{path}: patient {split_patients[0]} is in several folds; "
                          "recreate it with `petseg split`")
    return Splits(folds=folds, seed=int(data.get("seed", 0)), entries=entries)
