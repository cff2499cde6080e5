#!/usr/bin/env bash
# Rebuild exported/ from trained run folders: the release models' .keras files (no optimizer state)
# with their metrics, ONNX and TFLite exports (float32 and int8 unless QUANT says otherwise),
# figures, and the parity report.
#   bash scripts/release.sh NAME=RUN_DIR[:QUANT] ...
#   bash scripts/release.sh bncnn-x4=runs/bncnn-x4 conv2d=runs/conv2d-aug:int8
# QUANT is a --quantize list (default none,int8): a reference model can ship int8 only, which
# keeps exported/ under its 25 MB budget; QUANT=micro ships the microcontroller target instead
# (export --micro: int8 TFLite with int8 I/O, C source and header) and its int8 ONNX, classify's
# screen in front of the default model. Then the review model is fitted (scripts/fit_review.py:
# the default model's features, and the screen's where there is one) before verify.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
[ $# -gt 0 ] || { echo "usage: $0 NAME=RUN_DIR[:QUANT] [NAME=RUN_DIR[:QUANT] ...]" >&2; exit 2; }
rm -rf exported && mkdir exported  # a failed release leaves git's copy to restore
for pair in "$@"; do
  name=${pair%%=*} rest=${pair#*=}
  run=${rest%%:*} quant=none,int8
  [ "$run" = "$rest" ] || quant=${rest#*:}
  cp "$run/model.keras" "exported/$name.keras"
  cp "$run/metrics.json" "exported/$name.metrics.json"
  cp "$run/config.json" "exported/$name.config.json"
  cp "$run/curves.png" "exported/$name.curves.png"
  if [ "$quant" = micro ]; then
    "$PIPELINE" export --model "exported/$name.keras" --micro --out exported
    "$PIPELINE" export --model "exported/$name.keras" --format onnx --quantize int8 --out exported
  else
    "$PIPELINE" export --model "exported/$name.keras" --format all --quantize "$quant" --out exported
  fi
  "$PIPELINE" evaluate "exported/$name.keras" --out exported
done
screen=()
[ ! -f exported/micro.int8.onnx ] || screen=(--screen exported/micro.int8.onnx)
"$(dirname "$PIPELINE")/python" scripts/fit_review.py --out exported/review.npz "${screen[@]}"
"$PIPELINE" verify --manifest exported/manifest.json --report-dir exported

du -sh exported
