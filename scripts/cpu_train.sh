#!/usr/bin/env bash
# Train the release ensemble on a CPU-only machine: the four full-data bncnn members that
# scripts/device_train.sh trains on the GPU (same seeds and data), then their average. EPOCHS is
# the schedule device_train.sh chose on its validation runs: 60 (30 made the CPU release before it).
#   bash scripts/cpu_train.sh            (about 4 hours on 2 cores at 60 epochs; resumable: run it again)
#   bash scripts/release.sh bncnn-x4=runs/bncnn-x4 conv2d=runs/conv2d-aug:int8
# Members train JOBS at a time (default: one per core) with one TensorFlow thread each: on 2 cores
# two one-thread runs took about 125 s an epoch each (63 s per epoch of the pair), one two-thread
# run alone 67 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
JOBS=${JOBS:-$(nproc)}
EPOCHS=${EPOCHS:-60}
SEEDS=(101 202 303 404)
mkdir -p runs
member() {  # train one member, or resume it if an earlier call was interrupted
  local out="runs/bncnn-all-s$1"
  [ -f "$out/metrics.json" ] && return 0
  local resume=()
  [ -f "$out/state.json" ] && resume=(--resume)
  TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \
    "$PIPELINE" train --model bncnn --epochs "$EPOCHS" --seed "$1" --validation-split 0 --out "$out" \
    "${resume[@]}" > "$out.log" 2>&1
}
running=0
for seed in "${SEEDS[@]}"; do
  member "$seed" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait
for seed in "${SEEDS[@]}"; do [ -f "runs/bncnn-all-s$seed/metrics.json" ] || { echo "member $seed failed: runs/bncnn-all-s$seed.log" >&2; exit 1; }; done
[ -f runs/bncnn-x4/model.keras ] || "$PIPELINE" ensemble "${SEEDS[@]/#/runs/bncnn-all-s}" --out runs/bncnn-x4
