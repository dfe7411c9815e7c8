"""Helpers shared by the benchmarks: memory peaks, networks, tables."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence

import torch

from petseg.config import NetworkConfig
from petseg.model import build_network

PAPER_CHANNELS = (32, 64, 128, 256, 512)
CPU_CHANNELS = (16, 32, 64, 128, 256)
"""Half the paper's width: the paper's network is too slow for stock windows on 2 cores."""

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process (bytes), from /proc/self/statm."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class PeakRSS:
    """Samples this process's resident memory every `interval` s in a thread; keeps peaks.

    `mark()` starts a new section: `section_peak` is the highest RSS seen since then.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self.section_peak = self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_bytes()
            self.peak = max(self.peak, value)
            self.section_peak = max(self.section_peak, value)
            time.sleep(self.interval)

    def mark(self) -> int:
        """Start a section; returns the RSS now."""
        now = rss_bytes()
        self.section_peak = now
        return now

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@contextlib.contextmanager
def peak_memory(device: torch.device, sampler: PeakRSS | None) -> Iterator[dict[str, int]]:
    """Peak memory added by the block: CUDA peak allocated, or RSS above the start on CPU."""
    out: dict[str, int] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    else:
        assert sampler is not None
        base = sampler.mark()
        yield out
        out["bytes"] = int(max(sampler.section_peak, rss_bytes()) - base)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so wall times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_networks(count: int, channels: Sequence[int], seed: int = 0) -> list[torch.nn.Module]:
    """`count` paper-style residual UNets with random weights (BatchNorm in eval mode)."""
    networks = []
    for fold in range(count):
        torch.manual_seed(seed + fold)
        config = NetworkConfig(channels=tuple(channels), strides=(2,) * (len(channels) - 1))
        networks.append(build_network(config).eval())
    return networks


def device_from(name: str) -> torch.device:
    """"auto" -> CUDA if available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_machine(device: torch.device) -> str:
    """One line: the device the numbers come from."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return (f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads,"
            f" torch {torch.__version__}")


def gib(value: float | None) -> str:
    """Bytes as GiB with two decimals ("-" for None)."""
    return "-" if value is None else f"{value / 2**30:.2f}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
