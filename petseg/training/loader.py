"""One epoch of augmented training batches, prepared ahead of the training step.

The epoch's order and every sample's augmentation derive from (seed, fold, epoch, sample
index) alone, so the stream is the same whatever the number of processes, loader threads
or restarts: a resumed run continues exactly where it stopped. Under DDP process r takes
samples r, r + N, r + 2N, ... of the epoch.

Batches are prepared by a few threads (`loader_threads`), up to `prefetch_batches` ahead.
On CUDA each thread copies its source boxes through pinned memory and resamples them on
its own stream; the training step waits on an event, never on the host.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from petseg.training.augment import augment_sample, draw_params
from petseg.training.cache import Volume
from petseg.training.clicks import TrainingClicks, click_rng
from petseg.training.config import AugmentationConfig


def epoch_order(n_cases: int, batch_size: int, world_size: int, seed: int, fold: int,
                epoch: int) -> np.ndarray:
    """Case index of every sample of an epoch, for all processes together.

    One sample per case in a seeded random order, wrapped around to fill the last step
    of every process (`ceil(n / (batch * world))` steps each).
    """
    per_step = batch_size * world_size
    total = math.ceil(n_cases / per_step) * per_step
    order = np.random.default_rng([seed, fold, epoch]).permutation(n_cases)
    return np.resize(order, total)


def sample_rng(seed: int, fold: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of an epoch (independent of processes and threads)."""
    return np.random.default_rng([seed, fold, epoch, index, 0x5EED])


class EpochLoader:
    """Iterate over this process's batches of one epoch (with `clicks`: the click maps of
    each sample's simulated clicks appended as the last channels).

    Yields `(image [B, C, *patch] float32, label [B, 1, *patch] uint8)` on `device`.
    """

    def __init__(self, volumes: Sequence[Volume], config: AugmentationConfig, batch_size: int,
                 seed: int, fold: int, epoch: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, threads: int = 2, prefetch: int = 2,
                 clicks: TrainingClicks | None = None) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes = volumes
        self.config = config
        self.batch_size = batch_size
        self.seed, self.fold, self.epoch = seed, fold, epoch
        self.device = torch.device(device)
        self.threads = max(1, threads)
        self.prefetch = max(1, prefetch)
        self.clicks = clicks
        order = epoch_order(len(volumes), batch_size, world_size, seed, fold, epoch)
        mine = np.arange(rank, len(order), world_size)
        self.samples = [(int(i), int(order[i])) for i in mine]
        self._local = threading.local()
        self.wait_s = 0.0
        """Seconds the consumer spent blocked waiting for batches."""

    def __len__(self) -> int:
        return len(self.samples) // self.batch_size

    def _stream(self) -> torch.cuda.Stream | None:
        if self.device.type != "cuda":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return stream

    def make_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor,
                                              torch.cuda.Event | None]:
        """Prepare batch `step` (any thread): image, label and a CUDA event or None."""
        chunk = self.samples[step * self.batch_size:(step + 1) * self.batch_size]
        stream = self._stream()
        images, labels = [], []
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for index, case in chunk:
                volume = self.volumes[case]
                rng = sample_rng(self.seed, self.fold, self.epoch, index)
                params = draw_params(rng, volume.label.shape, self.config,
                                     volume.lesion_voxels, volume.hot_voxels)
                maps = None if self.clicks is None else self.clicks.patch_maps(
                    click_rng(self.seed, self.fold, self.epoch, index),
                    tuple(float(s) for s in volume.spacing_mm[::-1]))
                image, label = augment_sample(volume.image, volume.label, params, self.config,
                                              self.device, pin_memory=stream is not None,
                                              patch_maps=maps)
                images.append(image)
                labels.append(label)
            image_batch = torch.stack(images)
            label_batch = torch.stack(labels)[:, None]
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
        return image_batch, label_batch, event

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = len(self)
        with ThreadPoolExecutor(max_workers=self.threads,
                                thread_name_prefix="petseg-loader") as pool:
            pending: deque[Future] = deque()
            submitted = 0
            try:
                for _ in range(steps):
                    while submitted < steps and len(pending) < self.prefetch:
                        pending.append(pool.submit(self.make_batch, submitted))
                        submitted += 1
                    waited = time.perf_counter()
                    image, label, event = pending.popleft().result()
                    self.wait_s += time.perf_counter() - waited
                    if event is not None:
                        current = torch.cuda.current_stream(self.device)
                        current.wait_event(event)
                        image.record_stream(current)
                        label.record_stream(current)
                    yield image, label
            finally:
                for future in pending:
                    future.cancel()

