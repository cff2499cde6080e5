#!/usr/bin/env bash
# Rebuild exported/ from trained run folders: the release models' .keras files (no optimizer state)
# with their metrics, ONNX and TFLite float32 and int8 exports, figures, and the parity report.
#   bash scripts/release.sh bncnn-x3=runs/bncnn-x3 conv2d=runs/conv2d-aug
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
[ $# -gt 0 ] || { echo "usage: $0 NAME=RUN_DIR [NAME=RUN_DIR ...]" >&2; exit 2; }
rm -rf exported && mkdir exported  # a failed release leaves git's copy to restore
for pair in "$@"; do
  name=${pair%%=*} run=${pair#*=}
  cp "$run/model.keras" "exported/$name.keras"
  cp "$run/metrics.json" "exported/$name.metrics.json"
  cp "$run/config.json" "exported/$name.config.json"
  cp "$run/curves.png" "exported/$name.curves.png"
  "$PIPELINE" export --model "exported/$name.keras" --format all --quantize none,int8 --out exported
  "$PIPELINE" evaluate "exported/$name.keras" --out exported
done
"$PIPELINE" verify --manifest exported/manifest.json

du -sh exported
