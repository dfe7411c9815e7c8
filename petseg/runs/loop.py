"""The case loop: while case n is predicted, case n+1 is read and case n-1 written.

    read_case (`petseg.io.cases`, one case ahead)
      -> Predictor.predict, or a `InteractiveSession` for a case with clicks (`petseg.inference`,
         `petseg.interactive`)
      -> the output writers (`petseg.runs.writers`, one case behind) -> results entry

`predict_folder` runs a folder of cases with a loaded Predictor and writes its results
file; `petseg.runs.folder.predict_run` adds weights loading, parts, `--continue` and
worker processes around the same loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from petseg.inference.predictor import Predictor
from petseg.interactive.cache import SessionCache, cached_prediction
from petseg.interactive.clicks import case_clicks
from petseg.interactive.session import InteractiveSession
from petseg.io.cases import Case, CaseFiles, CaseList, read_case
from petseg.io.outputs import INTERRUPTED, RESULTS_NAME
from petseg.progress import CaseProgress
from petseg.runs.results import Results, results_entry
from petseg.runs.writers import (
    OutputWriter,
    PredictedCase,
    message_of,
    needed,
    output_writers,
    remove_outputs,
    write_outputs,
)

log = logging.getLogger(__name__)


def predict_case(files: CaseFiles, reading: Future[Case], predictor: Predictor,
                 writers: Sequence[OutputWriter], output_dir: Path,
                 start: float, sessions: SessionCache | None = None) -> PredictedCase:
    """Wait for the case's read (and its clicks) and predict it; nothing is written.
    A case with clicks goes on from a session `sessions` kept for it, where one was."""
    progress = CaseProgress(files.name)
    progress.stage("reading the DICOM study's PET and CT series" if files.dicom is not None
                   else f"reading {files.pet} and {files.ct}")
    case = reading.result()
    clicks = case_clicks(files, case.pet)
    wanted = {"probability": needed(writers, "probability"),
              "fold_probabilities": (needed(writers, "fold_probabilities")
                                     and len(predictor.networks) > 1),
              "progress": progress}
    if (clicks is not None and sessions is not None and sessions.usable
            and files.pet is not None and files.ct is not None
            and not wanted["fold_probabilities"]):
        prediction = cached_prediction(InteractiveSession(predictor), sessions,
                                       (files.pet, files.ct), case.pet, case.ct, clicks,
                                       probability=wanted["probability"], progress=progress)
    elif clicks is not None:
        prediction = InteractiveSession(predictor).predict(case.pet, case.ct, clicks, **wanted)
    else:
        prediction = predictor.predict(case.pet, case.ct, **wanted)
    ensemble = {"folds": ",".join(predictor.folds), "ensemble": predictor.config.ensemble,
                "threshold": f"{predictor.threshold:g}"}
    return PredictedCase(files, case.pet, prediction, clicks, ensemble, output_dir, start)


def failure_entry(files: CaseFiles, exc: Exception, writers: Sequence[OutputWriter],
                  output_dir: Path, start: float, log_it: bool) -> dict[str, Any]:
    """The results entry of a case that failed with `exc`; the outputs an earlier run left
    for it are removed (and the failure logged when `log_it`)."""
    message = message_of(exc)
    remove_outputs(writers, output_dir, files)
    if log_it:
        from petseg.errors import PetsegError

        log.error("case %s failed: %s", files.name, message,
                  exc_info=not isinstance(exc, PetsegError))
    return results_entry(files, None, message, time.perf_counter() - start, None)


class _WriteBehind:
    """The outputs of one case written in a thread while the next case runs; entries go to
    `on_entry` in case order (a failure's entry too, raised again when `single`)."""

    def __init__(self, writer: ThreadPoolExecutor, writers: Sequence[OutputWriter],
                 output_dir: Path, on_entry: Callable[[dict[str, Any]], None],
                 single: bool) -> None:
        self.writer, self.writers, self.output_dir = writer, writers, output_dir
        self.on_entry, self.single = on_entry, single
        self.writing: tuple[CaseFiles, float, Future[dict[str, Any]]] | None = None

    def submit(self, case: PredictedCase) -> None:
        """Report the case written before, then start writing `case`."""
        self.finish()
        self.writing = (case.files, case.start,
                        self.writer.submit(write_outputs, self.writers, case))

    def fail(self, files: CaseFiles, exc: Exception, start: float) -> None:
        """Report the case written before, then `files`' failure."""
        self.finish()
        self.on_entry(failure_entry(files, exc, self.writers, self.output_dir, start,
                                    not self.single))
        if self.single:
            raise exc

    def finish(self) -> None:
        """Wait for the case being written (if any) and report it."""
        if self.writing is None:
            return
        files, start, future = self.writing
        self.writing = None
        try:
            entry = future.result()
        except Exception as exc:
            self.fail(files, exc, start)
            return
        self.on_entry(entry)


def _nothing(files: CaseFiles) -> None:
    """No-op `on_start`."""


def run_cases(cases: Iterable[CaseFiles], output_dir: Path, predictor: Predictor,
              writers: Sequence[OutputWriter], on_entry: Callable[[dict[str, Any]], None], *,
              single: bool = False, on_start: Callable[[CaseFiles], None] = _nothing,
              sessions: SessionCache | None = None) -> None:
    """The case loop: while case n runs, case n+1 is read and case n-1 written (one thread
    each; SimpleITK and torch release the GIL). `cases` may be a lazy iterator (a worker's
    share of a queue): the next case is asked for right after `on_start(case n)`.

    Each case's results entry goes to `on_entry` in the order of `cases`; a failing case's
    entry carries its error and its earlier outputs are removed. With `single` the error
    then propagates. On an interruption the case being written is finished (and reported),
    the read ahead is dropped, and KeyboardInterrupt propagates. `sessions` keeps the
    interactive cases' sessions between calls (`petseg.interactive.cache`).
    """
    fill_hu = predictor.model_config.preprocessing.ct_fill_hu
    upcoming = iter(cases)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-read") as reader, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-write") as writer:
        behind = _WriteBehind(writer, writers, Path(output_dir), on_entry, single)
        current = next(upcoming, None)
        reading = reader.submit(read_case, current, fill_hu) if current is not None else None
        ahead: Future[Case] | None = None
        try:
            while current is not None:
                on_start(current)
                following = next(upcoming, None)
                ahead = (reader.submit(read_case, following, fill_hu)
                         if following is not None else None)
                start = time.perf_counter()
                try:
                    case = predict_case(current, reading,  # type: ignore[arg-type]
                                        predictor, writers, Path(output_dir), start, sessions)
                except Exception as exc:
                    behind.fail(current, exc, start)
                else:
                    behind.submit(case)
                current, reading = following, ahead
            behind.finish()
        except KeyboardInterrupt:
            for pending in (reading, ahead):
                if pending is not None:
                    pending.cancel()
            behind.finish()
            raise


