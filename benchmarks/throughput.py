"""Folder throughput: one worker against one worker process per device, and the case loop
before and after writing case n-1 while case n runs.

A folder of full-size synthetic cases (`petseg.phantom.generate_case(seed, "full")`, CT
on its own grid) goes through `petseg predict` twice in this run, as a user runs it:

- one process with all the machine's threads (`--device cpu`, the stock way), and
- `--devices cpu,cpu` (two worker processes, the cores split between them); with `cuda`
  one GPU against `--devices all` (one worker per GPU),

printing cases per hour, their ratio, the peak RSS of every process (the parent's and
each worker's, from the kernel's high-water mark) and whether the masks agree (voxels
that differ, and how far their probability lies from the threshold).

Then the stage profile of the case loop in this process, over the same cases: the loop as
it was (the next case read ahead, the mask written before the next case starts) against
the loop now (also the previous case written while this one runs): seconds per case of
each stage (read, predict, write) and the wall per case.

The networks have random weights at a reduced width (one fold by default), so the CPU
stages weigh in the total as they do beside a GPU; timings do not depend on the weights.

    python benchmarks/throughput.py [cpu|cuda] [--cases 8] [--channels 8 16 32 64 128] [--folds 1]
        [--mode fast] [--profile-cases 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from common import print_table

from petseg.checkpoint import DSC_KEY, save_checkpoint, write_manifest
from petseg.config import InferenceConfig, ModelConfig, NetworkConfig, save_json
from petseg.inference import predictor as predictor_module
from petseg.io.cases import find_cases
from petseg.model import build_network
from petseg.phantom import generate_case, write_challenge_case
from petseg.runs import loop
from petseg.runs import writers as writers_module

REPOSITORY = Path(__file__).resolve().parents[1]


def make_case(seed: int, folder: Path) -> None:
    """Write phantom `seed` as case folder `case_<seed>` under `folder`."""
    write_challenge_case(generate_case(seed, "full"), folder, f"case_{seed:02d}",
                         ct_grid="native")


def make_weights(folder: Path, channels: tuple[int, ...], folds: int) -> ModelConfig:
    """Random checkpoints (seed = fold) and their manifest; returns the model config."""
    model = ModelConfig(network=NetworkConfig(channels=channels,
                                              strides=(2,) * (len(channels) - 1)))
    files = []
    for fold in range(folds):
        torch.manual_seed(fold)
        files.append(save_checkpoint(folder / f"fold_{fold}.safetensors",
                                     build_network(model.network).state_dict(), model,
                                     {DSC_KEY: 0.6}))
    write_manifest(folder, files, n_folds=folds)
    return model


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _peak_rss(pid: int) -> tuple[str, int] | None:
    """(command tail, VmHWM bytes) of `pid`."""
    with contextlib.suppress(OSError, ValueError, StopIteration):  # gone, or a zombie
        status = Path(f"/proc/{pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return command, int(hwm.split()[1]) * 1024
    return None


def run_predict(arguments: list[str]) -> tuple[float, dict[int, tuple[str, int]]]:
    """Run `petseg predict ARGUMENTS`; (wall seconds, {pid: (command, peak RSS)})."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "petseg", "predict", *arguments],
                               stderr=subprocess.DEVNULL, cwd=REPOSITORY)
    peaks: dict[int, tuple[str, int]] = {}
    while process.poll() is None:
        for pid in _tree(process.pid):
            found = _peak_rss(pid)
            if found and "resource_tracker" not in found[0]:
                peaks[pid] = found
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"petseg predict {' '.join(arguments)}: exit {process.returncode}")
    return wall, peaks


def mask_agreement(one: Path, two: Path, threshold: float) -> tuple[int, int, float]:
    """(voxels that differ, voxels in all, largest |probability - threshold| where they
    differ) between two output folders."""
    masks = Path("images/automated-petct-lesion-segmentation")
    differ = total = 0
    furthest = 0.0
    for path in sorted((one / masks).glob("*.mha")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(two / masks / path.name)))
        probability = sitk.GetArrayFromImage(
            sitk.ReadImage(str(one / "probabilities" / path.name)))
        where = a != b
        differ, total = differ + int(where.sum()), total + a.size
        if where.any():
            furthest = max(furthest, float(np.abs(probability[where] - threshold).max()))
    return differ, total, furthest


