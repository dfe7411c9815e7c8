"""Running cases: a folder of cases through the ensemble, its outputs and its results file.

One predict entry point per level:

    case    `petseg.inference.predictor.Predictor.predict` (PET + CT in, a `Prediction` out;
            `petseg.interactive.session.InteractiveSession.predict` with clicks)
    folder  `predict_folder`: a `CaseList` with a loaded Predictor -> outputs + results.json
    run     `predict_run`: what `petseg predict` does (weights, parts, `--continue`, one
            worker process per device) around the same case loop

    loop: the case loop (read ahead, predict, write behind)
    writers: the outputs, one writer each (mask, DICOM SEG, probability, extras)
    results: the one results file writer
    folder: a run (`predict_run`, `RunRequest`)
    workers: one process per device taking cases from one queue
    parts: every N-th case for part K; merging the parts' results
    resume: which finished cases an earlier run left, by weights, settings and mask sha256
"""

from typing import Any

_PUBLIC = {"RunRequest": "folder", "predict_run": "folder", "predict_folder": "loop",
           "OUTPUT_WRITERS": "writers", "OutputWriter": "writers",
           "output_writers": "writers", "register_output": "writers"}
"""The package's public names and their modules, imported on first use (PEP 562): the
command line registers the writers' options without loading torch."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
