"""A folder of cases: the case loop, reading one case ahead, the outputs and results.json.

    read_case (prefetched) -> Predictor.predict (`petseg.inference.predictor`)
      -> write_image (atomic) [-> DICOM SEG, extras]

Outputs (grand-challenge contract, evalutils-compatible `results.json`):
    OUTPUT/images/automated-petct-lesion-segmentation/<name>.mha   uint8 0/1, PET grid
    OUTPUT/images/tumor-lesion-segmentation/<name>.mha   instead, for a case with a click file
    OUTPUT/results.json   one entry per case: inputs, outputs, error_messages (and
                          `implausible`: why the lesion volume is one no patient has)
    OUTPUT/dicom-seg/<name>.dcm   DICOM input only: the mask as a DICOM SEG (`dicom_seg`)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.inference.predictor import Prediction, Predictor
from petseg.interactive.clicks import read_click_file
from petseg.io.cases import Case, CaseFiles, CaseList, read_case
from petseg.io.images import write_image, write_json
from petseg.io.plausibility import implausible_result
from petseg.progress import CaseProgress

log = logging.getLogger(__name__)

MASK_FOLDER = ("images", "automated-petct-lesion-segmentation")
INTERACTIVE_MASK_FOLDER = ("images", "tumor-lesion-segmentation")
PROBABILITY_FOLDER = ("probabilities",)
RESULTS_NAME = "results.json"


def results_entry(files: CaseFiles, output: Path | None, error: str | None,
                  seconds: float, lesion_ml: float | None) -> dict[str, Any]:
    """One results.json entry (evalutils' layout plus name, timing and lesion volume)."""
    dicom = {} if files.dicom is None else {"dicom": files.dicom.summary()}
    return {
        "name": files.name,
        "inputs": files.dicom.inputs() if files.dicom is not None else [
            {"type": "metaio_image", "filename": str(p)} for p in (files.pet, files.ct)
            if p is not None],
        "outputs": [] if output is None else [{"type": "metaio_image", "filename": str(output)}],
        "error_messages": [] if error is None else [error],
        "seconds": round(seconds, 3),
        "lesion_volume_ml": lesion_ml,
        **dicom,
    }


def mask_folder(files: CaseFiles) -> tuple[str, ...]:
    """Where a case's mask goes: the interactive slug with a click file, else the 2023 one."""
    return INTERACTIVE_MASK_FOLDER if files.clicks is not None else MASK_FOLDER


def _extras(files: CaseFiles, pet: sitk.Image, prediction: Prediction,
            extras_dir: Path) -> dict[str, Any]:
    """Write one case's clinical extras; {"extras": paths} or {"extras_error": message}.

    A DICOM study's report keeps its patient and study identifiers. When writing fails,
    none of the case's extras is left (no mix of this run's files and an earlier one's)."""
    from petseg.clinical.report import extras_paths, write_extras

    name = files.name
    try:
        paths = write_extras(name, pet, prediction.mask, extras_dir,
                             fold_probabilities=prediction.fold_probabilities,
                             identifiers=files.dicom.identifiers() if files.dicom else None)
    except Exception as exc:  # the mask is written; extras must not fail the case
        message = str(exc) if isinstance(exc, PetsegError) else f"{type(exc).__name__}: {exc}"
        log.warning("case %s: extras not written: %s", name, message)
        for path in extras_paths(extras_dir, name).values():
            path.unlink(missing_ok=True)
        return {"extras_error": message}
    return {"extras": {kind: str(path) for kind, path in paths.items()}}


INTERRUPTED = "not completed: the run was interrupted"
"""The error recorded for a case an interrupted run did not finish."""


def case_outputs(output_dir: Path, name: str) -> dict[str, Path]:
    """The files a run may write for case `name` under `output_dir`, by kind: "mask" (2023
    slug), "interactive_mask" (the slug of a case with clicks), "probability", "dicom_seg"."""
    from petseg.io.dicom_seg import SEG_FOLDER

    return {"mask": output_dir.joinpath(*MASK_FOLDER, f"{name}.mha"),
            "interactive_mask": output_dir.joinpath(*INTERACTIVE_MASK_FOLDER, f"{name}.mha"),
            "probability": output_dir.joinpath(*PROBABILITY_FOLDER, f"{name}.mha"),
            "dicom_seg": output_dir.joinpath(*SEG_FOLDER, f"{name}.dcm")}


def remove_outputs(output_dir: Path, name: str, extras_dir: str | Path | None = None) -> None:
    """Remove case `name`'s outputs left by an earlier run (and its extras in
    `extras_dir`), so none outlives a failure."""
    paths = list(case_outputs(output_dir, name).values())
    if extras_dir is not None:
        from petseg.clinical.report import extras_paths

        paths += extras_paths(extras_dir, name).values()
    for path in paths:
        path.unlink(missing_ok=True)


def _optional(entry: dict[str, Any], name: str, what: str, stale: Path | None,
              write: Callable[[], Any]) -> Any:
    """Run `write` (an optional output of case `name`); returns its result, or None when it
    failed: then the failure is logged and recorded in `entry["error_messages"]` (the mask
    stays; the exit status reports the case) and `stale`, a file of this output that an
    earlier run may have left, is removed."""
    try:
        return write()
    except Exception as exc:
        message = str(exc) if isinstance(exc, PetsegError) else f"{type(exc).__name__}: {exc}"
        log.error("case %s: %s not written (the mask is): %s", name, what, message)
        log.debug("case %s: %s failed", name, what, exc_info=True)
        if stale is not None:
            stale.unlink(missing_ok=True)
        entry["error_messages"].append(f"{what} not written: {message}")
        return None


def _dicom_seg_output(files: CaseFiles, prediction: Prediction, predictor: Predictor,
                      output_dir: Path, seg_uid_seed: str | None) -> dict[str, str]:
    """Build and write the case's DICOM SEG; returns its results.json output."""
    from petseg.io.dicom_seg import SEG_FOLDER, build_dicom_seg, save_dicom_seg

    assert files.dicom is not None
    seg = build_dicom_seg(files.dicom, prediction.mask, seg_uid_seed, {
        "folds": ",".join(predictor.folds), "ensemble": predictor.config.ensemble,
        "threshold": f"{predictor.threshold:g}"})
    seg_path = save_dicom_seg(seg, output_dir.joinpath(*SEG_FOLDER, f"{files.name}.dcm"))
    return {"type": "dicom_seg", "filename": str(seg_path)}


@dataclasses.dataclass
class _Computed:
    """A case's prediction, ready to be written (`_write_one`)."""

    files: CaseFiles
    pet: sitk.Image
    prediction: Prediction
    clicks: Any
    start: float


def _compute_one(files: CaseFiles, reading: Future[Case], predictor: Predictor,
                 save_probability: bool, extras_dir: str | Path | None,
                 start: float) -> _Computed:
    """Wait for the case's read (and its clicks) and predict it; nothing is written."""
    progress = CaseProgress(files.name)
    progress.stage("reading the DICOM study's PET and CT series" if files.dicom is not None
                   else f"reading {files.pet} and {files.ct}")
    case = reading.result()
    clicks = read_click_file(files.clicks, case.pet) if files.clicks is not None else None
    prediction = predictor.predict(
        case.pet, case.ct, probability=save_probability,
        fold_probabilities=extras_dir is not None and len(predictor.networks) > 1,
        progress=progress, clicks=clicks)
    return _Computed(files, case.pet, prediction, clicks, start)


def _write_one(computed: _Computed, output_dir: Path, predictor: Predictor,
               extras_dir: str | Path | None, dicom_seg: bool,
               seg_uid_seed: str | None) -> dict[str, Any]:
    """Write a computed case's outputs; returns its results.json entry.

    The mask is written first; a failing optional output (DICOM SEG, probability, extras)
    is recorded in the entry's `error_messages` and never takes the mask with it."""
    files, prediction, clicks = computed.files, computed.prediction, computed.clicks
    CaseProgress(files.name).stage("writing the mask")
    target = write_image(prediction.mask,
                         output_dir.joinpath(*mask_folder(files), f"{files.name}.mha"))
    lesion_ml = float(sitk.GetArrayViewFromImage(prediction.mask).sum()
                      * np.prod(prediction.mask.GetSpacing()) / 1000.0)
    seconds = time.perf_counter() - computed.start
    log.info("case %s: %.1f ml of lesion, %.1f s -> %s", files.name, lesion_ml, seconds, target)
    entry = results_entry(files, target, None, seconds, round(lesion_ml, 3))
    implausible = implausible_result(prediction.mask, computed.pet)
    if implausible is not None:
        log.warning("case %s: implausible result: %s", files.name, implausible)
        entry["implausible"] = implausible
    stale = case_outputs(output_dir, files.name)
    if files.dicom is not None and dicom_seg:
        seg = _optional(entry, files.name, "DICOM SEG", stale["dicom_seg"],
                        lambda: _dicom_seg_output(files, prediction, predictor, output_dir,
                                                  seg_uid_seed))
        if seg is not None:
            entry["outputs"].append(seg)
    if prediction.probability is not None:
        probability = prediction.probability
        _optional(entry, files.name, "probability map", stale["probability"], lambda: write_image(
            probability, output_dir.joinpath(*PROBABILITY_FOLDER, f"{files.name}.mha")))
    if clicks is not None:  # the points used: those inside the PET image
        entry["clicks"] = {"file": str(files.clicks), **clicks.counts()}
    if extras_dir is not None:
        entry.update(_extras(files, computed.pet, prediction, Path(extras_dir)))
        if "extras_error" in entry:
            entry["error_messages"].append(f"extras not written: {entry['extras_error']}")
    return entry


def _predict_one(files: CaseFiles, reading: Future[Case], output_dir: Path,
                 predictor: Predictor, save_probability: bool,
                 extras_dir: str | Path | None, dicom_seg: bool,
                 seg_uid_seed: str | None) -> dict[str, Any]:
    """Predict one case and write its outputs (`_write_one`); returns its results.json
    entry."""
    computed = _compute_one(files, reading, predictor, save_probability, extras_dir,
                            time.perf_counter())
    return _write_one(computed, output_dir, predictor, extras_dir, dicom_seg, seg_uid_seed)


def _record_interruption(cases: CaseList, results: list[dict[str, Any]],
                         output_dir: Path, extras_dir: str | Path | None) -> None:
    """After an interruption: the cases not in `results` get `INTERRUPTED` (and lose any
    earlier output and extras); `results.json` is written."""
    done = {entry["name"] for entry in results}
    for files in cases.cases:
        if files.name not in done:
            remove_outputs(output_dir, files.name, extras_dir)
            results.append(results_entry(files, None, INTERRUPTED, 0.0, None))
    write_json(results, output_dir / RESULTS_NAME)
    log.error("interrupted after %d of %d case(s); %s lists them", len(done),
              len(cases.cases), output_dir / RESULTS_NAME)


def _failure(files: CaseFiles, exc: Exception, output_dir: Path,
             extras_dir: str | Path | None, start: float, log_it: bool) -> dict[str, Any]:
    """The results.json entry of a case that failed with `exc`; its outputs (and extras)
    left by an earlier run are removed (and the failure logged when `log_it`)."""
    message = str(exc) if isinstance(exc, PetsegError) else f"{type(exc).__name__}: {exc}"
    remove_outputs(output_dir, files.name, extras_dir)
    if log_it:
        log.error("case %s failed: %s", files.name, message,
                  exc_info=not isinstance(exc, PetsegError))
    return results_entry(files, None, message, time.perf_counter() - start, None)


def predict_cases(
    cases: CaseList,
    output_dir: str | Path,
    predictor: Predictor,
    save_probability: bool = False,
    extras_dir: str | Path | None = None,
    dicom_seg: bool = True,
    seg_uid_seed: str | None = None,
) -> list[dict[str, Any]]:
    """Predict every case and write masks + `results.json` under `output_dir`.

    A failing case is recorded in `results.json` with its error and any output an
    earlier run left for it is removed; with `cases.single` the error then propagates,
    otherwise the other cases still run. An interruption (Ctrl-C, SIGTERM) writes
    `results.json` with the cases completed and `INTERRUPTED` for the rest, then
    propagates. With `extras_dir`, each case's lesion report, MIP picture and (with two
    or more folds) uncertainty map go there (`petseg.clinical.report.write_extras`). A failing
    optional output (DICOM SEG, probability, extras) never takes the written mask with it:
    it is logged and recorded in `error_messages` (extras also in `extras_error`).
    A DICOM study (`files.dicom`) also gets its mask as a DICOM SEG under
    `OUTPUT/dicom-seg/` unless `dicom_seg` is False (`petseg.io.dicom_seg`; `seg_uid_seed`
    makes its UIDs reproducible). Returns the entries.
    """
    output_dir = Path(output_dir)
    results: list[dict[str, Any]] = []
    try:
        predict_each(cases.cases, output_dir, predictor, results.append, single=cases.single,
                     save_probability=save_probability, extras_dir=extras_dir,
                     dicom_seg=dicom_seg, seg_uid_seed=seg_uid_seed)
    except KeyboardInterrupt:
        _record_interruption(cases, results, output_dir, extras_dir)
        raise
    except Exception:
        write_json(results, output_dir / RESULTS_NAME)  # the single case's failure
        raise
    write_json(results, output_dir / RESULTS_NAME)
    return results


def _nothing(files: CaseFiles) -> None:
    """No-op `on_start`."""


class _WriteBehind:
    """The outputs of one case written in a thread while the next case runs; entries go to
    `on_entry` in case order (a failure's entry too, raised again when `single`)."""

    def __init__(self, writer: ThreadPoolExecutor, write: Callable[[_Computed], dict[str, Any]],
                 output_dir: Path, extras_dir: str | Path | None,
                 on_entry: Callable[[dict[str, Any]], None], single: bool) -> None:
        self.writer, self.write = writer, write
        self.output_dir, self.extras_dir = output_dir, extras_dir
        self.on_entry, self.single = on_entry, single
        self.writing: tuple[CaseFiles, float, Future[dict[str, Any]]] | None = None

    def submit(self, computed: _Computed) -> None:
        """Report the case written before, then start writing `computed`."""
        self.finish()
        self.writing = (computed.files, computed.start, self.writer.submit(self.write, computed))

    def fail(self, files: CaseFiles, exc: Exception, start: float) -> None:
        """Report the case written before, then `files`' failure."""
        self.finish()
        self.on_entry(_failure(files, exc, self.output_dir, self.extras_dir, start,
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


def predict_each(
    cases: Iterable[CaseFiles],
    output_dir: Path,
    predictor: Predictor,
    on_entry: Callable[[dict[str, Any]], None],
    *,
    single: bool = False,
    on_start: Callable[[CaseFiles], None] = _nothing,
    save_probability: bool = False,
    extras_dir: str | Path | None = None,
    dicom_seg: bool = True,
    seg_uid_seed: str | None = None,
) -> None:
    """The case loop: while case n runs, case n+1 is read and case n-1 written (one thread
    each; SimpleITK and torch release the GIL). `cases` may be a lazy iterator (a worker's
    share of a queue): the next case is asked for right after `on_start(case n)`.

    Each case's results.json entry goes to `on_entry` in the order of `cases`; a failing
    case's entry carries its error and its earlier outputs are removed. With `single` the
    error then propagates. On an interruption the case being written is finished (and
    reported), the read ahead is dropped, and KeyboardInterrupt propagates.
    """
    fill_hu = predictor.model_config.preprocessing.ct_fill_hu
    write = functools.partial(_write_one, output_dir=output_dir, predictor=predictor,
                              extras_dir=extras_dir, dicom_seg=dicom_seg,
                              seg_uid_seed=seg_uid_seed)
    upcoming = iter(cases)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-read") as reader, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-write") as writer:
        behind = _WriteBehind(writer, write, output_dir, extras_dir, on_entry, single)
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
                    computed = _compute_one(current, reading,  # type: ignore[arg-type]
                                            predictor, save_probability, extras_dir, start)
                except Exception as exc:
                    behind.fail(current, exc, start)
                else:
                    behind.submit(computed)
                current, reading = following, ahead
            behind.finish()
        except KeyboardInterrupt:
            for pending in (reading, ahead):
                if pending is not None:
                    pending.cancel()
            behind.finish()
            raise
