"""`petseg serve` as a viewer sees it: the first answer and the time per click over HTTP.

A full-size synthetic case (`petseg.phantom.generate_case(seed, "full")`, PET 400 x 400 x
~327, CT on its own grid) is written as a grand-challenge case and served with `--cases`;
nninteractive-client's own session drives the server as 3D Slicer does: `set_image` with the
PET `[1, k, j, i]` and the spacing reversed, a target buffer, then the autoPET IV clicks of
the case's truth (tumour and background alternating, up to 10 each) as point interactions.
Timed: the upload, the first answer (the automatic run, in the background since
`set_image`, plus the first click), and every later click (median, 95th percentile). The
stock way is `petseg predict` with the same clicks in a lesion-clicks.json, a whole run per
answer, timed in the same run; its mask is compared with the viewer's buffer (Dice). The
server's log gives each answer's time per stage (click maps, network, mask on the PET
grid, click rule, the viewer's change): their medians over the later clicks are printed.

    python benchmarks/serve.py cpu                  # the bundled weights, fast mode
    python benchmarks/serve.py cuda --mode reference
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import SimpleITK as sitk
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

from petseg.interactive.simulate import autopet_iv_clicks
from petseg.phantom import generate_case
from petseg.serve.lesions import ANSWER_STAGES

REPOSITORY = Path(__file__).resolve().parents[1]
MASK = Path("images/tumor-lesion-segmentation/pet.mha")


def write_case(folder: Path, pet: sitk.Image, ct: sitk.Image) -> Path:
    for kind, image in (("pet", pet), ("ct", ct)):
        (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "images" / kind / f"{kind}.mha"), True)
    return folder


@contextlib.contextmanager
def serving(cases: Path, args: argparse.Namespace, log: Path):
    """`petseg serve` on a free loopback port, its log to `log`; its URL; killed
    afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "petseg", "serve", "--cases", str(cases), "--port",
               str(port), "--device", args.device, "--mode", args.mode]
    if args.weights:
        command += ["--weights", str(args.weights)]
    process = subprocess.Popen(command, cwd=REPOSITORY, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                raise SystemExit("petseg serve exited")
            time.sleep(0.3)
        yield url
    finally:
        process.kill()
        process.wait(30)


def clicks_in_order(case) -> list[tuple[tuple[int, int, int], bool]]:
    """The autoPET IV clicks of the case, `[k, j, i]` indices, tumour and background
    alternating: (index, positive)."""
    tumour, background = autopet_iv_clicks(sitk.GetArrayViewFromImage(case.seg) > 0,
                                           sitk.GetArrayViewFromImage(case.pet))
    order = []
    for k in range(max(len(tumour), len(background))):
        order += [(tuple(int(v) for v in p), True) for p in tumour[k:k + 1]]
        order += [(tuple(int(v) for v in p), False) for p in background[k:k + 1]]
    return order


def drive(url: str, pet: sitk.Image, clicks) -> tuple[float, float, list[float], np.ndarray]:
    """(upload s, first answer s, later clicks s, the viewer's buffer)."""
    session = nnInteractiveRemoteInferenceSession(url, read_timeout=600)
    image = sitk.GetArrayFromImage(pet)
    start = time.perf_counter()
    session.set_image(image[None], {"spacing": list(reversed(pet.GetSpacing()))})
    upload_s = time.perf_counter() - start
    buffer = np.zeros(image.shape, np.uint8)
    session.set_target_buffer(buffer)
    times = []
    for index, positive in clicks:
        began = time.perf_counter()
        session.add_point_interaction(index, include_interaction=positive)
        times.append(time.perf_counter() - began)
    first_s = upload_s + times[0]
    session.close()
    return upload_s, first_s, times[1:], buffer


def stage_medians(log: Path, skip: int = 1) -> dict[str, float]:
    """Median seconds per stage over the answers the server logged, the first `skip` left
    out (the first answer waits for the automatic run)."""
    answers = [json.loads(line.split(ANSWER_STAGES, 1)[1])
               for line in log.read_text().splitlines() if ANSWER_STAGES in line][skip:]
    stages = {stage for answer in answers for stage in answer}
    return {stage: statistics.median(answer.get(stage, 0.0) for answer in answers)
            for stage in sorted(stages)}


def predict_time(folder: Path, clicks, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    """(seconds, mask) of `petseg predict` with the clicks in lesion-clicks.json."""
    points = [{"point": [int(v) for v in index[::-1]], "name": "tumor" if positive
               else "background"} for index, positive in clicks]
    (folder / "lesion-clicks.json").write_text(json.dumps({"points": points}))
    command = [sys.executable, "-m", "petseg", "predict", "--input", str(folder), "--output",
               str(folder.parent / "out"), "--device", args.device, "--mode", args.mode]
    if args.weights:
        command += ["--weights", str(args.weights)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPOSITORY, check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, sitk.GetArrayFromImage(sitk.ReadImage(str(folder.parent / "out" / MASK)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--weights", type=Path, default=None, help="default: weights/")
    parser.add_argument("--mode", choices=("reference", "fast"), default="fast")
    parser.add_argument("--seed", type=int, default=777001, help="phantom seed")
    parser.add_argument("--log", type=Path, default=None,
                        help="keep the server's log here (default: dropped)")
    args = parser.parse_args()
    case = generate_case(args.seed, "full", "LYMPHOMA")
    clicks = clicks_in_order(case)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_case(Path(tmp) / "cases" / "study", case.pet, case.ct)
        log = args.log or Path(tmp) / "serve.log"
        with serving(folder.parent, args, log) as url:
            upload_s, first_s, later, buffer = drive(url, case.pet, clicks)
        stages = stage_medians(log)
        predict_s, mask = predict_time(folder, clicks, args)
    a, b = buffer > 0, mask > 0
    dice = 2 * int((a & b).sum()) / max(1, int(a.sum() + b.sum()))
    median = statistics.median(later)
    p95 = float(np.percentile(later, 95))
    print(f"{args.device}, {args.mode} | PET {case.pet.GetSize()} | {len(clicks)} clicks "
          f"({sum(p for _, p in clicks)} tumour)")
    print("| upload s | first answer s | click median s | click p95 s | predict run s "
          "| predict / click | Dice vs predict |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {upload_s:.2f} | {first_s:.2f} | {median:.2f} | {p95:.2f} | {predict_s:.1f} "
          f"| {predict_s / median:.0f}x | {dice:.5f} |")
    print(f"voxels that differ from predict: {int((a != b).sum())}")
    print("server's time per stage, median over the later clicks: " + ", ".join(
        f"{stage} {seconds:.3f} s" for stage, seconds in stages.items()))


if __name__ == "__main__":
    main()
