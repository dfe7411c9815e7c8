"""Cohort runs of `petseg predict`: worker processes per device, parts for array jobs and
their merge, a run that continues; the folder's progress line."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import make_case

from petseg.cli import main
from petseg.config import InferenceConfig
from petseg.errors import PetsegError
from petseg.io.cases import find_cases
from petseg.io.geometry import Geometry
from petseg.io.outputs import INTERRUPTED
from petseg.progress import FolderProgress
from petseg.runs.parts import select_part
from petseg.runs.workers import death_cause, parse_devices

MASKS = Path("images/automated-petct-lesion-segmentation")
SIZES = {"case_a": (30, 30, 24), "case_b": (36, 32, 24), "case_c": (28, 28, 20),
         "case_d": (34, 30, 22), "case_e": (26, 30, 20)}
"""PET sizes of the cohort's cases (voxels), so each case differs and sizes vary."""


def _cohort(folder: Path, sizes: dict[str, tuple[int, int, int]]) -> Path:
    """One case folder per name (grand-challenge layout inside)."""
    for name, size in sizes.items():
        pet, ct, _, _ = make_case(size=size, spacing=(4.0, 4.0, 6.0))
        for kind, image in (("pet", pet), ("ct", ct)):
            (folder / name / "images" / kind).mkdir(parents=True)
            sitk.WriteImage(image, str(folder / name / "images" / kind / f"{name}.mha"), True)
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return _cohort(tmp_path_factory.mktemp("cohort") / "input", SIZES)


def _predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> int:
    device = [] if "--devices" in extra else ["--device", "cpu"]
    return main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), *device, *extra])


def _entries(path: Path) -> dict[str, dict]:
    return {entry["name"]: entry for entry in json.loads(path.read_text())}


def _mask(out: Path, name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / MASKS / f"{name}.mha")))


def test_two_cpu_workers_give_the_masks_and_entries_of_one(tmp_path, weights, config,
                                                           cohort) -> None:
    names = sorted(SIZES)[:3]
    inp = tmp_path / "input"
    inp.mkdir()
    for name in names:
        (inp / name).symlink_to(cohort / name)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(inp, one, weights, config, "--save-probability") == 0
    assert _predict(inp, two, weights, config, "--save-probability", "--devices", "cpu,cpu") == 0
    for name in names:
        probability = sitk.GetArrayFromImage(
            sitk.ReadImage(str(one / "probabilities" / f"{name}.mha")))
        other = sitk.GetArrayFromImage(sitk.ReadImage(str(two / "probabilities" / f"{name}.mha")))
        np.testing.assert_allclose(other, probability, atol=1e-5)
        clear = np.abs(probability - 0.5) > 1e-5  # away from float noise at the threshold
        np.testing.assert_array_equal(_mask(two, name)[clear], _mask(one, name)[clear])
    first, second = json.loads((one / "results.json").read_text()), _entries(two / "results.json")
    assert [entry["name"] for entry in first] == names  # case order, whatever ran first
    assert list(second) == names
    for entry in first:
        other = second[entry["name"]]
        assert other["error_messages"] == [] and entry["error_messages"] == []
        assert json.loads(json.dumps(other).replace(str(two), str(one))) | {
            "seconds": entry["seconds"]} == entry


def test_a_killed_worker_fails_only_its_case(tmp_path, weights, config) -> None:
    sizes = {"big": (72, 72, 60), **{name: SIZES[name] for name in sorted(SIZES)[:2]}}
    inp = _cohort(tmp_path / "input", sizes)
    killed: list[int] = []

    class KillOnStart(logging.Handler):
        """SIGKILL the worker that starts case "big" (the largest: handed out first)."""

        def emit(self, record: logging.LogRecord) -> None:
            _, pid, _, name = record.args  # type: ignore[misc]
            if name == "big" and not killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    handler = KillOnStart(level=logging.INFO)
    handler.addFilter(lambda record: record.msg == "worker %d (pid %d, %s): case %s")
    workers_log = logging.getLogger("petseg.runs.workers")
    workers_log.addHandler(handler)
    level = workers_log.level
    workers_log.setLevel(logging.INFO)
    try:
        code = _predict(inp, tmp_path / "out", weights, config, "--devices", "cpu,cpu")
    finally:
        workers_log.removeHandler(handler)
        workers_log.setLevel(level)
    assert code == 1 and len(killed) == 1
    entries = _entries(tmp_path / "out/results.json")
    assert sorted(entries) == sorted(sizes)
    assert entries["big"]["error_messages"] == [death_cause(-signal.SIGKILL, "cpu", killed[0])]
    assert entries["big"]["outputs"] == []
    assert not (tmp_path / "out" / MASKS / "big.mha").exists()
    for name in sorted(SIZES)[:2]:
        assert entries[name]["error_messages"] == []
        assert _mask(tmp_path / "out", name).shape == tuple(reversed(sizes[name]))
    assert "was killed by SIGKILL (out of memory?) while running this case" in \
        entries["big"]["error_messages"][0]


