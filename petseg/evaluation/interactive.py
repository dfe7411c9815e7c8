"""The organisers' interactive protocols on cases with truth, quirks included: autoPET IV
clicks scored by DSC, FPV and FNV, autoPET V scribbles scored by Dice and DMM.

- "autopet_iv": 11 steps; step k (0..10) gives the first k tumour and the first k background
  clicks simulated once from the truth (`petseg.interactive.simulate.autopet_iv_clicks`,
  the organisers' `simulate_clicks` with seed 42), scored by their evaluation script
  (`petseg.evaluation.organisers.autopet_iv_scores`: DSC and FNV NaN for a lesion-free case,
  so it counts only in the FPV).
- "autopet_v": their `interactive_loop.py` with 6 iterations (0..5): iteration 0 without
  scribbles; each later one adds the scribble of `organisers_scribble` on the previous
  mask, all scribbles so far given as points; scored by Dice (1 for an empty mask of a
  lesion-free case, else 0 there) and DMM (lesion-level F1, NaN for a lesion-free case).
  Their quirks: a lesion-free case gets no scribbles; an iteration whose under- or
  over-segmentation is empty fails and scores Dice 0 and DMM 0 without a new mask, and as
  the mask then stays, so do all later iterations (`StepResult.failed`).
- "autopet_v_petseg": the same without the empty-error quirk: the scribble goes on the
  other error, a lesion-free case gets background scribbles on its false positives, and an
  iteration without any error keeps the mask.

The scribble shape is one per case (the organisers give each shape to a third of the
cases): the cases in order take centerline, random, boundary in turn unless one shape is
named. The area under a curve is the trapezoid rule over the step index with unit spacing
(theirs), per case; the summary averages the finite values of each column (NaN left out).
Arrays are numpy `[z, y, x]` from SimpleITK; clicks (`Clicks`) carry PET voxel indices in
(x, y, z) order.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.evaluation.organisers import autopet_iv_scores, autopet_v_dice, lesion_f1
from petseg.interactive.clicks import Clicks
from petseg.interactive.scribbles import SCRIBBLE_SHAPES, organisers_scribble
from petseg.interactive.simulate import CLICK_BUDGET, EVALUATION_SEED, autopet_iv_clicks, zyx_to_xyz

Segmenter = Callable[[sitk.Image, sitk.Image, Clicks | None], sitk.Image]
"""(PET in SUV, CT in HU, clicks or None) -> uint8 mask on the PET grid."""

PROTOCOLS: tuple[str, ...] = ("autopet_iv", "autopet_v", "autopet_v_petseg")
DEFAULT_PROTOCOLS: tuple[str, ...] = ("autopet_iv", "autopet_v")
"""The two organisers' protocols, run when none is named."""
V_STEPS = 6
"""Iterations of the autoPET V protocol (the first without scribbles); their loop's
default is 5, their README and evaluation 6."""
METRICS: tuple[str, ...] = ("dsc", "fpv_ml", "fnv_ml", "dmm")
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {
    "autopet_iv": ("dsc", "fpv_ml", "fnv_ml"), "autopet_v": ("dsc", "dmm"),
    "autopet_v_petseg": ("dsc", "dmm")}
"""The organisers' own figures of each protocol."""


