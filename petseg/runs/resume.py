"""A run that continues: the finished cases an earlier run left with the same weights and
settings.

Every finished case's results entry records `run` = {"weights": sha256 of the weights'
`manifest.json`, "settings": sha256 of the settings that shape the outputs},
`mask_sha256` (the mask file's bytes) and `input_stats` (size and modification time of
each input file, the click file included). With `--continue` such a case is skipped when
its inputs are unchanged and its mask is still there with that sha256 and its other
outputs exist; anything else (failed, interrupted, other weights, settings or inputs, a
truncated or edited mask) is redone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petseg.checkpoint import MANIFEST_NAME, file_sha256, sha256_of
from petseg.errors import PetsegError
from petseg.io.cases import CaseList, is_interactive
from petseg.io.images import read_json
from petseg.io.outputs import mask_folder, output_file
from petseg.runs.results import results_entry

log = logging.getLogger(__name__)


def run_fingerprint(weights_dir: Path, settings: Mapping[str, Any]) -> dict[str, str]:
    """{"weights": sha256 of the manifest, "settings": sha256 of `settings` as sorted JSON}."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return {"weights": file_sha256(Path(weights_dir) / MANIFEST_NAME),
            "settings": sha256_of(text.encode())}


def input_stats(entry: Mapping[str, Any]) -> dict[str, list[int] | None]:
    """{file: [bytes, modification time in ns]} of an entry's inputs and click file (None
    for a file that is gone)."""
    files = [item["filename"] for item in entry["inputs"] if "filename" in item]
    if entry.get("clicks") and entry["clicks"]["file"] is not None:
        files.append(entry["clicks"]["file"])
    stats: dict[str, list[int] | None] = {}
    for name in files:
        try:
            found = Path(name).stat()
            stats[name] = [found.st_size, found.st_mtime_ns]
        except OSError:
            stats[name] = None
    return stats


def stamp(entry: dict[str, Any], fingerprint: Mapping[str, str]) -> dict[str, Any]:
    """Record the run's fingerprint, the inputs' stats and the mask's sha256 in a finished
    case's entry (the mask is its first output)."""
    if not entry["error_messages"] and entry["outputs"]:
        entry["run"] = dict(fingerprint)
        entry["input_stats"] = input_stats(entry)
        entry["mask_sha256"] = file_sha256(entry["outputs"][0]["filename"])
    return entry


def _outputs_of(entry: Mapping[str, Any]) -> list[str]:
    """Every file an entry lists (outputs and extras)."""
    return ([output["filename"] for output in entry["outputs"]]
            + list(entry.get("extras", {}).values()))


def redo_reason(entry: Mapping[str, Any] | None, mask: Path, inputs: list[Any],
                fingerprint: Mapping[str, str]) -> str | None:
    """Why the case of `entry` must run again (None: its outputs stand)."""
    if entry is None:
        return "no earlier result"
    if entry.get("error_messages"):
        return "did not finish"
    if entry.get("run") != dict(fingerprint):
        return "other weights or settings"
    if entry.get("inputs") != inputs:
        return "other input files"
    if entry.get("input_stats") != input_stats(entry):
        return "input files changed since (size or modification time)"
    if not mask.is_file():
        return "mask missing"
    if file_sha256(mask) != entry.get("mask_sha256"):
        return "mask changed since it was written (sha256 differs)"
    missing = [path for path in _outputs_of(entry) if not Path(path).is_file()]
    if missing:
        return f"output missing: {missing[0]}"
    return None


def finished_cases(cases: CaseList, results_path: Path, output_dir: Path,
                   fingerprint: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The entries of `results_path` (an earlier run's) whose cases need not run again,
    by name; each other case is logged with the reason it is redone."""
    if not results_path.is_file():
        log.info("%s: no earlier results; every case runs", results_path)
        return {}
    try:
        earlier = read_json(results_path, "", "")
        by_name = {entry["name"]: entry for entry in earlier}
    except (PetsegError, TypeError, KeyError) as exc:
        log.warning("%s: unreadable (%s); every case runs", results_path, exc)
        return {}
    kept = {}
    for files in cases.cases:
        entry = by_name.get(files.name)
        mask = output_file(output_dir, mask_folder(is_interactive(files)), files.name)
        reason = redo_reason(entry, mask, results_entry(files, None, None, 0.0, None)["inputs"],
                             fingerprint)
        if reason is None:
            kept[files.name] = entry
        elif entry is not None:
            log.info("case %s: runs again: %s", files.name, reason)
    log.info("continuing: %d of %d case(s) finished earlier, %d to run", len(kept),
             len(cases.cases), len(cases.cases) - len(kept))
    return kept