def test_sigterm_stops_every_worker_and_records_what_finished(tmp_path, weights, config,
                                                              cohort, caplog) -> None:
    pids: list[int] = []

    class TerminateAfterFirst(logging.Handler):
        """SIGTERM to this process (the parent) as the first case finishes."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("worker ") and "started (pid" in \
                    record.getMessage():
                pids.append(int(record.getMessage().split("pid ")[1].rstrip(")")))
            if record.getMessage().startswith("folder: 1 of"):
                os.kill(os.getpid(), signal.SIGTERM)

    handler = TerminateAfterFirst(level=logging.INFO)
    loggers = [logging.getLogger(name) for name in ("petseg.runs.results", "petseg.runs.workers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            code = _predict(cohort, tmp_path / "out", weights, config, "--devices", "cpu,cpu")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert code == 130 and len(pids) == 2
    entries = _entries(tmp_path / "out/results.json")
    assert list(entries) == sorted(SIZES)
    finished = [n for n, e in entries.items() if not e["error_messages"]]
    interrupted = [n for n, e in entries.items() if e["error_messages"] == [INTERRUPTED]]
    assert len(finished) >= 1 and len(interrupted) >= 1
    assert sorted(finished + interrupted) == sorted(SIZES)
    assert sorted(p.stem for p in (tmp_path / "out" / MASKS).iterdir()) == sorted(finished)
    for pid in pids:  # every worker ended and was reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_parts_cover_every_case_once_and_merging_names_a_missing_part(
        tmp_path, weights, config, cohort, caplog) -> None:
    out = tmp_path / "out"
    for part in range(3):
        assert _predict(cohort, out, weights, config, "--num-parts", "3",
                        "--part-id", str(part)) == 0
    parts = [json.loads((out / f"results.part-{k}-of-3.json").read_text()) for k in range(3)]
    names = sorted(SIZES)
    assert [[entry["name"] for entry in part] for part in parts] == [
        names[0::3], names[1::3], names[2::3]]
    assert not (out / "results.json").exists()
    assert main(["merge-results", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [entry["name"] for entry in merged] == names
    assert all(entry["error_messages"] == [] for entry in merged)
    assert sorted(p.name for p in (out / MASKS).iterdir()) == [f"{n}.mha" for n in names]

    (out / "results.part-1-of-3.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["merge-results", str(out), "--input", str(cohort)]) == 1
    merged = _entries(out / "results.json")
    assert list(merged) == names
    for name in names[1::3]:
        assert merged[name]["error_messages"] == [
            "not run: results.part-1-of-3.json has no result for this case; run that part again"]
    text = caplog.text
    assert "part 1 of 3: results.part-1-of-3.json missing; run that part (--num-parts 3 " \
           "--part-id 1)" in text
    assert f"2 case(s) without a result: {', '.join(names[1::3])}" in text


def test_part_options_are_checked(cohort, tmp_path, weights, config, capsys) -> None:
    cases = find_cases(cohort)
    assert [f.name for f in select_part(cases, 2, 1).cases] == sorted(SIZES)[1::2]
    with pytest.raises(PetsegError, match=r"^--part-id 3: must be 0 to 2 for --num-parts 3$"):
        select_part(cases, 3, 3)
    assert _predict(cohort, tmp_path / "out", weights, config, "--num-parts", "2") == 1
    assert "petseg predict: error: --num-parts and --part-id go together" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_continue_redoes_only_unfinished_and_corrupted_masks(tmp_path, weights, config,
                                                             cohort, caplog) -> None:
    names = sorted(SIZES)[:3]
    inp = tmp_path / "input"
    inp.mkdir()
    for name in names:
        (inp / name).symlink_to(cohort / name)
    out = tmp_path / "out"

    class InterruptAt(logging.Handler):
        """Ctrl-C as the third case starts."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(f"case {names[2]}: reading"):
                raise KeyboardInterrupt

    progress_log = logging.getLogger("petseg.progress")
    handler = InterruptAt(level=logging.INFO)
    progress_log.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            assert _predict(inp, out, weights, config) == 130
    finally:
        progress_log.removeHandler(handler)
    first = _entries(out / "results.json")
    assert [first[n]["error_messages"] for n in names] == [[], [], [INTERRUPTED]]
    assert not (out / MASKS / f"{names[2]}.mha").exists()
    caplog.clear()
    kept_mask = out / MASKS / f"{names[1]}.mha"
    kept_inode = kept_mask.stat().st_ino
    corrupt = out / MASKS / f"{names[0]}.mha"
    original = _mask(out, names[0])
    corrupt.write_bytes(corrupt.read_bytes()[:-10])  # truncated

    with caplog.at_level(logging.INFO):
        assert _predict(inp, out, weights, config, "--continue") == 0
    again = _entries(out / "results.json")
    assert list(again) == names and all(not e["error_messages"] for e in again.values())
    assert again[names[1]] == first[names[1]]  # kept as it was, not rerun
    assert kept_mask.stat().st_ino == kept_inode
    np.testing.assert_array_equal(_mask(out, names[0]), original)
    assert again[names[0]]["mask_sha256"] == first[names[0]]["mask_sha256"]
    assert (f"case {names[0]}: runs again: mask changed since it was written (sha256 differs)"
            in caplog.text)
    assert "continuing: 1 of 3 case(s) finished earlier, 2 to run" in caplog.text
    assert Geometry.of(sitk.ReadImage(str(corrupt))).size == SIZES[names[0]]


