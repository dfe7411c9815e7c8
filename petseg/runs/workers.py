"""One worker process per device, taking cases from one queue held by the parent.

    parent: cases, largest first ──► worker i on device i: the ensemble loaded once,
            `runs.loop.run_cases` over the cases it asks for ──► entries ──► parent

Workers start with the "spawn" method (torch after fork is unsafe). A worker asks for its
next case as it starts one, so it reads one case ahead; the parent hands out the largest
case left. A worker that dies (killed, out of memory, a crash) fails only the case it was
running, with the cause in the entry; a case it was only reading goes back to the queue (a
fresh worker takes it when no other is left). SIGTERM makes a worker finish writing the
case it holds and stop; `WorkerPool.stop` sends it to all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from petseg.config import InferenceConfig
from petseg.errors import PetsegError
from petseg.interactive.cache import SessionCache
from petseg.io.cases import CaseFiles
from petseg.runs.results import results_entry
from petseg.runs.writers import OutputWriter, remove_outputs

log = logging.getLogger(__name__)

STOP_WAIT_S = 120.0
"""How long stopped workers may take to finish the case they are writing."""
POLL_S = 0.2
"""How often the parent looks for workers that died."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs to load the ensemble and run cases (picklable).

    Attributes:
        weights_dir: fold checkpoints + manifest.json.
        config: the inference settings (threshold settled or null).
        allow_missing: run on the folds present.
        min_component_ml: remove smaller predicted lesions (ml; 0 = off).
        output_dir: the run's output folder.
        writers: what is written for each case (`petseg.runs.writers`).
        threads: CPU threads of torch and SimpleITK in each worker.
        log_level: the parent's logging level.
        sessions: where interactive cases' sessions are kept between calls, or None.
    """

    weights_dir: Path
    config: InferenceConfig
    allow_missing: bool
    min_component_ml: float
    output_dir: Path
    writers: tuple[OutputWriter, ...]
    threads: int
    log_level: int = logging.INFO
    sessions: SessionCache | None = None


def _stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt once; SIGINT is left to the parent."""
    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, interrupt)


def _receive(channel: Connection) -> CaseFiles | None:
    """The parent's answer: a case, or None (no more, or the parent is gone)."""
    parent = multiprocessing.parent_process()
    while not channel.poll(1.0):
        if parent is not None and not parent.is_alive():
            return None
    try:
        return channel.recv()
    except (EOFError, OSError):
        return None


