"""The organisers' interactive protocols on cases with truth: autoPET IV clicks, autoPET V
scribbles; DSC, FPV and FNV per step and the area under each curve.

- autoPET IV: 11 steps; step k (0..10) gives the first k tumour and the first k background
  clicks simulated from the truth by the organisers' rule
  (`petseg.interactive.simulate.autopet_iv_clicks`, seed 42).
- autoPET V: 6 steps; step 1 has no scribble, each later step adds one scribble over the
  largest error of the previous step's mask (`petseg.interactive.scribbles`), all
  scribbles so far delivered as points.

The area under a curve is the trapezoid rule over the step index with unit spacing (the
organisers'). The summary's DSC counts only cases with lesions (as the autoPET
ranking); FPV and FNV count every case. Arrays are numpy `[z, y, x]` from SimpleITK; clicks
(`Clicks`) carry PET voxel indices in (x, y, z) order.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.evaluation.metrics import case_metrics
from petseg.interactive.clicks import Clicks
from petseg.interactive.scribbles import next_scribble
from petseg.interactive.simulate import CLICK_BUDGET, EVALUATION_SEED, autopet_iv_clicks, zyx_to_xyz

Segmenter = Callable[[sitk.Image, sitk.Image, Clicks | None], sitk.Image]
"""(PET in SUV, CT in HU, clicks or None) -> uint8 mask on the PET grid."""

PROTOCOLS: tuple[str, ...] = ("autopet_iv", "autopet_v")
V_STEPS = 6
"""Steps of the autoPET V protocol (the first without scribbles)."""
METRICS: tuple[str, ...] = ("dsc", "fpv_ml", "fnv_ml")


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


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The metrics of one step of one case.

    Attributes:
        protocol: one of `PROTOCOLS`; case: the case's name; step: 0..10 (IV), 1..6 (V).
        tumour_points, background_points: the points the segmenter was given.
        dsc: Dice; fpv_ml, fnv_ml: false-positive/-negative volume (ml).
        true_lesions: lesions (18-connected components) of the truth; the summary's DSC
            counts only cases with at least one.
    """

    protocol: str
    case: str
    step: int
    tumour_points: int
    background_points: int
    dsc: float
    fpv_ml: float
    fnv_ml: float
    true_lesions: int


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
           mask: sitk.Image) -> tuple[StepResult, np.ndarray]:
    predicted = sitk.GetArrayFromImage(mask) > 0
    metrics = case_metrics(case.truth, predicted, case.spacing_mm)
    return StepResult(protocol=protocol, case=case.name, step=step,
                      tumour_points=len(clicks.tumour), background_points=len(clicks.background),
                      dsc=metrics.dsc, fpv_ml=metrics.fpv_ml, fnv_ml=metrics.fnv_ml,
                      true_lesions=metrics.n_true_lesions), predicted


def autopet_iv_steps(case: EvaluationCase, segment: Segmenter, seed: int = EVALUATION_SEED,
                     budget: int = CLICK_BUDGET) -> list[StepResult]:
    """The `budget + 1` steps of the autoPET IV protocol on one case."""
    pet = sitk.GetArrayViewFromImage(case.pet)
    tumour, background = autopet_iv_clicks(case.truth, pet, seed=seed, budget=budget)
    results = []
    for step in range(budget + 1):
        clicks = Clicks(tumour=zyx_to_xyz(tumour[:step]), background=zyx_to_xyz(background[:step]))
        mask = segment(case.pet, case.ct, clicks)
        results.append(_score(case, "autopet_iv", step, clicks, mask)[0])
    return results


