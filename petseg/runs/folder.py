"""A run of `petseg predict`: the cases of a part (`parts`), less those an earlier run
finished with the same weights and settings (`--continue`, `resume`), on one device in
this process or on one worker process per device (`workers`).

The parent writes one results file (`results.json`, or the part's, `petseg.runs.results`),
every case in the order of the case list, each finished entry stamped for a later
`--continue`, and logs the folder's progress (cases done of total, cases per hour, time
left).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petseg.config import InferenceConfig
from petseg.errors import PetsegError, describe_os_error
from petseg.io.cases import CaseFiles, CaseList
from petseg.io.outputs import INTERRUPTED, results_name
from petseg.progress import FolderProgress
from petseg.runs.results import Results
from petseg.runs.resume import finished_cases, run_fingerprint, stamp
from petseg.runs.writers import OutputWriter, remove_outputs, writers_settings

if TYPE_CHECKING:
    from petseg.interactive.cache import SessionCache

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What a run does.

    Attributes:
        output_dir: the output folder.
        weights_dir: fold checkpoints + manifest.json; None: the first of
            `weights_candidates` holding a manifest.
        config: inference settings as given (threshold may be null: the manifest's).
        devices: one device runs in this process; more start one worker each.
        settings: the command line's other settings that shape the outputs (recorded,
            as a sha256, for `--continue`, with the writers' options).
        writers: what is written for each case (`petseg.runs.writers`).
        allow_missing: run on the folds present.
        min_component_ml: remove smaller predicted lesions (ml; 0 = off).
        num_parts, part_id: the part this run is (results.part-K-of-N.json), or None.
        resume: skip the cases an earlier run finished (`--continue`).
        session_cache: keep interactive cases' sessions there between calls
            (`petseg.interactive.cache`), or None.
    """

    output_dir: Path
    weights_dir: Path | None
    config: InferenceConfig
    devices: Sequence[str]
    settings: dict[str, Any]
    writers: tuple[OutputWriter, ...]
    allow_missing: bool = False
    min_component_ml: float = 0.0
    num_parts: int | None = None
    part_id: int | None = None
    resume: bool = False
    weights_candidates: tuple[Path, ...] = ()
    session_cache: Path | None = None

    @property
    def results_path(self) -> Path:
        """`results.json`, or this part's results file."""
        return self.output_dir / results_name(self.num_parts, self.part_id)

    def results(self, cases: CaseList, kept: dict[str, Any] | None = None,
                fingerprint: dict[str, str] | None = None) -> Results:
        """The run's results file (`kept`: entries of an earlier run that stand)."""
        return Results(cases, self.results_path,
                       functools.partial(remove_outputs, self.writers, self.output_dir),
                       kept, None if fingerprint is None
                       else functools.partial(stamp, fingerprint=fingerprint))

def _user_error(exc: Exception) -> str | None:
    """The one-line message of an error a user can fix, else None."""
    if isinstance(exc, PetsegError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return describe_os_error(exc, reading=True)
    return None


@contextlib.contextmanager
def _failing_the_rest(results: Results) -> Iterator[None]:
    """An error a user can fix (`_user_error`) inside the block fails every case not yet
    done with its message and is raised again as one-line `PetsegError`; others propagate."""
    try:
        yield
    except (PetsegError, OSError) as exc:
        message = _user_error(exc)
        if message is None:
            raise
        results.fail_rest(message)
        raise PetsegError(message) from None


def predict_run(cases: CaseList, request: RunRequest) -> list[dict[str, Any]]:
    """Run `cases` as `request` says; returns the results file's entries.

    Weights or settings that cannot be loaded fail every case (recorded, then
    `PetsegError`); an interruption records the finished cases and `INTERRUPTED` for the
    rest, then propagates; with `cases.single` a failing case's error propagates.
    """
    results = request.results(cases)
    try:
        with _failing_the_rest(results):
            if request.weights_dir is None:
                from petseg.checkpoint import find_weights_dir

                request = dataclasses.replace(
                    request, weights_dir=find_weights_dir(request.weights_candidates))
            weights_dir = Path(request.weights_dir)  # type: ignore[arg-type]
            from petseg.inference.predictor import settled_config

            config = settled_config(request.config, weights_dir)
            settings = {**request.settings, **writers_settings(request.writers),
                        "inference": dataclasses.asdict(config),
                        "min_lesion_ml": request.min_component_ml,
                        "allow_missing_folds": request.allow_missing}
            fingerprint = run_fingerprint(weights_dir, settings)
        kept = (finished_cases(cases, request.results_path, request.output_dir, fingerprint)
                if request.resume else {})
        results = request.results(cases, kept, fingerprint)
        to_run = [files for files in cases.cases if files.name not in kept]
        sessions = None
        if request.session_cache is not None:
            from petseg.interactive.cache import SessionCache

            # what the kept probability depends on: the weights and the inference settings,
            # not the outputs asked for
            sessions = SessionCache(request.session_cache, run_fingerprint(
                weights_dir, {"inference": dataclasses.asdict(config)}))
        if len(request.devices) > 1 and len(to_run) > 1:
            _on_workers(to_run, request, config, results, sessions)
        else:
            _in_process(to_run, cases.single, request, config, results, sessions)
    except KeyboardInterrupt:
        results.fail_rest(INTERRUPTED)
        log.error("interrupted after %d of %d case(s); %s lists them",
                  results.progress.done, results.progress.total, request.results_path)
        raise
    except Exception:
        results.write()  # the single case's failure, or no worker could load the ensemble
        raise
    return results.write()


def _in_process(to_run: list[CaseFiles], single: bool, request: RunRequest,
                config: InferenceConfig, results: Results,
                sessions: SessionCache | None) -> None:
    """The cases on `request.devices[0]`, in this process."""
    from petseg.inference.predictor import Predictor
    from petseg.runs.loop import run_cases

    if not to_run:
        return
    with _failing_the_rest(results):
        predictor = Predictor.from_weights_dir(
            request.weights_dir, config, device=request.devices[0],
            allow_missing=request.allow_missing, min_component_ml=request.min_component_ml)
    results.progress = FolderProgress(results.progress.total)  # the rate counts from here
    run_cases(to_run, request.output_dir, predictor, request.writers, results.add,
              single=single, sessions=sessions)


def case_size(files: CaseFiles) -> int:
    """Bytes of the case's PET and CT files (0 for DICOM): handing out the largest cases
    first keeps a worker from starting a big one last."""
    return sum(path.stat().st_size for path in (files.pet, files.ct)
               if path is not None and path.is_file())


def _on_workers(to_run: list[CaseFiles], request: RunRequest, config: InferenceConfig,
                results: Results, sessions: SessionCache | None) -> None:
    """The cases over one worker process per device, largest first."""
    from petseg.runs.workers import WorkerPool, WorkerSpec

    count = min(len(request.devices), len(to_run))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec = WorkerSpec(request.weights_dir, config, request.allow_missing,
                      request.min_component_ml, request.output_dir, request.writers,
                      threads=max(1, (cores or 1) // count), sessions=sessions,
                      log_level=logging.getLogger().getEffectiveLevel())
    largest_first = sorted(to_run, key=case_size, reverse=True)
    log.info("%d case(s) on %d worker(s) (%s), %d CPU thread(s) each", len(to_run), count,
             ", ".join(request.devices[:count]), spec.threads)
    WorkerPool(request.devices[:count], spec, largest_first, results.add).run()
