"""Study discovery, cohorts from metadata, and the cohort-wise patient-grouped split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from petseg.cli import main
from petseg.errors import PetsegError
from petseg.training.data import Study, discover_studies, read_cohorts
from petseg.training.splits import load_splits, make_splits, save_splits

COHORT_SIZES = {"LYMPHOMA": 145, "LUNG_CANCER": 168, "MELANOMA": 188, "NEGATIVE": 513}
"""Studies per cohort in the autoPET 2023 training set (1014 studies, 900 patients)."""


def autopet_like_studies(seed: int = 0) -> tuple[list[Study], dict[str, str]]:
    """1014 studies of 900 patients: 114 patients have 2 studies, in the real cohort sizes."""
    rng = np.random.default_rng(seed)
    studies, cohorts, patient = [], {}, 0
    for cohort, n in COHORT_SIZES.items():
        left = n
        while left:
            count = 2 if left >= 2 and rng.random() < 0.135 else 1
            pid = f"PETCT_{patient:05d}"
            for s in range(count):
                key = f"{pid}/0{s + 1}-01-2004-NA-PET-CT"
                studies.append(Study(key=key, patient=pid, name=key.replace("/", "_"),
                                     pet=Path("SUV.nii.gz"), ct=Path("CTres.nii.gz"),
                                     label=Path("SEG.nii.gz")))
                cohorts[key] = cohort
            patient += 1
            left -= count
    return studies, cohorts


def test_no_patient_in_two_folds_and_cohorts_spread_evenly() -> None:
    studies, cohorts = autopet_like_studies()
    assert len(studies) == 1014
    splits = make_splits(studies, cohorts, folds=5, seed=3)
    folds_of = defaultdict(set)
    for entry in splits.entries:
        folds_of[entry.patient].add(entry.fold)
    assert all(len(f) == 1 for f in folds_of.values())
    counts = splits.counts()
    assert set(counts) == set(COHORT_SIZES)
    for cohort, per_fold in counts.items():
        assert sum(per_fold) == COHORT_SIZES[cohort]
        assert max(per_fold) - min(per_fold) <= 1, (cohort, per_fold)
    totals = [sum(c[f] for c in counts.values()) for f in range(5)]
    assert max(totals) - min(totals) <= 2
    for fold in range(5):
        train, val = set(splits.training_keys(fold)), set(splits.validation_keys(fold))
        assert not train & val and len(train | val) == 1014


def test_split_depends_on_the_seed_only() -> None:
    studies, cohorts = autopet_like_studies()
    a = make_splits(studies, cohorts, seed=1)
    assert a == make_splits(list(reversed(studies)), cohorts, seed=1)
    assert a != make_splits(studies, cohorts, seed=2)


def test_split_file_round_trip_and_checks(tmp_path) -> None:
    studies, cohorts = autopet_like_studies()
    splits = make_splits(studies, cohorts)
    path = save_splits(splits, tmp_path / "splits.json")
    assert load_splits(path) == splits
    data = json.loads(path.read_text())
    per_patient = Counter(e["patient"] for e in data["studies"])
    twice = next(e for e in data["studies"] if per_patient[e["patient"]] == 2)
    twice["fold"] = (twice["fold"] + 1) % 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PetsegError, match=f"patient {twice['patient']} is in several folds"):
        load_splits(bad)
    with pytest.raises(PetsegError, match=r"fold 7 does not exist; the split has folds 0\.\.4"):
        splits.validation_keys(7)
    with pytest.raises(PetsegError, match="split file not found"):
        load_splits(tmp_path / "missing.json")


def _touch_study(root: Path, patient: str, date: str, ct: str = "CTres") -> None:
    folder = root / patient / date
    folder.mkdir(parents=True)
    for name in ("SUV", ct, "SEG", "PET"):
        (folder / f"{name}.nii.gz").write_bytes(b"")


def test_discovery_finds_autopet_and_flat_layouts(tmp_path) -> None:
    _touch_study(tmp_path, "PETCT_0a", "03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445")
    _touch_study(tmp_path, "PETCT_0a", "05-02-2004-NA-PET-CT Ganzkoerper  primaer mit KM-1")
    _touch_study(tmp_path, "PETCT_0b", "01-01-2001-NA-x", ct="CT")
    studies = discover_studies(tmp_path)
    assert [s.patient for s in studies] == ["PETCT_0a", "PETCT_0a", "PETCT_0b"]
    assert studies[0].key == "PETCT_0a/03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    assert studies[0].name == "PETCT_0a_03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    assert studies[2].ct.name == "CT.nii.gz" and studies[0].ct.name == "CTres.nii.gz"
    (tmp_path / "PETCT_0b" / "01-01-2001-NA-x" / "SEG.nii.gz").unlink()
    with pytest.raises(PetsegError, match=r"01-01-2001-NA-x: has SUV.nii.gz but no mask \(SEG\)"):
        discover_studies(tmp_path)
    with pytest.raises(PetsegError, match="data folder not found"):
        discover_studies(tmp_path / "nothing")


def test_cohorts_from_the_published_csv_layout(tmp_path) -> None:
    """One row per series; a patient with two studies of different diagnoses."""
    _touch_study(tmp_path, "PETCT_0a", "03-23-2003-NA-PET-CT Ganzkoerper-1")
    _touch_study(tmp_path, "PETCT_0a", "05-02-2004-NA-PET-CT Ganzkoerper-2")
    _touch_study(tmp_path, "PETCT_0b", "01-01-2001-NA-PET-CT Ganzkoerper-3")
    rows = ["Subject ID,Study Date,Modality,diagnosis,File Location"]
    for pid, date, dx in (("PETCT_0a", "03-23-2003", "LYMPHOMA"),
                          ("PETCT_0a", "05-02-2004", "NEGATIVE"),
                          ("PETCT_0b", "01-01-2001", "LUNG_CANCER")):
        for modality in ("CT", "PT", "SEG"):
            rows.append(f"{pid},{date},{modality},{dx},./FDG-PET-CT-Lesions/{pid}/{date}-NA-x/"
                        f"{modality}-series")
    csv_path = tmp_path / "Clinical Metadata FDG PET_CT Lesions.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    studies = discover_studies(tmp_path)
    assert list(read_cohorts(csv_path, studies).values()) == ["LYMPHOMA", "NEGATIVE",
                                                              "LUNG_CANCER"]
    csv_path.write_text("\n".join(r for r in rows if "PETCT_0b" not in r) + "\n")
    with pytest.raises(PetsegError, match=r"no unambiguous diagnosis for 1 of 3 studies "
                                          r"\(first: PETCT_0b/01-01-2001"):
        read_cohorts(csv_path, studies)


def test_split_command_writes_the_file(tmp_path, capsys) -> None:
    for i in range(12):
        _touch_study(tmp_path / "data", f"PETCT_{i:02d}", "01-01-2001-NA-x")
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("Subject ID,diagnosis\n" + "".join(
        f"PETCT_{i:02d},{'MELANOMA' if i % 3 else 'NEGATIVE'}\n" for i in range(12)))
    out = tmp_path / "splits.json"
    assert main(["split", "--data", str(tmp_path / "data"), "--metadata", str(csv_path),
                 "--out", str(out), "--folds", "4"]) == 0
    splits = load_splits(out)
    assert splits.counts() == {"MELANOMA": [2, 2, 2, 2], "NEGATIVE": [1, 1, 1, 1]}
    assert "12 studies of 12 patients in 4 folds" in capsys.readouterr().out
    assert Counter(e.cohort for e in splits.entries) == {"MELANOMA": 8, "NEGATIVE": 4}
    assert main(["split", "--data", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert "data folder not found" in capsys.readouterr().err


def test_extending_a_split_keeps_every_placed_study_in_its_fold() -> None:
    """New studies fill the folds per cohort; old ones and their patients stay put."""
    studies, cohorts = autopet_like_studies()
    first, later = studies[:600], studies[600:]
    old = make_splits(first, {s.key: cohorts[s.key] for s in first}, folds=5, seed=3)
    extended = make_splits(later, {s.key: cohorts[s.key] for s in later}, folds=3, seed=4,
                           existing=old)
    assert extended.folds == 5  # the existing split's folds win
    fold_of = {e.key: e.fold for e in extended.entries}
    assert len(fold_of) == 1014
    assert all(fold_of[e.key] == e.fold for e in old.entries)
    for fold in range(5):  # a fold's old validation studies never enter its training set
        assert set(old.validation_keys(fold)) <= set(extended.validation_keys(fold))
    folds_of = defaultdict(set)
    for entry in extended.entries:
        folds_of[entry.patient].add(entry.fold)
    assert all(len(f) == 1 for f in folds_of.values())
    for cohort, per_fold in extended.counts().items():
        assert sum(per_fold) == COHORT_SIZES[cohort]
        assert max(per_fold) - min(per_fold) <= 2, (cohort, per_fold)


def test_extending_places_a_known_patients_new_study_in_its_fold() -> None:
    studies, cohorts = autopet_like_studies()
    twice = next(p for p, n in Counter(s.patient for s in studies).items() if n == 2)
    second = [s for s in studies if s.patient == twice][1]
    first = [s for s in studies if s is not second]
    old = make_splits(first, cohorts, seed=0)
    extended = make_splits([second], {second.key: "MELANOMA"}, seed=9, existing=old)
    folds = {e.fold for e in extended.entries if e.patient == twice}
    assert len(extended.entries) == 1014 and len(folds) == 1


def test_split_command_extends_a_split_file(tmp_path, capsys) -> None:
    for i in range(10):
        _touch_study(tmp_path / "data", f"PETCT_{i:02d}", "01-01-2001-NA-x")
    old = tmp_path / "old.json"
    assert main(["split", "--data", str(tmp_path / "data"), "--out", str(old)]) == 0
    for i in range(10, 20):
        _touch_study(tmp_path / "data", f"PETCT_{i:02d}", "01-01-2001-NA-x")
    new = tmp_path / "new.json"
    assert main(["split", "--data", str(tmp_path / "data"), "--extend", str(old),
                 "--out", str(new), "--seed", "5"]) == 0
    assert f"20 studies of 20 patients in 5 folds (10 added to {old})" in capsys.readouterr().out
    before, after = load_splits(old), load_splits(new)
    assert set(before.entries) <= set(after.entries)
    assert next(iter(after.counts().values())) == [4, 4, 4, 4, 4]
    assert main(["split", "--data", str(tmp_path / "data"), "--extend", str(new),
                 "--out", str(tmp_path / "again.json")]) == 1
    assert "every study is in" in capsys.readouterr().err
    assert main(["split", "--data", str(tmp_path / "data"), "--extend", str(new),
                 "--folds", "4", "--out", str(tmp_path / "x.json")]) == 1
    assert "leave --folds out when extending" in capsys.readouterr().err
