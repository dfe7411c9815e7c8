"""Grand-challenge entry point: segment the case in /input, write the mask to /output.

Weights come from /opt/ml/model when a model tarball holding a manifest was mounted there,
else from the image's own weights/ folder. Every GPU the container is given runs a worker
(`--devices all`) unless the extra arguments name `--device` or `--devices`. Where the
platform gives a `/cache` folder, an interactive case's session is kept there between
calls (`--session-cache /cache`). Extra
arguments are passed on to `petseg predict` (later options override these defaults).
"""

import sys
from pathlib import Path

from petseg.cli import main, prepare_environment
from petseg.errors import PetsegError, describe_os_error

HERE = Path(__file__).resolve().parent
CACHE = Path("/cache")
"""The folder grand-challenge keeps between the calls of one case (autoPET V's steps)."""


def arguments(extra: list[str]) -> list[str]:
    """The `petseg predict` command line for the challenge's fixed folders."""
    from petseg.checkpoint import find_weights_dir  # the manifest only: no torch, no MONAI

    try:
        weights = find_weights_dir([Path("/opt/ml/model"), HERE / "weights"])
    except PetsegError:
        weights = HERE / "weights"  # `petseg predict` then says what is missing there
    named = {argument.split("=")[0] for argument in extra}
    devices = [] if named & {"--device", "--devices"} else ["--devices", "all"]
    cache = (["--session-cache", str(CACHE)]
             if CACHE.is_dir() and "--session-cache" not in named else [])
    return ["predict", "--input", "/input", "--output", "/output", "--weights", str(weights),
            "--config", str(HERE / "resources" / "inference.json"), *devices, *cache, *extra]


if __name__ == "__main__":
    try:
        prepare_environment()  # a usable temp dir and user before torch is imported
        argv = arguments(sys.argv[1:])  # an unreadable /opt/ml/model raises, never falls back
    except PetsegError as exc:
        print(f"process.py: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"process.py: error: {describe_os_error(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(main(argv))
