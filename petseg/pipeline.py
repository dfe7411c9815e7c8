"""One case end to end, and a folder of cases: wires the stages, holds no logic of its own.

    read_case -> preprocess_case -> sliding_window_probability (ensemble)
      -> probability_on_pet_grid -> probability_to_mask -> write_image (atomic)

Outputs (grand-challenge contract, evalutils-compatible `results.json`):
    OUTPUT/images/automated-petct-lesion-segmentation/<name>.mha   uint8 0/1, PET grid
    OUTPUT/results.json   one entry per case: inputs, outputs, error_messages
    OUTPUT/dicom-seg/<name>.dcm   DICOM input only: the mask as a DICOM SEG (`dicom_seg`)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from petseg.checkpoint import MANIFEST_NAME, calibrated_threshold, dsc_weights, load_ensemble
from petseg.config import InferenceConfig, ModelConfig
from petseg.engine import body_mask_for_windows, check_settings
from petseg.errors import PetsegError
from petseg.inference import (
    Network,
    network_probabilities,
    normalized_weights,
    resolve_device,
    sliding_window_probability,
    weighted_mean,
)
from petseg.io import Case, CaseFiles, CaseList, read_case, write_image, write_json
from petseg.model import build_network, size_divisor
from petseg.postprocessing import probability_on_pet_grid, probability_to_mask
from petseg.preprocessing import preprocess_case

log = logging.getLogger(__name__)

MASK_FOLDER = ("images", "automated-petct-lesion-segmentation")
PROBABILITY_FOLDER = ("probabilities",)
RESULTS_NAME = "results.json"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A case's result on the PET grid.

    Attributes:
        mask: uint8 0/1, exactly the PET's size/spacing/origin/direction.
        probability: float32 ensemble lesion probability on the PET grid, if requested.
        fold_probabilities: float32 per-network probabilities on the PET grid, if requested.
    """

    mask: sitk.Image
    probability: sitk.Image | None = None
    fold_probabilities: list[sitk.Image] | None = None


