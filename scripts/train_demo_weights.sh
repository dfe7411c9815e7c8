#!/usr/bin/env bash
# Train the bundled demo ensemble from scratch on synthetic phantoms, exactly as shipped:
# 40 full-size phantoms (autoPET layout, seed 1000) -> split -> preprocess -> 5 folds with
# resources/train_demo.json (all five at once, one torch thread each) -> fp16 export into
# weights/ -> probability threshold calibrated on 30 other phantoms (seed 555000) and
# recorded in weights/manifest.json. On a 2-core CPU this takes about 2 hours; pass
# --device cuda on a GPU.
#
# Usage: scripts/train_demo_weights.sh [WORKDIR] [--device cpu|cuda]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
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
pids=()
for fold in 0 1 2 3 4; do
  "${petseg[@]}" train --cache "$work/cache" --splits "$work/splits.json" --fold "$fold" \
    --out "$work/runs/fold_$fold" --config "$root/resources/train_demo.json" \
    --device "$device" --quiet > "$work/train_fold_$fold.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"${petseg[@]}" export-weights "$work"/runs/fold_{0,1,2,3,4} --out "$root/weights" --fp16
"$root/.venv/bin/python" "$root/scripts/evaluate_weights.py" --weights "$root/weights" \
  --out "$work/calibration" --cases 30 --seed 555000 --mode fast --device "$device" \
  --thresholds 0.4 0.5 0.55 0.6 0.65 0.7 0.75 0.8 --calibrate
echo "weights written to $root/weights; score them with scripts/evaluate_weights.py"
