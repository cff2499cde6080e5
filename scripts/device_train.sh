#!/usr/bin/env bash
# Train every release model on the GPU machine in one call, with Keras' JAX backend, and bring the
# run folders back as one archive (the device tool returns at most 8 files).
#
# Here, once:  bash scripts/device_wheels.sh && mkdir -p .device && cp -r ../shared/datasets/mnist .device/
#              (.device/ is ignored by git; name it and .whl in the device tool's `carry`)
# There:       bash scripts/device_train.sh            (writes $OUT/runs.tar.gz)
# Back here:   tar -xzf <files_at>/runs.tar.gz         (runs/<model>-gpu/ with model.keras, metrics, ...)
#              then `pipeline export` and `pipeline verify` with TensorFlow, as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 KERAS_BACKEND=jax PIPELINE_NO_DOWNLOAD=1
OUT=${OUT:-out}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# model:epochs, as in the README's results table; time-to-accuracy runs stop at their target.
for spec in conv2d:100 flat:100; do
  model=${spec%%:*} epochs=${spec##*:}
  python3 -m pipeline train --model "$model" --epochs "$epochs" --backend jax \
    --data-dir .device/mnist --out "runs/$model-gpu"
done
# The release ensemble: three bncnn runs with different seeds, averaged into one model.
for seed in 1234 7 42; do
  python3 -m pipeline train --model bncnn --epochs 30 --seed "$seed" --backend jax \
    --data-dir .device/mnist --out "runs/bncnn-gpu-s$seed"
done
python3 -m pipeline ensemble runs/bncnn-gpu-s1234 runs/bncnn-gpu-s7 runs/bncnn-gpu-s42 \
  --data-dir .device/mnist --out runs/bncnn-x3-gpu
python3 -m pipeline train --model bncnn --epochs 30 --backend jax --data-dir .device/mnist \
  --target-accuracy 0.99 --out runs/bncnn-gpu-t990
python3 -m pipeline train --model bncnn --epochs 30 --backend jax --data-dir .device/mnist \
  --target-accuracy 0.995 --out runs/bncnn-gpu-t995
tar --exclude='checkpoint.keras' --exclude='best.weights.h5' -czf "$OUT/runs.tar.gz" runs
ls -la "$OUT"
