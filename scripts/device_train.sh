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
# Can the host feed the GPU? Augmented images/s per thread count (training uses half the cores).
PIPELINE_DATA_DIR=.device/mnist python3 -m pipeline bench augment
# The released conv2d is the seed's architecture trained with augmentation.
python3 -m pipeline train --model conv2d --epochs 100 --augment --backend jax \
  --data-dir .device/mnist --out runs/conv2d-gpu
python3 -m pipeline train --model flat --epochs 100 --backend jax --data-dir .device/mnist \
  --out runs/flat-gpu
# The release ensemble: four bncnn runs with different seeds on all 60,000 training images (the
# 30 epochs were chosen on validation splits by earlier runs), averaged into one model. Four is the
# most the 1.5M-parameter budget holds (4 x 346,026); the members are fixed before any is scored.
for seed in 101 202 303 404; do
  python3 -m pipeline train --model bncnn --epochs 30 --seed "$seed" --validation-split 0 \
    --backend jax --data-dir .device/mnist --out "runs/bncnn-all-s$seed"
done
python3 -m pipeline ensemble runs/bncnn-all-s101 runs/bncnn-all-s202 runs/bncnn-all-s303 \
  runs/bncnn-all-s404 --data-dir .device/mnist --out runs/bncnn-x4
python3 -m pipeline train --model bncnn --epochs 30 --backend jax --data-dir .device/mnist \
  --target-accuracy 0.99 --out runs/bncnn-gpu-t990
python3 -m pipeline train --model bncnn --epochs 30 --backend jax --data-dir .device/mnist \
  --target-accuracy 0.995 --out runs/bncnn-gpu-t995
# Does mixed precision help? The same 99.0% run in float32 (the runs above use auto = bfloat16).
python3 -m pipeline train --model bncnn --epochs 30 --backend jax --data-dir .device/mnist \
  --target-accuracy 0.99 --precision float32 --out runs/bncnn-gpu-t990-f32
tar --exclude='checkpoint.keras' --exclude='best.weights.h5' -czf "$OUT/runs.tar.gz" runs
ls -la "$OUT"