class StageTimes:
    """Seconds spent in wrapped functions, by stage (any thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def wrapping(self, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
        """Time `module.name` as `stage` for each target while the block runs."""
        originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
        for (module, name, original), (_, _, stage) in zip(originals, targets, strict=True):
            setattr(module, name, self._timed(original, stage))
        try:
            yield
        finally:
            for module, name, original in originals:
                setattr(module, name, original)

    def _timed(self, original: Any, stage: str) -> Any:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[stage] = (self.seconds.get(stage, 0.0)
                                           + time.perf_counter() - start)
        return timed


def loop_before(cases: list[Any], output_dir: Path, predictor: Any) -> None:
    """The case loop as it was: the next case read ahead, each case written (mask and
    probability) before the next one starts."""
    fill = predictor.model_config.preprocessing.ct_fill_hu
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        reading = prefetch.submit(loop.read_case, cases[0], fill)
        writers = writers_module.output_writers(save_probability=True)
        for index, files in enumerate(cases):
            ahead = (prefetch.submit(loop.read_case, cases[index + 1], fill)
                     if index + 1 < len(cases) else None)
            writers_module.write_outputs(writers, loop.predict_case(
                files, reading, predictor, writers, output_dir, time.perf_counter()))
            reading = ahead  # type: ignore[assignment]


def stage_profile(input_dir: Path, work: Path, predictor: Any,
                  count: int) -> list[list[object]]:
    """Rows: stage, seconds per case before and now (wall per case last), over the first
    `count` cases, each loop run twice in the order before, now, now, before."""
    cases = find_cases(input_dir).cases[:count]
    targets = [(loop, "read_case", "read"),
               (predictor_module.Predictor, "predict", "predict (preprocess, network, mask)"),
               (writers_module, "write_image", "write")]
    first = loop.read_case(cases[0], predictor.model_config.preprocessing.ct_fill_hu)
    predictor.predict(first.pet, first.ct)  # warm-up, so neither loop pays first-call costs
    loops = {"before": lambda out: loop_before(cases, out, predictor),
             "now": lambda out: loop.run_cases(
                 cases, out, predictor, writers_module.output_writers(save_probability=True),
                 lambda entry: None)}
    columns: dict[str, dict[str, float]] = {name: {} for name in loops}
    for name in ("before", "now", "now", "before"):  # ABBA: drifting load hits both alike
        times = StageTimes()
        with times.wrapping(targets):
            start = time.perf_counter()
            loops[name](work / f"profile-{name}")
            wall = time.perf_counter() - start
        for stage, seconds in {**times.seconds, "wall": wall}.items():
            columns[name][stage] = columns[name].get(stage, 0.0) + seconds / 2
    stages = [stage for _, _, stage in targets] + ["wall"]
    return [[stage, *(f"{columns[name].get(stage, 0.0) / len(cases):.2f}" for name in loops)]
            for stage in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: 1 process against --devices cpu,cpu; cuda: 1 GPU against "
                             "--devices all")
    parser.add_argument("--cases", type=int, default=8, help="full-size phantoms (default 8)")
    parser.add_argument("--channels", type=int, nargs="+", default=(8, 16, 32, 64, 128))
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--mode", choices=("reference", "fast"), default="fast")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--profile-cases", type=int, default=4,
                        help="cases of the stage profile (default 4; 0 skips it)")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the stage profile, not the two predict runs")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        start = time.perf_counter()
        missing = [seed for seed in range(args.cases)  # a --workdir keeps them for a rerun
                   if not (work / "input" / f"case_{seed:02d}" / "images").is_dir()]
        with ProcessPoolExecutor(max_workers=cores) as pool:
            list(pool.map(make_case, missing, [work / "input"] * len(missing)))
        print(f"# throughput: {args.cases} full-size phantoms ({len(missing)} made in "
              f"{time.perf_counter() - start:.0f} s), {cores} cores, torch {torch.__version__}; "
              f"{args.folds} fold(s), channels {tuple(args.channels)}, mode {args.mode}, "
              "random weights\n")
        make_weights(work / "weights", tuple(args.channels), args.folds)
        save_json(InferenceConfig(mode=args.mode), work / "inference.json")
        common = ["--input", str(work / "input"), "--weights", str(work / "weights"),
                  "--config", str(work / "inference.json"), "--save-probability"]
        runs = ({"1 worker, 2 threads": ["--device", "cpu"],
                 "--devices cpu,cpu (1 thread each)": ["--devices", "cpu,cpu"]}
                if args.device == "cpu" else
                {"1 worker, 1 GPU": ["--device", "cuda"], "--devices all": ["--devices", "all"]})
        rows, outputs, walls = [], [], []
        for title, extra in ({} if args.profile_only else runs).items():
            out = work / f"out-{len(outputs)}"
            wall, peaks = run_predict([*common, "--output", str(out), *extra])
            outputs.append(out)
            walls.append(wall)
            rss = ", ".join(f"{'worker' if 'spawn' in cmd else 'parent'} "
                            f"{peak / 2**30:.2f}" for cmd, peak in peaks.values())
            rows.append([title, f"{wall:.1f}", f"{3600 * args.cases / wall:.0f}",
                         f"{walls[0] / wall:.2f}", rss])
        if rows:
            print_table(["run", "wall s", "cases/h", "ratio to 1 worker", "peak RSS GiB"], rows)
            differ, total, furthest = mask_agreement(*outputs, threshold=0.5)
            print(f"\nmasks of 1 and 2 workers: {differ} of {total} voxels differ" + (
                f" (probability within {furthest:.1e} of the threshold)" if differ else ""))
        if args.profile_cases:
            predictor = predictor_module.Predictor.from_weights_dir(
                work / "weights", InferenceConfig(mode=args.mode), device=args.device)
            print(f"\n## stage profile, seconds per case ({args.profile_cases} cases, one "
                  f"process, {torch.get_num_threads()} threads, mask and probability "
                  "written)\n")
            print_table(["stage", "read ahead only (before)", "+ write behind (now)"],
                        stage_profile(work / "input", work, predictor, args.profile_cases))


if __name__ == "__main__":
    main()
