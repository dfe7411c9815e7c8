"""Checkpoints (safetensors, no pickle), the manifest and the verified fold ensemble."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re

import pytest
import torch
from tiny_models import DSCS, TINY, tiny_ensemble

from petseg.checkpoint import (
    DSC_KEY,
    TrainingState,
    calibrated_threshold,
    dsc_weights,
    load_checkpoint,
    load_ensemble,
    load_training_state,
    read_manifest,
    save_checkpoint,
    save_training_state,
    write_manifest,
    write_thresholds,
)
from petseg.config import ModelConfig, NetworkConfig
from petseg.errors import PetsegError
from petseg.model import build_network

torch.set_num_threads(1)  # the test machines' two cores are shared: more threads only contend

def test_round_trip_is_exact_and_rebuilds_the_same_network(tmp_path) -> None:
    net = build_network(TINY.network).eval()
    path = save_checkpoint(tmp_path / "a.safetensors", net.state_dict(), TINY,
                           {DSC_KEY: 0.5}, extra={"epoch": 7})
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config == TINY
    assert checkpoint.metrics == {DSC_KEY: 0.5}
    assert checkpoint.meta["extra"] == {"epoch": 7}
    assert checkpoint.meta["versions"]["torch"] == torch.__version__
    for name, tensor in net.state_dict().items():
        assert torch.equal(checkpoint.state_dict[name], tensor), name
    again = build_network(checkpoint.model_config.network).eval()
    again.load_state_dict(checkpoint.state_dict, strict=True)
    x = torch.rand(1, 2, 8, 8, 8)
    assert torch.equal(again(x), net(x))


def test_fp16_storage_halves_the_file_and_loads_as_float32(tmp_path) -> None:
    net = build_network(TINY.network)
    full = save_checkpoint(tmp_path / "full.safetensors", net.state_dict(), TINY, {DSC_KEY: 0})
    half = save_checkpoint(tmp_path / "half.safetensors", net.state_dict(), TINY, {DSC_KEY: 0},
                           dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    checkpoint = load_checkpoint(half)
    assert checkpoint.meta["dtype"] == "float16"
    for name, tensor in net.state_dict().items():
        got = checkpoint.state_dict[name]
        if tensor.is_floating_point():
            assert got.dtype == torch.float32
            assert torch.equal(got, tensor.half().float()), name
        else:  # BatchNorm's num_batches_tracked stays an integer
            assert torch.equal(got, tensor)


def test_loading_never_unpickles(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", build_network(TINY.network).state_dict(),
                           TINY, {DSC_KEY: 0.5})

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_checkpoint(path).model_config == TINY


def test_garbage_and_foreign_files_are_clear_errors(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(PetsegError, match=r"bad\.safetensors: not a valid safetensors checkpoint"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(PetsegError, match="not a petseg checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(PetsegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_manifest_lists_folds_with_sha256_config_and_metrics(tmp_path) -> None:
    files = tiny_ensemble(tmp_path / "weights")
    manifest = read_manifest(tmp_path / "weights")
    assert sorted(manifest["folds"]) == [f"fold_{i}" for i in range(5)]
    for i, file in enumerate(files):
        entry = manifest["folds"][f"fold_{i}"]
        assert entry["file"] == f"fold_{i}.safetensors"
        assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert entry["metrics"][DSC_KEY] == DSCS[i]
        assert entry["config"]["network"]["channels"] == [4, 8, 16]
    assert manifest[DSC_KEY] == pytest.approx(sum(DSCS) / 5)


def test_load_ensemble_returns_the_folds_in_order_with_their_dsc(tmp_path) -> None:
    tiny_ensemble(tmp_path / "weights", dtype=torch.float16)
    checkpoints = load_ensemble(tmp_path / "weights")
    assert [c.meta["fold"] for c in checkpoints] == [f"fold_{i}" for i in range(5)]
    assert dsc_weights(checkpoints) == list(DSCS)
    assert all(c.model_config == TINY for c in checkpoints)


def test_missing_fold_is_an_error_unless_allowed(tmp_path, caplog) -> None:
    files = tiny_ensemble(tmp_path / "weights")
    files[3].unlink()
    with pytest.raises(PetsegError) as info:
        load_ensemble(tmp_path / "weights")
    assert str(info.value) == (
        f"{tmp_path / 'weights'}: fold(s) fold_3 missing (listed in manifest.json or file "
        "absent); restore them or pass --allow-missing-folds"
    )
    with caplog.at_level(logging.WARNING, logger="petseg.checkpoint"):
        checkpoints = load_ensemble(tmp_path / "weights", allow_missing=True)
    assert [c.meta["fold"] for c in checkpoints] == ["fold_0", "fold_1", "fold_2", "fold_4"]
    assert "fold(s) fold_3 missing" in caplog.text


def test_all_folds_missing_is_an_error_even_when_allowed(tmp_path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "manifest.json").write_text(json.dumps(
        {"format": "petseg-manifest/1", "n_folds": 5, "folds": {}}))
    with pytest.raises(PetsegError, match="fold_0, fold_1, fold_2, fold_3, fold_4 missing"):
        load_ensemble(tmp_path / "weights", allow_missing=True)


def test_manifest_missing_or_invalid_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(PetsegError, match=r"manifest\.json: not found; point --weights"):
        load_ensemble(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(PetsegError, match="not valid JSON"):
        load_ensemble(tmp_path)


def test_checksum_mismatch_is_an_error_even_when_folds_may_be_missing(tmp_path) -> None:
    files = tiny_ensemble(tmp_path / "weights")
    data = bytearray(files[2].read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last weight
    files[2].write_bytes(bytes(data))
    for allow in (False, True):
        with pytest.raises(PetsegError, match=r"fold_2\.safetensors: sha256 .* does not match "
                                              r"manifest\.json"):
            load_ensemble(tmp_path / "weights", allow_missing=allow)


def test_folds_with_different_configs_are_refused(tmp_path) -> None:
    folder = tmp_path / "weights"
    tiny_ensemble(folder)
    other = ModelConfig(network=NetworkConfig(channels=(4, 8, 32), strides=(2, 2),
                                              num_res_units=1))
    save_checkpoint(folder / "fold_2.safetensors", build_network(other.network).state_dict(),
                    other, {DSC_KEY: 0.6})
    write_manifest(folder, [folder / f"fold_{i}.safetensors" for i in range(5)])
    with pytest.raises(PetsegError, match=r"fold_2\.safetensors: model config differs from "
                                          r"fold_0's \(network\.channels: \[4, 8, 32\] vs "
                                          r"fold_0's \[4, 8, 16\]\); all folds must share"):
        load_ensemble(folder)


def test_manifest_and_file_config_must_agree(tmp_path) -> None:
    folder = tmp_path / "weights"
    tiny_ensemble(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["folds"]["fold_1"]["config"]["preprocessing"]["target_spacing_mm"] = 3.0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PetsegError, match=r"fold_1\.safetensors: config differs from "
                                          r"manifest\.json"):
        load_ensemble(folder)


def test_manifest_needs_the_validation_dice(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "fold_0.safetensors",
                           build_network(TINY.network).state_dict(), TINY, {"loss": 0.2})
    with pytest.raises(PetsegError, match="metrics lack 'mean_dsc'"):
        write_manifest(tmp_path, [path])
    assert not (tmp_path / "manifest.json").exists()


def test_calibrated_thresholds_are_stored_per_ensemble_beside_the_folds(tmp_path) -> None:
    folder = tmp_path / "w"
    tiny_ensemble(folder)
    folds_before = read_manifest(folder)["folds"]
    assert calibrated_threshold(folder, "weighted") is None
    write_thresholds(folder, {"weighted": 0.75, "mean": 0.8}, {"seed": 555000, "cases": 10})
    manifest = read_manifest(folder)
    assert manifest["thresholds"] == {"mean": 0.8, "weighted": 0.75}
    assert manifest["threshold_calibration"] == {"seed": 555000, "cases": 10}
    assert manifest["folds"] == folds_before
    assert calibrated_threshold(folder, "weighted") == 0.75
    assert calibrated_threshold(folder, "mean") == 0.8
    assert len(load_ensemble(folder)) == 5


def test_a_threshold_outside_zero_one_is_refused_when_written_and_when_read(tmp_path) -> None:
    folder = tmp_path / "w"
    tiny_ensemble(folder)
    before = (folder / "manifest.json").read_text()
    with pytest.raises(PetsegError, match=r"threshold for 'mean' 1\.2: must be a number between"):
        write_thresholds(folder, {"mean": 1.2}, {})
    assert (folder / "manifest.json").read_text() == before
    manifest = json.loads(before)
    manifest["thresholds"] = {"weighted": "high"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PetsegError, match=r"manifest\.json: thresholds\.weighted 'high': must be"):
        calibrated_threshold(folder, "weighted")


def test_training_state_round_trip_as_plain_containers(tmp_path) -> None:
    """last.pt loads with weights_only=True; the best score -inf (no validation yet) and
    an fp16 scaler's state survive."""
    network = build_network(TINY.network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = TrainingState(epoch=3, model=network.state_dict(), optimizer=optimizer.state_dict(),
                          scaler=scaler.state_dict(), init={"file": "fold_0.safetensors",
                                                            "sha256": "ab" * 32})
    path = save_training_state(tmp_path / "last.pt", state)
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == ["best_epoch", "best_metrics", "best_score", "epoch", "init", "model",
                           "optimizer", "scaler"]
    loaded = load_training_state(path)
    assert (loaded.epoch, loaded.best_epoch, loaded.best_score) == (3, 0, float("-inf"))
    assert loaded.scaler["scale"] == 1024.0 and loaded.init == state.init
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.model[name], tensor)


