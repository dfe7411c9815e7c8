"""Parts of a case list for array jobs: part K of N is every N-th case of the sorted case list
from the K-th on (nnU-Net's convention), so jobs on a shared file system need no
coordination; each part writes `results.part-K-of-N.json`, `merge_parts` joins them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from petseg.errors import PetsegError
from petseg.io.cases import CaseList
from petseg.io.images import read_json
from petseg.io.outputs import results_name
from petseg.runs.results import results_entry

_PART_FILE = re.compile(r"^results\.part-(\d+)-of-(\d+)\.json$")


def check_part(num_parts: int | None, part_id: int | None) -> None:
    """Refuse an incomplete or impossible part (`--num-parts N --part-id K`, 0 <= K < N)."""
    if num_parts is None and part_id is None:
        return
    if num_parts is None or part_id is None:
        raise PetsegError("--num-parts and --part-id go together; give both, e.g. "
                          "--num-parts 4 --part-id 0 for the first of four parts")
    if num_parts < 1:
        raise PetsegError(f"--num-parts {num_parts}: must be 1 or more")
    if not 0 <= part_id < num_parts:
        raise PetsegError(f"--part-id {part_id}: must be 0 to {num_parts - 1} for "
                          f"--num-parts {num_parts}")


def select_part(cases: CaseList, num_parts: int | None, part_id: int | None) -> CaseList:
    """Part `part_id` of `num_parts`: every `num_parts`-th case from the `part_id`-th on
    (all cases without a part)."""
    check_part(num_parts, part_id)
    if num_parts is None or part_id is None:
        return cases
    return CaseList(cases.cases[part_id::num_parts], single=cases.single)


@dataclasses.dataclass(frozen=True)
class MergedParts:
    """The parts found in an output folder, joined.

    Attributes:
        entries: every part's entries in the order of the sorted case list (with `cases`,
            a missing case gets an entry saying which part did not report it).
        num_parts: N of the parts' files.
        missing_parts: part ids without a results file.
        missing_cases: names of the cases of `cases` without any entry.
    """

    entries: list[dict[str, Any]]
    num_parts: int
    missing_parts: list[int]
    missing_cases: list[str]


def _part_files(output_dir: Path) -> tuple[int, dict[int, Path]]:
    """N and {K: file} of the `results.part-K-of-N.json` files in `output_dir`."""
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(output_dir.glob("results.part-*-of-*.json")):
        match = _PART_FILE.match(path.name)
        if match:
            part_id, num_parts = int(match[1]), int(match[2])
            if not 0 <= part_id < num_parts:
                raise PetsegError(f"{path}: no run writes part {part_id} of {num_parts} (K is 0 "
                                  "to N-1); remove the file")
            found.setdefault(num_parts, {})[part_id] = path
    if not found:
        raise PetsegError(f"{output_dir}: no results.part-K-of-N.json; run `petseg predict "
                          "--num-parts N --part-id K` with --output there first")
    if len(found) > 1:
        splits = " and ".join(f"N = {n}" for n in sorted(found))
        raise PetsegError(f"{output_dir}: results.part-K-of-N.json of different N side by side "
                          f"({splits}); remove the files of the split not wanted")
    [(num_parts, parts)] = found.items()
    return num_parts, parts


def merge_parts(output_dir: str | Path, cases: CaseList | None = None) -> MergedParts:
    """Join the part files of `output_dir`; with `cases` (the whole folder, as found by
    `find_cases`) in its order, naming each case no part reported."""
    output_dir = Path(output_dir)
    num_parts, files = _part_files(output_dir)
    parts: dict[int, list[dict[str, Any]]] = {}
    seen: dict[str, Path] = {}
    for part_id, path in sorted(files.items()):
        entries = read_json(path, "", "rerun that part of `petseg predict`")
        if not isinstance(entries, list) or not all(
                isinstance(entry, dict) and isinstance(entry.get("name"), str)
                for entry in entries):
            raise PetsegError(f"{path}: not a list of results; rerun that part")
        for entry in entries:
            if entry["name"] in seen:
                raise PetsegError(f"{seen[entry['name']]} and {path}: both hold case "
                                  f"{entry['name']!r}, so the case list changed between the "
                                  "parts' runs; rerun every part on the same --input")
            seen[entry["name"]] = path
        parts[part_id] = entries
    missing_parts = [k for k in range(num_parts) if k not in parts]
    if cases is None:
        longest = max(len(entries) for entries in parts.values())
        ordered = [parts[k][j] for j in range(longest) for k in sorted(parts)
                   if j < len(parts[k])]
        return MergedParts(ordered, num_parts, missing_parts, [])
    by_name = {entry["name"]: entry for entries in parts.values() for entry in entries}
    ordered, missing_cases = [], []
    for index, files in enumerate(cases.cases):
        entry = by_name.get(files.name)
        if entry is None:
            missing_cases.append(files.name)
            part = results_name(num_parts, index % num_parts)
            entry = results_entry(files, None, f"not run: {part} has no result for this case; "
                                  "run that part again", 0.0, None)
        ordered.append(entry)
    return MergedParts(ordered, num_parts, missing_parts, missing_cases)
