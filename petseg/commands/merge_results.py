"""`petseg merge-results`: join the results files of the parts of a split run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = ("join the results.part-K-of-N.json of `petseg predict --num-parts N --part-id K` into "
        "results.json and name the missing parts and cases")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("output", type=Path, metavar="OUT",
                        help="the parts' common --output folder")
    parser.add_argument("--input", type=Path, default=None, metavar="IN",
                        help="the parts' common --input folder: name every case no part "
                             "reported (and give it an entry saying which part to rerun)")


def run(args: argparse.Namespace) -> int:
    """Merge; exit code 1 when a part or a case is missing."""
    from petseg.io.cases import find_cases
    from petseg.io.images import write_json
    from petseg.io.outputs import RESULTS_NAME
    from petseg.runs.parts import merge_parts

    cases = find_cases(args.input) if args.input is not None else None
    merged = merge_parts(args.output, cases)
    path = write_json(merged.entries, args.output / RESULTS_NAME)
    failed = [entry["name"] for entry in merged.entries if entry["error_messages"]]
    log.info("%d case(s) from %d of %d part(s) -> %s (%d with an error)", len(merged.entries),
             merged.num_parts - len(merged.missing_parts), merged.num_parts, path, len(failed))
    for part_id in merged.missing_parts:
        log.error("part %d of %d: results.part-%d-of-%d.json missing; run that part "
                  "(--num-parts %d --part-id %d)", part_id, merged.num_parts, part_id,
                  merged.num_parts, merged.num_parts, part_id)
    if merged.missing_cases:
        log.error("%d case(s) without a result: %s", len(merged.missing_cases),
                  ", ".join(merged.missing_cases))
    return 1 if merged.missing_parts or merged.missing_cases else 0