@dataclasses.dataclass(frozen=True)
class EvaluationCase:
    """One case with its truth.

    Attributes:
        name: the case's name.
        pet: PET in SUV; ct: CT in HU (any grid).
        truth: bool lesion mask `[z, y, x]` on the PET grid.
    """

    name: str
    pet: sitk.Image
    ct: sitk.Image
    truth: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """PET voxel size, (x, y, z)."""
        return tuple(float(s) for s in self.pet.GetSpacing())  # type: ignore[return-value]

    @functools.cached_property
    def true_lesions(self) -> int:
        """Lesions (18-connected components) of the truth, counted once."""
        from petseg.evaluation.metrics import match_components

        return match_components(self.truth, self.truth).n_true_lesions


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The metrics of one step of one case.

    Attributes:
        protocol: one of `PROTOCOLS`; case: the case's name; step: 0..10 (IV), 0..5 (V).
        tumour_points, background_points: the points the segmenter was given.
        dsc: DSC by the protocol's rule (IV: NaN for a lesion-free case; V: 1 or 0 there).
        fpv_ml, fnv_ml: false-positive/-negative volume (ml) by the autoPET IV rules.
        dmm: lesion-level F1 at IoU >= 0.1 (NaN for a lesion-free case).
        true_lesions: lesions (18-connected components) of the truth.
        failed: a V iteration the organisers' loop fails (an empty error): Dice and DMM
            0, volumes NaN.
        shape: the scribble shape of a V case ("" for IV).
    """

    protocol: str
    case: str
    step: int
    tumour_points: int
    background_points: int
    dsc: float
    fpv_ml: float
    fnv_ml: float
    dmm: float
    true_lesions: int
    failed: bool = False
    shape: str = ""


class RuleOnAutomatic:
    """A `Segmenter` for automatic weights: the network's mask once per case, then the click
    rule (`petseg.interactive.rule.apply_click_rule`) per step. The same masks as
    `InteractiveSession.predict`, whose network output does not depend on the clicks
    when the weights take none, without rerunning the network at every step.

    Args:
        predict: (PET, CT) -> the automatic mask on the PET grid.
    """

    def __init__(self, predict: Callable[[sitk.Image, sitk.Image], sitk.Image]) -> None:
        self.predict = predict
        self._last: tuple[sitk.Image, sitk.Image] | None = None

    def __call__(self, pet: sitk.Image, ct: sitk.Image, clicks: Clicks | None) -> sitk.Image:
        from petseg.interactive.rule import apply_click_rule

        if self._last is None or self._last[0] is not pet:
            self._last = (pet, self.predict(pet, ct))
        mask = self._last[1]
        if not clicks:
            return mask
        corrected = sitk.GetImageFromArray(apply_click_rule(
            sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(pet), clicks,
            pet.GetSpacing()))
        corrected.CopyInformation(mask)
        return corrected


def _score(case: EvaluationCase, protocol: str, step: int, clicks: Clicks,
           mask: sitk.Image | None, shape: str = "") -> tuple[StepResult, np.ndarray | None]:
    """The step's `StepResult` and boolean mask; `mask` None: a failed V iteration."""
    common = dict(protocol=protocol, case=case.name, step=step, shape=shape,
                  tumour_points=len(clicks.tumour), background_points=len(clicks.background),
                  true_lesions=case.true_lesions)
    if mask is None:
        return StepResult(dsc=0.0, fpv_ml=math.nan, fnv_ml=math.nan, dmm=0.0, failed=True,
                          **common), None  # type: ignore[arg-type]
    predicted = sitk.GetArrayFromImage(mask) > 0
    dsc, fpv, fnv = autopet_iv_scores(case.truth, predicted, case.spacing_mm)
    if protocol != "autopet_iv":
        dsc = autopet_v_dice(case.truth, predicted)
    return StepResult(dsc=dsc, fpv_ml=fpv, fnv_ml=fnv, dmm=lesion_f1(case.truth, predicted),
                      **common), predicted  # type: ignore[arg-type]


def autopet_iv_steps(case: EvaluationCase, segment: Segmenter, seed: int = EVALUATION_SEED,
                     budget: int = CLICK_BUDGET, centre_offset: int | None = None,
                     edge_offset: int | None = None) -> list[StepResult]:
    """The `budget + 1` steps of the autoPET IV protocol on one case."""
    pet = sitk.GetArrayViewFromImage(case.pet)
    tumour, background = autopet_iv_clicks(case.truth, pet, seed=seed, budget=budget,
                                           centre_offset=centre_offset,
                                           edge_offset=edge_offset)
    results = []
    for step in range(budget + 1):
        clicks = Clicks(tumour=zyx_to_xyz(tumour[:step]), background=zyx_to_xyz(background[:step]))
        mask = segment(case.pet, case.ct, clicks)
        results.append(_score(case, "autopet_iv", step, clicks, mask)[0])
    return results


