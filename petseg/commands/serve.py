"""`petseg serve`: the ensemble for 3D Slicer and napari over the nnInteractive remote protocol
(logic in `petseg.serve`; docs/serve.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from petseg.errors import PetsegError

HELP = ("interactive server for 3D Slicer (SlicerNNInteractive) and napari "
        "(napari-nninteractive): the reader clicks, the lesion mask follows")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `petseg serve`."""
    parser.add_argument("--cases", type=Path, default=None, metavar="FOLDER",
                        help="studies the viewers may open (grand-challenge, case-folder, "
                             "autoPET or DICOM layout, as predict reads them); an uploaded PET "
                             "is matched to one (default: none, 2-channel SUV+CT uploads only)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; "
                             "see docs/serve.md before opening it to a network)")
    parser.add_argument("--port", type=int, default=1527, help="TCP port (default 1527)")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                        help="file holding the bearer key the viewers must send (default: "
                             "no key)")
    parser.add_argument("--weights", type=Path, default=None, metavar="DIR",
                        help="fold checkpoints + manifest.json (default: the bundled weights)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs (default auto = CUDA if available)")
    parser.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                        help="one ensemble on each of these devices (e.g. cuda:0 cuda:1), "
                             "each reader's study on the least busy one; with --max-sessions "
                             "at least as large (default: --device alone)")
    parser.add_argument("--config", type=Path, default=None, metavar="JSON",
                        help="inference settings JSON (default: resources/inference.json)")
    parser.add_argument("--mode", choices=("reference", "fast"), default=None,
                        help="engine mode (default: the config's)")
    parser.add_argument("--max-sessions", type=int, default=1, metavar="N",
                        help="readers served at once, one study each in memory (default 1)")
    parser.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a reader's session ends after this long without an image or "
                             "interaction (default 600)")
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, metavar="MB",
                        help="largest request body and unpacked array (default 2048)")


def _api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    key = path.read_text().strip()
    if not key or any(c.isspace() for c in key):
        raise PetsegError(f"--api-key-file {path}: write one key without spaces into it")
    return key


def run(args: argparse.Namespace) -> int:
    """Load the ensemble once and serve until interrupted."""
    import uvicorn

    from petseg.checkpoint import find_weights_dir
    from petseg.commands.predict import DEFAULT_CONFIG, REPOSITORY
    from petseg.inference.predictor import Predictor
    from petseg.serve.app import ServeOptions, make_app
    from petseg.serve.studies import StudyIndex
    from petseg.training.calibration import inference_config

    if not 0 < args.port < 65536 or args.max_sessions < 1 or not args.idle_timeout > 0:
        raise PetsegError("--port must be 1-65535, --max-sessions and --idle-timeout positive")
    options = ServeOptions(api_key=_api_key(args.api_key_file), max_sessions=args.max_sessions,
                           idle_timeout_s=args.idle_timeout,
                           liveness_timeout_s=min(60.0, args.idle_timeout),
                           sweep_interval_s=min(15.0, args.idle_timeout / 4),
                           max_upload_bytes=int(args.max_upload_mb * 2**20))
    studies = StudyIndex(args.cases)
    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    weights = args.weights or find_weights_dir([Path.cwd() / "weights", REPOSITORY / "weights"])
    config = inference_config(config_path, args.mode)
    predictors = [Predictor.from_weights_dir(weights, config, device=device)
                  for device in (args.devices or [args.device])]
    if args.host not in ("127.0.0.1", "localhost", "::1") and options.api_key is None:
        log.warning("listening on %s without --api-key-file: anyone who reaches the port may "
                    "use the server (docs/serve.md)", args.host)
    app = make_app(predictors, studies, options)
    log.info("serving on http://%s:%d", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
