#!/usr/bin/env bash
# Make the bundled demo ensemble click-aware: fine-tune each automatic demo fold with
# simulated clicks (two click-map channels added to the network, their first-layer weights
# starting at zero, so at zero clicks every fold starts exactly as the automatic one), on
# the training data, split and cache of scripts/train_demo_weights.sh (made here when
# missing), all five folds at once, one torch thread each; then fp16 export into weights/
# with the automatic ensemble's calibrated thresholds carried over. The automatic folds
# are kept in WORKDIR/automatic-weights. On a shared 2-core CPU about 40 minutes.
#
# Usage: scripts/train_demo_click_weights.sh [WORKDIR] [EPOCHS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
work="${1:-$root/out/demo-training}"
epochs="${2:-25}"
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
[[ -d "$auto" ]] || cp -r "$root/weights" "$auto"
runs="$work/clicks"
mkdir -p "$runs"
pids=()
for fold in 0 1 2 3 4; do
  "${petseg[@]}" train --cache "$work/cache" --splits "$work/splits.json" --fold "$fold" \
    --out "$runs/fold_$fold" --config "$root/resources/train_demo.json" --device cpu --quiet \
    --init "$auto/fold_$fold.safetensors" \
    --set 'model.preprocessing.channel_order=["pet","ct","tumour_clicks","background_clicks"]' \
    --set model.network.in_channels=4 --set optimizer.epochs="$epochs" \
    --set optimizer.lr=0.0005 --set validation.every="$epochs" --set seed=11 \
    > "$runs.fold_$fold.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"${petseg[@]}" export-weights "$runs"/fold_{0,1,2,3,4} --out "$root/weights" --fp16
"$root/.venv/bin/python" - "$auto" "$root/weights" <<'EOF'
import sys
from petseg.checkpoint import read_manifest, write_thresholds
auto = read_manifest(sys.argv[1])
note = ("carried over from the automatic demo ensemble these folds were fine-tuned from; "
        "not recalibrated for the click-aware folds")
write_thresholds(sys.argv[2], auto["thresholds"], {**auto["threshold_calibration"],
                                                   "carried_over": note})
EOF
echo "click-aware weights written to $root/weights; score them with petseg evaluate-interactive"