def worker_main(index: int, device: str, spec: WorkerSpec, channel: Connection) -> None:
    """A worker process: load the ensemble on `device`, then run the cases the parent
    hands out over `channel` (its own pipe: a killed worker can block no other), reporting
    ("ready" | "unloadable" | "want" | "start" | "entry", data)."""
    _stop_on_sigterm()
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(levelname)s %(name)s [worker {index} {device}]: %(message)s")
    import SimpleITK as sitk
    import torch

    from petseg.errors import describe_os_error
    from petseg.inference.predictor import Predictor
    from petseg.runs.loop import run_cases

    torch.set_num_threads(spec.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(spec.threads)

    def asked() -> Iterator[CaseFiles]:
        while True:
            channel.send(("want", None))
            files = _receive(channel)
            if files is None:
                return
            yield files

    try:
        try:
            predictor = Predictor.from_weights_dir(
                spec.weights_dir, spec.config, device=device, allow_missing=spec.allow_missing,
                min_component_ml=spec.min_component_ml)
        except (PetsegError, OSError, RuntimeError) as exc:
            message = (describe_os_error(exc, reading=True) if isinstance(exc, OSError)
                       and exc.filename is not None else str(exc))
            channel.send(("unloadable", message))
            return
        channel.send(("ready", None))
        run_cases(asked(), spec.output_dir, predictor, spec.writers,
                  lambda entry: channel.send(("entry", entry)),
                  on_start=lambda files: channel.send(("start", files.name)),
                  sessions=spec.sessions)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        channel.close()


@dataclasses.dataclass
class _Worker:
    """The parent's view of one worker."""

    index: int
    device: str
    process: BaseProcess
    channel: Connection
    ready: bool = False
    stopped: bool = False
    alive: bool = True
    running: str | None = None
    started: float = 0.0
    held: list[CaseFiles] = dataclasses.field(default_factory=list)
    load_error: str | None = None


def death_cause(exitcode: int | None, device: str, pid: int | None) -> str:
    """The error recorded for the case a worker held when it ended with `exitcode`."""
    where = f"the worker on {device} (pid {pid})"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return (f"{where} was killed by {name}{hint} while running this case; run it "
                "again (petseg predict --continue)")
    return (f"{where} ended with exit status {exitcode} while running this case; see its "
            "log lines above and run it again (petseg predict --continue)")


class WorkerPool:
    """Cases over one worker process per device.

    Args:
        devices: one worker per entry ("cpu", "cuda:1", ...).
        spec: what the workers load and how they write.
        cases: the cases to run, in the order they are handed out (largest first).
        on_entry: receives each case's results entry as it finishes (in the parent).
    """

    def __init__(self, devices: Sequence[str], spec: WorkerSpec, cases: Sequence[CaseFiles],
                 on_entry: Callable[[dict[str, Any]], None]) -> None:
        self.devices = list(devices)
        self.spec = spec
        self.pending = list(cases)
        self.unfinished = {files.name for files in cases}
        self.on_entry = on_entry
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.stopping = False

    def run(self) -> None:
        """Run every case; on KeyboardInterrupt stop the workers (their cases being written
        are still reported) and re-raise. Raises `PetsegError` when no worker could load
        the ensemble (every case then has an entry with that error)."""
        try:
            for device in self.devices:
                self._start(device)
            while self.unfinished:
                self._receive(POLL_S)
                self._check_exits()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self._shut_down()

    def _start(self, device: str) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=worker_main, name=f"petseg-worker-{len(self.workers)}",
            args=(len(self.workers), device, self.spec, theirs), daemon=True)
        process.start()
        theirs.close()
        log.info("worker %d on %s started (pid %d)", len(self.workers), device, process.pid)
        self.workers.append(_Worker(len(self.workers), device, process, ours))

    def _receive(self, timeout: float) -> None:
        """Handle the messages that arrive within `timeout` seconds (or a worker ends)."""
        channels = {w.channel: w for w in self.workers if w.alive and not w.channel.closed}
        sentinels = [w.process.sentinel for w in self.workers if w.alive]
        for ready in wait([*channels, *sentinels], timeout):
            worker = channels.get(ready)  # type: ignore[call-overload]
            if worker is None:
                continue
            try:
                kind, data = worker.channel.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                worker.channel.close()  # the worker is gone; `_check_exits` handles it
                continue
            self._handle(worker, kind, data)

    def _handle(self, worker: _Worker, kind: str, data: Any) -> None:
        index = worker.index
        if kind == "ready":
            worker.ready = True
        elif kind == "unloadable":
            worker.load_error = data
            log.error("worker %d on %s: %s", index, worker.device, data)
        elif kind == "want":
            self._hand_out(worker)
        elif kind == "start":
            worker.running, worker.started = data, time.perf_counter()
            log.info("worker %d (pid %d, %s): case %s", index, worker.process.pid,
                     worker.device, data)
        elif kind == "entry":
            worker.held = [files for files in worker.held if files.name != data["name"]]
            if worker.running == data["name"]:
                worker.running = None
            self._report(data)

    def _hand_out(self, worker: _Worker) -> None:
        if self.pending and not self.stopping:
            files = self.pending.pop(0)
            worker.held.append(files)
            self._send(worker, files)
        else:
            worker.stopped = True
            self._send(worker, None)

    @staticmethod
    def _send(worker: _Worker, files: CaseFiles | None) -> None:
        with contextlib.suppress(OSError):  # a dead worker: `_check_exits` handles it
            worker.channel.send(files)

    def _report(self, entry: dict[str, Any]) -> None:
        if entry["name"] in self.unfinished:
            self.unfinished.discard(entry["name"])
            self.on_entry(entry)

    def _fail(self, files: CaseFiles, message: str, seconds: float) -> None:
        """Record `files` as failed with `message` (earlier outputs removed)."""
        log.error("case %s failed: %s", files.name, message)
        remove_outputs(self.spec.writers, self.spec.output_dir, files)
        self._report(results_entry(files, None, message, seconds, None))

    def _drain(self) -> None:
        """Handle every message already sent."""
        while any(w.channel.poll() for w in self.workers if not w.channel.closed):
            self._receive(0.0)

    def _check_exits(self) -> None:
        """Handle workers that ended: their running case fails, their other cases go back."""
        ended = [w for w in self.workers if w.alive and w.process.exitcode is not None]
        if not ended:
            return
        self._drain()
        for worker in ended:
            worker.alive = False
            cause = death_cause(worker.process.exitcode, worker.device, worker.process.pid)
            for files in worker.held:
                if files.name == worker.running:
                    self._fail(files, cause, time.perf_counter() - worker.started)
                elif files.name in self.unfinished:
                    self.pending.insert(0, files)
            worker.held, worker.running = [], None
            if worker.process.exitcode != 0:
                log.error("worker %d on %s ended (exit status %s)", worker.index,
                          worker.device, worker.process.exitcode)
            self._replace(worker)

    def _replace(self, dead: _Worker) -> None:
        """When cases wait and no worker will take them: a fresh worker on the dead one's
        device if it had loaded the ensemble, else every waiting case fails."""
        if not self.pending or any(w.alive and not w.stopped for w in self.workers):
            return
        if dead.ready:
            self._start(dead.device)
            return
        errors = [w.load_error for w in self.workers if w.load_error]
        message = errors[0] if errors else death_cause(dead.process.exitcode, dead.device,
                                                       dead.process.pid)
        for files in list(self.pending):
            self._fail(files, message, 0.0)
        self.pending.clear()
        if not any(w.ready for w in self.workers):
            raise PetsegError(message)

    def stop(self) -> None:
        """SIGTERM to every worker; wait (up to `STOP_WAIT_S`) for the cases they are
        writing, reporting them; then kill what is left."""
        self.stopping = True
        for worker in self.workers:
            if worker.alive and worker.process.exitcode is None:
                worker.process.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        while (any(w.process.exitcode is None for w in self.workers)
               and time.monotonic() < deadline):
            self._receive(POLL_S)
        self._drain()

    def _shut_down(self) -> None:
        for worker in self.workers:
            if worker.process.exitcode is None:
                self._send(worker, None)
        for worker in self.workers:
            worker.process.join(timeout=STOP_WAIT_S)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.channel.close()


def parse_devices(text: str) -> list[str]:
    """`--devices`: "all" = every CUDA device (the CPU when there is none), else a comma-
    separated list of cpu, cuda and cuda:N (a device may repeat: one worker each)."""
    import re

    import torch

    count = torch.cuda.device_count()
    if text.strip() == "all":
        if count == 0:
            log.info("--devices all: no CUDA device; running on the CPU")
            return ["cpu"]
        return [f"cuda:{i}" for i in range(count)]
    devices = [name.strip() for name in text.split(",") if name.strip()]
    if not devices:
        raise PetsegError("--devices: no device named; give e.g. cuda:0,cuda:1, cpu or all")
    for name in devices:
        match = re.fullmatch(r"cuda(?::(\d+))?", name)
        if name != "cpu" and match is None:
            raise PetsegError(f"--devices {text}: {name!r} is not a device; use cpu, cuda:N "
                              "or all")
        if match is not None and count == 0:
            raise PetsegError(f"--devices {text}: no CUDA device is available; use --devices "
                              "cpu")
        if match is not None and match[1] is not None and int(match[1]) >= count:
            raise PetsegError(f"--devices {text}: {name} does not exist; this machine has "
                              f"{count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return ["cuda:0" if name == "cuda" else name for name in devices]
