"""`petseg evaluate`: challenge metrics of prediction folders against ground truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "DSC, FPV, FNV and lesion detection of predicted masks against ground truth"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--pred", type=Path, action="append", required=True, metavar="DIR",
        help="folder of predicted 0/1 masks (searched recursively); repeat to rank methods",
    )
    parser.add_argument("--truth", type=Path, required=True, metavar="DIR",
                        help="folder of ground-truth masks, e.g. the autoPET NIfTI root")
    parser.add_argument("--metadata", type=Path, metavar="CSV",
                        help="clinical metadata CSV with a diagnosis column (cohort summary)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write per_case.csv and summary.json here")
    parser.add_argument("--resample-pred", action="store_true",
                        help="resample predictions on another grid onto the truth (nearest)")


def _method_names(pred_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [p.resolve().name or str(p) for p in pred_dirs]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(pred_dirs, names, strict=True)]


def run(args: argparse.Namespace) -> int:
    """Evaluate every --pred folder, print the tables, write the outputs."""
    from petseg.errors import PetsegError
    from petseg.evaluation import pairing as ev
    from petseg.evaluation.metadata import read_metadata
    from petseg.evaluation.scoring import ranking, summarize
    from petseg.evaluation.tables import markdown_table, ranking_markdown, write_per_case_csv
    from petseg.io.images import write_json

    names = _method_names(list(args.pred))
    if len(set(names)) != len(names):
        raise PetsegError(f"{args.pred[0]}: the same --pred folder is given twice; drop one")
    metadata = read_metadata(args.metadata) if args.metadata else None
    per_method: dict[str, list[dict]] = {}
    methods: dict[str, dict] = {}
    for name, pred_dir in zip(names, args.pred, strict=True):
        pairing = ev.pair_cases(pred_dir, args.truth)
        ev.log_unpaired(pairing, name)
        rows = ev.evaluate_pairs(pairing.pairs, metadata, args.resample_pred)
        for row in rows:
            row["method"] = name
        per_method[name] = rows
        methods[name] = {
            "pred_dir": str(pred_dir),
            "n_paired": len(rows),
            "unpaired_predictions": [str(p) for p in pairing.unpaired_predictions],
            "unpaired_truths": [str(p) for p in pairing.unpaired_truths],
            "summary": summarize(rows),
        }
    ranks = ranking(per_method) if len(per_method) > 1 else None

    for name, info in methods.items():
        unpaired = len(info["unpaired_predictions"]) + len(info["unpaired_truths"])
        note = f", {unpaired} unpaired file(s) (see warnings)" if unpaired else ""
        print(f"## {name}: {info['n_paired']} case(s){note}\n")
        print(markdown_table(info["summary"]) + "\n")
    if ranks is not None:
        print("## Ranking: 0.5 rank(DSC) + 0.25 rank(FPV) + 0.25 rank(FNV)\n")
        print(ranking_markdown(ranks) + "\n")

    if args.out is not None:
        all_rows = [row for rows in per_method.values() for row in rows]
        csv_path = write_per_case_csv(all_rows, args.out / "per_case.csv")
        json_path = write_json({
            "truth_dir": str(args.truth),
            "metadata": str(args.metadata) if args.metadata else None,
            "resample_pred": bool(args.resample_pred),
            "methods": methods,
            "ranking": ranks,
        }, args.out / "summary.json", strict=False)  # NaN statistics (no cases) -> null
        logger.info("wrote %s and %s", csv_path, json_path)
    return 0
