#!/usr/bin/env bash
# Train the bundled demo ensemble from scratch on synthetic phantoms, exactly as shipped:
# 40 full-size phantoms (autoPET layout, seed 1000) -> split -> preprocess -> 5 folds with
# resources/train_demo.json (all five at once, one torch thread each), then 300 epochs of
# fine-tuning from each fold's best checkpoint -> fp16 export into weights/ -> probability
# threshold calibrated on 30 other phantoms (seed 555000) and recorded in
# weights/manifest.json. On a 2-core CPU this takes about 3 hours; pass --device cuda on
# a GPU.
#
# Usage: scripts/train_demo_weights.sh [WORKDIR] [--device cpu|cuda]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
work="${1:-$root/out/demo-training}"
device=cpu
[[ "${2:-}" == "--device" ]] && device="${3:?--device needs a value}"
"$root/scripts/bootstrap.sh"
petseg=("$root/.venv/bin/python" -m petseg)
mkdir -p "$work"
[[ -d "$work/data" ]] || "${petseg[@]}" phantom "$work/data" --cases 40 --seed 1000 \
  --layout autopet --size full
"${petseg[@]}" split --data "$work/data" --metadata "$work/data/Clinical_Metadata.csv" \
  --out "$work/splits.json" --seed 0
"${petseg[@]}" preprocess --data "$work/data" --out "$work/cache" \
  --config "$root/resources/train_demo.json"
# train_folds RUNS [OPTION...]: the five folds at once, each with the OPTIONs added
train_folds() {
  local runs="$1" fold pids=()
  shift
  for fold in 0 1 2 3 4; do
    "${petseg[@]}" train --cache "$work/cache" --splits "$work/splits.json" --fold "$fold" \
      --out "$runs/fold_$fold" --config "$root/resources/train_demo.json" \
      --device "$device" --quiet "${@//FOLD/$fold}" > "$runs.fold_$fold.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
# stage 1: 600 epochs from random weights; stage 2: 300 more from each fold's best
# checkpoint at a third of the learning rate, with another patch stream (seed 8)
train_folds "$work/runs"
train_folds "$work/tuned" --init "$work/runs/fold_FOLD/best.safetensors" \
  --set optimizer.epochs=300 --set optimizer.lr=0.0003 --set validation.every=100 \
  --set seed=8
"${petseg[@]}" export-weights "$work"/tuned/fold_{0,1,2,3,4} --out "$root/weights" --fp16
"${petseg[@]}" calibrate --weights "$root/weights" --out "$work/calibration" --cases 30 \
  --seed 555000 --mode fast --device "$device" --thresholds 0.4 0.5 0.55 0.6 0.65 0.7 0.75 0.8
echo "weights written to $root/weights (thresholds calibrated); score them on held-out phantoms with scripts/evaluate_weights.py"
