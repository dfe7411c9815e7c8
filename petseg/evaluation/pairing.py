"""Evaluate folders of predicted masks against ground truth: pairing and per-case rows.

The rows are summarised per cohort and ranked in `petseg.evaluation.scoring`, printed
and written by `petseg.evaluation.tables`; cohorts come from the clinical CSV through
`petseg.evaluation.metadata`.

Case names (how a prediction pairs with its truth):

- A file's case name is its name without the image suffix (`PETCT_0af7ffe12a_08-12-2005.mha`
  -> `PETCT_0af7ffe12a_08-12-2005`).
- Files named only by their content (`SEG`, `PRED`, `GT`, `LABEL`, `MASK`, ...) take the
  names of the folders between the search root and the file, joined by `_`: the autoPET
  layout `PETCT_<id>/<date>/SEG.nii.gz` gives `PETCT_<id>_<date>`.
- Challenge outputs `.../images/automated-petct-lesion-segmentation/<uuid>.mha` take the
  folders above `images` (joined by `_`) when there are any, else the uuid. When a tree
  holds such folders, only the files inside them are predictions.
- Input images of the autoPET layout (`SUV`, `CTres`, `CT`, `PET`) and hidden files are
  ignored. Folders are searched recursively; two files with one case name are an error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.diagnoses import UNKNOWN
from petseg.errors import PetsegError
from petseg.evaluation.metadata import Metadata, read_metadata
from petseg.evaluation.metrics import CaseMetrics, case_metrics
from petseg.io.geometry import grid_difference
from petseg.io.images import image_stem, image_suffix, read_image

logger = logging.getLogger(__name__)

CHALLENGE_OUTPUT_DIR = "automated-petct-lesion-segmentation"
"""Folder (under `images/`) where a grand-challenge algorithm writes its mask."""

CONTENT_STEMS: frozenset[str] = frozenset(
    {"seg", "pred", "prediction", "gt", "truth", "label", "labels", "mask", "segmentation"}
)
"""File stems (lower case) that name the content, not the case: named by their folders."""

INPUT_IMAGE_STEMS: frozenset[str] = frozenset({"suv", "ctres", "ct", "pet"})
"""File stems (lower case) of autoPET input images, never masks: skipped."""

# ------------------------------------------------------------------------------ pairing


def case_name(path: str | Path, root: str | Path) -> str:
    """The case name of mask file `path` found under folder `root` (rules in the module doc)."""
    path, root = Path(path), Path(root)
    folders = path.relative_to(root).parts[:-1]
    stem = image_stem(path)
    if len(folders) >= 2 and folders[-1] == CHALLENGE_OUTPUT_DIR and folders[-2] == "images":
        above = folders[:-2]
        return "_".join(above) if above else stem
    if stem.lower() in CONTENT_STEMS and folders:
        return "_".join(folders)
    return stem


def find_masks(root: str | Path) -> dict[str, Path]:
    """Case name -> mask file for every image file under `root` (recursive, sorted).

    Raises:
        PetsegError: `root` is not a folder, or two files share a case name.
    """
    root = Path(root)
    if not root.is_dir():
        raise PetsegError(f"{root}: folder not found; pass an existing folder of masks")
    files = [
        p for p in sorted(root.rglob("*"))
        if p.is_file() and image_suffix(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and image_stem(p).lower() not in INPUT_IMAGE_STEMS
    ]
    challenge = [p for p in files if p.parent.name == CHALLENGE_OUTPUT_DIR]
    if challenge:
        files = challenge
    found: dict[str, Path] = {}
    for path in files:
        name = case_name(path, root)
        if name in found:
            raise PetsegError(
                f"{path}: case name '{name}' is already taken by {found[name]}; "
                "keep one mask per case in the folder"
            )
        found[name] = path
    return found


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Prediction and truth files paired by case name.

    Attributes:
        pairs: (case name, prediction file, truth file), sorted by case name.
        unpaired_predictions: prediction files whose case has no truth.
        unpaired_truths: truth files whose case has no prediction.
    """

    pairs: tuple[tuple[str, Path, Path], ...]
    unpaired_predictions: tuple[Path, ...]
    unpaired_truths: tuple[Path, ...]


def pair_cases(pred_dir: str | Path, truth_dir: str | Path) -> Pairing:
    """Pair the masks of two folders by case name.

    Raises:
        PetsegError: a folder is missing, or no case pairs at all.
    """
    preds = find_masks(pred_dir)
    truths = find_masks(truth_dir)
    names = sorted(preds.keys() & truths.keys())
    if not names:
        example = next(iter(truths), "PETCT_<id>_<date>")
        raise PetsegError(
            f"{pred_dir}: no prediction pairs with a truth mask in {truth_dir} "
            f"({len(preds)} predictions, {len(truths)} truths); name each prediction "
            f"after its case, e.g. '{example}.nii.gz'"
        )
    return Pairing(
        pairs=tuple((n, preds[n], truths[n]) for n in names),
        unpaired_predictions=tuple(preds[n] for n in sorted(preds.keys() - truths.keys())),
        unpaired_truths=tuple(truths[n] for n in sorted(truths.keys() - preds.keys())),
    )


