#!/usr/bin/env bash
# Rebuild exported/ from trained run folders: the release models' .keras files (no optimizer state)
# with their metrics, ONNX and TFLite float32 and int8 exports, figures, and the parity report.
#   bash scripts/release.sh bncnn=runs/bncnn-full conv2d=runs/conv2d-full
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
[ $# -gt 0 ] || { echo "usage: $0 NAME=RUN_DIR [NAME=RUN_DIR ...]" >&2; exit 2; }
rm -rf exported.new && mkdir exported.new
for pair in "$@"; do
  name=${pair%%=*} run=${pair#*=}
  cp "$run/model.keras" "exported.new/$name.keras"
  cp "$run/metrics.json" "exported.new/$name.metrics.json"
  cp "$run/config.json" "exported.new/$name.config.json"
  cp "$run/curves.png" "exported.new/$name.curves.png"
  "$PIPELINE" export --model "exported.new/$name.keras" --format all --quantize none,int8 --out exported.new
  "$PIPELINE" evaluate "exported.new/$name.keras" --out exported.new
done
"$PIPELINE" verify --manifest exported.new/manifest.json
rm -rf exported && mv exported.new exported
du -sh exported
