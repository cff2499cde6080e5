#!/usr/bin/env bash
# Time to accuracy for the best model (bncnn) on the GPU machine, each run alone on the GPU, timed
# from process start (imports, data, model build and compilation included): `pipeline train
# --target-accuracy` stops at the first epoch whose validation accuracy reaches the target.
# Each run's metrics.json has the breakdown (timeline: when the fit loop started, when each epoch
# ended; for --fast also when the data reached the device and how long compiling took).
#
# A variant's name says what it runs, in parts joined by "-":
#   t990 / f995      Keras' fit (t) or the lean JAX loop `--fast` (f), to 99.0% / 99.5% (first part)
#   e10              10 epochs (default 30): the schedule, whose learning rate decays to the end
#   b256             batch 256 at a learning rate scaled with it (0.001 x 256 / 128)
#   noaug            no augmentation (the recipe's default is on; --fast augments on the device)
#   f32              float32 instead of mixed bfloat16
#   noat / at1       XLA's convolution autotuning off / without its buffer checks (compiles less)
#   notriton         no Triton GEMM fusions (XLA autotunes those at compile time too)
#   par              LLVM module compilation in parallel, 16 threads (if this XLA still has the flags)
#   fill / warm      the same run twice with one JAX compilation cache: the second is warm
# Default: the --fast set below, most telling first; the cold runs fill a compilation cache that
# the -warm runs then use. Runs that would not end before BUDGET_S (default 570 s, under the
# device tool's 600 s) are skipped, so the archive always comes back. Earlier Keras figures: t990,
# t995, t990-e5, t995-e10, t995-e10-b256, t990-e5-noat, t990-e5-fill/-warm, t995-e10-fill/-warm.
#
# Here, once:  bash scripts/device_wheels.sh && mkdir -p .device && cp -r ../shared/datasets/mnist .device/
# There:       bash scripts/device_time.sh [VARIANT...]   (carry .whl and .device; writes $OUT/time.tar.gz)
source "$(dirname "$0")/device_env.sh"

# variant NAME: sets ARGS (pipeline train options), XLA (XLA_FLAGS) and CACHE (compilation cache dir).
variant() {
  local name=$1 part first
  local -a parts
  IFS=- read -ra parts <<<"$name"
  first=${parts[0]}
  ARGS=(--epochs 30) XLA="" CACHE=""
  case $first in
    t[0-9]*) ;;
    f[0-9]*) ARGS+=(--fast) ;;
    *) echo "unknown variant $name: it starts with t or f and the target, e.g. f995" >&2; return 1 ;;
  esac
  ARGS+=(--target-accuracy "0.${first:1}")
  for part in "${parts[@]:1}"; do
    case $part in
      e[0-9]*) ARGS+=(--epochs "${part:1}") ;;  # the last --epochs wins
      b[0-9]*) ARGS+=(--batch-size "${part:1}" --learning-rate "$(python3 -c "print(0.001 * ${part:1} / 128)")") ;;
      noaug) ARGS+=(--no-augment) ;;
      f32) ARGS+=(--precision float32) ;;
      noat) XLA+=" --xla_gpu_autotune_level=0" ;;
      at1) XLA+=" --xla_gpu_autotune_level=1" ;;
      notriton) XLA+=" --xla_gpu_enable_triton_gemm=false" ;;
      par) XLA+=" --xla_gpu_enable_llvm_module_compilation_parallelism=true --xla_gpu_force_compilation_parallelism=16" ;;
      fill | warm) CACHE=/tmp/jax-cache-${name%-*} ;;
      *) echo "unknown part $part in $name" >&2; return 1 ;;
    esac
  done
}
fast=(f990-e5-fill f990-e5-warm f995-e10-fill f995-e10-warm f995-e10-noaug f990-e5-noaug f995-e10-b256
      f995-e10-f32 f995-e10-at1 f995-e10-notriton f995-e10-par f995-e20 f990-e3)
for name in "${@:-${fast[@]}}"; do variant "$name" || exit 2; done  # every name checked before any run
budget=${BUDGET_S:-570}
for name in "${@:-${fast[@]}}"; do
  variant "$name"
  limit=$((budget - SECONDS - 10 < 100 ? budget - SECONDS - 10 : 100))
  if ((limit < 20)); then echo "$name skipped: the call's time is spent"; continue; fi
  XLA_FLAGS=$XLA JAX_COMPILATION_CACHE_DIR=$CACHE timeout "$limit" python3 -m pipeline train --model bncnn \
    --backend jax --data-dir "$DATA" --out "runs/$name" "${ARGS[@]}" >"logs/$name.log" 2>&1 \
    || echo "$name failed or timed out: see logs/$name.log"
  python3 - "$name" <<'PY' || true
import json, sys
from pathlib import Path
name = sys.argv[1]
path = Path(f"runs/{name}/metrics.json")
m = json.loads(path.read_text()) if path.is_file() else {}
t, tl = m.get("target") or {}, m.get("timeline") or {}
ends = tl.get("epoch_end_seconds") or [0]
reached = "%.1f s (epoch %d)" % (t["seconds_from_process_start"], t["epoch"]) if t else "not reached"
extra = "" if "compile_seconds" not in tl else (
    f" data on device {tl['data_on_device_seconds']:4.1f} s, compile {tl['compile_seconds']:4.1f} s,")
print(f"{name:20} {reached:18} best val {m.get('best_val_accuracy') or 0:.4f} fit start"
      f" {tl.get('fit_start_seconds') or 0:4.1f} s,{extra} epoch 1 ends {ends[0]:5.1f} s,"
      f" then {(ends[-1] - ends[0]) / max(1, len(ends) - 1):4.2f} s/epoch")
PY
done
bring_back time
