"""The main job on a bundled default: a synthetic whole-body case through the ensemble.

Generates a seeded phantom in the grand-challenge layout, segments it with the same
`petseg predict` code path, scores the mask against the phantom's truth with the
challenge metrics, and writes a PET MIP picture with truth and prediction outlined.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import SimpleITK as sitk

from petseg.config import InferenceConfig
from petseg.evaluation.metrics import CaseMetrics, case_metrics
from petseg.inference.predictor import Predictor
from petseg.io.cases import find_cases
from petseg.io.images import read_image
from petseg.io.outputs import MASK_FOLDER
from petseg.phantom import generate_case, preview_png, write_challenge_case
from petseg.runs import predict_folder

CASE_NAME = "case"


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Paths written by the demo and the case's metrics."""

    input_dir: Path
    mask: Path
    picture: Path
    extras_dir: Path
    metrics: CaseMetrics
    cohort: str


def run_demo(out_dir: str | Path, weights_dir: str | Path, seed: int, size: str = "full",
             cohort: str | None = "LYMPHOMA", config: InferenceConfig | None = None,
             device: str = "auto") -> DemoResult:
    """Phantom -> predict -> evaluate -> picture, all under `out_dir`.

    Args:
        out_dir: output folder (created): `input/`, `prediction/`, `extras/`, `mip.png`.
        weights_dir: folder with the fold checkpoints and `manifest.json`.
        seed: phantom seed.
        size: phantom size, "full" (400 x 400 x N PET) or "small".
        cohort: phantom cohort (None: drawn from the seed).
        config: inference settings (default: the paper's).
        device: "auto", "cpu" or "cuda".
    """
    out_dir = Path(out_dir)
    case = generate_case(seed, size=size, cohort=cohort)
    paths = write_challenge_case(case, out_dir / "input", CASE_NAME)
    predictor = Predictor.from_weights_dir(weights_dir, config, device=device)
    prediction_dir = out_dir / "prediction"
    extras_dir = out_dir / "extras"
    predict_folder(find_cases(paths["pet"].parents[2]), prediction_dir, predictor,
                   extras_dir=extras_dir)
    mask_path = prediction_dir.joinpath(*MASK_FOLDER, f"{paths['pet'].name}")
    mask = read_image(mask_path)
    truth = read_image(paths["truth"])
    metrics = case_metrics(sitk.GetArrayViewFromImage(truth), sitk.GetArrayViewFromImage(mask),
                           truth.GetSpacing())
    picture = preview_png(case.pet, truth, case.ctres, out_dir / "mip.png", pred=mask)
    return DemoResult(paths["pet"].parents[2], mask_path, picture, extras_dir, metrics,
                      case.cohort)


def summary_lines(result: DemoResult) -> list[str]:
    """Human-readable summary of a demo run."""
    m = result.metrics
    return [
        f"phantom case ({result.cohort}): {result.input_dir}",
        f"lesion mask: {result.mask}",
        f"DSC {m.dsc:.3f}   FPV {m.fpv_ml:.2f} ml   FNV {m.fnv_ml:.2f} ml",
        f"lesions: {m.n_true_lesions} true, {m.detected} found, {m.missed} missed, "
        f"{m.fp_lesions} false-positive component(s)",
        f"TMTV: truth {m.tmtv_true_ml:.1f} ml, predicted {m.tmtv_pred_ml:.1f} ml",
        f"picture (PET MIP, truth red, prediction blue): {result.picture}",
        f"lesion report and uncertainty: {result.extras_dir}",
    ]
