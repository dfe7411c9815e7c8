"""`petseg predict` and process.py, in process: outputs, results.json, exit codes, errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from inference_synthetic import finer_ct_geometry, make_case
from tiny_models import tiny_ensemble

from petseg.cli import main
from petseg.config import InferenceConfig, load_json
from petseg.io.geometry import Geometry

ROOT = Path(__file__).resolve().parents[1]
MASKS = Path("images/automated-petct-lesion-segmentation")


@pytest.fixture(scope="module")
def case() -> tuple[sitk.Image, sitk.Image]:
    pet, _, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    ct = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0),
                   ct_geometry=finer_ct_geometry(pet, spacing=(2.5, 2.5, 3.0)))[1]
    return pet, ct


def _challenge_input(folder: Path, pet: sitk.Image, ct: sitk.Image,
                     pet_name: str = "1b7c5f4e-pet.mha", ct_name: str = "e03d2a61-ct.mha") -> Path:
    (folder / "images/pet").mkdir(parents=True, exist_ok=True)
    (folder / "images/ct").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pet, str(folder / "images/pet" / pet_name), True)
    sitk.WriteImage(ct, str(folder / "images/ct" / ct_name), True)
    return folder


def _predict(inp: Path, out: Path, weights: Path, config: Path, *extra: str) -> int:
    return main(["predict", "--input", str(inp), "--output", str(out), "--weights", str(weights),
                 "--config", str(config), "--device", "cpu", *extra])


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_single_challenge_case(tmp_path, weights, config, case) -> None:
    pet, ct = case
    inp = _challenge_input(tmp_path / "input", pet, ct)
    out = tmp_path / "output"
    assert _predict(inp, out, weights, config) == 0
    assert _all_files(out) == [str(MASKS / "1b7c5f4e-pet.mha"), "results.json"]
    mask = sitk.ReadImage(str(out / MASKS / "1b7c5f4e-pet.mha"))
    assert Geometry.of(mask) == Geometry.of(pet)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    [entry] = json.loads((out / "results.json").read_text())
    assert entry["name"] == "1b7c5f4e-pet"
    assert entry["inputs"] == [
        {"type": "metaio_image", "filename": str(inp / "images/pet/1b7c5f4e-pet.mha")},
        {"type": "metaio_image", "filename": str(inp / "images/ct/e03d2a61-ct.mha")},
    ]
    assert entry["outputs"] == [{"type": "metaio_image",
                                 "filename": str(out / MASKS / "1b7c5f4e-pet.mha")}]
    assert entry["error_messages"] == []
    volume = sitk.GetArrayFromImage(mask).sum() * Geometry.of(pet).voxel_volume_ml
    assert entry["lesion_volume_ml"] == pytest.approx(volume, abs=1e-3)


def test_probability_option_and_mean_ensemble(tmp_path, weights, config, case) -> None:
    pet, ct = case
    inp = _challenge_input(tmp_path / "input", pet, ct)
    out = tmp_path / "output"
    assert _predict(inp, out, weights, config, "--ensemble", "mean", "--save-probability") == 0
    probability = sitk.ReadImage(str(out / "probabilities/1b7c5f4e-pet.mha"))
    mask = sitk.ReadImage(str(out / MASKS / "1b7c5f4e-pet.mha"))
    assert Geometry.of(probability) == Geometry.of(pet)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask),
                                  sitk.GetArrayFromImage(probability) > 0.5)
    assert len(list((out / MASKS).iterdir())) == 1


def test_ensemble_option_picks_the_mean_or_the_dsc_weighted_mean(tmp_path, config,
                                                                  case) -> None:
    """Two folds of validation DSC 0.2 and 0.8, each alone, then together: --ensemble mean
    gives the plain mean of the folds' probabilities, --ensemble weighted 0.2 p0 + 0.8 p1,
    whatever ensemble the settings file names."""
    import shutil

    weights = tmp_path / "weights"
    tiny_ensemble(weights, folds=2, dscs=(0.2, 0.8))
    inp = _challenge_input(tmp_path / "input", *case)

    def probability(weights_dir: Path, settings: Path, name: str, *extra: str) -> np.ndarray:
        out = tmp_path / name
        assert _predict(inp, out, weights_dir, settings, "--save-probability",
                        "--allow-missing-folds", *extra) == 0  # 2 of 5 folds, or 1
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "probabilities/1b7c5f4e-pet.mha")))

    folds = []
    for fold, other in ((0, 1), (1, 0)):
        shutil.copytree(weights, tmp_path / f"fold_{fold}_alone")
        (tmp_path / f"fold_{fold}_alone/fold_{other}.safetensors").unlink()
        folds.append(probability(tmp_path / f"fold_{fold}_alone", config,
                                 f"fold_{fold}").astype(np.float64))
    mean, weighted = (folds[0] + folds[1]) / 2, 0.2 * folds[0] + 0.8 * folds[1]
    assert np.abs(weighted - mean).max() > 0.01  # the two averages differ on this case
    for ensemble, expected, other in (("mean", mean, "weighted"), ("weighted", weighted, "mean")):
        settings = tmp_path / f"{other}.json"  # the option wins over the settings file
        settings.write_text(json.dumps({**json.loads(config.read_text()), "ensemble": other}))
        got = probability(weights, settings, ensemble, "--ensemble", ensemble)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=ensemble)


def test_threshold_option_overrides_the_calibrated_one(tmp_path, config, case,
                                                        capsys) -> None:
    from petseg.checkpoint import write_thresholds

    pet, ct = case
    weights = tmp_path / "weights"
    tiny_ensemble(weights)
    write_thresholds(weights, {"mean": 0.2, "weighted": 0.2}, {"seed": 1})
    inp = _challenge_input(tmp_path / "input", pet, ct)
    masks = {}
    for name, extra in (("calibrated", ()), ("explicit", ("--threshold", "0.52"))):
        out = tmp_path / name
        assert _predict(inp, out, weights, config, "--save-probability", *extra) == 0
        probability = sitk.GetArrayFromImage(
            sitk.ReadImage(str(out / "probabilities/1b7c5f4e-pet.mha")))
        masks[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / MASKS / "1b7c5f4e-pet.mha")))
    np.testing.assert_array_equal(masks["calibrated"], probability > 0.2)
    np.testing.assert_array_equal(masks["explicit"], probability > 0.52)
    assert masks["calibrated"].sum() > masks["explicit"].sum()
    code = _predict(inp, tmp_path / "bad", weights, config, "--threshold", "1.5")
    _expect_failure(capsys, code, "threshold 1.5: must be between 0 and 1 (exclusive) or null "
                    "for the weights' calibrated one", tmp_path / "bad")


def _expect_failure(capsys, code: int, message: str, out: Path) -> None:
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"petseg predict: error: {message}"
    _expect_only_failed_results(out, message)


def _expect_only_failed_results(out: Path, message: str) -> None:
    """No mask in `out`; a results.json, if any, gives every case `message`."""
    files = _all_files(out) if out.exists() else []
    assert files in ([], ["results.json"])
    if files:
        entries = json.loads((out / "results.json").read_text())
        assert entries and all(e["error_messages"] == [message] and e["outputs"] == []
                               for e in entries)


@pytest.mark.parametrize(("missing", "message"), [
    ("images/ct/e03d2a61-ct.mha", "images/ct: no CT image (.mha, .nii.gz, .nrrd); put the CT "
                                  "image there"),
    ("images/pet/1b7c5f4e-pet.mha", "images/pet: no PET image (.mha, .nii.gz, .nrrd); put the "
                                    "SUV image there")])
def test_missing_image(tmp_path, weights, config, case, capsys, missing, message) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    (inp / missing).unlink()
    out = tmp_path / "output"
    _expect_failure(capsys, _predict(inp, out, weights, config), f"{inp}/{message}", out)


def test_two_pets_with_one_ct(tmp_path, weights, config, case, capsys) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    sitk.WriteImage(case[0], str(inp / "images/pet/second.mha"))
    out = tmp_path / "output"
    _expect_failure(capsys, _predict(inp, out, weights, config),
                    f"{inp / 'images'}: 2 PET and 1 CT image(s) cannot be paired; give each "
                    "PET and its CT the same file name, or put each case in its own folder "
                    "(<case>/images/pet/, <case>/images/ct/)", out)


def test_a_2d_image(tmp_path, weights, config, case, capsys) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    flat = inp / "images/pet/1b7c5f4e-pet.mha"
    sitk.WriteImage(sitk.Image(30, 30, sitk.sitkFloat32), str(flat))
    out = tmp_path / "output"
    _expect_failure(capsys, _predict(inp, out, weights, config),
                    f"{flat}: is 2D, a 3D volume is needed; export the full volume", out)


def test_a_corrupt_file(tmp_path, weights, config, case, capsys) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    corrupt = inp / "images/ct/e03d2a61-ct.mha"
    corrupt.write_bytes(corrupt.read_bytes()[:400])
    out = tmp_path / "output"
    code = _predict(inp, out, weights, config)
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"petseg predict: error: {corrupt}: is truncated or corrupt: the header "
                   "describes 160,325 voxels (55 x 55 x 53), the file holds 400 bytes; copy "
                   "the file again")
    _expect_only_failed_results(out, err.split("error: ", 1)[1])


def test_missing_fold_and_allow_missing(tmp_path, config, case, capsys, caplog) -> None:
    folder = tmp_path / "weights"
    tiny_ensemble(folder)
    (folder / "fold_4.safetensors").unlink()
    inp = _challenge_input(tmp_path / "input", *case)
    out = tmp_path / "output"
    _expect_failure(capsys, _predict(inp, out, folder, config),
                    f"{folder}: fold(s) fold_4 missing (listed in manifest.json or file absent); "
                    "restore them or pass --allow-missing-folds", out)
    with caplog.at_level(logging.WARNING):
        assert _predict(inp, out, folder, config, "--allow-missing-folds") == 0
    assert "fold(s) fold_4 missing; ensembling the 4 fold(s) present" in caplog.text
    assert len(list((out / MASKS).iterdir())) == 1


def test_nan_voxels_are_cleaned_with_a_warning(tmp_path, weights, config, case, caplog) -> None:
    pet, ct = case
    values = sitk.GetArrayFromImage(pet)
    values[:2] = np.nan
    dirty = sitk.GetImageFromArray(values)
    dirty.CopyInformation(pet)
    inp = _challenge_input(tmp_path / "input", dirty, ct)
    out = tmp_path / "output"
    with caplog.at_level(logging.WARNING):
        assert _predict(inp, out, weights, config) == 0
    assert f"1b7c5f4e-pet.mha: {2 * 30 * 30} non-finite voxel(s) (NaN/inf) set to 0" in caplog.text
    assert Geometry.of(sitk.ReadImage(str(out / MASKS / "1b7c5f4e-pet.mha"))) == Geometry.of(pet)


def test_folder_mode_reports_a_bad_case_and_runs_the_others(tmp_path, weights, config,
                                                            case, capsys) -> None:
    inp = tmp_path / "input"
    _challenge_input(inp / "patient_a", *case)
    _challenge_input(inp / "patient_b", *case)
    broken = inp / "patient_b/images/ct/e03d2a61-ct.mha"
    broken.write_bytes(b"not an image")
    out = tmp_path / "output"
    assert _predict(inp, out, weights, config) == 1
    assert _all_files(out) == [str(MASKS / "patient_a.mha"), "results.json"]
    good, bad = json.loads((out / "results.json").read_text())
    assert good["name"] == "patient_a" and good["error_messages"] == []
    assert bad["name"] == "patient_b" and bad["outputs"] == []
    [message] = bad["error_messages"]
    assert message == (f"{broken}: is not an image SimpleITK can read, or its header is corrupt "
                       "(12 bytes); replace the file")


def test_autopet_layout_and_small_image_padded(tmp_path, weights, config) -> None:
    pet, ct, _, _ = make_case(size=(12, 10, 9), spacing=(4.0, 4.0, 5.0))  # < one 32^3 window
    folder = tmp_path / "input/PETCT_0011/03-2004"
    folder.mkdir(parents=True)
    sitk.WriteImage(pet, str(folder / "SUV.nii.gz"))
    sitk.WriteImage(ct, str(folder / "CTres.nii.gz"))
    out = tmp_path / "output"
    assert _predict(tmp_path / "input", out, weights, config) == 0
    mask = sitk.ReadImage(str(out / MASKS / "PETCT_0011_03-2004.mha"))
    assert mask.GetSize() == pet.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), pet.GetSpacing())
    np.testing.assert_allclose(mask.GetOrigin(), pet.GetOrigin(), atol=1e-4)  # NIfTI float32
    np.testing.assert_allclose(mask.GetDirection(), pet.GetDirection(), atol=1e-6)


def test_process_py_runs_the_same_command(tmp_path, weights, config, case, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("process", ROOT / "process.py")
    process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(process)
    argv = process.arguments([])
    assert argv[:5] == ["predict", "--input", "/input", "--output", "/output"]
    assert argv[argv.index("--config") + 1] == str(ROOT / "resources/inference.json")
    inp = _challenge_input(tmp_path / "input", *case)
    out = tmp_path / "output"
    argv = process.arguments(["--input", str(inp), "--output", str(out), "--weights",
                              str(weights), "--config", str(config), "--device", "cpu"])
    assert main(argv) == 0
    assert _all_files(out) == [str(MASKS / "1b7c5f4e-pet.mha"), "results.json"]


def test_shipped_inference_settings_are_the_papers() -> None:
    shipped = load_json(InferenceConfig, ROOT / "resources/inference.json")
    assert shipped == InferenceConfig()
    assert shipped.roi_size == (192, 192, 192) and shipped.overlap == 0.5


def test_help_lists_predict(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--input", "--output", "--weights", "--device", "--ensemble",
                   "--allow-missing-folds", "--config", "--min-lesion-ml", "--threshold"):
        assert option in text


# ---- outputs tell the truth; the environment of any uid -----------------------------------

def _not_writable(folder: Path, why: str) -> str:
    """The one line `petseg predict` prints for an output folder it cannot write to."""
    return (f"petseg predict: error: {folder}: not writable by uid {os.getuid()} ({why}); "
            "make it writable for this user (chown/chmod), or run the container as its "
            "owner with --user $(id -u):$(id -g)")


def test_an_output_that_is_not_a_folder_fails_before_any_computation(tmp_path, case, config,
                                                                      capsys) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    blocker = tmp_path / "file"
    blocker.write_text("")
    # no weights at all: a check after loading them would report those instead
    code = _predict(inp, blocker / "out", tmp_path / "no-weights", config)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [_not_writable(blocker / "out", "Not a directory")]


def test_an_output_without_write_permission_fails_first(tmp_path, case, config, capsys,
                                                        monkeypatch) -> None:
    # tests run as root, who may write anywhere: the denial comes from the probe file
    import tempfile

    inp = _challenge_input(tmp_path / "input", *case)
    out = tmp_path / "output"
    out.mkdir(mode=0o755)

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / ".petseg-write-check"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    code = _predict(inp, out, tmp_path / "no-weights", config)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [_not_writable(out, f"Permission denied, owned by uid {os.getuid()} with "
                                      "mode 755")]


def test_a_failed_rerun_removes_the_earlier_mask_and_records_its_error(tmp_path, weights,
                                                                       config, case,
                                                                       capsys) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    out, extras = tmp_path / "output", tmp_path / "extras"
    options = ("--save-probability", "--extras", str(extras))
    (extras / "other-case_mip.png").parent.mkdir()
    (extras / "other-case_mip.png").write_bytes(b"kept")
    assert _predict(inp, out, weights, config, *options) == 0
    assert len(_all_files(out)) == 3
    assert _all_files(extras) == ["1b7c5f4e-pet_lesions.csv", "1b7c5f4e-pet_lesions.json",
                                  "1b7c5f4e-pet_mip.png", "1b7c5f4e-pet_uncertainty.mha",
                                  "other-case_mip.png"]
    ct = inp / "images/ct/e03d2a61-ct.mha"
    ct.write_bytes(b"")
    assert _predict(inp, out, weights, config, *options) == 1
    message = f"{ct}: is empty (0 bytes); copy the file again"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"petseg predict: error: {message}"
    assert _all_files(out) == ["results.json"]
    assert _all_files(extras) == ["other-case_mip.png"]  # only the failed case's extras go
    [entry] = json.loads((out / "results.json").read_text())
    assert (entry["name"], entry["error_messages"], entry["outputs"]) == (
        "1b7c5f4e-pet", [message], [])


def test_unreadable_weights_are_one_line_and_recorded(tmp_path, weights, config, case,
                                                      capsys, monkeypatch) -> None:
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(weights, copy)
    manifest = copy / "manifest.json"
    real = Path.read_text

    def read_text(self, *args, **kwargs):  # root reads a 0600 file; a container user cannot
        if self == manifest:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    inp = _challenge_input(tmp_path / "input", *case)
    out = tmp_path / "output"
    message = (f"{manifest}: permission denied for uid {os.getuid()}; make it readable "
               "(chmod a+r, or a+rX for a folder) or run as its owner")
    code = _predict(inp, out, copy, config)
    _expect_failure(capsys, code, message, out)
    assert (out / "results.json").is_file()


def test_an_interrupted_folder_run_lists_what_completed(tmp_path, weights, config, case,
                                                        monkeypatch, capsys) -> None:
    from petseg.inference.predictor import Predictor
    from petseg.io.outputs import INTERRUPTED

    inp = tmp_path / "input"
    for name in ("patient_a", "patient_b", "patient_c"):
        _challenge_input(inp / name, *case)
    out = tmp_path / "output"
    stale = out / MASKS / "patient_b.mha"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's mask")
    real = Predictor.predict
    calls = []

    def predict(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", predict)
    assert _predict(inp, out, weights, config) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "petseg predict: interrupted"
    assert _all_files(out) == [str(MASKS / "patient_a.mha"), "results.json"]
    entries = json.loads((out / "results.json").read_text())
    assert [(e["name"], e["error_messages"]) for e in entries] == [
        ("patient_a", []), ("patient_b", [INTERRUPTED]), ("patient_c", [INTERRUPTED])]


def test_sigterm_interrupts_like_ctrl_c_and_the_old_handler_comes_back(
        tmp_path, weights, config, case, monkeypatch, capsys) -> None:
    import signal

    from petseg.inference.predictor import Predictor
    from petseg.io.outputs import INTERRUPTED

    inp = tmp_path / "input"
    for name in ("patient_a", "patient_b"):
        _challenge_input(inp / name, *case)
    out = tmp_path / "output"
    reached: list[int] = []

    def ours(signum, frame) -> None:  # what SIGTERM would reach without predict's handler
        reached.append(signum)

    previous = signal.signal(signal.SIGTERM, ours)
    real = Predictor.predict

    def predict(self, *args, **kwargs):
        if kwargs.get("progress") is not None and "patient_b" in kwargs["progress"].name:
            os.kill(os.getpid(), signal.SIGTERM)  # `docker stop` during the second case
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", predict)
    try:
        code = _predict(inp, out, weights, config)
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (code, reached, after) == (130, [], ours)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "petseg predict: interrupted"
    entries = json.loads((out / "results.json").read_text())
    assert [(e["name"], e["error_messages"]) for e in entries] == [
        ("patient_a", []), ("patient_b", [INTERRUPTED])]


def test_an_interruption_while_the_weights_load_is_recorded(tmp_path, weights, config, case,
                                                            monkeypatch, capsys) -> None:
    from petseg.inference.predictor import Predictor
    from petseg.io.outputs import INTERRUPTED

    inp = _challenge_input(tmp_path / "input", *case)
    out = tmp_path / "output"
    stale = out / MASKS / "1b7c5f4e-pet.mha"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's mask")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "from_weights_dir", interrupted)
    assert _predict(inp, out, weights, config) == 130
    assert _all_files(out) == ["results.json"]
    entries = json.loads((out / "results.json").read_text())
    assert [(e["name"], e["error_messages"]) for e in entries] == [
        ("1b7c5f4e-pet", [INTERRUPTED])]


def test_two_inputs_with_one_output_name_are_refused(tmp_path, weights, config, case,
                                                     capsys) -> None:
    inp = tmp_path / "input"
    _challenge_input(inp / "case 1", *case)
    _challenge_input(inp / "case_1", *case)
    out = tmp_path / "output"
    message = (f"{inp / 'case 1/images/pet/1b7c5f4e-pet.mha'} and "
               f"{inp / 'case_1/images/pet/1b7c5f4e-pet.mha'}: both would write the output "
               "'case_1'; rename one of them")
    _expect_failure(capsys, _predict(inp, out, weights, config), message, out)
    assert not (out / MASKS).exists() or not any((out / MASKS).iterdir())


def test_progress_is_logged_per_stage_and_window_batch(tmp_path, weights, config, case,
                                                       caplog) -> None:
    inp = _challenge_input(tmp_path / "input", *case)
    with caplog.at_level(logging.INFO):
        assert _predict(inp, tmp_path / "output", weights, config) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "petseg.progress"]
    assert lines[0].startswith("case 1b7c5f4e-pet: reading ")
    assert "case 1b7c5f4e-pet: preprocessing" in lines
    windows = [line for line in lines if line.endswith("%)") and " windows (" in line]
    assert windows[-1].endswith("windows (100%)") and len(windows) >= 2
    done, total = windows[-1].split(": ")[1].split(" windows")[0].split(" of ")
    assert done == total and int(total) > 1
    assert lines[-1] == "case 1b7c5f4e-pet: writing the mask"


def test_progress_is_a_bar_on_a_terminal() -> None:
    import io

    from petseg.progress import CaseProgress, window_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = CaseProgress("a", stream=stream)
    with progress.listening():
        report = window_progress.get()
        for done in (2, 4, 6):
            report(done, 6)
        assert progress._bar.n == 6 and progress._bar.total == 6
    assert window_progress.get() is None
    assert "case a:" in stream.getvalue() and "6/6" in stream.getvalue()


def test_any_uid_gets_a_user_name_and_home(tmp_path, monkeypatch) -> None:
    import getpass
    import pwd

    from petseg.cli import prepare_environment

    def unknown(uid: int):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    with pytest.raises(KeyError):  # what MONAI's import hits under `docker run --user`
        getpass.getuser()
    prepare_environment()
    assert getpass.getuser() == f"uid{os.getuid()}"
    assert Path(os.environ["HOME"]).is_dir() and os.access(os.environ["HOME"], os.W_OK)


def test_no_writable_temporary_directory_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    import tempfile

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(not_a_folder)])
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(not_a_folder))
    assert main(["predict", "--input", str(tmp_path), "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"petseg predict: error: no writable temporary directory (TMPDIR='{not_a_folder}', "
        "/tmp, /var/tmp, /usr/tmp and the working directory are read-only); mount one "
        "(docker run --tmpfs /tmp) or set TMPDIR to a writable folder"]
