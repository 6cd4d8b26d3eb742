#!/usr/bin/env bash
# The one prepared GPU run that trains the whole bench zoo (device tool; wheels the GPU machine lacks in .whl/):
#   run(command="bash experiments/gpu_train_zoo.sh", carry=[".whl"], timeout_s=590)
# Measures every job's throughput with all jobs on the GPU at once (60 s), fixes the steps to fit the budget, trains,
# then packs the float16 weights, eval.json, metrics.csv and the calibration into $OUT/zoo_<i>.tar.
# Locally afterwards: python experiments/train_zoo.py ship --from <unpacked folder> --steps-from-calibration
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import cemap.models.swinir, cemap.models.hat, cemap.train; print('imports ok')" || echo "IMPORT CHECK FAILED (jobs that cannot start are dropped by the calibration)"
python3 experiments/train_zoo.py train --device cuda --calibrate "${CALIBRATE_S:-60}" \
  --budget-minutes "${BUDGET_MIN:-7.3}" --grace-minutes 0.7 --repro dncnn_bench-s0 rcan_bench-s0 \
  --output-root /tmp/zoo --pack "$OUT"
nvidia-smi --query-gpu=name,memory.used --format=csv