def predict_folder(cases: CaseList, output_dir: str | Path, predictor: Predictor,
                   writers: Sequence[OutputWriter] | None = None,
                   **options: Any) -> list[dict[str, Any]]:
    """Predict every case with a loaded `predictor`, write each case's outputs and
    `results.json` under `output_dir`; returns the entries.

    `writers` (default: every registered writer with `options`, `output_writers`) say what
    is written besides the mask. A failing case is recorded with its error and the
    outputs an earlier run left for it are removed; with `cases.single` the error then
    propagates, otherwise the other cases still run. An interruption (Ctrl-C, SIGTERM)
    writes the cases completed and `INTERRUPTED` for the rest, then propagates.
    """
    output_dir = Path(output_dir)
    writers = tuple(writers) if writers is not None else output_writers(**options)
    results = Results(cases, output_dir / RESULTS_NAME,
                      lambda files: remove_outputs(writers, output_dir, files))
    try:
        run_cases(cases.cases, output_dir, predictor, writers, results.add,
                  single=cases.single)
    except KeyboardInterrupt:
        results.fail_rest(INTERRUPTED)
        log.error("interrupted after %d of %d case(s); %s lists them", results.progress.done,
                  len(cases.cases), results.path)
        raise
    except Exception:
        results.write()  # the single case's failure
        raise
    return results.write()