def autopet_v_steps(case: EvaluationCase, segment: Segmenter, shape: str = "centerline",
                    steps: int = V_STEPS, empty_error_fails: bool = True) -> list[StepResult]:
    """The `steps` iterations (0..steps-1) of the autoPET V protocol on one case:
    "autopet_v" (the organisers' loop, `empty_error_fails`) or "autopet_v_petseg"."""
    protocol = "autopet_v" if empty_error_fails else "autopet_v_petseg"
    given: dict[str, list[tuple[int, int, int]]] = {"tumour": [], "background": []}
    scribbles = case.truth.any() or not empty_error_fails  # theirs: none without lesions
    results: list[StepResult] = []
    mask: sitk.Image | None = None
    predicted: np.ndarray | None = None
    for step in range(steps):
        found = None
        if step > 0 and scribbles:
            found = organisers_scribble(case.truth, predicted, shape, empty_error_fails)
            if found is not None:
                given[found[0]].extend(found[1])
        clicks = Clicks(tumour=tuple(given["tumour"]), background=tuple(given["background"]))
        failed = step > 0 and scribbles and empty_error_fails and found is None
        if step == 0 or found is not None:
            mask = segment(case.pet, case.ct, clicks)
        result, now = _score(case, protocol, step, clicks, None if failed else mask, shape)
        predicted = predicted if now is None else now
        results.append(result)
    return results


def curve_area(values: Sequence[float]) -> float:
    """Area under `values` over the step index (trapezoid rule, unit spacing); NaN when a
    value is NaN."""
    y = np.asarray(values, float)
    return float(np.sum((y[1:] + y[:-1]) / 2.0)) if y.size > 1 else 0.0


def summarise(results: Sequence[StepResult]) -> list[dict[str, float | int | str]]:
    """Per protocol and step: the mean of each metric over the cases where it is finite
    (IV: DSC and FNV over the cases with lesions, FPV over all; V: Dice over all, DMM over
    the cases with lesions) and the failed iterations; per protocol a row with step "auc":
    the mean of the cases' curve areas."""
    rows: list[dict[str, float | int | str]] = []
    for protocol in PROTOCOLS:
        mine = [r for r in results if r.protocol == protocol]
        if not mine:
            continue
        steps = sorted({r.step for r in mine})
        cases = sorted({r.case for r in mine})
        table = {m: np.array([[getattr(_one(mine, c, s), m) for s in steps] for c in cases])
                 for m in METRICS}
        for index, step in enumerate(steps):
            rows.append({"protocol": protocol, "step": step, "cases": len(cases),
                         **{m: _mean(table[m][:, index]) for m in METRICS},
                         "failed": sum(_one(mine, c, step).failed for c in cases)})
        rows.append({"protocol": protocol, "step": "auc", "cases": len(cases),
                     **{m: _mean([curve_area(curve) for curve in table[m]]) for m in METRICS},
                     "failed": sum(r.failed for r in mine)})
    return rows


def _one(results: Sequence[StepResult], case: str, step: int) -> StepResult:
    return next(r for r in results if r.case == case and r.step == step)


