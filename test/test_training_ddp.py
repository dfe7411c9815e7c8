"""DistributedDataParallel on the CPU (gloo, 2 processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from training_fixtures import TINY_MODEL, synthetic_cache, tiny_config

from petseg.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_step(rank: int, world_size: int, port: int, cache: str, splits: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from petseg.model import build_network
    from petseg.training.cache import load_volume
    from petseg.training.distributed import init_distributed, shutdown, wrap_model
    from petseg.training.loader import EpochLoader
    from petseg.training.loss import build_loss
    from petseg.training.splits import load_splits

    context = init_distributed("cpu")
    torch.manual_seed(100 + rank)  # different initial weights: DDP must make them agree
    network = build_network(TINY_MODEL.network)
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    model = wrap_model(network, context)
    config = tiny_config()
    volumes = [load_volume(cache, k, True) for k in load_splits(splits).training_keys(0)]
    loader = EpochLoader(volumes, config.augmentation, 1, 0, 0, 0, context.device, rank=rank,
                         world_size=world_size)
    image, label = loader.make_batch(0)[:2]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = build_loss(config.loss)(model(image), label)
    loss.backward()
    optimizer.step()
    torch.save({"initial": initial, "final": network.state_dict(), "image": image},
               os.path.join(out, f"rank{rank}.pt"))
    shutdown(context, together=True)


def test_two_gloo_processes_agree_on_the_weights_after_a_step(tmp_path) -> None:
    cache, splits = synthetic_cache(tmp_path, n=6)
    mp.spawn(_ddp_step, args=(2, _free_port(), str(cache), str(splits), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(ranks[0]["image"], ranks[1]["image"])  # each its own sample
    name = "model.0.conv.unit0.conv.weight"
    assert not torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name])
    for key, tensor in ranks[0]["final"].items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics stay per process (no SyncBatchNorm by default)
        torch.testing.assert_close(ranks[1]["final"][key], tensor, rtol=0, atol=0)
    assert not torch.equal(ranks[0]["final"][name], ranks[0]["initial"][name])


def _ddp_guard(rank: int, world_size: int, port: int, out: str) -> None:
    """A NaN batch in rank 1 only: both processes skip the step; then both update."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from petseg.model import build_network
    from petseg.training.config import LossConfig
    from petseg.training.distributed import init_distributed, shutdown, wrap_model
    from petseg.training.loss import build_loss
    from petseg.training.step import train_step

    context = init_distributed("cpu")
    torch.manual_seed(rank)
    network = build_network(TINY_MODEL.network)
    model = wrap_model(network, context)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    image = torch.rand(1, 2, 16, 16, 16)
    label = (torch.rand(1, 1, 16, 16, 16) > 0.9).to(torch.uint8)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    bad = image.clone()
    if rank == 1:
        bad[0, 0, 0, 0, 0] = float("nan")
    loss_fn = build_loss(LossConfig())
    skipped = train_step(model, bad, label, loss_fn, optimizer, scaler, None, False, 12.0)
    after_skip = {k: v.clone() for k, v in network.state_dict().items()}
    applied = train_step(model, image, label, loss_fn, optimizer, scaler, None, False, 12.0)
    torch.save({"skipped": (skipped.skipped, applied.skipped), "start": start,
                "after_skip": after_skip, "final": network.state_dict()},
               os.path.join(out, f"guard{rank}.pt"))
    shutdown(context, together=True)


def test_a_non_finite_batch_in_one_process_is_skipped_by_all(tmp_path) -> None:
    mp.spawn(_ddp_guard, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"guard{r}.pt", weights_only=True) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [(True, False), (True, False)]
    for rank in ranks:
        for key, tensor in rank["start"].items():  # buffers too: rank 1's were restored
            assert torch.equal(rank["after_skip"][key], tensor), key
    name = "model.0.conv.unit0.conv.weight"
    assert not torch.equal(ranks[0]["final"][name], ranks[0]["start"][name])
    torch.testing.assert_close(ranks[1]["final"][name], ranks[0]["final"][name], rtol=0, atol=0)


@pytest.mark.slow
def test_train_command_under_torchrun(tmp_path, request) -> None:
    """`torchrun --nproc_per_node 2 -m petseg train` trains, validates all cases, saves once."""
    cache, splits = synthetic_cache(tmp_path, n=6)
    config = tmp_path / "config.json"
    from petseg.config import save_json

    save_json(tiny_config(epochs=1, num_threads=1), config)
    root = str(request.config.rootpath)
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), "-m", "petseg", "train", "--cache",
               str(cache), "--splits", str(splits), "--fold", "0", "--out",
               str(tmp_path / "run"), "--config", str(config), "--device", "cpu", "--quiet"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("fold 0: best mean DSC") == 1  # rank 0 reports
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.metrics["cases"] == 2.0  # both ranks' validation cases gathered
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and history[1].startswith("1,")


@pytest.mark.parametrize("together", [True, False])
def test_shutdown_waits_for_all_processes_only_after_a_normal_end(monkeypatch, together) -> None:
    """A normal end passes a barrier before leaving; after an error no process may hang in one."""
    import torch.distributed as dist

    from petseg.training import distributed

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    context = distributed.DistributedContext(rank=1, world_size=2, local_rank=1,
                                             device=torch.device("cpu"))
    distributed.shutdown(context, together=together)
    assert calls == (["barrier", "destroy"] if together else ["destroy"])


@pytest.mark.parametrize("fails", [False, True])
def test_train_waits_for_all_processes_only_when_it_ends_normally(monkeypatch, tmp_path,
                                                                  fails) -> None:
    """A normal end leaves the group together; an exception reaches the caller and the
    group is left without waiting."""
    from petseg.training import loop

    seen: list[bool] = []
    context = loop.DistributedContext(rank=0, world_size=2, local_rank=0,
                                      device=torch.device("cpu"))
    monkeypatch.setattr(loop, "init_distributed", lambda device: context)
    monkeypatch.setattr(loop, "shutdown", lambda ctx, together=False: seen.append(together))
    finished = object()

    def run(*args, **kwargs):
        if fails:
            raise RuntimeError("disk full")
        return finished

    monkeypatch.setattr(loop, "_train", run)
    arguments = (tiny_config(), tmp_path, tmp_path / "splits.json", 0, tmp_path / "run")
    if fails:
        with pytest.raises(RuntimeError, match="disk full"):
            loop.train(*arguments)
    else:
        assert loop.train(*arguments) is finished
    assert seen == [not fails]
