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

from petseg.runs.folder import RunRequest, predict_run
from petseg.runs.loop import predict_folder
from petseg.runs.writers import OUTPUT_WRITERS, OutputWriter, output_writers, register_output

__all__ = ["OUTPUT_WRITERS", "OutputWriter", "RunRequest", "output_writers", "predict_folder",
           "predict_run", "register_output"]
