"""The second click against the first step: an interactive session on one full-size case.

The stock way answers every step as the first (`InteractiveSession.predict`: read case
preprocessed again, the whole case through the ensemble, the click rule). A session
(`InteractiveSession.start` / `update`) preprocesses the case once and, for each later
click, runs the network only around the click maps that changed. On the full-size
synthetic case (`petseg.phantom.generate_case(seed, "full")`, PET 400 x 400 x ~327) with
the autoPET IV clicks of its truth (the organisers' rule), each step k = 1..N adds one
tumour and one background click (`--one-click`: one click per step, tumour and background
alternating, as a viewer sends them); per step the session's update and the stock full
answer are timed in the same run and their masks compared (Dice, voxels that differ), and
the update's time is broken down by stage (`InteractiveSession.seconds`: click maps drawn
and compared, network blocks, probability to the PET grid and mask, click rule).

    python benchmarks/session.py cpu                 # the bundled weights (weights/)
    python benchmarks/session.py cpu --steps 2 --weights DIR --mode reference
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from common import describe_machine, device_from, print_table

from petseg.config import InferenceConfig
from petseg.inference.predictor import Predictor
from petseg.interactive import session as session_module
from petseg.interactive.clicks import Clicks
from petseg.interactive.session import InteractiveSession
from petseg.interactive.simulate import autopet_iv_clicks, zyx_to_xyz
from petseg.phantom import generate_case

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two 0/1 masks (1.0 for two empty ones)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def timed(call, device: torch.device):
    """(result, seconds) of `call()`, the device synchronised."""
    start = time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--mode", choices=("reference", "fast"), default="fast")
    parser.add_argument("--steps", type=int, default=3, help="clicks of each kind added")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="of the update's blocks (default: the Predictor's)")
    parser.add_argument("--one-click", action="store_true",
                        help="one click per step (tumour, background, tumour, ...)")
    parser.add_argument("--seed", type=int, default=777001, help="phantom seed")
    parser.add_argument("--context-mm", type=float, default=session_module.CONTEXT_MM,
                        help="context around the changed clicks the network sees (mm)")
    parser.add_argument("--update-mm", type=float, default=session_module.UPDATE_MM,
                        help="reach of a click's update (mm)")
    args = parser.parse_args()
    device = device_from(args.device)
    case = generate_case(args.seed, "full", "LYMPHOMA")
    pet, ct = case.pet, case.ctres
    truth = sitk.GetArrayViewFromImage(case.seg) > 0
    tumour, background = autopet_iv_clicks(truth, sitk.GetArrayViewFromImage(pet),
                                           budget=args.steps)
    predictor = Predictor.from_weights_dir(
        args.weights, InferenceConfig(mode=args.mode), device=device)
    if not predictor.model_config.takes_clicks:
        print("note: automatic weights: an update runs no network, only the click rule")
    print(describe_machine(device), f"| {args.weights} ({len(predictor.networks)} folds, "
          f"{args.mode}) | PET {pet.GetSize()}")
    session = InteractiveSession(predictor, args.context_mm, args.update_mm, args.precision)
    first, first_s = timed(lambda: session.start(pet, ct), device)
    rows, ratios, dices, updates, stages = [], [], [], [], {}
    for step, clicks in enumerate(steps(tumour, background, args), 1):
        mask, update_s = timed(lambda c=clicks: session.update(c), device)
        updates.append(update_s)
        for stage, seconds in session.seconds.items():
            stages.setdefault(stage, []).append(seconds)
        full, full_s = timed(lambda c=clicks: InteractiveSession(predictor).predict(pet, ct, c),
                             device)
        a, b = sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(full.mask) > 0
        ratios.append(update_s / first_s)
        dices.append(dice(a, b))
        rows.append([step, f"{session.updated_voxels / np.prod(session.image.shape[1:]):.1%}",
                     f"{update_s:.2f}", f"{full_s:.2f}", f"{update_s / first_s:.3f}",
                     f"{full_s / update_s:.1f}x", f"{dices[-1]:.5f}", int((a != b).sum())])
    print(f"first step (preprocess, whole case, mask): {first_s:.2f} s, "
          f"{int(sitk.GetArrayViewFromImage(first).sum())} lesion voxels; its plan: "
          f"{session.plan.describe()}; context {args.context_mm:g} mm, update "
          f"{args.update_mm:g} mm, blocks in {session.precision}")
    print_table(["step", "network on", "update s", "full answer s", "update / first",
                 "full / update", "Dice vs full", "voxels differ"], rows)
    print(f"median update / first step: {statistics.median(ratios):.3f}; "
          f"lowest Dice vs the full answer: {min(dices):.5f}")
    print(f"update median {statistics.median(updates):.3f} s; per stage, median s (share of "
          "the summed medians):")
    medians = {stage: statistics.median(times) for stage, times in stages.items()}
    print_table(["stage", "median s", "share"], [
        [stage, f"{seconds:.3f}", f"{seconds / sum(medians.values()):.0%}"]
        for stage, seconds in medians.items()])


def steps(tumour: np.ndarray, background: np.ndarray, args: argparse.Namespace
          ) -> list[Clicks]:
    """The clicks of each step: one more of each kind, or with `--one-click` one more
    click, tumour and background alternating."""
    if not args.one_click:
        return [Clicks(tumour=zyx_to_xyz(tumour[:k]), background=zyx_to_xyz(background[:k]))
                for k in range(1, args.steps + 1)]
    # after n clicks: (n + 1) // 2 tumour and n // 2 background
    return [Clicks(tumour=zyx_to_xyz(tumour[:(n + 1) // 2]),
                   background=zyx_to_xyz(background[:n // 2]))
            for n in range(1, 2 * args.steps + 1)]


if __name__ == "__main__":
    main()
