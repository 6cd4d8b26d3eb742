#!/usr/bin/env bash
# The GPU checks of a session lent the device tool, as one prepared command (~9 minutes; the device runs Python 3.12
# and torch without hydra, omegaconf or basicsr, and without ../shared):
#   make gpu-wheels && mkdir -p .shared && cp -r ../shared/reference .shared/     (here, once; both git-ignored)
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".shared"], timeout_s=590)
# 1. make bench-gpu's figures (benchmarks/gpu_check.sh: loop/forward ratios for DN and x4 SR, the paper's DN demo end
#    to end, locality, precision), cut off after GPU_CHECK_S seconds;
# 2. the paper profile of dn_channel_attention at the paper's geometry (256 px demo image, the 3 ROIs of 32 px, 8 px
#    blocks, reference estimator) on the authors' checkpoint layouts with seeded weights (tests/paper_checkpoints.py;
#    the real DnCNN for p_dn_dncnn): the wall time of every subject's map ("[i/n] subject image: ... in S s"), until
#    PAPER_S seconds (0: skip this part). Synthesised weights make the timings count, not the maps. The finished
#    maps come back in $OUT/paper_maps.tar for the analysis here. PAPER_SUBJECTS=a,b,... maps only those (e.g. the
#    global subjects the last lease did not reach: p_dn_rcan_ca,p_dn_swinir,p_dn_restormer,p_sr_rcan_ca). Analysis:
#      tar -xf paper_maps.tar -C /tmp/p && python experiments/runner.py dn_channel_attention --profile paper \
#        --stage analyse --output-root /tmp/p --images ../shared/reference/images/demo_2.png --results-dir /tmp/p/r
set -u
DEVICE=${DEVICE:-cuda}
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
[ -e ../shared/reference ] || { [ -d .shared/reference ] && ln -sfn "$PWD/.shared" ../shared; }
[ -e ../shared/reference/dncnn_color_blind.pth ] || { echo "no ../shared/reference (carry .shared)"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

if [ "$DEVICE" = cuda ]; then
  PY=python3 timeout "${GPU_CHECK_S:-240}" bash benchmarks/gpu_check.sh || echo "gpu_check stopped (status $?)"
fi

[ "${PAPER_S:-300}" = 0 ] && exit 0   # PAPER_S=0: the GPU figures only (a lease that also trains the zoo)

python3 - <<'EOF'
from pathlib import Path

from cemap.config import compose_config
from tests.paper_checkpoints import synthesise

subjects = set(compose_config("run", ["experiment=dn_channel_attention"]).experiment.paper.subjects)
print("synthesised:", ", ".join(synthesise(Path("/tmp/paper_ckpt"), Path("../shared/reference"), subjects)))
EOF
started=$(date +%s)
CKPT_DIR=/tmp/paper_ckpt timeout "${PAPER_S:-300}" python3 experiments/runner.py dn_channel_attention --profile paper \
  --stage maps --quiet --images ../shared/reference/images/demo_2.png --device "$DEVICE" --output-root /tmp/paper_out \
  ${PAPER_SUBJECTS:+--subjects "$PAPER_SUBJECTS"} \
  || echo "paper profile stopped (status $?)"
echo "paper profile: $(( $(date +%s) - started )) s for $(find /tmp/paper_out/experiments -name cem.npz | wc -l) maps"
[ -n "${OUT:-}" ] && tar -cf "$OUT/paper_maps.tar" -C /tmp/paper_out experiments
exit 0