def test_devices_are_checked() -> None:
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    import torch

    if torch.cuda.device_count() == 0:
        assert parse_devices("all") == ["cpu"]
        with pytest.raises(PetsegError, match=r"^--devices cuda:0,cuda:1: no CUDA device is "
                                              r"available; use --devices cpu$"):
            parse_devices("cuda:0,cuda:1")
    with pytest.raises(PetsegError, match=r"^--devices cpu,gpu: 'gpu' is not a device; use "
                                          r"cpu, cuda:N or all$"):
        parse_devices("cpu,gpu")


def test_device_and_devices_together_are_refused(tmp_path, weights, config, capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--input", str(tmp_path), "--output", str(out), "--weights",
                 str(weights), "--config", str(config), "--device", "cpu",
                 "--devices", "cpu,cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "petseg predict: error: --device cpu and --devices cpu,cpu: give one; --devices "
        "lists every device the run uses")
    assert not out.exists()


def test_folder_progress_counts_rate_and_time_left() -> None:
    now = [100.0]
    progress = FolderProgress(10, clock=lambda: now[0])
    now[0] = 100.0 + 720.0
    assert progress.case_done() == "1 of 10 case(s) done (0 failed), 5.0 cases/h, about 1 h 48 " \
                                   "min left"
    now[0] = 100.0 + 900.0
    assert progress.case_done(failed=True) == ("2 of 10 case(s) done (1 failed), 8.0 cases/h, "
                                               "about 1 h 00 min left")


def test_case_loop_writes_the_previous_case_while_the_next_runs(cohort, tmp_path,
                                                                monkeypatch) -> None:
    import threading

    from tiny_models import TINY, SuvThreshold

    from petseg.config import resolve_inference_config
    from petseg.inference.predictor import Predictor
    from petseg.runs import loop, writers

    predictor = Predictor([SuvThreshold()], TINY, resolve_inference_config(
        InferenceConfig(roi_size=(32, 32, 32), overlap=0.25)), device="cpu")
    started: list[str] = []
    second_running = threading.Event()
    seen_while_writing: dict[str, bool] = {}
    predict, write = Predictor.predict, writers.write_image

    def predicting(self, pet, ct, **kwargs):
        started.append(threading.current_thread().name)
        if len(started) == 2:
            second_running.set()
        return predict(self, pet, ct, **kwargs)

    def writing(image, path):
        if path.stem == "case_a":  # the first case's mask waits for the second case to run
            seen_while_writing[threading.current_thread().name] = second_running.wait(20)
        return write(image, path)

    monkeypatch.setattr(Predictor, "predict", predicting)
    monkeypatch.setattr(writers, "write_image", writing)
    entries: list[dict] = []
    cases = find_cases(cohort).cases[:2]
    loop.run_cases(cases, tmp_path, predictor, writers.output_writers(), entries.append)
    assert [t.startswith("petseg-write") for t in seen_while_writing] == [True]
    assert list(seen_while_writing.values()) == [True]
    assert [entry["name"] for entry in entries] == ["case_a", "case_b"]
    assert all(not entry["error_messages"] for entry in entries)


def test_continue_redoes_a_case_whose_inputs_or_mask_changed(tmp_path) -> None:
    from petseg.runs.resume import redo_reason, stamp

    pet, ct, mask = (tmp_path / name for name in ("pet.mha", "ct.mha", "mask.mha"))
    for path in (pet, ct, mask):
        path.write_bytes(b"0123456789")
    inputs = [{"type": "metaio_image", "filename": str(p)} for p in (pet, ct)]
    fingerprint = {"weights": "a" * 64, "settings": "b" * 64}
    entry = json.loads(json.dumps(stamp(
        {"name": "x", "inputs": inputs, "error_messages": [],
         "outputs": [{"type": "metaio_image", "filename": str(mask)}]}, fingerprint)))
    assert redo_reason(entry, mask, inputs, fingerprint) is None
    assert redo_reason(entry, mask, inputs, {**fingerprint, "settings": "c" * 64}) == \
        "other weights or settings"
    assert redo_reason(entry, mask, inputs[::-1], fingerprint) == "other input files"
    os.utime(ct, ns=(1, 1))
    assert redo_reason(entry, mask, inputs, fingerprint) == \
        "input files changed since (size or modification time)"
    entry = json.loads(json.dumps(stamp(entry, fingerprint)))
    mask.write_bytes(b"0123456780")
    assert redo_reason(entry, mask, inputs, fingerprint) == \
        "mask changed since it was written (sha256 differs)"
    mask.unlink()
    assert redo_reason(entry, mask, inputs, fingerprint) == "mask missing"
    assert redo_reason({**entry, "error_messages": ["x"]}, mask, inputs, fingerprint) == \
        "did not finish"