def _mean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the finite values (NaN when none: no case with lesions)."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def write_steps_csv(results: Sequence[StepResult], path: Path) -> Path:
    """One row per protocol, case and step."""
    from petseg.io.images import atomic_path

    fields = [f.name for f in dataclasses.fields(StepResult)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for result in results:
            writer.writerow(dataclasses.asdict(result))
    return path


_COLUMNS = {"dsc": ("DSC", 3), "fpv_ml": ("FPV ml", 2), "fnv_ml": ("FNV ml", 2),
            "dmm": ("DMM (lesion F1)", 3)}


def markdown_table(summary: Sequence[dict[str, float | int | str]]) -> str:
    """The summary as Markdown, a table per protocol with the organisers' figures: autoPET
    IV DSC, FPV ml and FNV ml per step; autoPET V Dice and DMM per iteration and the failed
    iterations; the last row of each the areas under the curves."""
    tables = []
    for protocol in PROTOCOLS:
        rows = [r for r in summary if r["protocol"] == protocol]
        if not rows:
            continue
        metrics = PROTOCOL_METRICS[protocol]
        iv = protocol == "autopet_iv"
        names = [("DSC" if iv else "Dice") if m == "dsc" else _COLUMNS[m][0] for m in metrics]
        extra = [] if iv else ["failed iterations"]
        lines = [f"| protocol | {'step' if iv else 'iteration'} | cases | "
                 + " | ".join([*names, *extra]) + " |",
                 "|---|---|---:|" + "---:|" * (len(names) + len(extra))]
        for row in rows:
            step = "area under curve" if row["step"] == "auc" else str(row["step"])
            cells = [_fmt(row[m], _COLUMNS[m][1]) for m in metrics]
            cells += [] if iv else [str(row["failed"])]
            lines.append(f"| {protocol} | {step} | {row['cases']} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def _fmt(value: float | int | str, digits: int) -> str:
    return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def truth_file(pet: Path) -> Path:
    """The truth mask of a case: `<case>/truth/<pet name>` in the grand-challenge layout (as
    `petseg phantom` writes it), `SEG.*` beside the PET in the autoPET layout.

    Raises:
        PetsegError: neither exists.
    """
    from petseg.errors import PetsegError
    from petseg.io.cases import image_files
    from petseg.io.images import image_stem

    challenge = pet.parents[2] / "truth" / pet.name if len(pet.parents) > 2 else None
    if challenge is not None and challenge.is_file():
        return challenge
    beside = [p for p in image_files(pet.parent) if image_stem(p) == "SEG"]
    if beside:
        return beside[0]
    raise PetsegError(f"{pet}: no truth mask found (looked for {challenge} and SEG beside the "
                      "PET); add the case's lesion mask")


def evaluation_cases(folder: str | Path) -> Iterator[EvaluationCase]:
    """Each case of `folder` (any layout `petseg predict` reads) with its truth, read one at
    a time (whole-body volumes are large)."""
    from petseg.errors import PetsegError
    from petseg.io.cases import find_cases, read_case
    from petseg.io.images import read_image

    found = find_cases(folder)
    for files in found.cases:
        if files.error is not None or files.pet is None:
            raise PetsegError(files.error or f"{folder}: case {files.name} has no PET")
        case = read_case(files)
        truth_path = truth_file(files.pet)
        truth = read_image(truth_path)
        if truth.GetSize() != case.pet.GetSize():
            raise PetsegError(f"{truth_path}: size {truth.GetSize()} is not the PET's "
                              f"{case.pet.GetSize()}; the truth must lie on the PET grid")
        yield EvaluationCase(name=files.name, pet=case.pet, ct=case.ct,
                             truth=sitk.GetArrayFromImage(truth) > 0)


def evaluate_interactive(folder: str | Path, segment: Segmenter, out: str | Path,
                         protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                         seed: int = EVALUATION_SEED, shape: str | None = None,
                         label: str = "petseg", centre_offset: int | None = None,
                         edge_offset: int | None = None) -> list[dict[str, float | int | str]]:
    """Run `protocols` on every case of `folder`; write `out/steps.csv` (per case and step),
    `out/summary.csv`, `out/summary.md` and `out/curves.png`; returns the summary rows.

    Args:
        seed: the autoPET IV click seed (the scribbles' is fixed, as the organisers').
        shape: the scribble shape of every case; None: centerline, random, boundary in turn.
        centre_offset, edge_offset: the optional autoPET IV click offsets (voxels).
    """
    from petseg.evaluation.curves import curves_png
    from petseg.io.images import atomic_path

    out = Path(out)
    results: list[StepResult] = []
    for index, case in enumerate(evaluation_cases(folder)):
        if "autopet_iv" in protocols:
            results.extend(autopet_iv_steps(case, segment, seed=seed,
                                            centre_offset=centre_offset,
                                            edge_offset=edge_offset))
        case_shape = shape or SCRIBBLE_SHAPES[index % len(SCRIBBLE_SHAPES)]
        for protocol in ("autopet_v", "autopet_v_petseg"):
            if protocol in protocols:
                results.extend(autopet_v_steps(case, segment, shape=case_shape,
                                               empty_error_fails=protocol == "autopet_v"))
    summary = summarise(results)
    write_steps_csv(results, out / "steps.csv")
    _write_rows(summary, out / "summary.csv")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(markdown_table(summary))
    curves_png({label: summary}, out / "curves.png",
               protocols=[p for p in PROTOCOLS if p in protocols], metrics=PROTOCOL_METRICS)
    return summary


def _write_rows(rows: Sequence[dict[str, float | int | str]], path: Path) -> Path:
    from petseg.io.images import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["protocol", "step", "cases", *METRICS,
                                                    "failed"])
        writer.writeheader()
        writer.writerows(rows)
    return path
