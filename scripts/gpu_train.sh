#!/usr/bin/env bash
# The passkey experiments on the GPU machine (run from the repository root there).
#
#   scripts/gpu_train.sh PARTS TIME_LIMIT_S [more `powerattn experiment passkey` args]
#   e.g. scripts/gpu_train.sh main 300 --jobs 10
#   PRESET=gpu-mix scripts/gpu_train.sh main 590 --seeds 0,1,2 --jobs 18 --deadline 500
#     (Figure 3's main part once the gate, scripts/gpu_passkey_gate.sh, has passed; on
#     nvidia-h200-x2; rerun the same command on the same machine to resume; PRESET
#     defaults to gpu)
#
# Trains into /tmp/passkey (checkpoints stay there) and copies what should come back into
# $OUT: results.json, the figures, the log, the GPU name and a tarball of every run's
# config/metrics/eval (no checkpoints). PARTS is a comma list of main,layers,long.
set -uo pipefail
PARTS=${1:?PARTS}
LIMIT=${2:?TIME_LIMIT_S}
shift 2
OUT=${OUT:-/tmp/passkey_out}
WORK=/tmp/passkey
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'triton', triton.__version__)" >>"$OUT/gpu.txt"
timeout "$LIMIT" python3 -m powerattn.cli experiment passkey --preset "${PRESET:-gpu}" --parts "$PARTS" \
    --out "$WORK" --no-progress "$@" 2>&1 | tee "$OUT/log.txt"
cp "$WORK"/results.json "$WORK"/*.png "$OUT"/ 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude=checkpoint.pt -C "$WORK" runs
ls -la "$OUT"
