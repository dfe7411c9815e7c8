"""`petseg merge-results` refusing what it cannot join: one line naming the files and the fix,
exit status 1, no results.json written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from petseg.cli import main


def _part(out: Path, part_id: int, num_parts: int, names: list[str]) -> Path:
    """A part's results file as `petseg predict --num-parts N --part-id K` writes it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"results.part-{part_id}-of-{num_parts}.json"
    path.write_text(json.dumps([{"name": name, "inputs": [], "outputs": [],
                                 "error_messages": []} for name in names]))
    return path


def _refused(out: Path, capsys, message: str, command: str = "merge-results",
             argv: list[str] | None = None) -> None:
    assert main(argv or [command, str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"petseg {command}: error: {message}"]
    assert not (out / "results.json").exists()


def test_merging_joins_the_parts_in_case_order(tmp_path, capsys) -> None:
    _part(tmp_path, 0, 2, ["a", "c", "e"])
    _part(tmp_path, 1, 2, ["b", "d"])
    assert main(["merge-results", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert [entry["name"] for entry in merged] == ["a", "b", "c", "d", "e"]


def test_one_case_in_two_parts_is_refused(tmp_path, capsys) -> None:
    first = _part(tmp_path, 0, 2, ["a", "c"])
    second = _part(tmp_path, 1, 2, ["b", "c"])
    _refused(tmp_path, capsys, f"{first} and {second}: both hold case 'c', so the case list "
             "changed between the parts' runs; rerun every part on the same --input")


def test_parts_of_two_splits_are_refused(tmp_path, capsys) -> None:
    _part(tmp_path, 0, 2, ["a"])
    _part(tmp_path, 1, 2, ["b"])
    _part(tmp_path, 0, 3, ["a"])
    _refused(tmp_path, capsys, f"{tmp_path}: results.part-K-of-N.json of different N side by "
             "side (N = 2 and N = 3); remove the files of the split not wanted")


@pytest.mark.parametrize("results_json", [False, True])
def test_a_folder_without_part_files_is_refused(tmp_path, capsys, results_json) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if results_json:  # an unsplit run's results are no part
        (out / "results.json").write_text("[]")
    assert main(["merge-results", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"petseg merge-results: error: {out}: no results.part-K-of-N.json; run `petseg "
        "predict --num-parts N --part-id K` with --output there first"]
    assert (out / "results.json").exists() == results_json


@pytest.mark.parametrize(("part_id", "num_parts"), [(0, 0), (2, 2)])
def test_a_part_no_run_writes_is_refused(tmp_path, capsys, part_id, num_parts) -> None:
    _part(tmp_path, 0, 2, ["a"])
    impossible = _part(tmp_path, part_id, num_parts, ["b"])
    _refused(tmp_path, capsys, f"{impossible}: no run writes part {part_id} of {num_parts} "
             "(K is 0 to N-1); remove the file")


def test_a_part_file_that_is_no_list_of_results_is_refused(tmp_path, capsys) -> None:
    _part(tmp_path, 0, 2, ["a"])
    broken = tmp_path / "results.part-1-of-2.json"
    broken.write_text(json.dumps([{"outputs": []}]))
    _refused(tmp_path, capsys, f"{broken}: not a list of results; rerun that part")


def test_num_parts_zero_is_refused_before_any_output(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    _refused(out, capsys, "--num-parts 0: must be 1 or more", "predict",
             ["predict", "--input", str(tmp_path), "--output", str(out), "--num-parts", "0",
              "--part-id", "0"])
    assert not out.exists()
