#!/usr/bin/env bash
# The end-to-end benchmark on the GPU machine, in one call:
#   1. a smoke check of the transformers integration on CUDA (small Qwen2, bf16: prefill logits
#      vs a float64 eager forward with the dense mask, one decode step vs the recompute);
#   2. `powerattn bench e2e` on the Qwen2-7B shape: 128K, 64K, 32K, 16K prompts (longest
#      first), variants $VARIANTS (default full power), DECODE_STEPS DynamicCache decode
#      steps; then StaticCache decode steps (eager and CUDA graph) at batch 1 and 8;
#   3. torch.profiler of power (prefill + 8 decode steps) and full (8 decode steps) at 128K.
# FlashAttention-4, when its wrappers are on PYTHONPATH (.whl/cN/install.sh, scripts/fa4_split.sh), is kept there.
# Each (length, variant) is in its own try/except inside the benchmark; the JSON is rewritten
# after every measurement, so a run cut short keeps what it measured.
# Usage (repo root, device machine): OUT=/some/dir bash scripts/gpu_e2e.sh
set -u -o pipefail
OUT=${OUT:-results/e2e/raw}
DECODE_STEPS=${DECODE_STEPS:-32}
VARIANTS=${VARIANTS:-full power}
TIME_BUDGET=${TIME_BUDGET:-240}   # seconds after which no new measurement starts
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  echo "== $(date -u +%FT%TZ)  $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| triton', triton.__version__)"
  echo "== git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  python3 -m powerattn.cli bench e2e --check --variants $VARIANTS \
    --decode-steps "$DECODE_STEPS" --time-budget "$TIME_BUDGET" \
    --json "$OUT/e2e.json" --profile "$OUT/e2e_profile.txt" --plot "$OUT/e2e.png"
  echo "== exit $?  $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/e2e_log.txt"
