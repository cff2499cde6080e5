# Sourced by the scripts/device_*.sh scripts on the GPU machine: install the carried wheels (Keras
# and its two needs the machine lacks, from scripts/device_wheels.sh), point Keras at JAX, and let
# several runs share the one GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 KERAS_BACKEND=jax PIPELINE_NO_DOWNLOAD=1
# JAX takes 75% of the GPU's memory at start by default; runs that share the GPU take what they use.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export OUT=${OUT:-out}
DATA=.device/mnist
export PIPELINE_DATA_DIR=$PWD/.device  # for the commands that take no --data-dir (bench)
mkdir -p "$OUT" runs logs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'

# train_parallel NAME ARGS... : start `pipeline train ARGS` in the background, its log in logs/NAME.log.
# Several share the GPU (each is launch-bound at MNIST's size); each gets a few augmentation threads.
pids=()
train_parallel() {
  local name=$1
  shift
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python3 -m pipeline train "$@" --backend jax --data-dir "$DATA" \
    >"logs/$name.log" 2>&1 &
  pids+=($!)
}
# wait_all: wait for every background run; fail (after all have ended) if any failed.
wait_all() {
  local failed=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  pids=()
  return $failed
}
# deadline SECONDS: SIGTERM every `pipeline train` in SECONDS (a time limit inside the device's
# own); stop_deadline cancels it. The timer writes nowhere and its sleep dies with it: a sleep
# left holding the call's output would keep the call, and the device, until it ran out.
deadline() {
  ( sleep "$1" && pkill -TERM -f 'pipeline train' ) >/dev/null 2>&1 &
  killer=$!
}
stop_deadline() {
  pkill -P "$killer" 2>/dev/null || true
  kill "$killer" 2>/dev/null || true
}
# bring_back NAME: the run folders and logs as one archive in $OUT (the tool returns at most 8
# files); resumable checkpoints stay behind.
bring_back() {
  tar --exclude='checkpoint.keras' --exclude='best.weights.h5' -czf "$OUT/$1.tar.gz" runs logs
  ls -la "$OUT"
}
