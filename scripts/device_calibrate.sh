#!/usr/bin/env bash
# Stand-in members for calibrating the release ensemble, on the GPU machine in one call: four
# bncnn runs of the release recipe (60 epochs, the release seeds) that all hold out the same 10%
# of the training images (--split-seed 0). Their ensemble's held-out images fix the temperature
# that `pipeline calibrate --fit-on` folds into the release bncnn-x4, whose members trained on all
# 60,000 images and so have no images of their own to be calibrated on (docs/release.md).
#
# Here, once:  bash scripts/device_wheels.sh && mkdir -p .device && cp -r ../shared/datasets/mnist .device/
# There:       bash scripts/device_calibrate.sh   (carry .whl and .device; writes $OUT/calibrate.tar.gz)
# Back here:   tar -xzf <files_at>/calibrate.tar.gz
#              pipeline ensemble runs/cal-e60-s{101,202,303,404} --out runs/cal-e60-x4
#              pipeline calibrate exported/bncnn-x4.keras --fit-on runs/cal-e60-x4/model.keras --out runs/bncnn-x4-cal
# then the release steps for one model (docs/release.md).
source "$(dirname "$0")/device_env.sh"
budget=${BUDGET_S:-575}   # the device tool stops a command at 600 s
export PIPELINE_AUGMENT_WORKERS=${PIPELINE_AUGMENT_WORKERS:-2}
for seed in 101 202 303 404; do
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
  train_parallel "cal-e60-s$seed" --model bncnn --epochs "${EPOCHS:-60}" --seed "$seed" --split-seed 0 \
    --validation-split 0.1 --out "runs/cal-e60-s$seed" ${TRAIN_ARGS:-}
done
deadline $((budget - SECONDS - 20))
wait_all || echo "some runs did not finish in time: see logs/"
stop_deadline
bring_back calibrate
