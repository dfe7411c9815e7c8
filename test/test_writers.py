"""Outputs as writers: a new output is one registered class; its option, its file, its
results entry, its stale-file cleanup and its share of `--continue`'s settings follow."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import make_case

from petseg.cli import main
from petseg.io.cases import CaseFiles
from petseg.io.images import check_writable
from petseg.runs import writers as writers_module
from petseg.runs.writers import OUTPUT_WRITERS, OutputWriter, PredictedCase, output_writers

COUNTS = ("lesion-voxels",)


@dataclasses.dataclass(frozen=True)
class LesionVoxelWriter(OutputWriter):
    """A test output: the number of lesion voxels as text in OUTPUT/lesion-voxels/."""

    what: ClassVar[str] = "lesion voxel count"
    lesion_voxels: bool = False
    fail: ClassVar[bool] = False

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lesion-voxels", action="store_true")

    @property
    def enabled(self) -> bool:
        return self.lesion_voxels

    def check_folders(self, output_dir: Path, cases) -> None:
        if self.enabled:
            check_writable(Path(output_dir).joinpath(*COUNTS))

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        return [Path(output_dir).joinpath(*COUNTS, f"{files.name}.txt")]

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        [path] = self.files(case.output_dir, case.files)
        if self.fail:
            path.write_text("partial")
            raise OSError(28, "No space left on device")
        count = int(sitk.GetArrayViewFromImage(case.prediction.mask).sum())
        path.write_text(str(count))
        entry["outputs"].append({"type": "text", "filename": str(path)})
        entry["lesion_voxels"] = count


@pytest.fixture
def registered():
    """`LesionVoxelWriter` registered for one test."""
    writers_module.register_output(LesionVoxelWriter)
    yield LesionVoxelWriter
    OUTPUT_WRITERS.remove(LesionVoxelWriter)
    LesionVoxelWriter.fail = False


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    folder = tmp_path_factory.mktemp("case")
    for kind, image in (("pet", pet), ("ct", ct)):
        (folder / "images" / kind).mkdir(parents=True)
        sitk.WriteImage(image, str(folder / "images" / kind / f"study-{kind}.mha"))
    return folder


def _predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> int:
    return main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), "--device", "cpu", *extra])


def _entry(out: Path) -> dict[str, Any]:
    [entry] = json.loads((out / "results.json").read_text())
    return entry


def test_a_registered_writer_gets_its_option_file_and_results_entry(
        registered, case_folder, tmp_path, weights, config) -> None:
    out = tmp_path / "out"
    assert _predict(case_folder, out, weights, config, "--lesion-voxels") == 0
    entry = _entry(out)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(entry["outputs"][0]["filename"]))
    written = out / "lesion-voxels" / "study-pet.txt"
    assert int(written.read_text()) == int(mask.sum()) == entry["lesion_voxels"] > 0
    assert entry["outputs"][1] == {"type": "text", "filename": str(written)}
    # --continue keeps the case with the same option, redoes it when the option changes
    before = written.stat().st_mtime_ns
    assert _predict(case_folder, out, weights, config, "--lesion-voxels", "--continue") == 0
    assert written.stat().st_mtime_ns == before
    assert _predict(case_folder, out, weights, config, "--continue") == 0
    assert "lesion_voxels" not in _entry(out)


def test_a_failing_registered_writer_leaves_the_mask_and_no_partial_file(
        registered, case_folder, tmp_path, weights, config) -> None:
    registered.fail = True
    out = tmp_path / "out"
    assert _predict(case_folder, out, weights, config, "--lesion-voxels") == 1
    entry = _entry(out)
    assert entry["error_messages"] == [
        "lesion voxel count not written: OSError: [Errno 28] No space left on device"]
    assert Path(entry["outputs"][0]["filename"]).is_file()
    assert not (out / "lesion-voxels" / "study-pet.txt").exists()


def test_a_failed_case_loses_what_every_writer_left(registered, tmp_path, weights,
                                                    config) -> None:
    """A case that fails removes each writer's earlier file, the new writer's too."""
    inp = tmp_path / "in"
    for kind in ("pet", "ct"):
        (inp / "images" / kind).mkdir(parents=True)
        (inp / "images" / kind / f"study-{kind}.mha").write_bytes(b"not an image")
    out = tmp_path / "out"
    stale = [out / "lesion-voxels" / "study-pet.txt",
             out / "images" / "automated-petct-lesion-segmentation" / "study-pet.mha",
             out / "probabilities" / "study-pet.mha"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("earlier run")
    assert _predict(inp, out, weights, config) == 1
    assert [path.exists() for path in stale] == [False, False, False]
    assert _entry(out)["outputs"] == [] and _entry(out)["error_messages"]


def test_output_writers_takes_each_writers_options() -> None:
    by_kind = {type(w).__name__: w for w in output_writers(save_probability=True)}
    assert by_kind["ProbabilityWriter"].enabled and by_kind["MaskWriter"].enabled
    assert not by_kind["ExtrasWriter"].enabled and by_kind["DicomSegWriter"].enabled
    assert writers_module.needed(by_kind.values(), "probability")
    assert not writers_module.needed(by_kind.values(), "fold_probabilities")
    with pytest.raises(TypeError, match=r"no output takes the option\(s\) \['save_probabilty'\]"):
        output_writers(save_probabilty=True)
    assert writers_module.writers_settings(output_writers(extras_dir=Path("x"))) == {
        "dicom_seg": True, "seg_uid_seed": None, "save_probability": False,
        "extras_dir": Path("x")}
    assert np.array_equal([type(w).__name__ for w in output_writers()],
                          ["MaskWriter", "DicomSegWriter", "ProbabilityWriter", "ExtrasWriter"])
