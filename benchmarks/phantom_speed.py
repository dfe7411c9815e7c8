"""Time the phantom generator: one `full` and one `small` case, and writing them.

    /work/main/.venv/bin/python benchmarks/phantom_speed.py [--seed 22] [--repeats 3]

Prints the best of a few runs (wall-clock seconds) for generating a case, and the time
to write it in the grand-challenge layout (compressed .mha) and the autoPET layout
(.nii.gz). Targets on the 2-core development machine: full < 20 s, small < 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from petseg.phantom import generate_case, write_autopet_study, write_challenge_case


def _best(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generate_case(args.seed, "small", "LYMPHOMA")  # warm-up: imports, caches
    rows = []
    for size, target in (("small", 1.0), ("full", 20.0)):
        repeats = args.repeats if size == "small" else max(1, args.repeats - 1)
        gen_s, case = _best(lambda size=size: generate_case(args.seed, size, "LYMPHOMA"),
                            repeats)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_challenge_case(case, Path(tmp), "case")
            mha_s = time.perf_counter() - start
            start = time.perf_counter()
            write_autopet_study(case, Path(tmp) / "autopet")
            nii_s = time.perf_counter() - start
        pet = case.pet.GetSize()
        rows.append((size, f"{pet[0]}x{pet[1]}x{pet[2]}", gen_s, target, mha_s, nii_s))
    print(f"{'size':6} {'PET grid':12} {'generate s':>10} {'target s':>9} {'ratio':>6} "
          f"{'write mha s':>11} {'write nii s':>11}")
    for size, grid, gen_s, target, mha_s, nii_s in rows:
        print(f"{size:6} {grid:12} {gen_s:10.2f} {target:9.1f} {gen_s / target:6.2f} "
              f"{mha_s:11.2f} {nii_s:11.2f}")


if __name__ == "__main__":
    main()
