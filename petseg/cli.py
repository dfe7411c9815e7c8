"""`petseg` command-line interface.

Each subcommand lives in `petseg/commands/<name>.py` and exposes `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. Command modules import heavy packages
(torch, monai) inside `run`, so `petseg --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from petseg import __version__
from petseg.errors import PetsegError, describe_os_error

COMMANDS: tuple[str, ...] = (
    "calibrate",
    "demo",
    "evaluate",
    "evaluate_interactive",
    "export_weights",
    "merge_results",
    "phantom",
    "predict",
    "preprocess",
    "report",
    "serve",
    "split",
    "suv",
    "train",
)
"""Module names under `petseg.commands`; the command name uses '-' for '_'."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="petseg",
        description="Whole-body FDG PET/CT lesion segmentation (autoPET).",
    )
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"petseg.commands.{module_name}")
        command = sub.add_parser(
            module_name.replace("_", "-"), help=module.HELP, description=module.HELP
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def prepare_environment() -> None:
    """Make the process work under any uid, as containers run it (`docker run --user`).

    Raises `PetsegError` when no temporary directory is writable (torch needs one at
    import). Without a passwd entry for the uid, `getpass.getuser()` (called by MONAI)
    fails: USER is set to `uid<N>`. An unwritable HOME (caches of torch, matplotlib) is
    replaced by a fresh folder in the temporary directory.
    """
    import getpass
    import os
    import tempfile

    tempfile.tempdir = None  # look again: TMPDIR or mounts may have changed
    try:
        tmp = tempfile.gettempdir()
    except FileNotFoundError:
        raise PetsegError(
            f"no writable temporary directory (TMPDIR={os.environ.get('TMPDIR', '')!r}, /tmp, "
            "/var/tmp, /usr/tmp and the working directory are read-only); mount one "
            "(docker run --tmpfs /tmp) or set TMPDIR to a writable folder"
        ) from None
    try:
        getpass.getuser()
    except (KeyError, OSError):
        os.environ["USER"] = os.environ["LOGNAME"] = f"uid{os.getuid()}"
    home = os.environ.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        os.environ["HOME"] = tempfile.mkdtemp(prefix="petseg-home-", dir=tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line on stderr and return 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        prepare_environment()
        return int(args._run(args) or 0)
    except PetsegError as exc:
        print(f"petseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"petseg {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"petseg {args.command}: interrupted", file=sys.stderr)
        return 130