class Predictor:
    """The fold ensemble, loaded once, predicting many cases.

    Args:
        weights_dir: folder with fold checkpoints and `manifest.json`.
        config: sliding-window/ensemble settings (default: the paper's).
        device: "auto", "cpu" or "cuda".
        allow_missing: run on the folds present when some are missing (with a warning).
        min_component_ml: remove predicted components smaller than this (0 = off).
    """

    def __init__(
        self,
        weights_dir: str | Path,
        config: InferenceConfig | None = None,
        device: str | torch.device = "auto",
        allow_missing: bool = False,
        min_component_ml: float = 0.0,
    ) -> None:
        config = config or InferenceConfig()
        checkpoints = load_ensemble(weights_dir, allow_missing=allow_missing)
        if config.threshold is None:
            calibrated = calibrated_threshold(weights_dir, config.ensemble)
            config = dataclasses.replace(config, threshold=config.mask_threshold(calibrated))
        model_config = checkpoints[0].model_config
        networks = []
        for checkpoint in checkpoints:
            network = build_network(model_config.network)
            network.load_state_dict(checkpoint.state_dict, strict=True)
            networks.append(network)
        weights = dsc_weights(checkpoints) if config.ensemble == "weighted" else None
        self._setup(networks, model_config, config, weights, device, min_component_ml)
        self.folds = [str(c.meta["fold"]) for c in checkpoints]
        log.info("ensemble of %d fold(s) %s from %s on %s (%s average, threshold %.2f)",
                 len(networks), ", ".join(self.folds), weights_dir, self.device,
                 config.ensemble, self.config.threshold)

    @classmethod
    def from_networks(
        cls,
        networks: Sequence[Network],
        model_config: ModelConfig,
        config: InferenceConfig | None = None,
        weights: Sequence[float] | None = None,
        device: str | torch.device = "auto",
        min_component_ml: float = 0.0,
    ) -> Predictor:
        """A predictor over given networks (`weights` None = plain mean)."""
        predictor = cls.__new__(cls)
        predictor._setup(list(networks), model_config, config or InferenceConfig(), weights,
                         device, min_component_ml)
        predictor.folds = [f"network_{i}" for i in range(len(networks))]
        return predictor

    def _setup(self, networks: list[Network], model_config: ModelConfig,
               config: InferenceConfig, weights: Sequence[float] | None,
               device: str | torch.device, min_component_ml: float) -> None:
        check_settings(config)
        config = dataclasses.replace(config, threshold=config.mask_threshold())
        divisor = size_divisor(model_config.network)
        if any(int(s) % divisor for s in config.roi_size):
            raise PetsegError(
                f"roi_size {tuple(config.roi_size)}: must be multiples of {divisor} for this "
                "network; fix the inference config"
            )
        self.device = resolve_device(device)
        self.networks = [n.to(self.device).eval() if isinstance(n, torch.nn.Module) else n
                         for n in networks]
        self.model_config = model_config
        self.config = config
        self.weights = normalized_weights(len(networks), weights)
        self.min_component_ml = float(min_component_ml)

    def predict(self, pet: sitk.Image, ct: sitk.Image, probability: bool = False,
                fold_probabilities: bool = False) -> Prediction:
        """Mask (and on request probabilities) on the PET grid for one PET (SUV) + CT (HU)."""
        started = time.perf_counter()
        case = preprocess_case(pet, ct, self.model_config.preprocessing)
        config = self.config
        if config.time_budget_s is not None:  # what preprocessing left of the case's budget
            left = max(config.time_budget_s - (time.perf_counter() - started), 1e-3)
            config = dataclasses.replace(config, time_budget_s=left)
        body = (body_mask_for_windows(case.image, self.model_config.preprocessing)
                if config.skip_empty_windows else None)
        folds = None
        if fold_probabilities:
            maps = [p.cpu() for p in network_probabilities(self.networks, case.image,
                                                           config, self.device, body)]
            ensemble = weighted_mean(maps, self.weights)
            folds = [probability_on_pet_grid(p.numpy(), case.grid, case.crop_box,
                                             case.pet_geometry) for p in maps]
        else:
            ensemble = sliding_window_probability(self.networks, case.image, config,
                                                  self.weights, self.device, body)
        on_pet = probability_on_pet_grid(ensemble.numpy(), case.grid, case.crop_box,
                                         case.pet_geometry)
        mask = probability_to_mask(on_pet, case.pet_geometry, self.config.threshold,
                                   self.min_component_ml)
        as_image = case.pet_geometry.image_from_array
        return Prediction(
            mask=mask,
            probability=as_image(on_pet) if probability else None,
            fold_probabilities=[as_image(f) for f in folds] if folds is not None else None,
        )

    def predict_case(self, pet: sitk.Image, ct: sitk.Image) -> sitk.Image:
        """uint8 0/1 lesion mask with exactly the PET's geometry."""
        return self.predict(pet, ct).mask


def find_weights_dir(candidates: Sequence[str | Path]) -> Path:
    """First candidate folder holding `manifest.json` (itself or one subfolder level down).

    Grand-challenge unpacks an uploaded model tarball into `/opt/ml/model`, possibly inside
    one folder; the image's own `weights/` is the usual fallback.
    """
    for candidate in map(Path, candidates):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
        if candidate.is_dir():
            nested = sorted(p.parent for p in candidate.glob(f"*/{MANIFEST_NAME}"))
            if len(nested) == 1:
                return nested[0]
    looked = ", ".join(str(c) for c in candidates)
    raise PetsegError(f"no {MANIFEST_NAME} found in {looked}; pass --weights DIR")


def _entry(files: CaseFiles, output: Path | None, error: str | None,
           seconds: float, lesion_ml: float | None) -> dict[str, Any]:
    """One results.json entry (evalutils' layout plus name, timing and lesion volume)."""
    dicom = {} if files.dicom is None else {"dicom": files.dicom.summary()}
    return {
        "name": files.name,
        "inputs": files.dicom.inputs() if files.dicom is not None else [
            {"type": "metaio_image", "filename": str(p)} for p in (files.pet, files.ct)
            if p is not None],
        "outputs": [] if output is None else [{"type": "metaio_image", "filename": str(output)}],
        "error_messages": [] if error is None else [error],
        "seconds": round(seconds, 3),
        "lesion_volume_ml": lesion_ml,
        **dicom,
    }


