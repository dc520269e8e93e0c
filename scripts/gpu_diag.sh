#!/usr/bin/env bash
# Issue 9's open diagnostics on nvidia-h200, in two calls of under 10 minutes each, with
# FlashAttention-4 on PYTHONPATH (source .whl/cN/install.sh after the copy calls of
# scripts/fa4_split.sh):
#   A  the compiled static-cache decode as one graph on CUDA (tests/hf/compiled_decode_case.py
#      with TORCH_LOGS=graph_breaks,recompiles: the whole log), then scripts/gpu_hf.sh (tests/hf
#      on CUDA, the HF decode timing) and the decode split-count sweep;
#   B  the 8K forward in the bench's own process (scripts/gpu_fwd8k.py), then bench e2e at 128K
#      with full and power prefill both profiled (what the two share bounds the speed-up);
#   C  the checks of the fixes that A and B led to: the first decode of a process under
#      CUDA-graph trees (tests/ops, tests/hf and the compiled case on CUDA), then bench e2e at
#      128K with the TTFT taken on the second prompt of the length (prefill_first_s: the first).
#   D  (session 20) the CUDA operator suite with FlashAttention-4 called directly (ops.fa4)
#      and through FlexAttention, beside the compiled static-cache decode case (one graph?),
#      then tests/hf on CUDA; the benchmark follows in its own call (gpu_kernel.sh bench);
#   E  bench e2e at 128K, both prefills profiled (prefill through the direct FA4 call).
# Usage (repository root, device machine): OUT=$OUT bash scripts/gpu_diag.sh A|B|C|D|E
# Writes $OUT/diag_<part>.log and $OUT/diag_<part>.tgz (every file; the device returns 8).
set -uo pipefail
PART=${1:?part A or B}
OUT=${OUT:-/tmp/powerattn-diag}
WORK=/tmp/powerattn-diag-$PART
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - start)) s in)"; }
hf_tests() {  # tests/hf on CUDA (8 workers), failures printed
    POWERATTN_HF_DEVICE=cuda timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/hf \
        --deselect tests/hf/test_hf_bench_e2e.py::test_bench_e2e_plumbing >"$WORK/hf_tests.log" 2>&1
    echo "tests/hf on CUDA: rc=$?"
    grep -E "^(FAILED|ERROR)|passed|failed" "$WORK/hf_tests.log" | tail -n 20
}
e2e128() {  # bench e2e at 128K, full and power, both prefills profiled; $1: timeout (s)
    timeout "$1" python3 -m powerattn.cli bench e2e --seq-lens 131072 --variants full power \
        --decode-steps 8 --static-batches 1 --static-steps 10 \
        --json "$WORK/e2e128.json" --profile "$WORK/e2e128_profile.txt"
    echo "e2e: rc=$?"
}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
    python3 -c "import flash_attn.cute" 2>/dev/null && echo "flash_attn.cute importable" || echo "no flash_attn.cute"
    case $PART in
    A)
        step "compiled static-cache decode case on CUDA"
        POWERATTN_HF_DEVICE=cuda TORCH_LOGS=graph_breaks,recompiles PYTHONPATH="src:tests/hf:$PYTHONPATH" \
            timeout 150 python3 tests/hf/compiled_decode_case.py >"$WORK/compiled_case.log" 2>&1
        echo "compiled case: rc=$?"
        tail -n 60 "$WORK/compiled_case.log"
        step "gpu_hf.sh"
        TEST_WORKERS=8 TEST_TIMEOUT=200 DECODE_TIMEOUT=150 OUT="$WORK/hf" bash scripts/gpu_hf.sh all
        echo "gpu_hf: rc=$?"
        step "split sweep"
        OUT="$WORK/tune" timeout 90 python3 scripts/gpu_decode_tune.py --sweep splits
        echo "split sweep: rc=$?"
        ;;
    B)
        step "8K forward in the bench's process"
        OUT="$WORK/fwd8k" timeout 200 python3 scripts/gpu_fwd8k.py
        echo "fwd8k: rc=$?"
        step "bench e2e at 128K, both prefills profiled"
        e2e128 330
        ;;
    C)
        step "the first decode under CUDA-graph trees, then tests/hf on CUDA"
        POWERATTN_HF_DEVICE=cuda PYTHONPATH="src:tests/hf:$PYTHONPATH" \
            timeout 120 python3 tests/hf/compiled_decode_case.py >"$WORK/compiled_case.log" 2>&1
        echo "compiled case: rc=$?"
        tail -n 5 "$WORK/compiled_case.log"
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/ops/test_decode.py \
            -k "cudagraph_trees or graph_replays or public_and_compiled or arena" \
            >"$WORK/ops_tests.log" 2>&1
        echo "tests/ops decode graph tests: rc=$?"
        tail -n 3 "$WORK/ops_tests.log"
        hf_tests
        step "bench e2e at 128K, TTFT on the second prompt"
        e2e128 300
        ;;
    D)
        step "compiled static-cache decode case (background) and the CUDA operator suite"
        POWERATTN_HF_DEVICE=cuda TORCH_LOGS=recompiles PYTHONPATH="src:tests/hf:$PYTHONPATH" \
            timeout 200 python3 tests/hf/compiled_decode_case.py >"$WORK/compiled_case.log" 2>&1 &
        case_pid=$!
        timeout 300 python3 -m pytest -q -n 4 -p no:cacheprovider --maxfail=20 \
            tests/ops/test_flex.py tests/ops/test_sparse_attention.py tests/ops/test_decode.py \
            tests/ops/test_bench_kernel.py >"$WORK/ops_tests.log" 2>&1
        echo "tests/ops on CUDA: rc=$?"
        grep -E "^(FAILED|ERROR)|passed|failed" "$WORK/ops_tests.log" | tail -n 30
        wait $case_pid
        echo "compiled case: rc=$?"
        grep -v Warning "$WORK/compiled_case.log" | tail -n 12
        step "tests/hf on CUDA"
        hf_tests
        ;;
    E)
        step "bench e2e at 128K, both prefills profiled"
        e2e128 "${E2E_TIMEOUT:-330}"
        ;;
    esac
    step "done"
} 2>&1 | tee "$WORK/diag.log"
cp "$WORK/diag.log" "$OUT/diag_$PART.log"
tar -czf "$OUT/diag_$PART.tgz" -C "$WORK" .
