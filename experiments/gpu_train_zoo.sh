#!/usr/bin/env bash
# The one prepared GPU run that trains (part of) the bench zoo (device tool; wheels the GPU machine lacks in .whl/):
#   make gpu-wheels          (here, once: the wheels the GPU machine lacks, into the git-ignored .whl/)
# Two modes:
# 1. Calibrated (one lease decides the steps): measures every job's throughput with all jobs on the GPU at once,
#    fixes the steps to fit the budget (equal within conf/zoo/bench.yaml's equal_steps sets), trains, packs.
#      run(command="ZOO_GROUP=dn bash experiments/gpu_train_zoo.sh", carry=[".whl"], timeout_s=590)
# 2. Lease after lease (the committed steps need more than one lease buys): every job trains for ZOO_SLICE minutes
#    and stops with a checkpoint; finished jobs come back as weights, unfinished ones as <key>.last.pth (about 16
#    bytes per parameter: pick a set whose state fits the 64 MiB that travels each way). Unpack the tars into the
#    git-ignored .zoo_state/ (overwriting the previous lease's) and carry it to the next lease:
#      run(command="ZOO_SLICE=7.3 ZOO_ONLY='rcan_dn_bench rcan_dn_bench_no_ca' bash experiments/gpu_train_zoo.sh",
#          carry=[".whl", ".zoo_state"], timeout_s=590)
# ZOO_REPRO="" drops the same-seed repeats (the default repeats dncnn_bench-s0 and rcan_bench-s0 to check that
# the GPU is deterministic). ZOO_STEPS=N trains every selected job for N steps instead of the committed ones (a
# lease that retrains shipped seeds on a new recipe; conf/zoo/bench.yaml takes N when they ship). Output:
# $OUT/zoo_<i>.tar (weights, eval.json, metrics.csv, leases.json, calibration). Locally afterwards:
# python experiments/train_zoo.py ship --from <folder> (finished jobs), and in mode 1 write the calibrated steps
# (calibration.json) into conf/zoo/bench.yaml. Runs so far: results/zoo/gpu_runs.md.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import cemap.models.swinir, cemap.models.hat, cemap.train; print('imports ok')" || echo "IMPORT CHECK FAILED (jobs that cannot start are dropped by the calibration)"
select=(${ZOO_GROUP:+--group "$ZOO_GROUP"} ${ZOO_ONLY:+--only $ZOO_ONLY})
if [ -n "${ZOO_SLICE:-}" ]; then
  mode=(--slice-minutes "$ZOO_SLICE" --grace-minutes 0.7)
  [ -d .zoo_state ] && mode+=(--resume-from .zoo_state)
else
  mode=(--calibrate "${CALIBRATE_S:-60}" --budget-minutes "${BUDGET_MIN:-7.3}" --grace-minutes 0.7
        --repro ${ZOO_REPRO-dncnn_bench-s0 rcan_bench-s0})
fi
python3 experiments/train_zoo.py train --device cuda "${mode[@]}" "${select[@]}" ${ZOO_STEPS:+--steps "$ZOO_STEPS"} \
  --output-root /tmp/zoo --pack "$OUT"
nvidia-smi --query-gpu=name,memory.used --format=csv
