#!/usr/bin/env bash
# Time to accuracy for the best model (bncnn) on the GPU machine, each run alone on the GPU, timed
# from process start (imports, data, model build and compilation included): `pipeline train
# --target-accuracy` stops at the first epoch whose validation accuracy reaches the target.
# Each run's metrics.json has the breakdown (timeline: when the fit loop started, when each epoch ended).
#
# Variants (names as arguments; default: all, which takes longer than one 600 s call):
#   t990, t995                the release schedule (30 epochs) to 99.0% and 99.5%
#   t990-e5, t995-e10         shorter schedules, whose learning rate decays sooner
#   t990-e5-fill/-warm        t990-e5 twice with one JAX compilation cache: the second shows a warm cache
#   *-noat                    XLA's convolution autotuning off (--xla_gpu_autotune_level=0): less to compile
#   t995-e10-b256-noat        batch 256 at twice the learning rate: half the steps per epoch
#   t995-e10-noat-fill/-warm  the compilation cache with autotuning off
#   f990-e5, f995-e10         `--fast`: the lean JAX loop (pipeline/fastfit.py; no augmentation, one
#                             compiled scan per epoch), 5 and 10-epoch schedules
#   f995-e10-b256             the same at batch 256 and twice the learning rate
#
# Here, once:  bash scripts/device_wheels.sh && mkdir -p .device && cp -r ../shared/datasets/mnist .device/
# There:       bash scripts/device_time.sh [VARIANT...]   (carry .whl and .device; writes $OUT/time.tar.gz)
source "$(dirname "$0")/device_env.sh"
NOAT=--xla_gpu_autotune_level=0
variant() {
  case $1 in
    t990) echo "--epochs 30 --target-accuracy 0.99" ;;
    t995) echo "--epochs 30 --target-accuracy 0.995" ;;
    t990-e5 | t990-e5-fill | t990-e5-warm) echo "--epochs 5 --target-accuracy 0.99" ;;
    t995-e10 | t995-e10-fill | t995-e10-warm) echo "--epochs 10 --target-accuracy 0.995" ;;
    t990-e5-noat) echo "--epochs 5 --target-accuracy 0.99" ;;
    t995-e10-noat | t995-e10-noat-fill | t995-e10-noat-warm) echo "--epochs 10 --target-accuracy 0.995" ;;
    t995-e10-b256 | t995-e10-b256-noat) echo "--epochs 10 --batch-size 256 --learning-rate 0.002 --target-accuracy 0.995" ;;
    f990-e5) echo "--fast --epochs 5 --target-accuracy 0.99" ;;
    f995-e10) echo "--fast --epochs 10 --target-accuracy 0.995" ;;
    f995-e10-b256) echo "--fast --epochs 10 --batch-size 256 --learning-rate 0.002 --target-accuracy 0.995" ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}
all=(t990 t995 t990-e5 t995-e10 t990-e5-fill t990-e5-warm t990-e5-noat t995-e10-noat t995-e10-b256-noat
     t995-e10-noat-fill t995-e10-noat-warm f990-e5 f995-e10 f995-e10-b256)
for name in "${@:-${all[@]}}"; do
  args=$(variant "$name")
  xla=""; cache=""
  [[ $name == *noat* ]] && xla=$NOAT
  [[ $name == *-fill || $name == *-warm ]] && cache=/tmp/jax-cache-${name%-*}
  # shellcheck disable=SC2086  # $args is a list of options
  XLA_FLAGS=$xla JAX_COMPILATION_CACHE_DIR=$cache timeout 100 python3 -m pipeline train --model bncnn \
    --backend jax --data-dir "$DATA" --out "runs/$name" $args >"logs/$name.log" 2>&1 \
    || echo "$name failed or timed out: see logs/$name.log"
  python3 - "$name" <<'PY' || true
import json, sys
from pathlib import Path
name = sys.argv[1]
m = json.loads(Path(f"runs/{name}/metrics.json").read_text()) if Path(f"runs/{name}/metrics.json").is_file() else {}
t, tl = m.get("target") or {}, m.get("timeline") or {}
ends = tl.get("epoch_end_seconds") or []
print(f"{name:22} target {'%.1f s (epoch %d)' % (t['seconds_from_process_start'], t['epoch']) if t else 'not reached':18}"
      f" fit start {tl.get('fit_start_seconds') or 0:5.1f} s, epoch 1 ends {ends[0] if ends else 0:5.1f} s,"
      f" then {((ends or [0])[-1] - (ends or [0])[0]) / max(1, len(ends) - 1):4.2f} s/epoch")
PY
done
bring_back time
