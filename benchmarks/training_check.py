"""Training at scale, checked end to end: phantoms -> preprocess -> split -> train fold 0.

Makes `--phantoms` autoPET-layout phantoms in parallel (a quarter lesion-free), prepares
them with `petseg preprocess`, splits them into 5 folds with `petseg split`, and trains
fold 0 with `petseg train` (the paper's config unless `--set` changes it) for about
`--steps` optimiser steps, validating every `--every` epochs. While it trains, a Markdown
table gets one row per `--every` epochs: epoch-mean loss, validation mean DSC, skipped
(non-finite) and fp16-overflow steps, gradient norm (mean, max), step time (input waits
excluded), input wait share, epoch time (steps, validation and saving `last.pt`) and loss
scale.

Skipped steps that the run diagnosed (`RUN/non_finite_steps.jsonl`: where the forward
first went non-finite, the largest activation before it, the largest weight) are printed
after the table: they tell an fp16 overflow from weight growth.

Exit status 1 when training failed (the run's own error line is printed), when more
than `--max-non-finite` of all steps had a non-finite loss or gradient, when a
validation mean DSC fell to 0 after having been above 0.1 (a collapse), or when the last
validation mean DSC is below `--min-dsc`; else 0.

GPU (one H100/H200, under 8 minutes):
    python benchmarks/training_check.py --work /tmp/check
Tiny CPU run (about 40 s on 2 cores; proves the chain, not the numerics):
    python benchmarks/training_check.py --work /tmp/check --phantoms 6 --size small \
        --steps 12 --patch 32 --batch 2 --every 2 --device cpu --min-dsc 0 --workers 2 \
        --set model.preprocessing.target_spacing_mm=6.0 \
        --set 'model.network.channels=[8,16,32,64,128]' --set num_threads=2 \
        --set validation.inference.mode=fast

Data and cache in `--work` are reused by a second call with the same data options;
every call trains into a new `--work/run-*` folder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from petseg.config import save_json, with_overrides
from petseg.phantom import generate_study, write_autopet_study, write_metadata_csv
from petseg.phantom.layouts import dataset_plan, metadata_row
from petseg.training.config import load_training_config
from petseg.training.splits import load_splits
from petseg.training.validation import collapse_warning

COLUMNS = ("epochs", "steps", "loss", "val DSC", "skipped", "overflow", "grad norm mean",
           "grad norm max", "step ms", "input wait %", "epoch s", "loss scale")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder")
    parser.add_argument("--phantoms", type=int, default=24, help="number of studies")
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="phantom size (petseg phantom --size)")
    parser.add_argument("--seed", type=int, default=2026, help="phantom dataset seed")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (about)")
    parser.add_argument("--patch", type=int, default=192, help="cubic patch and window size")
    parser.add_argument("--batch", type=int, default=4, help="patches per step")
    parser.add_argument("--every", type=int, default=50,
                        help="epochs per table row (and per validation)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes making phantoms and preprocessing")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--min-dsc", type=float, default=0.40,
                        help="lowest acceptable last validation mean DSC (0: no floor)")
    parser.add_argument("--max-non-finite", type=float, default=0.01,
                        help="largest acceptable share of non-finite steps")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="training config override, as `petseg train --set` (repeatable)")
    return parser.parse_args(argv)


def _make_study(job: tuple[Path, int, int, str, int, str]) -> dict[str, str]:
    root, patient_seed, study_seed, cohort, index, size = job
    case = generate_study(patient_seed, study_seed, size=size, cohort=cohort, study_index=index)
    return metadata_row(case, root, write_autopet_study(case, root))


def make_phantoms(data: Path, count: int, seed: int, size: str, workers: int) -> float:
    """autoPET-layout phantoms in `data` (made in parallel; reused when complete); seconds."""
    started = time.perf_counter()
    if (data / "Clinical_Metadata.csv").is_file():
        print(f"phantoms: reusing {data}")
        return 0.0
    partial = data.with_name(data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plan = dataset_plan(count, seed, "autopet", negative_fraction=0.25)
    jobs = [(partial, p, s, cohort, index, size) for p, s, cohort, index in plan]
    with concurrent.futures.ProcessPoolExecutor(max(1, min(workers, count))) as pool:
        rows = list(pool.map(_make_study, jobs))
    write_metadata_csv(rows, partial)
    partial.rename(data)
    return time.perf_counter() - started


def petseg(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m petseg ARGUMENTS` (this interpreter's installed package)."""
    return subprocess.run([sys.executable, "-m", "petseg", *arguments], text=True,
                          capture_output=True)


def checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise SystemExit(f"{what} failed: {lines[-1] if lines else result.returncode}")


def _float(value: str) -> float:
    return float(value) if value not in ("", None) else math.nan


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def table_row(rows: list[dict[str, str]]) -> list[str]:
    """One table row summarising consecutive history.csv rows."""
    steps = sum(int(r["steps"]) for r in rows)
    dsc = [_float(r["val_mean_dsc"]) for r in rows if r["val_mean_dsc"]]
    losses = [_float(r["train_loss"]) for r in rows]
    means = [_float(r["grad_norm_mean"]) for r in rows]
    maxima = [_float(r["grad_norm_max"]) for r in rows]
    finite = [v for v in means if math.isfinite(v)]
    return [f"{rows[0]['epoch']}-{rows[-1]['epoch']}", str(steps),
            _fmt(sum(losses) / len(losses)), _fmt(dsc[-1] if dsc else math.nan),
            str(sum(int(r["skipped_steps"]) for r in rows)),
            str(sum(int(r["overflow_steps"]) for r in rows)),
            _fmt(sum(finite) / len(finite) if finite else math.nan, 3),
            _fmt(max((v for v in maxima if math.isfinite(v)), default=math.nan), 3),
            _fmt(1000 * sum(_float(r["step_s"]) for r in rows) / len(rows), 1),
            _fmt(100 * sum(_float(r["data_wait_fraction"]) for r in rows) / len(rows), 1),
            _fmt(sum(_float(r["epoch_s"]) for r in rows) / len(rows), 2),
            rows[-1]["loss_scale"] or "-"]


def print_row(values: list[str]) -> None:
    print("| " + " | ".join(values) + " |", flush=True)


def follow_training(command: list[str], history: Path, every: int) -> tuple[int, str]:
    """Run `command`, printing a table row per `every` epochs of `history`; returns the
    exit status and the last line of its error output."""
    print_row(list(COLUMNS))
    print("|" + "|".join("---" for _ in COLUMNS) + "|", flush=True)
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        shown = 0
        while True:
            finished = process.poll() is not None
            rows = _read_history(history)
            while len(rows) - shown >= every or (finished and len(rows) > shown):
                block = rows[shown:shown + every]
                print_row(table_row(block))
                shown += len(block)
            if finished:
                break
            time.sleep(2.0)
        errors.seek(0)
        lines = errors.read().strip().splitlines()
    return process.returncode, lines[-1] if lines else ""


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle)  # complete rows only
                if row.get("best") not in (None, "")]


def verdict(rows: list[dict[str, str]], max_non_finite: float, min_dsc: float) -> list[str]:
    """The check's failures (empty: passed) for the run's history rows."""
    failures = []
    steps = sum(int(r["steps"]) for r in rows)
    skipped = sum(int(r["skipped_steps"]) for r in rows)
    if steps == 0 or skipped > max_non_finite * steps:
        failures.append(f"{skipped} of {steps} steps were non-finite "
                        f"(more than {max_non_finite:.0%})")
    best, best_epoch = -math.inf, 0
    dsc = []
    for row in rows:
        if row["val_mean_dsc"]:
            value = _float(row["val_mean_dsc"])
            dsc.append(value)
            if collapse_warning(int(row["epoch"]), value, best, best_epoch) is not None:
                failures.append(f"validation DSC collapsed to 0 at epoch {row['epoch']} "
                                f"after {best:.4f}")
            if value > best:
                best, best_epoch = value, int(row["epoch"])
    if not dsc or not dsc[-1] >= min_dsc:
        failures.append(f"last validation DSC {dsc[-1] if dsc else math.nan:.4f} is below "
                        f"{min_dsc}")
    return failures


