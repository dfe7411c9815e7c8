"""`petseg evaluate-interactive`: the organisers' autoPET IV click and autoPET V scribble
protocols on cases with truth (logic in `petseg.evaluation.interactive`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = ("the organisers' interactive protocols on cases with truth: autoPET IV DSC, FPV and "
        "FNV per click step, autoPET V Dice and DMM per scribble iteration, and the areas "
        "under the curves")

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    from petseg.evaluation.interactive import EVALUATION_SEED, PROTOCOLS
    from petseg.interactive.scribbles import SCRIBBLE_SHAPES

    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="cases with truth: grand-challenge layout with <case>/truth/ "
                        "(as `petseg phantom --layout challenge` writes) or autoPET layout")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="write steps.csv, summary.csv, summary.md and curves.png here")
    parser.add_argument("--weights", type=Path, default=None, metavar="DIR",
                        help="fold checkpoints + manifest.json (default: the bundled weights)")
    parser.add_argument("--protocol", choices=PROTOCOLS, action="append", default=None,
                        help="protocol to run, repeatable: autopet_iv and autopet_v are the "
                        "organisers' own, quirks included; autopet_v_petseg is autoPET V "
                        "without the empty-error quirk (default: autopet_iv and autopet_v)")
    parser.add_argument("--seed", type=int, default=EVALUATION_SEED,
                        help=f"autoPET IV click seed (default {EVALUATION_SEED}, the "
                        "organisers'; the scribbles' seed is fixed at 42, as theirs)")
    parser.add_argument("--scribble-shape", choices=SCRIBBLE_SHAPES, default=None,
                        help="autoPET V scribble shape of every case (default: the cases take "
                        "centerline, random and boundary in turn, a third each)")
    parser.add_argument("--centre-offset", type=int, default=None, metavar="VOXELS",
                        help="the organisers' optional random offset of the autoPET IV centre "
                        "clicks (default: none, as in their evaluation)")
    parser.add_argument("--edge-offset", type=int, default=None, metavar="VOXELS",
                        help="the same for the fill-in clicks (default: none)")
    parser.add_argument("--rule-only", action="store_true",
                        help="run the network once per case without clicks and honour the "
                        "clicks by the click rule alone (how automatic weights always run; "
                        "measures the rule without the click-aware network)")
    parser.add_argument("--config", type=Path, default=None, metavar="JSON",
                        help="inference settings JSON (default: resources/inference.json)")
    parser.add_argument("--mode", choices=("reference", "fast"), default=None,
                        help="engine mode (default: the config's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def run(args: argparse.Namespace) -> int:
    """Load the ensemble, run the protocols, print the Markdown table."""
    from petseg.checkpoint import find_weights_dir
    from petseg.commands.predict import DEFAULT_CONFIG, REPOSITORY
    from petseg.evaluation.interactive import (
        DEFAULT_PROTOCOLS,
        RuleOnAutomatic,
        evaluate_interactive,
        markdown_table,
    )
    from petseg.inference.predictor import Predictor
    from petseg.interactive.session import SessionSegmenter
    from petseg.training.calibration import inference_config

    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    weights = args.weights or find_weights_dir([Path.cwd() / "weights", REPOSITORY / "weights"])
    predictor = Predictor.from_weights_dir(weights, inference_config(config_path, args.mode),
                                           device=args.device)
    # one session per case: preprocessed and run once, each later step an update
    segment = SessionSegmenter(predictor)
    if args.rule_only:  # the network once a case without clicks, then the click rule alone
        segment = RuleOnAutomatic(lambda pet, ct: predictor.predict(pet, ct).mask)
    summary = evaluate_interactive(args.data, segment, args.out,
                                   protocols=tuple(args.protocol or DEFAULT_PROTOCOLS),
                                   seed=args.seed, shape=args.scribble_shape, label=str(weights),
                                   centre_offset=args.centre_offset,
                                   edge_offset=args.edge_offset)
    print(markdown_table(summary), end="")
    logger.info("wrote %s", args.out)
    return 0