# ------------------------------------------------------------------------ one case


def _mask_array(image: sitk.Image, path: Path) -> np.ndarray:
    """`[z, y, x]` boolean mask of a 0/1 image; other values raise `PetsegError`."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == bool:
        return array.copy()
    if array.size:
        low, high = array.min(), array.max()
        not_binary = low < 0 or high > 1
        if not not_binary and np.issubdtype(array.dtype, np.floating):
            not_binary = bool(np.any((array != 0) & (array != 1)))
        if not_binary:
            raise PetsegError(
                f"{path}: holds values other than 0 and 1 (range {low:g}..{high:g}); "
                "write a binary 0/1 lesion mask"
            )
    return array != 0


def load_pair(
    pred_path: str | Path, truth_path: str | Path, resample_pred: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a truth/prediction pair onto one grid.

    Args:
        pred_path: predicted 0/1 mask.
        truth_path: ground-truth 0/1 mask.
        resample_pred: put the prediction onto the truth grid (nearest neighbour) when
            the grids differ, instead of refusing.

    Returns:
        (truth `[z, y, x]` bool, prediction `[z, y, x]` bool, spacing mm (x, y, z)).

    Raises:
        PetsegError: unreadable file, non-binary values, or grids that differ (without
            `resample_pred`).
    """
    pred_path, truth_path = Path(pred_path), Path(truth_path)
    truth_image = read_image(truth_path)
    pred_image = read_image(pred_path)
    difference = grid_difference(pred_image, truth_image)
    if difference is not None:
        if not resample_pred:
            raise PetsegError(
                f"{pred_path}: grid differs from truth {truth_path}: {difference}; "
                "write the prediction on the truth grid or pass --resample-pred"
            )
        logger.debug("%s: resampled onto the truth grid (%s)", pred_path, difference)
        pred_image = sitk.Resample(
            pred_image, truth_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
            pred_image.GetPixelID(),
        )
    spacing = tuple(float(s) for s in truth_image.GetSpacing())
    return _mask_array(truth_image, truth_path), _mask_array(pred_image, pred_path), spacing


def evaluate_case(
    pred_path: str | Path, truth_path: str | Path, resample_pred: bool = False
) -> CaseMetrics:
    """`CaseMetrics` of one prediction file against its truth file (see `load_pair`)."""
    truth, pred, spacing = load_pair(pred_path, truth_path, resample_pred)
    return case_metrics(truth, pred, spacing)


# ------------------------------------------------------------------------------ folders


def evaluate_pairs(
    pairs: Iterable[tuple[str, Path, Path]],
    metadata: Metadata | None = None,
    resample_pred: bool = False,
) -> list[dict[str, Any]]:
    """One row per (case, prediction, truth): case, cohort, the `CaseMetrics` fields, files.

    `cohort` is the metadata diagnosis (`UNKNOWN` if unmatched), '' without metadata.
    """
    from tqdm import tqdm

    pairs = list(pairs)
    rows = []
    for case, pred_path, truth_path in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        metrics = evaluate_case(pred_path, truth_path, resample_pred)
        cohort = metadata.cohort_of(case) if metadata is not None else ""
        rows.append({"case": case, "cohort": cohort, **metrics.as_dict(),
                     "pred_file": str(pred_path), "truth_file": str(truth_path)})
    if metadata is not None:
        unknown = [r["case"] for r in rows if r["cohort"] == UNKNOWN]
        if unknown:
            logger.warning("%s: no diagnosis for %d case(s), e.g. %s", metadata.path,
                           len(unknown), ", ".join(unknown[:3]))
    return rows


def evaluate_folder(
    pred_dir: str | Path,
    truth_dir: str | Path,
    metadata_csv: str | Path | None = None,
    resample_pred: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every prediction in `pred_dir` that pairs with a truth in `truth_dir`.

    Unpaired files are logged as warnings. Rows as `evaluate_pairs`.
    """
    pairing = pair_cases(pred_dir, truth_dir)
    log_unpaired(pairing, str(pred_dir))
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else None
    return evaluate_pairs(pairing.pairs, metadata, resample_pred)


def log_unpaired(pairing: Pairing, label: str) -> None:
    """Warn about files that found no partner (up to 5 names each)."""
    for files, what in (
        (pairing.unpaired_predictions, "prediction(s) without a truth mask"),
        (pairing.unpaired_truths, "truth case(s) without a prediction"),
    ):
        if files:
            shown = ", ".join(str(f) for f in files[:5])
            more = f" and {len(files) - 5} more" if len(files) > 5 else ""
            logger.warning("%s: %d %s: %s%s", label, len(files), what, shown, more)
