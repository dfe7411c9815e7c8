"""`petseg train --resume`: the fields a resume may change, and how the change is recorded."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math

import pytest
import torch
from training_fixtures import synthetic_cache, tiny_config, train_epochs

from petseg.cli import main
from petseg.training.config import training_config_from_dict
from petseg.training.run_folder import RESUMABLE_FIELDS, config_changes

torch.set_num_threads(2)


def _cosine(lr: float, epoch: int, epochs: int = 3) -> float:
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def test_a_resume_with_a_lower_lr_continues_with_it_and_records_the_change(tmp_path,
                                                                           capsys,
                                                                           caplog) -> None:
    """Stopped after epoch 1 of 3 at lr 3e-3, resumed with `--set optimizer.lr=0.001` (no
    --config: the run's own config.json is the base) from an older last.pt that still has a
    scheduler entry."""
    cache, splits = synthetic_cache(tmp_path, n=6)
    run = tmp_path / "run"
    train_epochs(tiny_config(epochs=3), cache, splits, run, stop_after=1)
    old = torch.load(run / "last.pt", weights_only=True)
    torch.save({**old, "scheduler": {"last_epoch": 1, "_last_lr": [2.25e-3]}}, run / "last.pt")

    command = ["train", "--cache", str(cache), "--splits", str(splits), "--fold", "0", "--out",
               str(run), "--device", "cpu", "--quiet", "--resume"]
    with caplog.at_level(logging.INFO, logger="petseg.training.run_folder"):
        assert main([*command, "--set", "optimizer.lr=0.001"]) == 0
    assert "resuming with optimizer.lr = 0.001 (was 0.003) from epoch 2" in caplog.messages
    with open(run / "history.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert lrs == pytest.approx([3e-3, _cosine(1e-3, 1), _cosine(1e-3, 2)], rel=1e-9)
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and "scheduler" not in last
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-15)
    stored = json.loads((run / "config.json").read_text())
    config = tiny_config(epochs=3)
    assert training_config_from_dict(stored) == dataclasses.replace(
        config, optimizer=dataclasses.replace(config.optimizer, lr=1e-3))
    assert json.loads((run / "config_changes.json").read_text()) == [
        {"epoch": 2, "changes": {"optimizer.lr": {"from": 0.003, "to": 0.001}}}]

    capsys.readouterr()
    assert main([*command, "--set", "model.network.channels=[4,8,32]", "--set",
                 "optimizer.batch_size=1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"petseg train: error: {run / 'config.json'}: the run was started with another config "
        "(model.network.channels: [4, 8, 32] vs the run's [4, 8, 16]; optimizer.batch_size: 1 "
        "vs the run's 2); resume with --config pointing to this file, changing only "
        "optimizer.lr, optimizer.lr_min, optimizer.grad_clip_norm, amp, validation.every, "
        "loader_threads, prefetch_batches, num_threads")
    assert json.loads((run / "config.json").read_text()) == stored  # nothing written
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_config_changes_name_every_differing_field_in_order() -> None:
    before = tiny_config(epochs=3)
    after = tiny_config(epochs=3, amp="bf16", num_threads=4)
    assert config_changes(before, before) == {}
    assert config_changes(before, after) == {"amp": ("auto", "bf16"), "num_threads": (0, 4)}
    assert set(config_changes(before, after)) <= set(RESUMABLE_FIELDS)


def test_a_run_saved_before_clipping_existed_resumes_without_clipping(tmp_path,
                                                                      monkeypatch) -> None:
    """A config.json without optimizer.grad_clip_norm was trained unclipped: resuming it
    keeps that (not the default 12) and records no change."""
    from petseg.training import loop

    cache, splits = synthetic_cache(tmp_path, n=6)
    run = tmp_path / "run"
    train_epochs(tiny_config(epochs=2), cache, splits, run, stop_after=1)
    stored = json.loads((run / "config.json").read_text())
    del stored["optimizer"]["grad_clip_norm"]
    (run / "config.json").write_text(json.dumps(stored))
    norms = []
    original = loop.train_step

    def spy(*args, **kwargs):
        norms.append(args[8])
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    assert main(["train", "--cache", str(cache), "--splits", str(splits), "--fold", "0",
                 "--out", str(run), "--device", "cpu", "--quiet", "--resume"]) == 0
    assert norms and set(norms) == {None}
    assert not (run / "config_changes.json").exists()
