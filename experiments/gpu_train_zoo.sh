#!/usr/bin/env bash
# The one prepared GPU run that trains the whole bench zoo (device tool; wheels the GPU machine lacks in .whl/):
#   make gpu-wheels          (here, once: the wheels the GPU machine lacks, into the git-ignored .whl/)
#   run(command="ZOO_GROUP=dn bash experiments/gpu_train_zoo.sh", carry=[".whl"], timeout_s=590)
# Measures every job's throughput with all jobs on the GPU at once (60 s), fixes the steps to fit the budget, trains,
# then packs the float16 weights, eval.json, metrics.csv and the calibration into $OUT/zoo_<i>.tar.
# ZOO_GROUP=dn|sr|mt trains one group of conf/zoo/bench.yaml (one lease each: all 38 jobs in one 7-minute lease gave
# only 700-2,500 steps per job on 2026-11-26, results/zoo/gpu_runs.md).
# Locally afterwards: untar, python experiments/train_zoo.py ship --from <folder>, and write the calibrated steps
# (calibration.json) into conf/zoo/bench.yaml.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import cemap.models.swinir, cemap.models.hat, cemap.train; print('imports ok')" || echo "IMPORT CHECK FAILED (jobs that cannot start are dropped by the calibration)"
python3 experiments/train_zoo.py train --device cuda --calibrate "${CALIBRATE_S:-60}" \
  --budget-minutes "${BUDGET_MIN:-7.3}" --grace-minutes 0.7 --repro dncnn_bench-s0 rcan_bench-s0 \
  ${ZOO_GROUP:+--group "$ZOO_GROUP"} --output-root /tmp/zoo --pack "$OUT"
nvidia-smi --query-gpu=name,memory.used --format=csv
