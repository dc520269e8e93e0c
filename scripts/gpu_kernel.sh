#!/usr/bin/env bash
# GPU job of the attention operator: the correctness suite on CUDA (every backend `auto` may
# pick: FlashAttention-4 when installed, FlexAttention's Triton kernels, the decode kernel),
# then `powerattn bench kernel` (Qwen2-7B shapes, 8K..128K). Run from the repository root on
# the GPU machine:
#     OUT=/tmp/out bash scripts/gpu_kernel.sh [all|tests|bench|diag]
# With FlashAttention-4 (DEVELOPERS.md, scripts/fa4_split.sh: copy calls, then the last one sources .whl/cN/install.sh
# first, which puts the wheels on PYTHONPATH). Writes env.txt, tests.log, bench.log,
# kernel.json, summary.json, kernel.png under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/powerattn-kernel}
MODE=${1:-all}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    python3 -c "import flash_attn.cute; print('flash_attn.cute imports')" 2>&1 | tail -n 1
} 2>&1 | tee "$OUT/env.txt"
rc=0
if [[ $MODE == all || $MODE == tests ]]; then
    start=$(date +%s)
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -n "${TEST_WORKERS:-4}" --maxfail=20 \
        -p no:cacheprovider ${TESTS:-tests/ops/test_sparse_attention.py tests/ops/test_decode.py \
        tests/ops/test_flex.py tests/ops/test_bench_kernel.py} >"$OUT/tests.log" 2>&1 || rc=$?
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -n 30
    echo "tests: rc=$rc in $(($(date +%s) - start)) s"
fi
if [[ $MODE == all || $MODE == bench ]]; then
    start=$(date +%s)
    timeout "${BENCH_TIMEOUT:-300}" python3 -m powerattn.cli bench kernel ${BENCH_ARGS:-} \
        --json "$OUT/kernel.json" --summary "$OUT/summary.json" --plot "$OUT/kernel.png" >"$OUT/bench.log" 2>&1 || rc=$?
    sed -n '/^NVIDIA/,$p' "$OUT/bench.log" | tail -n 80
    tail -n 5 "$OUT/bench.log"
    echo "bench: rc=$rc in $(($(date +%s) - start)) s"
fi
if [[ $MODE == diag ]]; then
    timeout "${DIAG_TIMEOUT:-200}" python3 results/kernel/flex_diag.py 2>&1 | tee "$OUT/diag.log" \
        | grep -v Warning | tail -n 60
    timeout 120 python3 tests/ops/decode_cases.py cuda 2>&1 | tail -n 12
fi
exit $rc
