"""One full-size case through the pipeline (`petseg predict` / process.py): time per stage
and peak RAM; then a 512 x 512 x 1000 PET for peak RAM (target < 8 GB).

The case is a synthetic whole body (`petseg.phantom.generate_case(seed, "full")`: PET
400 x 400 x ~327 at 2.0364 x 2.0364 x 3 mm, LAS; CT 512 x 512 on its own finer grid),
written in the grand-challenge layout and run through `petseg.runs.predict_folder`,
the function `petseg predict` and process.py call. Stage times are exclusive (a stage's
time excludes the stages it calls); the read runs in the one-case-ahead prefetch thread.
The networks have random weights (time and memory do not depend on them).

    python benchmarks/case.py                 # CUDA if available: paper width
    python benchmarks/case.py cpu --mode fast # CPU: half width
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from common import (
    CPU_CHANNELS,
    PAPER_CHANNELS,
    describe_machine,
    device_from,
    gib,
    print_table,
    random_networks,
    rss_bytes,
)

from petseg import preprocessing
from petseg.config import InferenceConfig, ModelConfig, NetworkConfig, resolve_inference_config
from petseg.inference import predictor as predictor_module
from petseg.io.cases import find_cases
from petseg.io.geometry import Geometry, resample
from petseg.phantom import generate_case, write_challenge_case
from petseg.runs import loop, predict_folder
from petseg.runs import writers as writers_module

RAM_TARGET_GB = 8.0


class StageClock:
    """Wraps pipeline functions to record (stage, thread, start, end, exclusive seconds)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float, float, float]] = []
        self._local = threading.local()
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, name: str, stage: str, only_under: str | None = None) -> None:
        """Time `module.name` as `stage` (only when called inside `only_under`, if given)."""
        original = getattr(module, name)
        clock = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = clock._stack()
            if only_under is not None and (not stack or stack[-1][0] != only_under):
                return original(*args, **kwargs)
            stack.append([stage, 0.0])
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                _, children = stack.pop()
                if stack:
                    stack[-1][1] += end - start
                clock.records.append((stage, start, end, end - start - children))

        setattr(module, name, timed)
        self._undo.append((module, name, original))

    def _stack(self) -> list[list[Any]]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)
        self._undo.clear()