def autopet_v_steps(case: EvaluationCase, segment: Segmenter, seed: int = EVALUATION_SEED,
                    steps: int = V_STEPS, shape: str | None = None) -> list[StepResult]:
    """The `steps` steps of the autoPET V protocol on one case: step 1 without scribbles,
    then one scribble per step over the previous mask's largest error (`shape` None: each
    scribble's shape drawn at random with the seeded generator)."""
    rng = np.random.default_rng(seed)
    tumour: list[tuple[int, int, int]] = []
    background: list[tuple[int, int, int]] = []
    results = []
    for step in range(1, steps + 1):
        clicks = Clicks(tumour=tuple(tumour), background=tuple(background))
        mask = segment(case.pet, case.ct, clicks)
        result, predicted = _score(case, "autopet_v", step, clicks, mask)
        results.append(result)
        if step == steps:
            break
        scribble = next_scribble(case.truth, predicted, rng, shape)
        if scribble is not None:
            target = tumour if scribble.kind == "tumour" else background
            known = set(target)
            target.extend(p for p in zyx_to_xyz(scribble.points) if p not in known)
    return results


def curve_area(values: Sequence[float]) -> float:
    """Area under `values` over the step index (trapezoid rule, unit spacing)."""
    y = np.asarray(values, float)
    return float(np.sum((y[1:] + y[:-1]) / 2.0)) if y.size > 1 else 0.0


def summarise(results: Sequence[StepResult]) -> list[dict[str, float | int | str]]:
    """Per protocol and step: mean DSC over the cases with lesions, mean FPV and FNV over
    all cases; per protocol a row with step "auc": the mean of the cases' curve areas."""
    rows: list[dict[str, float | int | str]] = []
    for protocol in PROTOCOLS:
        mine = [r for r in results if r.protocol == protocol]
        if not mine:
            continue
        steps = sorted({r.step for r in mine})
        cases = sorted({r.case for r in mine})
        table = {m: np.array([[getattr(_one(mine, c, s), m) for s in steps] for c in cases])
                 for m in METRICS}
        negative = [c for c in cases if _one(mine, c, steps[0]).true_lesions == 0]
        table["dsc"][[cases.index(c) for c in negative]] = math.nan  # DSC: cases with lesions
        for index, step in enumerate(steps):
            rows.append({"protocol": protocol, "step": step, "cases": len(cases),
                         **{m: _mean(table[m][:, index]) for m in METRICS}})
        rows.append({"protocol": protocol, "step": "auc", "cases": len(cases),
                     **{m: _mean([curve_area(curve) for curve in table[m]]) for m in METRICS}})
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


def markdown_table(summary: Sequence[dict[str, float | int | str]]) -> str:
    """The summary as a Markdown table: protocol, step, cases, DSC, FPV ml, FNV ml."""
    lines = ["| protocol | step | cases | DSC | FPV ml | FNV ml |", "|---|---|---:|---:|---:|---:|"]
    for row in summary:
        step = "area under curve" if row["step"] == "auc" else str(row["step"])
        lines.append(f"| {row['protocol']} | {step} | {row['cases']} | {_fmt(row['dsc'], 3)} | "
                     f"{_fmt(row['fpv_ml'], 2)} | {_fmt(row['fnv_ml'], 2)} |")
    return "\n".join(lines) + "\n"


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
                         protocols: Sequence[str] = PROTOCOLS, seed: int = EVALUATION_SEED,
                         shape: str | None = None, label: str = "petseg"
                         ) -> list[dict[str, float | int | str]]:
    """Run `protocols` on every case of `folder`; write `out/steps.csv` (per case and step),
    `out/summary.csv`, `out/summary.md` and `out/curves.png`; returns the summary rows."""
    from petseg.interactive.curves import curves_png

    out = Path(out)
    results: list[StepResult] = []
    for case in evaluation_cases(folder):
        if "autopet_iv" in protocols:
            results.extend(autopet_iv_steps(case, segment, seed=seed))
        if "autopet_v" in protocols:
            results.extend(autopet_v_steps(case, segment, seed=seed, shape=shape))
    summary = summarise(results)
    write_steps_csv(results, out / "steps.csv")
    _write_rows(summary, out / "summary.csv")
    from petseg.io.images import atomic_path

    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(markdown_table(summary))
    curves_png({label: summary}, out / "curves.png", protocols=protocols)
    return summary


def _write_rows(rows: Sequence[dict[str, float | int | str]], path: Path) -> Path:
    from petseg.io.images import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["protocol", "step", "cases", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    return path
