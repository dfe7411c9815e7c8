"""A case with clicks against the same case without: the ratio of their times, in one run.

The full-size synthetic case (`petseg.phantom.generate_case(seed, "full")`, PET 400 x 400 x
~327, CT on its own grid) in the grand-challenge layout, run through
`petseg.runs.predict_folder` (what `petseg predict` and process.py call) once without
and once with a `lesion-clicks.json` of 10 tumour + 10 background clicks (autoPET IV's
last step: tumour clicks on lesion voxels, background clicks on the hottest non-lesion
voxels), alternating, `--repeat` times each; the medians are compared. Two ensembles:
automatic ones (2 input channels: the clicks act through the click rule only) and
click-aware ones (4 channels: click maps and the rule; without clicks their maps are
zeros). Each network runs a residual UNet of random weights (the time of a real one) but
answers SUV - 2.5 as lesion logit, so the mask holds what a real one's may: lesions and
high-uptake organs (brain, heart, kidneys, bladder), where the clicks land; the rule's
time depends on the mask (random weights give masks of millions of voxels). The time
spent in the click stages (the click file, the click maps, the click rule) is listed
apart.

    python benchmarks/interactive.py                  # CUDA if available: paper width
    python benchmarks/interactive.py cpu --folds 1    # CPU: half width, fast mode
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import SimpleITK as sitk
import torch
from common import CPU_CHANNELS, PAPER_CHANNELS, describe_machine, device_from, print_table

from petseg.config import (
    CLICK_CHANNELS,
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    resolve_inference_config,
)
from petseg.inference import predictor as predictor_module
from petseg.interactive import session as session_module
from petseg.io.cases import GC_CLICKS, find_cases
from petseg.model import build_network
from petseg.phantom import generate_case, write_challenge_case
from petseg.runs import loop, predict_folder

CLICK_STAGES = ((loop, "read_click_file"), (session_module, "click_maps_on_grid"),
                (session_module, "apply_click_rule"))


def click_points(pet: sitk.Image, seg: sitk.Image, count: int, seed: int) -> list[dict]:
    """`count` tumour clicks on lesion voxels (one per lesion first) and `count` background
    clicks on the 0.25 % hottest voxels outside the lesions, in the click file's schema."""
    rng = np.random.default_rng(seed)
    suv, truth = sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(seg) > 0
    labels = cc3d.connected_components(truth, connectivity=18)
    lesion_voxels = [np.argwhere(labels == k) for k in range(1, labels.max() + 1)]
    tumour = [v[rng.integers(len(v))] for v in lesion_voxels][:count]
    every = np.argwhere(truth)
    tumour += [every[i] for i in rng.integers(len(every), size=count - len(tumour))]
    hot = np.argwhere((suv >= np.percentile(suv[~truth], 99.75)) & ~truth)
    background = hot[rng.choice(len(hot), size=count, replace=False)]
    return ([{"point": [int(v) for v in p[::-1]], "name": "tumor"} for p in tumour]
            + [{"point": [int(v) for v in p[::-1]], "name": "background"} for p in background])


def timed_stages(totals: dict[str, float]) -> list[tuple[Any, str, Any]]:
    """Wrap the click stages to add their seconds to `totals`; returns what to restore."""
    undo = []
    for module, name in CLICK_STAGES:
        original = getattr(module, name)

        @functools.wraps(original)
        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start

        setattr(module, name, timed)
        undo.append((module, name, original))
    return undo


def run(folder: Path, output: Path, predictor: predictor_module.Predictor,
        device: torch.device) -> float:
    """Seconds for `predict_folder` on the case in `folder`."""
    start = time.perf_counter()
    results = predict_folder(find_cases(folder), output, predictor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    errors = [e for r in results for e in r["error_messages"]]
    if errors:
        raise SystemExit(f"the case failed: {errors}")
    return seconds


class UptakeNetwork(torch.nn.Module):
    """A random residual UNet's compute; its lesion logit is SUV - 2.5 (channel 0)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.unet(x)
        return torch.cat([logits[:, :1] * 0, x[:, :1] - 2.5 + logits[:, 1:2] * 0], dim=1)


def predictor_for(clicks: bool, channels: tuple[int, ...], folds: int, mode: str,
                  device: torch.device) -> predictor_module.Predictor:
    order = ("pet", "ct", *CLICK_CHANNELS) if clicks else ("pet", "ct")
    network = NetworkConfig(in_channels=len(order), channels=channels,
                            strides=(2,) * (len(channels) - 1))
    model = ModelConfig(network=network, preprocessing=PreprocessingConfig(channel_order=order))
    torch.manual_seed(0)
    networks = [UptakeNetwork(build_network(network)).eval() for _ in range(folds)]
    return predictor_module.Predictor(networks, model,
                                      resolve_inference_config(InferenceConfig(mode=mode)),
                                      device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="network width (default: the paper's on CUDA, half on CPU)")
    parser.add_argument("--mode", choices=["reference", "fast"], default=None,
                        help="engine mode (default: reference on CUDA, fast on CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--clicks", type=int, default=10, help="tumour and background clicks")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    device = device_from(args.device)
    cuda = device.type == "cuda"
    channels = tuple(args.channels or (PAPER_CHANNELS if cuda else CPU_CHANNELS))
    mode = args.mode or ("reference" if cuda else "fast")
    print(f"# interactive benchmark: {describe_machine(device)}")
    print(f"{args.folds} folds, channels {channels}, mode {mode}, {args.clicks} + {args.clicks} "
          f"clicks, {args.repeat} run(s) of each")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        case = generate_case(args.seed, "full", cohort="LYMPHOMA")
        for name in ("automatic", "clicks"):
            write_challenge_case(case, work / name, "case", ct_grid="native")
        (work / "clicks" / "case" / GC_CLICKS).write_text(json.dumps({
            "version": {"major": 1, "minor": 0}, "type": "Multiple points",
            "points": click_points(case.pet, case.seg, args.clicks, args.seed)}))
        print(f"phantom: PET {case.pet.GetSize()}, {len(case.lesions)} lesion(s)")
        del case
        rows = []
        for aware in (False, True):
            predictor = predictor_for(aware, channels, args.folds, mode, device)
            run(work / "automatic" / "case", work / "warm-up", predictor, device)
            times: dict[str, list[float]] = {"automatic": [], "clicks": []}
            stages: dict[str, float] = defaultdict(float)
            for _ in range(args.repeat):
                for name in times:
                    undo = timed_stages(stages) if name == "clicks" else []
                    try:
                        times[name].append(run(work / name / "case", work / f"out-{name}",
                                               predictor, device))
                    finally:
                        for module, attr, original in reversed(undo):
                            setattr(module, attr, original)
            without, with_clicks = (statistics.median(times[n]) for n in times)
            extra = sum(stages.values()) / args.repeat
            rows.append([
                "click-aware (4 channels)" if aware else "automatic (2 channels, rule only)",
                f"{without:.2f}", f"{with_clicks:.2f}", f"{with_clicks / without:.3f}",
                f"{(without + extra) / without:.3f}",
                ", ".join(f"{n} {s / args.repeat:.3f}" for n, s in stages.items())])
        print()
        print_table(["weights", "without clicks s", "with clicks s", "ratio",
                     "ratio from the click stages", "click stages s (per run)"], rows)
        print("\nratio: median with / median without; ratio from the click stages: (without +"
              " the click stages' time) / without, steadier on a busy machine")


if __name__ == "__main__":
    main()
