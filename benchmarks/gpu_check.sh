#!/usr/bin/env bash
# The engine's GPU figures as one script (~3 minutes on an H100): loop throughput against pure forward (denoising, and
# x4 SR with the patch bank downscaled once vs per batch), the paper's demo end to end (target <= 4 s), locality
# equality, precision report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY benchmarks/bench_cem.py --device cuda --size 88 --batch 256 --depth 20 --samples 8
$PY benchmarks/bench_cem.py --device cuda --size 256 --batch 64 --depth 20 --samples 2
$PY benchmarks/bench_cem.py --device cuda --task sr --size 256 --batch 256 --depth 16 --features 64 --samples 8
$PY benchmarks/bench_demo.py --device cuda --estimator fixed --samples 50
$PY benchmarks/bench_demo.py --device cuda --estimator reference
$PY benchmarks/bench_locality.py --device cuda --samples 8 --far 64
$PY benchmarks/bench_adaptive.py --device cuda --samples 50
$PY benchmarks/bench_precision.py --device cuda --samples 8
