#!/usr/bin/env bash
# Distil the release ensemble into one network (bncnn, bncnn-s) on the GPU machine, in one call, and bring the run
# folders back (issue #15: the default model's inference, four members' worth of convolutions,
# bounds classify on scans; one network a quarter of the cost is what the throughput goal needs).
#
# Four runs at once on the one GPU, all `train --fast --teacher exported/bncnn-x4.keras` (the
# student learns the ensemble's probabilities on every distorted batch, inside the compiled step),
# for each student M of bncnn (one member's size) and bncnn-s (three quarters of its channels,
# about 56% of its multiply-adds: the margin if bncnn's cost misses the throughput goal):
#   - distil-M-e$E-s101: the release candidate, all 60,000 training images;
#   - distil-M-e$E-val: the same recipe holding out the 10% that --split-seed 0 holds out (as the
#     calibration stand-ins of scripts/device_calibrate.sh), for its validation curve and as the
#     stand-in `pipeline calibrate --fit-on` fits the candidate's temperature on.
# E is EPOCHS (default 60, the members' schedule); STUDENTS overrides "bncnn bncnn-s".
#
# Here, once:  bash scripts/device_wheels.sh && mkdir -p .device && cp -r ../shared/datasets/mnist .device/
# There:       bash scripts/device_distil.sh   (carry .whl and .device; writes $OUT/distil.tar.gz)
# Back here:   tar -xzf <files_at>/distil.tar.gz
#              pipeline calibrate runs/distil-bncnn-e60-s101/model.keras \
#                  --fit-on runs/distil-bncnn-e60-val/model.keras --out runs/distil-bncnn-e60-cal
#              (and the same for bncnn-s)
#              then the release steps (docs/release.md, "A distilled default"): export and verify
#              int8, the review model refitted on its features, bench scans against the goals.
source "$(dirname "$0")/device_env.sh"
budget=${BUDGET_S:-575}   # the device tool stops a command at 600 s
epochs=${EPOCHS:-60}
teacher=exported/bncnn-x4.keras
for student in ${STUDENTS:-bncnn bncnn-s}; do
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
  train_parallel "distil-$student-e$epochs-s101" --model "$student" --fast --teacher "$teacher" \
    --epochs "$epochs" --seed 101 --validation-split 0 --out "runs/distil-$student-e$epochs-s101" ${TRAIN_ARGS:-}
  # shellcheck disable=SC2086
  train_parallel "distil-$student-e$epochs-val" --model "$student" --fast --teacher "$teacher" \
    --epochs "$epochs" --seed 1 --split-seed 0 --validation-split 0.1 \
    --out "runs/distil-$student-e$epochs-val" ${TRAIN_ARGS:-}
done
# A SIGTERM ends a --fast run after its epoch in progress and saves it (metrics.json: "stopped"):
# a minute leaves time for that epoch, the test evaluation and the save.
deadline $((budget - SECONDS - 60))
wait_all || echo "some runs did not finish in time: see logs/"
stop_deadline
grep -h "test accuracy\|epochs (best)\|train / wall" logs/*.log | tee "$OUT/summary.txt" || true
bring_back distil
