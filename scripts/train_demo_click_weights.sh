#!/usr/bin/env bash
# Make the bundled demo ensemble click-aware: fine-tune each automatic demo fold with
# clicks and scribbles simulated on every augmented patch (two click-map channels added to
# the network, their first-layer weights starting at zero, so at zero clicks every fold
# starts exactly as the automatic one), on the training data, split and cache of
# scripts/train_demo_weights.sh (made here when missing), all five folds at once, one
# torch thread each; then fp16 export into weights/ and the threshold calibrated anew on
# 30 phantoms at zero clicks. The automatic folds are read from WORKDIR/automatic-weights
# (the five folds scripts/train_demo_weights.sh makes). On a shared 2-core CPU about 80 minutes.
#
# Usage: scripts/train_demo_click_weights.sh [WORKDIR] [EPOCHS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
work="${1:-$root/out/demo-training}"
epochs="${2:-80}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's petseg
petseg=("$root/.venv/bin/python" -m petseg)
if [[ ! -d "$work/cache" ]]; then
  "${petseg[@]}" phantom "$work/data" --cases 40 --seed 1000 --layout autopet --size full
  "${petseg[@]}" split --data "$work/data" --metadata "$work/data/Clinical_Metadata.csv" \
    --out "$work/splits.json" --seed 0
  "${petseg[@]}" preprocess --data "$work/data" --out "$work/cache" \
    --config "$root/resources/train_demo.json"
fi
auto="$work/automatic-weights"
if [[ ! -f "$auto/fold_0.safetensors" ]]; then
  echo "error: $auto has no automatic folds; put the five folds of scripts/train_demo_weights.sh there" >&2
  exit 1
fi
runs="$work/clicks"
mkdir -p "$runs"
pids=()
for fold in 0 1 2 3 4; do
  "${petseg[@]}" train --cache "$work/cache" --splits "$work/splits.json" --fold "$fold" \
    --out "$runs/fold_$fold" --config "$root/resources/train_demo.json" --device cpu --quiet \
    --init "$auto/fold_$fold.safetensors" \
    --set 'model.preprocessing.channel_order=["pet","ct","tumour_clicks","background_clicks"]' \
    --set model.network.in_channels=4 --set 'model.clicks={"shape":"ball","radius_mm":6.0}' \
    --set optimizer.epochs="$epochs" --set optimizer.lr=0.0005 \
    --set validation.every="$epochs" --set seed=12 \
    > "$runs.fold_$fold.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"${petseg[@]}" export-weights "$runs"/fold_{0,1,2,3,4} --out "$root/weights" --fp16
"${petseg[@]}" calibrate --weights "$root/weights" --out "$work/calibration" --cases 30 \
  --seed 555000 --mode fast --device cpu
echo "click-aware weights written to $root/weights; score them with petseg evaluate-interactive"