def test_an_older_training_state_with_a_scheduler_loads(tmp_path) -> None:
    """Files written before the closed-form cosine carry a "scheduler" entry: ignored."""
    old = {"epoch": 2, "model": {"w": torch.ones(2)}, "optimizer": {"state": {},
           "param_groups": []}, "scheduler": {"last_epoch": 2, "_last_lr": [5e-4]},
           "scaler": {}, "best_epoch": 2, "best_score": 0.25, "best_metrics": {DSC_KEY: 0.25}}
    torch.save(old, tmp_path / "last.pt")
    loaded = load_training_state(tmp_path / "last.pt")
    assert (loaded.epoch, loaded.best_epoch, loaded.best_metrics) == (2, 2, {DSC_KEY: 0.25})
    assert loaded.scaler == {} and loaded.init is None


def test_a_damaged_training_state_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "last.pt"
    fix = "start the run again in a new folder, without --resume"
    path.write_bytes(b"not a torch file")
    with pytest.raises(PetsegError) as error:
        load_training_state(path)
    assert str(error.value) == (f"{path}: not a readable training state (not plain tensors "
                                f"and containers); {fix}")
    torch.save({"epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(PetsegError, match=rf"^{re.escape(str(path))}: not a readable training "
                                          rf"state \(PytorchStreamReader failed .+\); {fix}$"):
        load_training_state(path)
    torch.save({"epoch": 1, "model": {}}, path)
    with pytest.raises(PetsegError) as error:
        load_training_state(path)
    assert str(error.value) == (f"{path}: incomplete training state (no optimizer, scaler, "
                                f"best_epoch, best_score, best_metrics); {fix}")
    absent = re.escape(str(tmp_path / "absent.pt"))
    with pytest.raises(PetsegError, match=rf"^{absent}: not found; {fix}$"):
        load_training_state(tmp_path / "absent.pt")
