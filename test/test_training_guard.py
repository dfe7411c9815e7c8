"""The guarded training step, gradient clipping, mixed precision and the stop rules (CPU)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
import math
import re
import warnings

import pytest
import torch
from training_fixtures import TINY_MODEL, synthetic_cache, tiny_config

from petseg.cli import main
from petseg.config import save_json
from petseg.errors import PetsegError
from petseg.model import build_network
from petseg.training import fold, loop
from petseg.training.config import OptimizerConfig, TrainingConfig
from petseg.training.loop import train
from petseg.training.loss import build_loss
from petseg.training.step import resolve_amp, train_step
from petseg.training.validation import collapse_warning

torch.set_num_threads(2)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image `[2, 2, 16, 16, 16]` (PET ~1 SUV with a hot cube) and its 0/1 label."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 2, 16, 16, 16, generator=generator)
    label = torch.zeros(2, 1, 16, 16, 16, dtype=torch.uint8)
    label[:, :, 4:9, 5:10, 6:11] = 1
    image[:, 0:1][label.bool()] += 5.0
    return image, label


def _parts(lr: float = 1e-3, optimizer: str = "adam", scaler: bool = False, **scaler_args):
    torch.manual_seed(0)
    network = build_network(TINY_MODEL.network)  # BatchNorm, PReLU
    make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    return (network, build_loss(TrainingConfig().loss), make(network.parameters(), lr=lr),
            torch.amp.GradScaler("cpu", enabled=scaler, **scaler_args))


def _snapshot(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return ({k: v.clone() for k, v in network.state_dict().items()},
            copy.deepcopy(optimizer.state_dict()))


def _assert_unchanged(network, optimizer, before) -> None:
    state, optimizer_state = before
    now = network.state_dict()
    assert any(k.endswith("running_mean") for k in now) and \
        any(k.endswith("num_batches_tracked") for k in now)
    for name, tensor in state.items():  # parameters and BatchNorm buffers, bit for bit
        assert torch.equal(now[name], tensor), name
    after = optimizer.state_dict()
    assert after["param_groups"] == optimizer_state["param_groups"]
    for index, values in optimizer_state["state"].items():  # Adam step, exp_avg, exp_avg_sq
        for key, value in values.items():
            assert torch.equal(after["state"][index][key], value), (index, key)


def _nan_gradient_loss(loss_fn):
    """A loss that is finite (its value) but whose gradient is NaN (sqrt at 0)."""
    def loss(logits, label):
        return loss_fn(logits, label) + (logits * 0).sum().sqrt()
    return loss


@pytest.mark.parametrize("cause", ["input", "gradient"])
def test_a_non_finite_step_changes_nothing(cause) -> None:
    network, loss_fn, optimizer, scaler = _parts()
    image, label = _batch()
    first = train_step(network, image, label, loss_fn, optimizer, scaler, None, False)
    assert not first.skipped and math.isfinite(first.grad_norm)  # Adam has state now
    before = _snapshot(network, optimizer)
    if cause == "input":  # one NaN voxel: the forward's BatchNorm statistics become NaN
        bad = image.clone()
        bad[1, 0, 3, 3, 3] = math.nan
        result = train_step(network, bad, label, loss_fn, optimizer, scaler, None, False)
        assert math.isnan(float(result.loss)) and math.isnan(result.grad_norm)
    else:  # a finite loss with NaN gradients (the forward's statistics are finite)
        result = train_step(network, image, label, _nan_gradient_loss(loss_fn), optimizer,
                            scaler, None, False)
        assert math.isfinite(float(result.loss)) and math.isnan(result.grad_norm)
    assert result.skipped and result.non_finite and not result.overflow
    _assert_unchanged(network, optimizer, before)
    assert all(p.grad is None for p in network.parameters())
    assert not train_step(network, image, label, loss_fn, optimizer, scaler, None,
                          False).skipped  # the next good batch trains


def test_a_forward_that_poisons_a_running_statistic_is_skipped() -> None:
    """The loss stays finite (training-mode BatchNorm normalises with the batch's own
    statistics) but a running variance became inf: the step is skipped and restored."""
    network, loss_fn, optimizer, scaler = _parts()
    image, label = _batch()
    train_step(network, image, label, loss_fn, optimizer, scaler, None, False)
    before = _snapshot(network, optimizer)
    norm = next(m for m in network.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))

    def poison(module, inputs, output) -> None:
        module.running_var[0] = math.inf

    handle = norm.register_forward_hook(poison)
    result = train_step(network, image, label, loss_fn, optimizer, scaler, None, False)
    handle.remove()
    assert math.isfinite(float(result.loss)) and result.skipped and result.non_finite
    _assert_unchanged(network, optimizer, before)
    assert torch.isfinite(norm.running_var).all()


def test_the_diagnosis_names_the_first_module_that_went_non_finite() -> None:
    """An activation that overflows (a hook makes one module's output inf) is named, with
    the largest output before it and the largest parameter; the model is left as it was."""
    from petseg.training.diagnosis import diagnose_non_finite

    network, _, optimizer, _ = _parts()
    image, _ = _batch()
    names = [name for name, m in network.named_modules() if not any(m.children())]
    culprit = dict(network.named_modules())[names[5]]
    with torch.no_grad():
        next(m for m in network.modules() if isinstance(m, torch.nn.PReLU)).weight.fill_(7e3)
    before = _snapshot(network, optimizer)
    handle = culprit.register_forward_hook(lambda module, args, out: out * math.inf)
    found = diagnose_non_finite(network, image, None, False)
    handle.remove()
    _assert_unchanged(network, optimizer, before)
    assert found.first_non_finite == names[5] and found.input_finite
    assert found.precision == "float32"
    assert found.largest_output[0] not in names[5:] and found.largest_output[1] > 0
    assert found.largest_parameter[1] == 7e3 and found.largest_parameter[0].endswith("weight")
    assert found.largest_running_var is not None
    assert found.describe().startswith(f"float32 forward: first non-finite output at {names[5]};")

    bad = image.clone()
    bad[0, 0, 1, 2, 3] = math.nan
    found = diagnose_non_finite(network, bad, torch.bfloat16, False)
    # the first module to run on the input: the residual path's strided conv runs first
    assert not found.input_finite and found.first_non_finite == "model.0.residual"
    assert found.describe().endswith("; the input is not finite")
    assert found.as_dict()["largest_output"] == ["input", pytest.approx(6.0, abs=1.0)]

    # a finite forward that poisons a running variance: named as this forward left it
    norm = next(m for m in network.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))

    def poison(module, args, out) -> None:
        module.running_var.fill_(math.inf)

    handle = norm.register_forward_hook(poison)
    found = diagnose_non_finite(network, image, None, False)
    handle.remove()
    assert found.first_non_finite is None and found.largest_running_var[1] == math.inf
    assert found.describe().startswith("float32 forward: forward finite; largest output ")
    assert found.as_dict()["largest_running_var"][1] == "inf"
    assert torch.isfinite(norm.running_var).all()  # restored


def test_fp16_overflow_backs_the_scale_off_and_changes_nothing() -> None:
    """Scaled gradients beyond fp16: the scaler halves its scale; nothing else changes."""
    network, loss_fn, optimizer, scaler = _parts(scaler=True, init_scale=2.0**40)
    image, label = _batch()
    before = _snapshot(network, optimizer)
    result = train_step(network, image, label, loss_fn, optimizer, scaler, torch.float16,
                        False)
    assert result.skipped and result.overflow and not result.non_finite
    assert math.isfinite(float(result.loss)) and scaler.get_scale() == 2.0**39
    _assert_unchanged(network, optimizer, before)
    # a NaN loss is not the scale's fault: the scale stays
    bad = image.clone()
    bad[0, 1, 0, 0, 0] = math.inf
    result = train_step(network, bad, label, loss_fn, optimizer, scaler, torch.float16, False)
    assert result.non_finite and scaler.get_scale() == 2.0**39
    _assert_unchanged(network, optimizer, before)


@pytest.mark.parametrize("amp", [None, torch.float16])
def test_clipping_bounds_the_update_of_the_unscaled_gradients(amp) -> None:
    """SGD with lr 1 moves the parameters by minus the clipped gradient: its norm is the
    clip value (under fp16 too: the gradients are unscaled before clipping)."""
    image, label = _batch()
    moves = {}
    for clip in (None, 0.01):
        network, loss_fn, optimizer, scaler = _parts(lr=1.0, optimizer="sgd",
                                                     scaler=amp is not None, init_scale=256.0)
        before = [p.detach().clone() for p in network.parameters()]
        result = train_step(network, image, label, loss_fn, optimizer, scaler, amp, False,
                            grad_clip_norm=clip)
        assert not result.skipped
        moves[clip] = torch.linalg.vector_norm(torch.stack([
            torch.linalg.vector_norm(p.detach() - b) for p, b in
            zip(network.parameters(), before, strict=True)])).item()
        assert result.grad_norm == pytest.approx(moves[None], rel=1e-3)  # before clipping
    assert moves[None] > 1.0
    assert moves[0.01] == pytest.approx(0.01, rel=1e-3)


def test_amp_auto_resolves_per_device(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cuda) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))  # H100
    assert resolve_amp("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))  # T4
    assert resolve_amp("auto", cuda) is torch.float16
    assert TrainingConfig().amp == "auto" and TrainingConfig().optimizer.grad_clip_norm == 12.0
    with pytest.raises(PetsegError, match=r"grad_clip_norm = 0\.0: must be > 0, or null"):
        TrainingConfig(optimizer=OptimizerConfig(grad_clip_norm=0.0))


def test_fp16_on_the_cpu_trains_in_fp32_and_says_so(caplog) -> None:
    """Configs written before "auto" say fp16; on the CPU that is emulated and slow."""
    with caplog.at_level("WARNING", logger="petseg.training.step"):
        assert resolve_amp("fp16", torch.device("cpu")) is None
    assert "amp 'fp16' is for CUDA GPUs; training in fp32 on the cpu" in caplog.text


def test_bf16_steps_train_on_the_cpu() -> None:
    network, loss_fn, optimizer, _ = _parts(lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    dtypes = []
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    image, label = _batch()
    losses = [float(train_step(network, image, label, loss_fn, optimizer, scaler,
                               torch.bfloat16, False).loss) for _ in range(4)]
    assert set(dtypes) == {torch.bfloat16}  # autocast was on
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def _history(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _nan_loss_at_steps(monkeypatch, steps: set[int]) -> None:
    """The training loss is NaN at the given (1-based) calls of the loss function."""
    original = fold.build_loss

    def build(config):
        loss_fn, calls = original(config), []

        def loss(logits, label):
            calls.append(1)
            return loss_fn(logits, label) * (math.nan if len(calls) in steps else 1.0)
        return loss

    monkeypatch.setattr(fold, "build_loss", build)


def _one_study_batches(**changes) -> TrainingConfig:
    """`tiny_config(epochs=1)` with batches of one study: 20 steps on 20 training studies."""
    config = tiny_config(epochs=1, amp="auto", **changes)
    return dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                     batch_size=1))


def test_the_loop_counts_a_skipped_step_and_logs_the_new_columns(tmp_path, monkeypatch) -> None:
    """1 non-finite step of a 20-step window (5 %, not more) is skipped and counted; the
    run goes on."""
    cache, splits = synthetic_cache(tmp_path, n=30)  # 20 training studies
    monkeypatch.setattr(loop, "STOP_WINDOW_STEPS", 20)
    _nan_loss_at_steps(monkeypatch, {7})
    result = train(_one_study_batches(), cache, splits, 0, tmp_path / "run", device="cpu",
                   progress=False)
    row = _history(tmp_path / "run")[0]
    assert (row["steps"], row["skipped_steps"], row["overflow_steps"]) == ("20", "1", "0")
    assert row["loss_scale"] == ""  # auto on the CPU: fp32, no loss scaler
    assert math.isfinite(float(row["train_loss"])) and 0 < float(row["grad_norm_mean"]) <= \
        float(row["grad_norm_max"])
    assert float(row["step_s"]) > 0 and result.history[0]["skipped_steps"] == 1
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert state["optimizer"]["state"][0]["step"] == 19  # one update per applied step


def test_more_than_five_percent_non_finite_steps_stop_the_run(tmp_path, monkeypatch) -> None:
    """2 of a 20-step window (10 %) is over the 5 % the rule allows."""
    cache, splits = synthetic_cache(tmp_path, n=30)
    monkeypatch.setattr(loop, "STOP_WINDOW_STEPS", 20)
    _nan_loss_at_steps(monkeypatch, {7, 8})
    _assert_stops_unsaved(_one_study_batches(), cache, splits, tmp_path / "run",
                          r"^epoch 1: 2 of the last 20 training steps had a non-finite loss or "
                          r"gradient \(more than 5% of 20\); the run stopped, no epoch was "
                          r"saved; start again")


def test_one_skipped_step_of_a_small_epoch_does_not_stop_the_run(tmp_path, monkeypatch) -> None:
    """Epochs of 2 steps: one skipped step is half an epoch, but 1 of the 100-step window."""
    cache, splits = synthetic_cache(tmp_path, n=6)
    _nan_loss_at_steps(monkeypatch, {1})
    result = train(tiny_config(epochs=3), cache, splits, 0, tmp_path / "run", device="cpu",
                   progress=False)
    assert [(r["steps"], r["skipped_steps"]) for r in result.history] == [(2, 1), (2, 0),
                                                                          (2, 0)]


def test_the_loop_clips_with_the_configured_norm(tmp_path, monkeypatch) -> None:
    cache, splits = synthetic_cache(tmp_path, n=6)
    norms = []
    original = loop.train_step

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        norms.append(args[8] if len(args) > 8 else kwargs.get("grad_clip_norm"))
        return result

    monkeypatch.setattr(loop, "train_step", spy)
    config = tiny_config(epochs=1)
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                       grad_clip_norm=7.5))
    train(config, cache, splits, 0, tmp_path / "run", device="cpu", progress=False)
    assert norms and set(norms) == {7.5}


def test_overflowing_first_steps_raise_no_scheduler_warning(tmp_path, monkeypatch) -> None:
    """fp16 with a loss scale so high that no step of the first epochs updates: the
    learning rate still follows the cosine and PyTorch's scheduler-order warning (an error
    here) cannot appear."""
    cache, splits = synthetic_cache(tmp_path, n=6)
    monkeypatch.setattr(fold, "resolve_amp", lambda setting, device: torch.float16)  # GPU-like
    monkeypatch.setattr(torch.amp, "GradScaler",
                        functools.partial(torch.amp.GradScaler, init_scale=2.0**60))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=re.escape("Detected call of `lr_scheduler"))
        result = train(tiny_config(epochs=2, amp="fp16"), cache, splits, 0, tmp_path / "run",
                       device="cpu", progress=False)
    rows = _history(tmp_path / "run")
    assert [(r["overflow_steps"], r["skipped_steps"]) for r in rows] == [("2", "0")] * 2
    assert [float(r["loss_scale"]) for r in rows] == [2.0**58, 2.0**56]
    assert [r["lr"] for r in result.history] == pytest.approx([3e-3, 1.5e-3])


def test_a_run_of_non_finite_steps_stops_and_keeps_the_last_good_state(tmp_path, monkeypatch,
                                                                        capsys) -> None:
    cache, splits = synthetic_cache(tmp_path, n=6)
    config = tmp_path / "train.json"
    save_json(tiny_config(epochs=2), config)
    original = loop.EpochLoader

    class Poisoned(original):  # type: ignore[misc, valid-type]
        """From epoch index `start` on every batch holds a NaN voxel."""

        start = 1

        def __iter__(self):
            for image, label in super().__iter__():
                if self.epoch >= self.start:
                    image = image.clone()
                    image[0, 0, 0, 0, 0] = math.nan
                yield image, label

    run = tmp_path / "run"
    command = ["train", "--cache", str(cache), "--splits", str(splits), "--fold", "0", "--out",
               str(run), "--config", str(config), "--device", "cpu", "--quiet"]
    monkeypatch.setattr(loop, "EpochLoader", Poisoned)
    capsys.readouterr()
    monkeypatch.setattr(loop, "STOP_WINDOW_STEPS", 20)  # more than 1 non-finite step stops
    assert main(command) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"petseg train: error: epoch 2: 2 of the last 4 training steps had a "
                     f"non-finite loss or gradient (more than 5% of 20); the run stopped, "
                     f"{run / 'last.pt'} keeps epoch 1; continue with --resume")
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(_history(run)) == 1
    records = [json.loads(line) for line in (run / "non_finite_steps.jsonl").open()]
    assert [(r["epoch"], r["step"], r["loss"], r["input_finite"]) for r in records] == [
        (2, 1, "nan", False), (2, 2, "nan", False)]
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    monkeypatch.setattr(loop, "EpochLoader", original)
    assert main([*command, "--resume"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2

    Poisoned.start = 0  # every step fails: the 100-step window stops it at the 6th
    monkeypatch.setattr(loop, "EpochLoader", Poisoned)
    monkeypatch.setattr(loop, "STOP_WINDOW_STEPS", 100)
    monkeypatch.setattr(loop, "MAX_DIAGNOSED_STEPS", 1)  # each diagnosis costs a forward
    with pytest.raises(PetsegError, match=r"^epoch 3: 6 of the last 6 training steps had a "
                                          r"non-finite loss or gradient \(more than 5% of 100\); "
                                          r"the run stopped, .*last\.pt keeps epoch 2"):
        train(tiny_config(epochs=4), cache, splits, 0, tmp_path / "fresh", device="cpu",
              progress=False)
    assert len((tmp_path / "fresh" / "non_finite_steps.jsonl").read_text().splitlines()) == 1


def _assert_stops_unsaved(config, cache, splits, run, message: str) -> None:
    """`train` stops with `message` (a regular expression) and leaves no last.pt."""
    with pytest.raises(PetsegError, match=message):
        train(config, cache, splits, 0, run, device="cpu", progress=False)
    assert not (run / "last.pt").exists()


def test_a_non_finite_validation_probability_stops_the_run(tmp_path, monkeypatch) -> None:
    import dataclasses

    from petseg.inference import predictor

    cache, splits = synthetic_cache(tmp_path, n=6)
    original = predictor.run_ensemble

    def poisoned(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, probability=result.probability * math.nan)

    monkeypatch.setattr(predictor, "run_ensemble", poisoned)
    _assert_stops_unsaved(tiny_config(epochs=1), cache, splits, tmp_path / "run",
                          r"^epoch 1: the validation probability is not finite in 2 of 2 "
                          r"studies \(PETCT_00/01-01-2001-NA-x first\); the run stopped, no "
                          r"epoch was saved")


def test_a_validation_dsc_that_falls_to_zero_is_a_collapse() -> None:
    assert collapse_warning(148, 0.0, 0.204, 100) == (
        "epoch 148: validation mean DSC fell to 0 after 0.2040 at epoch 100; the network has "
        "collapsed (see skipped_steps and grad_norm_max in history.csv)")
    assert collapse_warning(148, 0.0, 0.08, 100) is None  # never above 0.1
    assert collapse_warning(148, 0.02, 0.3, 100) is None
    assert collapse_warning(2, 0.0, -math.inf, 0) is None  # the first validation


def _check_rows(dsc: list[str], skipped: int = 0) -> list[dict[str, str]]:
    return [{"epoch": str(i + 1), "steps": "100", "skipped_steps": str(skipped if i == 0 else 0),
             "val_mean_dsc": value} for i, value in enumerate(dsc)]


def test_training_check_verdict() -> None:
    from benchmarks.training_check import verdict

    assert verdict(_check_rows(["", "0.2", "0.45"], skipped=3), 0.01, 0.4) == []
    assert verdict(_check_rows(["0.2", "0.45"], skipped=3), 0.01, 0.4) == [
        "3 of 200 steps were non-finite (more than 1%)"]
    assert verdict(_check_rows(["0.2", "0.0", "0.41"]), 0.01, 0.4) == [
        "validation DSC collapsed to 0 at epoch 2 after 0.2000"]
    assert verdict(_check_rows(["0.45", "0.3"]), 0.01, 0.4) == [
        "last validation DSC 0.3000 is below 0.4"]


def test_training_check_prints_the_diagnosed_steps(tmp_path, capsys) -> None:
    from benchmarks.training_check import print_diagnoses
    from petseg.training.diagnosis import NonFiniteDiagnosis

    print_diagnoses(tmp_path / "none.jsonl")
    assert capsys.readouterr().out == ""
    found = NonFiniteDiagnosis("float16", True, "model.1.conv", ("model.0.conv", 65504.0),
                               ("model.2.adn.A.weight", 31.5), ("model.0.adn.N.running_var",
                                                                math.inf))
    path = tmp_path / "non_finite_steps.jsonl"
    path.write_text(json.dumps({"epoch": 113, "step": 4, "loss": "nan", "grad_norm": "nan",
                                **found.as_dict()}) + "\n")
    print_diagnoses(path)
    assert capsys.readouterr().out.splitlines() == [
        "non-finite steps (first ones diagnosed):",
        "  epoch 113 step 4: loss nan, gradient norm nan, float16 forward: first non-finite "
        "output model.1.conv, largest output before it ['model.0.conv', 65504.0], largest "
        "parameter ['model.2.adn.A.weight', 31.5], largest running_var "
        "['model.0.adn.N.running_var', 'inf'], input finite True"]


@pytest.mark.slow
def test_training_check_runs_end_to_end_at_a_tiny_size(tmp_path, capsys) -> None:
    """benchmarks/training_check.py: 6 small phantoms, 12 steps on the CPU, exit 0."""
    from benchmarks.training_check import main as check

    assert check(["--work", str(tmp_path), "--phantoms", "6", "--size", "small", "--steps",
                  "12", "--patch", "32", "--batch", "2", "--every", "2", "--device", "cpu",
                  "--min-dsc", "0", "--workers", "2",
                  "--set", "model.preprocessing.target_spacing_mm=6.0",
                  "--set", "model.network.channels=[8,16,32,64,128]", "--set", "num_threads=2",
                  "--set", "validation.inference.mode=fast"]) == 0
    out = capsys.readouterr().out
    assert "5 training studies, 3 steps per epoch, 4 epochs (12 steps)" in out
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith(("| 1-2 |", "| 3-4 |"))]
    assert len(rows) == 2
    for row in rows:  # epochs, steps, loss, val DSC, skipped, overflow, ...
        assert row[1] == "6" and math.isfinite(float(row[2])) and 0 <= float(row[3]) <= 1
        assert row[4:6] == ["0", "0"]
        assert float(row[10]) > 0 and row[11] == "- |"  # epoch s; no loss scale in fp32
    assert out.rstrip().endswith("passed")