class RSSTrace:
    """(time, RSS) samples every 5 ms in a thread, for the peak within any interval."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(0.005)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        """Highest RSS sampled in [start, end] (the sample just before, for short stages)."""
        values = [v for t, v in self.samples if start <= t <= end]
        if not values:
            values = [v for t, v in self.samples if t < start][-1:]
        return max(values) if values else 0

    def __enter__(self) -> RSSTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


STAGES: list[tuple[Any, str, str, str | None]] = [
    (loop, "read_case", "read PET + CT", None),
    (preprocessing, "locate_body", "CT onto the PET grid + body mask and crop box", None),
    (preprocessing, "crop_to_grid", "crop to 2 mm", None),
    (predictor_module, "preprocess_case", "preprocessing, rest", None),
    (predictor_module, "body_mask_for_windows", "body mask for window skipping", None),
    (predictor_module, "run_ensemble", "infer (ensemble)", None),
    (predictor_module, "probability_on_pet_grid", "probability back to the PET grid", None),
    (predictor_module, "probability_to_mask", "threshold + mask image", None),
    (writers_module, "write_image", "write mask (atomic)", None),
]


def run_case(input_dir: Path, output_dir: Path, predictor: predictor_module.Predictor,
             device: torch.device) -> tuple[float, list[list[object]], int]:
    """Predict the case(s) under `input_dir`; returns (wall s, table rows, peak RSS)."""
    clock = StageClock()
    for module, name, stage, under in STAGES:
        clock.wrap(module, name, stage, under)
    try:
        with RSSTrace() as trace:
            start = time.perf_counter()
            results = predict_folder(find_cases(input_dir), output_dir, predictor)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
    finally:
        clock.restore()
    errors = [e for r in results for e in r["error_messages"]]
    if errors:
        raise SystemExit(f"the case failed: {errors}")
    rows = []
    for _, _, stage, _ in STAGES:
        mine = [r for r in clock.records if r[0] == stage]
        if not mine:
            continue
        seconds = sum(r[3] for r in mine)
        peak = max(trace.peak(r[1], r[2]) for r in mine)
        rows.append([stage, f"{seconds:.2f}", gib(peak)])
    return wall, rows, trace.peak()


def big_pet(case: Any, size: tuple[int, int, int]) -> sitk.Image:
    """The phantom's PET resampled onto a `size` grid over the same physical box."""
    geometry = Geometry.of(case.pet)
    extent = np.asarray(geometry.size) * np.asarray(geometry.spacing)
    spacing = tuple(float(e / s) for e, s in zip(extent, size, strict=True))
    origin = np.asarray(geometry.origin) + np.asarray(geometry.direction).reshape(3, 3) @ (
        (np.asarray(spacing) - np.asarray(geometry.spacing)) / 2)
    grid = Geometry(size, spacing, tuple(float(v) for v in origin), geometry.direction)
    return resample(case.pet, grid, sitk.sitkLinear, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="network width (default: the paper's on CUDA, half on CPU)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mode", choices=["reference", "fast"], default=None,
                        help="engine mode (default: reference on CUDA, fast on CPU)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--big", type=int, nargs=3, default=(512, 512, 1000),
                        metavar=("X", "Y", "Z"), help="size of the large PET (x, y, z)")
    parser.add_argument("--skip-big", action="store_true", help="only the full-size case")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the case files go (default: a temporary folder)")
    args = parser.parse_args()

    device = device_from(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    channels = tuple(args.channels or (PAPER_CHANNELS if cuda else CPU_CHANNELS))
    mode = args.mode or ("reference" if cuda else "fast")
    model = ModelConfig(network=NetworkConfig(channels=channels,
                                              strides=(2,) * (len(channels) - 1)))
    predictor = predictor_module.Predictor(
        random_networks(args.folds, channels), model,
        resolve_inference_config(InferenceConfig(mode=mode)), device=device)
    print(f"# case benchmark: {describe_machine(device)}")
    print(f"{args.folds} folds, channels {channels}, mode {mode}; RSS before the cases "
          f"{gib(rss_bytes())} GiB")

    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        start = time.perf_counter()
        case = generate_case(args.seed, "full", cohort="LYMPHOMA")
        print(f"phantom: PET {case.pet.GetSize()} at "
              f"{tuple(round(s, 4) for s in case.pet.GetSpacing())} mm, CT {case.ct.GetSize()}"
              f" ({time.perf_counter() - start:.1f} s to make)")
        write_challenge_case(case, work / "full", "case", ct_grid="native")
        if not args.skip_big:
            folder = work / "big" / "case" / "images"
            for modality, image in (("pet", big_pet(case, tuple(args.big))), ("ct", case.ct)):
                (folder / modality).mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(image, str(folder / modality / f"big-{modality}.mha"), True)
                del image
        del case  # only the pipeline's own memory from here on

        runs = [("full-size case", "full")] + ([] if args.skip_big else
                                               [(f"PET {tuple(args.big)}", "big")])
        for title, name in runs:
            base = rss_bytes()
            wall, rows, peak = run_case(work / name / "case", work / f"out-{name}", predictor,
                                        device)
            verdict = "within" if peak / 1e9 < RAM_TARGET_GB else "ABOVE"
            print(f"\n## {title}: {wall:.2f} s, peak RSS {gib(peak)} GiB = {peak / 1e9:.2f} GB"
                  f" ({verdict} the {RAM_TARGET_GB:.0f} GB target; {gib(base)} GiB before)\n")
            print_table(["stage", "seconds", "peak RSS GiB during stage"], rows)

if __name__ == "__main__":
    main()