def print_diagnoses(path: Path) -> None:
    """The run's diagnosed non-finite steps (`petseg.training.diagnosis`), one line each."""
    if not path.is_file():
        return
    print("non-finite steps (first ones diagnosed):")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        print(f"  epoch {r['epoch']} step {r['step']}: loss {r['loss']}, gradient norm "
              f"{r['grad_norm']}, {r['precision']} forward: first non-finite output "
              f"{r['first_non_finite']}, largest output before it {r['largest_output']}, "
              f"largest parameter {r['largest_parameter']}, largest running_var "
              f"{r['largest_running_var']}, input finite {r['input_finite']}")


def describe_device(device: str | None) -> str:
    import torch

    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device or "cuda").index or 0
        props = torch.cuda.get_device_properties(index)
        return (f"{props.name} (compute {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}")
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    patch = [args.patch] * 3
    config = with_overrides(load_training_config(None), [  # checked here, before any work
        f"augmentation.patch_size={json.dumps(patch)}",
        f"validation.inference.roi_size={json.dumps(patch)}",
        f"optimizer.batch_size={args.batch}", f"validation.every={args.every}", *args.set],
        "resources/train_config.json", "optimizer.epochs=2")
    seconds = {"phantoms": make_phantoms(work / "data", args.phantoms, args.seed, args.size,
                                         args.workers)}

    print(f"{datetime.date.today()}, {describe_device(args.device)}")  # after the fork

    started = time.perf_counter()
    config_path = work / "train_config.json"
    save_json(config, config_path)
    checked(petseg("preprocess", "--data", str(work / "data"), "--out", str(work / "cache"),
                   "--workers", str(args.workers), "--config", str(config_path), "--quiet"),
            "petseg preprocess")
    splits = work / "splits.json"
    checked(petseg("split", "--data", str(work / "data"), "--metadata",
                   str(work / "data" / "Clinical_Metadata.csv"), "--cache",
                   str(work / "cache"), "--out", str(splits)), "petseg split")
    seconds["preprocess + split"] = time.perf_counter() - started

    n_train = len(load_splits(splits).training_keys(0))
    per_epoch = math.ceil(n_train / args.batch)
    epochs = max(1, round(args.steps / per_epoch))
    save_json(dataclasses.replace(config, optimizer=dataclasses.replace(
        config.optimizer, epochs=epochs)), config_path)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    print(f"fold 0: {n_train} training studies, {per_epoch} steps per epoch, {epochs} epochs "
          f"({epochs * per_epoch} steps), batch {args.batch} of {args.patch}^3, amp "
          f"{config.amp!r}, run {run}\n")
    command = [sys.executable, "-m", "petseg", "train", "--cache", str(work / "cache"),
               "--splits", str(splits), "--fold", "0", "--out", str(run), "--config",
               str(config_path), "--quiet"]
    if args.device:
        command += ["--device", args.device]
    started = time.perf_counter()
    status, last_error = follow_training(command, run / "history.csv", args.every)
    seconds["train"] = time.perf_counter() - started
    print("\n" + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))
    print_diagnoses(run / "non_finite_steps.jsonl")
    if status != 0:
        print(f"FAILED: petseg train exited {status}: {last_error}")
        return 1
    failures = verdict(_read_history(run / "history.csv"), args.max_non_finite, args.min_dsc)
    for failure in failures:
        print(f"FAILED: {failure}")
    if not failures:
        print("passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
