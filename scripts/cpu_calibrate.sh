#!/usr/bin/env bash
# Stand-in members for calibrating the release ensemble on a CPU-only machine: four bncnn runs of
# the release recipe at a short schedule (EPOCHS, default 6; the release's 60 take about 4 hours
# a member here) that all hold out the same 10% of the training images (--split-seed 0), then
# their ensemble. scripts/device_calibrate.sh is the same at the release's 60 epochs on the GPU.
#   bash scripts/cpu_calibrate.sh       (about 45 minutes on 2 cores at 6 epochs; resumable)
#   pipeline calibrate exported/bncnn-x4.keras --fit-on runs/cal-e6-x4/model.keras --out runs/bncnn-x4-cal
# Two members train at a time with one TensorFlow thread each (as scripts/cpu_train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
EPOCHS=${EPOCHS:-6}
mkdir -p runs
member() {
  local out="runs/cal-e$EPOCHS-s$1"
  [ -f "$out/metrics.json" ] && return 0
  local resume=()
  [ -f "$out/state.json" ] && resume=(--resume)
  TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \
    "$PIPELINE" train --model bncnn --epochs "$EPOCHS" --seed "$1" --split-seed 0 --validation-split 0.1 \
    --out "$out" "${resume[@]}" > "$out.log" 2>&1
}
(member 101; member 303) &
(member 202; member 404) &
wait
[ -f "runs/cal-e$EPOCHS-x4/model.keras" ] ||
  "$PIPELINE" ensemble runs/cal-e"$EPOCHS"-s{101,202,303,404} --out "runs/cal-e$EPOCHS-x4"
