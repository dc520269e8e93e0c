#!/usr/bin/env bash
# Issue 9's remaining measurements in ONE call with FlashAttention-4 (nvidia-h200, timeout 600):
#   1. with PROFILE=1 only: scripts/gpu_prefill_profile.py -- host time, GPU time and kernels
#      of one forward + backward step, ours against FlexAttention + FA4, at 8K and 32K;
#   2. `powerattn bench kernel` (scripts/gpu_kernel.sh bench) -- the side-by-side headline;
#   3. scripts/gpu_e2e.sh -- end to end on the Qwen2-7B shape (prefill, DynamicCache and
#      StaticCache decode at batch 1 and 8), with whatever time is left.
# Each step runs under its own timeout and leaves its files even when a later one fails.
# Copy calls bring the wheels first (DEVELOPERS.md, scripts/fa4_split.sh), then within ~30 s:
#   source .whl/cN/install.sh && OUT=$OUT bash scripts/gpu_speed.sh [TOTAL_S]   # default 560
# Writes into $OUT: speed.log, prefill_profile.json, kernel.json, summary.json, kernel.png,
# e2e.json, e2e.png, logs.tgz (bench.log, env.txt, e2e_log.txt, e2e_profile.txt).
set -uo pipefail
TOTAL=${1:-560}
OUT=${OUT:-/tmp/powerattn-speed}
mkdir -p "$OUT" /tmp/speed_logs
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((TOTAL - ($(date +%s) - start))); }
{
    if [ "${PROFILE:-0}" = 1 ]; then  # session 8 ran it (results/kernel/session8/)
        echo "== prefill profile ($(left) s left)"
        OUT="$OUT" timeout 150 python3 scripts/gpu_prefill_profile.py || echo "prefill profile: rc=$?"
    fi
    echo "== bench kernel ($(left) s left)"
    # 200 s ran out during 128K's decode rows on a fresh machine (session 8: compiles)
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-280} OUT=/tmp/speed_logs bash scripts/gpu_kernel.sh bench
    cp /tmp/speed_logs/{kernel.json,summary.json,kernel.png} "$OUT"/ 2>/dev/null
    budget=$(($(left) - 80))  # e2e's measurements stop starting here; the last one finishes
    echo "== e2e (time budget ${budget} s)"
    if ((budget > 60)); then
        TIME_BUDGET=$budget OUT=/tmp/speed_logs timeout $(($(left) - 10)) bash scripts/gpu_e2e.sh \
            | tail -n 60
        cp /tmp/speed_logs/{e2e.json,e2e.png} "$OUT"/ 2>/dev/null
    else
        echo "e2e skipped: too little time left"
    fi
    echo "== done in $(($(date +%s) - start)) s"
} 2>&1 | tee "$OUT/speed.log"
tar czf "$OUT/logs.tgz" -C /tmp/speed_logs --ignore-failed-read \
    bench.log env.txt e2e_log.txt e2e_profile.txt 2>/dev/null
ls -la "$OUT"
