"""Cache, loader, training loop, resume and export on small synthetic data (CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_fixtures import (
    TINY_MODEL,
    synthetic_cache,
    tiny_config,
    train_epochs,
    write_study,
)

from petseg.checkpoint import DSC_KEY, load_checkpoint, load_ensemble
from petseg.cli import main
from petseg.config import PreprocessingConfig, apply_overrides, to_dict
from petseg.errors import PetsegError
from petseg.preprocessing import preprocess_case
from petseg.training.cache import build_cache, cached_keys, check_cache_config, load_volume
from petseg.training.config import TrainingConfig, load_training_config
from petseg.training.data import discover_studies
from petseg.training.export import export_weights
from petseg.training.loader import EpochLoader, epoch_order
from petseg.training.loop import train
from petseg.training.splits import load_splits

torch.set_num_threads(2)


def test_preprocess_and_split_run_without_torch_or_monai(tmp_path) -> None:
    """The data commands import neither torch nor MONAI (seconds at every start)."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i in range(2):
        write_study(data / f"PETCT_{i}" / "01-01-2001-NA-x", rng)
    (tmp_path / "meta.csv").write_text("Subject ID,diagnosis\nPETCT_0,LYMPHOMA\n"
                                       "PETCT_1,negative\n")
    script = (
        "import sys; from petseg.cli import main; "
        f"a = main(['preprocess', '--data', {str(data)!r}, '--out', {str(tmp_path / 'c')!r}, "
        "'--workers', '1', '--quiet']); "
        f"b = main(['split', '--data', {str(data)!r}, '--cache', {str(tmp_path / 'c')!r}, "
        f"'--metadata', {str(tmp_path / 'meta.csv')!r}, '--folds', '2', "
        f"'--out', {str(tmp_path / 'splits.json')!r}]); "
        "print(a, b, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 0 []"
    assert cached_keys(tmp_path / "c") == ["PETCT_0/01-01-2001-NA-x", "PETCT_1/01-01-2001-NA-x"]
    counts = load_splits(tmp_path / "splits.json").counts()
    assert sorted(counts) == ["LYMPHOMA", "NEGATIVE"]
    assert sorted(map(sum, counts.values())) == [1, 1]


def test_cache_prepares_skips_and_reports_a_corrupt_study(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i in range(3):
        write_study(data / f"PETCT_{i}" / "01-01-2001-NA-x", rng)
    corrupt = data / "PETCT_9" / "02-02-2002-NA-x"
    write_study(corrupt, rng)
    (corrupt / "SEG.nii.gz").write_bytes(b"not an image")
    studies = discover_studies(data)
    config = PreprocessingConfig()
    failures = []
    summary = build_cache(studies, tmp_path / "cache", config, progress=False,
                          on_failure=lambda key, reason: failures.append(key))
    assert summary.written == ("PETCT_0/01-01-2001-NA-x", "PETCT_1/01-01-2001-NA-x",
                               "PETCT_2/01-01-2001-NA-x")
    assert [key for key, _ in summary.failed] == ["PETCT_9/02-02-2002-NA-x"] == failures
    assert "SEG.nii.gz: is not an image SimpleITK can read" in summary.failed[0][1]
    assert cached_keys(tmp_path / "cache") == list(summary.written)
    assert not (tmp_path / "cache" / ".partial").exists()

    volume = load_volume(tmp_path / "cache", studies[0].key)
    assert isinstance(volume.image, np.memmap) and volume.image.dtype == np.float16
    prepared = preprocess_case(*(sitk.ReadImage(str(p)) for p in
                                 (studies[0].pet, studies[0].ct)), config,
                               sitk.ReadImage(str(studies[0].label)))
    np.testing.assert_allclose(volume.image, prepared.image, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(volume.label, prepared.label)
    assert int(volume.label.sum()) > 0 and volume.spacing_mm == (2.0, 2.0, 2.0)
    info = json.loads((tmp_path / "cache" / studies[0].key / "case.json").read_text())
    assert info["prepared"]["grid"]["spacing"] == [2.0, 2.0, 2.0]

    again = build_cache(studies, tmp_path / "cache", config, progress=False)
    assert again.written == () and len(again.skipped) == 3 and len(again.failed) == 1
    with pytest.raises(PetsegError, match=r"built with other preprocessing settings \(body_"
                                          r"margin_mm 10.0 vs 0.0 wanted\); run `petseg "
                                          r"preprocess --config"):
        check_cache_config(tmp_path / "cache", PreprocessingConfig(body_margin_mm=0.0), True)
    with pytest.raises(PetsegError, match="is not in the cache"):
        load_volume(tmp_path / "cache", "PETCT_9/02-02-2002-NA-x")


@pytest.mark.slow
def test_preprocess_command_with_a_process_pool(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        write_study(tmp_path / "data" / f"PETCT_{i}" / "d", rng)
    args = ["preprocess", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
            "--workers", "2", "--quiet"]
    assert main(args) == 0
    assert "3 prepared, 0 already cached, 0 failed, of 3 studies" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 prepared, 3 already cached, 0 failed" in capsys.readouterr().out


def test_epoch_stream_is_independent_of_threads_and_processes(tmp_path) -> None:
    cache, splits = synthetic_cache(tmp_path, n=5)
    volumes = [load_volume(cache, k, True) for k in load_splits(splits).training_keys(0)]
    config = tiny_config().augmentation
    one = EpochLoader(volumes, config, 2, seed=4, fold=0, epoch=3, device="cpu", threads=1)
    many = EpochLoader(volumes, config, 2, seed=4, fold=0, epoch=3, device="cpu", threads=3)
    batches = list(one)
    assert len(batches) == 2 and batches[0][0].shape == (2, 2, 24, 24, 24)
    assert batches[0][1].shape == (2, 1, 24, 24, 24) and batches[0][1].dtype == torch.uint8
    for (a, la), (b, lb) in zip(batches, many, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    ranks = [EpochLoader(volumes, config, 1, 4, 0, 3, "cpu", rank=r, world_size=2)
             for r in range(2)]
    merged = sorted(s for loader in ranks for s in loader.samples)
    assert merged == sorted(one.samples)  # DDP shards = the single-process epoch
    assert torch.equal(torch.cat([ranks[0].make_batch(0)[0], ranks[1].make_batch(0)[0]]),
                       batches[0][0])
    next_epoch = EpochLoader(volumes, config, 2, 4, 0, 4, "cpu")
    assert not torch.equal(next(iter(next_epoch))[0], batches[0][0])
    assert sorted(epoch_order(5, 2, 1, 4, 0, 3)[:5]) == [0, 1, 2, 3, 4]


def test_training_resume_and_export(tmp_path, monkeypatch) -> None:
    """Loss falls; resuming after epoch 1 gives exactly the uninterrupted run; export verifies."""
    cache, splits = synthetic_cache(tmp_path, n=6)
    config = tiny_config(epochs=3)
    full = train(config, cache, splits, 0, tmp_path / "full", device="cpu", progress=False)
    losses = [row["train_loss"] for row in full.history]
    assert losses[-1] < losses[0]
    assert full.best_epoch in (1, 2, 3) and np.isfinite(full.best_metrics[DSC_KEY])

    with open(tmp_path / "full" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[1]["lr"]) == pytest.approx(3e-3 * (1 + np.cos(np.pi / 3)) / 2)

    interrupted = tmp_path / "interrupted"
    train_epochs(config, cache, splits, interrupted, stop_after=1)
    first = torch.load(interrupted / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and "scheduler" not in first  # the lr follows the epoch
    assert first["optimizer"]["param_groups"][0]["lr"] == pytest.approx(float(rows[1]["lr"]))
    resumed = train(config, cache, splits, 0, interrupted, resume=True, device="cpu",
                    progress=False)
    assert [row["epoch"] for row in resumed.history] == [2, 3]
    end_full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    end_resumed = torch.load(interrupted / "last.pt", weights_only=True)
    for name, tensor in end_full["model"].items():
        torch.testing.assert_close(end_resumed["model"][name], tensor, rtol=1e-5, atol=1e-6)
    assert end_resumed["optimizer"]["state"][0]["step"] == end_full["optimizer"]["state"][0][
        "step"]
    assert end_resumed["optimizer"]["param_groups"] == end_full["optimizer"]["param_groups"]
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"],
                                                              rel=1e-4)

    with pytest.raises(PetsegError, match="holds a run already; pass --resume"):
        train(config, cache, splits, 0, tmp_path / "full", device="cpu", progress=False)
    with pytest.raises(PetsegError, match="started with another config"):
        train(tiny_config(epochs=4), cache, splits, 0, tmp_path / "full", resume=True,
              device="cpu", progress=False)

    best = load_checkpoint(tmp_path / "full" / "best.safetensors")
    assert best.meta["extra"]["fold"] == 0 and best.meta["extra"]["folds"] == 3
    assert best.model_config == TINY_MODEL
    other = train(config, cache, splits, 1, tmp_path / "fold1", device="cpu", progress=False)
    monkeypatch.chdir(tmp_path)  # a relative output folder, as `--out weights` gives
    manifest = export_weights([tmp_path / "fold1", tmp_path / "full"], Path("weights"),
                              fp16=True)
    data = json.loads(manifest.read_text())
    assert data["folds"]["fold_0"]["file"] == "fold_0.safetensors"
    assert sorted(data["folds"]) == ["fold_0", "fold_1"] and data["n_folds"] == 3
    assert data["folds"]["fold_1"]["metrics"][DSC_KEY] == pytest.approx(
        other.best_metrics[DSC_KEY])
    loaded = load_ensemble(tmp_path / "weights", allow_missing=True)
    assert [c.meta["fold"] for c in loaded] == ["fold_0", "fold_1"]
    assert loaded[0].meta["dtype"] == "float16"
    with pytest.raises(PetsegError, match="all are fold 0; pass one run per fold"):
        export_weights([tmp_path / "full", interrupted], tmp_path / "w2")


def test_config_defaults_and_overrides() -> None:
    config = TrainingConfig()
    assert config.augmentation.patch_size == (192, 192, 192)
    assert config.optimizer.epochs == 300 and config.optimizer.lr == 1e-3
    assert config.loss.focal_weight == (1.0, 100.0) and config.optimizer.batch_size == 4
    data = apply_overrides(to_dict(config), ["optimizer.epochs=2", "amp=off",
                                             "augmentation.patch_size=[96,96,96]"])
    assert data["optimizer"]["epochs"] == 2 and data["amp"] == "off"
    with pytest.raises(PetsegError, match=r"unknown field 'optimizer\.epoch'"):
        apply_overrides(to_dict(config), ["optimizer.epoch=2"])
    with pytest.raises(PetsegError, match=r"patch_size \(90, 96, 96\): needs 3 sizes, each a "
                                          r"multiple of 16"):
        TrainingConfig(augmentation=config.augmentation.__class__(patch_size=(90, 96, 96)))


def test_shipped_configs_load(request) -> None:
    root = request.config.rootpath
    assert load_training_config(root / "resources" / "train_config.json") == TrainingConfig()
    demo = load_training_config(root / "resources" / "train_demo.json")
    assert demo.model.network.channels[0] <= 16 and max(demo.augmentation.patch_size) <= 96


def test_loss_is_monai_generalized_dice_focal() -> None:
    from monai.losses import GeneralizedDiceFocalLoss

    from petseg.training.loss import build_loss

    logits = torch.randn(2, 2, 6, 6, 6)
    labels = (torch.rand(2, 1, 6, 6, 6) > 0.8).to(torch.uint8)
    expected = GeneralizedDiceFocalLoss(include_background=True, to_onehot_y=True, softmax=True,
                                        gamma=2.0, weight=[1.0, 100.0])(logits, labels.float())
    ours = build_loss(TrainingConfig().loss)(logits, labels)
    torch.testing.assert_close(ours, expected)


def test_fine_tuning_starts_from_the_given_weights(tmp_path) -> None:
    """With lr 0 no parameter moves (BatchNorm statistics do), so the best checkpoint's
    parameters equal the (fp16) starting weights."""
    import dataclasses

    from petseg.checkpoint import save_checkpoint
    from petseg.config import NetworkConfig
    from petseg.model import build_network

    cache, splits = synthetic_cache(tmp_path, n=6)
    torch.manual_seed(123)
    start = save_checkpoint(tmp_path / "fold_0.safetensors",
                            build_network(TINY_MODEL.network).state_dict(), TINY_MODEL,
                            {DSC_KEY: 0.5}, dtype=torch.float16)
    config = tiny_config(epochs=1)
    frozen = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                       lr=0.0))
    train(frozen, cache, splits, 0, tmp_path / "tuned", device="cpu", progress=False,
          init=start)
    best = load_checkpoint(tmp_path / "tuned" / "best.safetensors")
    initial = load_checkpoint(start)
    parameters = dict(build_network(TINY_MODEL.network).named_parameters())
    assert len(parameters) > 10
    for name in parameters:
        torch.testing.assert_close(best.state_dict[name], initial.state_dict[name].float(),
                                   rtol=0, atol=0)
    assert best.meta["extra"]["init"]["file"] == "fold_0.safetensors"
    # an interrupted fine-tuning, resumed, still records where it started
    two_epochs = dataclasses.replace(frozen, optimizer=dataclasses.replace(frozen.optimizer,
                                                                           epochs=2))
    train_epochs(two_epochs, cache, splits, tmp_path / "paused", stop_after=1, init=start)
    train(two_epochs, cache, splits, 0, tmp_path / "paused", resume=True, device="cpu",
          progress=False)
    last = torch.load(tmp_path / "paused" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["init"] == best.meta["extra"]["init"]
    train(frozen, cache, splits, 0, tmp_path / "scratch", device="cpu", progress=False)
    scratch = load_checkpoint(tmp_path / "scratch" / "best.safetensors")
    name = next(n for n in parameters if initial.state_dict[n].float().std() > 0)  # random
    assert not torch.equal(scratch.state_dict[name], initial.state_dict[name].float())
    assert "init" not in scratch.meta["extra"]

    other = dataclasses.replace(TINY_MODEL, network=NetworkConfig(channels=(4, 8),
                                                                  strides=(2,)))
    wrong = save_checkpoint(tmp_path / "other.safetensors",
                            build_network(other.network).state_dict(), other, {DSC_KEY: 0.5})
    with pytest.raises(PetsegError, match=r"other\.safetensors: was trained with another model "
                                          r"\(network\.channels"):
        train(config, cache, splits, 0, tmp_path / "refused", device="cpu", progress=False,
              init=wrong)
    with pytest.raises(PetsegError, match=r"absent\.safetensors: not found; pass a fold"):
        train(config, cache, splits, 0, tmp_path / "refused", device="cpu", progress=False,
              init=tmp_path / "absent.safetensors")
    assert not (tmp_path / "refused").exists()