def _extras(files: CaseFiles, pet: sitk.Image, prediction: Prediction,
            extras_dir: Path) -> dict[str, Any]:
    """Write one case's clinical extras; {"extras": paths} or {"extras_error": message}.

    A DICOM study's report keeps its patient and study identifiers."""
    from petseg.report import write_extras

    name = files.name
    try:
        paths = write_extras(name, pet, prediction.mask, extras_dir,
                             fold_probabilities=prediction.fold_probabilities,
                             identifiers=files.dicom.identifiers() if files.dicom else None)
    except Exception as exc:  # the mask is written; extras must not fail the case
        message = str(exc) if isinstance(exc, PetsegError) else f"{type(exc).__name__}: {exc}"
        log.warning("case %s: extras not written: %s", name, message)
        return {"extras_error": message}
    return {"extras": {kind: str(path) for kind, path in paths.items()}}


def predict_cases(
    cases: CaseList,
    output_dir: str | Path,
    predictor: Predictor,
    save_probability: bool = False,
    extras_dir: str | Path | None = None,
    dicom_seg: bool = True,
    seg_uid_seed: str | None = None,
) -> list[dict[str, Any]]:
    """Predict every case and write masks + `results.json` under `output_dir`.

    With `cases.single` any error propagates (nothing is written); otherwise a failing
    case is recorded with its error and the others still run. With `extras_dir`, each
    case's lesion report, MIP picture and (with two or more folds) uncertainty map go
    there (`petseg.report.write_extras`); a failure there is logged and recorded in the
    entry's `extras_error`, never fails the case. A DICOM study (`files.dicom`) also gets
    its mask as a DICOM SEG under `OUTPUT/dicom-seg/` unless `dicom_seg` is False
    (`petseg.dicom_seg`; `seg_uid_seed` makes its UIDs reproducible). Returns the entries.
    """
    output_dir = Path(output_dir)
    mask_dir = output_dir.joinpath(*MASK_FOLDER)
    results = []
    fill_hu = predictor.model_config.preprocessing.ct_fill_hu
    # one case ahead: the next case is read (SimpleITK releases the GIL) while this one runs
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="petseg-read") as prefetch:
        reads: list[Future[Case] | None] = [
            prefetch.submit(read_case, files, fill_hu) if index == 0 else None
            for index, files in enumerate(cases.cases)
        ]
        for index, files in enumerate(cases.cases):
            if index + 1 < len(cases.cases):
                reads[index + 1] = prefetch.submit(read_case, cases.cases[index + 1], fill_hu)
            start = time.perf_counter()
            reading, reads[index] = reads[index], None
            try:
                case = reading.result()  # type: ignore[union-attr]
                prediction = predictor.predict(
                    case.pet, case.ct, probability=save_probability,
                    fold_probabilities=extras_dir is not None and len(predictor.networks) > 1)
                seg, seg_path = None, None
                if files.dicom is not None and dicom_seg:
                    from petseg.dicom_seg import build_dicom_seg

                    seg = build_dicom_seg(files.dicom, prediction.mask, seg_uid_seed, {
                        "folds": ",".join(predictor.folds), "ensemble": predictor.config.ensemble,
                        "threshold": f"{predictor.config.threshold:g}"})
                target = write_image(prediction.mask, mask_dir / f"{files.name}.mha")
                if seg is not None:
                    from petseg.dicom_seg import SEG_FOLDER, save_dicom_seg

                    seg_path = save_dicom_seg(seg, output_dir.joinpath(*SEG_FOLDER,
                                                                  f"{files.name}.dcm"))
                if prediction.probability is not None:
                    write_image(prediction.probability,
                                output_dir.joinpath(*PROBABILITY_FOLDER, f"{files.name}.mha"))
            except Exception as exc:
                if cases.single:
                    raise
                message = (str(exc) if isinstance(exc, PetsegError)
                           else f"{type(exc).__name__}: {exc}")
                log.error("case %s failed: %s", files.name, message,
                          exc_info=not isinstance(exc, PetsegError))
                results.append(_entry(files, None, message, time.perf_counter() - start, None))
                continue
            lesion_ml = float(sitk.GetArrayViewFromImage(prediction.mask).sum()
                              * np.prod(prediction.mask.GetSpacing()) / 1000.0)
            seconds = time.perf_counter() - start
            log.info("case %s: %.1f ml of lesion, %.1f s -> %s", files.name, lesion_ml, seconds,
                     target)
            results.append(_entry(files, target, None, seconds, round(lesion_ml, 3)))
            if seg_path is not None:
                results[-1]["outputs"].append({"type": "dicom_seg", "filename": str(seg_path)})
            if extras_dir is not None:
                results[-1].update(_extras(files, case.pet, prediction, Path(extras_dir)))
            del case
    write_json(results, output_dir / RESULTS_NAME)
    return results
