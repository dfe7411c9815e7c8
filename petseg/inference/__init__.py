"""Inference: from a prepared case to the ensemble's lesion mask, one stage per module.

- `plan`: window arithmetic (window starts, the fast window, `make_plan`, the
  out-of-memory fallback ladder); pure.
- `memory`: activation cost per voxel (measured) and the memory budget.
- `engine`: running a plan with every fold on each window batch (`run_ensemble`).
- `postprocessing`: back to the PET grid, threshold, small-component removal.
- `predictor`: `Predictor`, the fold ensemble predicting cases.
"""

from petseg.inference.engine import (
    EngineResult,
    network_probabilities,
    normalized_weights,
    run_ensemble,
    sliding_window_probability,
)
from petseg.inference.predictor import Prediction, Predictor

__all__ = [
    "EngineResult",
    "Prediction",
    "Predictor",
    "network_probabilities",
    "normalized_weights",
    "run_ensemble",
    "sliding_window_probability",
]
