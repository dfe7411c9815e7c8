"""`petseg predict`: lesion masks for PET/CT cases with the fold ensemble."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from petseg.errors import PetsegError

if TYPE_CHECKING:
    from petseg.config import InferenceConfig
    from petseg.runs.folder import RunRequest

HELP = ("segment lesions in PET/CT cases (grand-challenge, case-folder or autoPET layout, "
        "or DICOM studies)")

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPOSITORY / "resources" / "inference.json"
MODEL_DIR = Path("/opt/ml/model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `petseg predict`."""
    parser.add_argument("--input", required=True, type=Path,
                        help="input folder: images/pet + images/ct, case folders in that "
                             "layout, the autoPET PETCT_*/<date>/SUV.nii.gz layout, or DICOM "
                             "files (any nesting; one case per study)")
    parser.add_argument("--output", required=True, type=Path,
                        help="output folder (masks under images/automated-petct-lesion-"
                             "segmentation/, or images/tumor-lesion-segmentation/ for a case "
                             "with clicks; results.json beside)")
    parser.add_argument("--clicks", type=Path, default=None, metavar="FILE",
                        help="click file (lesion-clicks.json schema: tumour and background "
                             "points, PET voxel indices x, y, z) for a single input case; a "
                             "case folder holding lesion-clicks.json uses it without this")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"folder with fold checkpoints and manifest.json (default: "
                             f"{MODEL_DIR} if it holds a manifest, else ./weights or the "
                             "repository's weights/)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where the network runs (default: auto = CUDA if available; "
                             "--devices instead for several)")
    parser.add_argument("--ensemble", choices=("mean", "weighted"), default=None,
                        help="plain mean or validation-DSC-weighted mean of the folds "
                             "(default: from --config)")
    parser.add_argument("--threshold", type=float, default=None, metavar="P",
                        help="lesion probability threshold in (0, 1) (default: from --config; "
                             "null there = the weights' calibrated one, else 0.5)")
    parser.add_argument("--mode", choices=("reference", "fast"), default=None,
                        help="reference: the paper's 192^3 windows at overlap 0.5; fast: "
                             "windows as large as GPU memory allows (default: from --config)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="seconds per case for preprocessing and inference: averages as "
                             "many flipped passes (test-time augmentation, up to 8) as fit")
    parser.add_argument("--allow-missing-folds", action="store_true",
                        help="run on the folds present when some are missing (warns)")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"inference settings JSON (default: {DEFAULT_CONFIG.name} in "
                             "resources/, else built-in defaults)")
    parser.add_argument("--min-lesion-ml", type=float, default=0.0,
                        help="remove predicted lesions smaller than this volume (default 0: off)")
    parser.add_argument("--weight-kg", type=float, default=None,
                        help="DICOM input: patient weight in kg for PET series without "
                             "PatientWeight (series with it keep theirs)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an inference setting, e.g. tta=2 or roi_size=[96,96,96] "
                             "(VALUE is JSON; repeatable; --ensemble, --threshold, --mode and "
                             "--time-budget are shorthands)")
    from petseg.runs.writers import add_output_arguments

    add_output_arguments(parser)
    _add_run_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options for many cases: devices, parts for array jobs, continuing a run."""
    parser.add_argument("--devices", default=None, metavar="LIST",
                        help="one worker process per device, taking cases from one queue: "
                             "cuda:0,cuda:1,... or all (every CUDA device); cpu,cpu runs two "
                             "CPU workers (default: one device, --device)")
    parser.add_argument("--num-parts", type=int, default=None, metavar="N",
                        help="split the sorted case list into N parts (every N-th case), for "
                             "array jobs; with --part-id; each part writes "
                             "results.part-K-of-N.json (join them with petseg merge-results)")
    parser.add_argument("--part-id", type=int, default=None, metavar="K",
                        help="which part this run is, 0 to N-1 (with --num-parts)")
    parser.add_argument("--session-cache", type=Path, default=None, metavar="DIR",
                        help="interactive cases: keep each case's session in DIR between "
                             "calls, so a call with more clicks runs the network only where "
                             "they changed (autoPET V's /cache; an absent folder is not used)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip the cases an earlier run into --output finished with the "
                             "same weights and settings and whose mask is unchanged; redo "
                             "the rest (default: redo every case)")


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM (`docker stop`, a platform's timeout) raises
    KeyboardInterrupt, so an interrupted run still writes results.json; the previous
    handler comes back afterwards."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def settings(args: argparse.Namespace) -> InferenceConfig:
    """The inference settings of the command line: --config (else resources/inference.json,
    else built-in defaults), then --set, then the named shorthands. The threshold may still
    be null: `Predictor.from_weights_dir` settles it with the weights' manifest."""
    from petseg.config import InferenceConfig, load_json, with_overrides

    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    config = load_json(InferenceConfig, config_path) if config_path else InferenceConfig()
    shorthands = {"ensemble": args.ensemble, "mode": args.mode, "threshold": args.threshold,
                  "time_budget_s": args.time_budget}
    overrides = [*args.set, *(f"{name}={json.dumps(value)}" for name, value in
                              shorthands.items() if value is not None)]
    if not overrides:
        return config
    return with_overrides(config, overrides, "resources/inference.json", "tta=2")


def _request(args: argparse.Namespace, config: InferenceConfig) -> RunRequest:
    """What the run does, from the command line."""
    from petseg.runs.folder import RunRequest
    from petseg.runs.workers import parse_devices
    from petseg.runs.writers import writers_from_arguments

    return RunRequest(
        output_dir=args.output, weights_dir=args.weights, config=config,
        devices=parse_devices(args.devices) if args.devices else [args.device or "auto"],
        settings={"weight_kg": args.weight_kg}, writers=writers_from_arguments(args),
        allow_missing=args.allow_missing_folds, min_component_ml=args.min_lesion_ml,
        num_parts=args.num_parts, part_id=args.part_id, resume=args.resume,
        session_cache=args.session_cache,
        weights_candidates=(MODEL_DIR, Path.cwd() / "weights", REPOSITORY / "weights"))


def run(args: argparse.Namespace) -> int:
    """Predict every case; exit code 1 if any case failed."""
    from petseg.io.cases import find_cases, with_click_file
    from petseg.io.images import check_writable
    from petseg.runs.folder import predict_run
    from petseg.runs.parts import check_part, select_part

    if args.devices is not None and args.device is not None:
        raise PetsegError(f"--device {args.device} and --devices {args.devices}: give one; "
                          "--devices lists every device the run uses")
    if args.weight_kg is not None and not args.weight_kg > 0:
        raise PetsegError(f"--weight-kg {args.weight_kg}: must be a positive weight in kg")
    config = settings(args)  # settings first: a usage error touches no output
    check_part(args.num_parts, args.part_id)
    request = _request(args, config)
    for writer in request.writers:
        writer.check_options(args.output)
    check_writable(args.output)  # every folder this run writes, before any computation
    with _interrupt_on_sigterm():
        cases = find_cases(args.input, weight_kg=args.weight_kg)
        if args.clicks is not None:
            cases = with_click_file(cases, args.clicks)
        for writer in request.writers:
            writer.check_folders(args.output, cases.cases)
        results = predict_run(select_part(cases, args.num_parts, args.part_id), request)
    failed = [entry["name"] for entry in results if entry["error_messages"]]
    if failed:
        logging.getLogger(__name__).error("%d of %d case(s) failed: %s (see %s)", len(failed),
                                          len(results), ", ".join(failed),
                                          request.results_path)
        return 1
    return 0
