"""The one writer of a run's results file (`results.json`, or a part's): an entry per case,
in the order of the case list, written atomically.

An entry is evalutils' layout plus petseg's fields: `name`, `inputs`, `outputs`,
`error_messages`, `seconds`, `lesion_volume_ml` (and `dicom`, `implausible`, `clicks`,
`extras` or `extras_error` where they apply; `run`, `input_stats` and `mask_sha256` once
stamped for `--continue`, `petseg.runs.resume`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from petseg.io.cases import CaseFiles, CaseList
from petseg.io.images import write_json
from petseg.progress import FolderProgress

log = logging.getLogger(__name__)


def results_entry(files: CaseFiles, output: Path | None, error: str | None,
                  seconds: float, lesion_ml: float | None) -> dict[str, Any]:
    """One results entry (evalutils' layout plus name, timing and lesion volume)."""
    dicom = {} if files.dicom is None else {"dicom": files.dicom.summary()}
    return {
        "name": files.name,
        "inputs": files.dicom.inputs() if files.dicom is not None else [
            {"type": "metaio_image", "filename": str(p)} for p in (files.pet, files.ct)
            if p is not None],
        "outputs": [] if output is None else [{"type": "metaio_image", "filename": str(output)}],
        "error_messages": [] if error is None else [error],
        "seconds": round(seconds, 3),
        "lesion_volume_ml": lesion_ml,
        **dicom,
    }


class Results:
    """A run's results file: the entries kept from an earlier run and this run's.

    Args:
        cases: the run's cases (the file's order).
        path: the results file.
        remove_outputs: removes the outputs an earlier run left for a case (called for each
            case failed by `fail_rest`).
        kept: entries of an earlier run that stand (`--continue`), by name.
        stamp: applied to each entry of this run before it is kept (`--continue`'s
            fingerprint), or None.
    """

    def __init__(self, cases: CaseList, path: Path,
                 remove_outputs: Callable[[CaseFiles], None],
                 kept: Mapping[str, dict[str, Any]] | None = None,
                 stamp: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.cases, self.path = cases, Path(path)
        self.remove_outputs, self.stamp = remove_outputs, stamp
        self.entries: dict[str, dict[str, Any]] = dict(kept or {})
        self.progress = FolderProgress(len(cases.cases) - len(self.entries))

    def add(self, entry: dict[str, Any]) -> None:
        """One case finished (or failed) in this run."""
        if self.stamp is not None:
            self.stamp(entry)
        self.entries[entry["name"]] = entry
        log.info("folder: %s", self.progress.case_done(failed=bool(entry["error_messages"])))

    def ordered(self) -> list[dict[str, Any]]:
        """The entries in the order of the case list."""
        return [self.entries[f.name] for f in self.cases.cases if f.name in self.entries]

    def write(self) -> list[dict[str, Any]]:
        """Write the results file (atomically); returns its entries."""
        entries = self.ordered()
        write_json(entries, self.path)
        return entries

    def fail_rest(self, message: str) -> list[dict[str, Any]]:
        """Every case without an entry gets `message` (and loses earlier outputs); the file
        is written. Returns its entries."""
        for files in self.cases.cases:
            if files.name not in self.entries:
                self.remove_outputs(files)
                self.entries[files.name] = results_entry(files, None, message, 0.0, None)
        return self.write()
