#!/usr/bin/env bash
# One device session on nvidia-h200-x2 that runs the per-area GPU scripts two at a time (one
# per GPU), then packs everything into one archive (the device returns at most 8 files).
# From the repository root on the GPU machine, after FlashAttention-4's wrappers are on
# PYTHONPATH (source .whl/cN/install.sh; DEVELOPERS.md):
#     OUT=$OUT bash scripts/gpu_session.sh B     # GPU0: CUDA suites + bench kernel | GPU1: passkey gate
#     OUT=$OUT bash scripts/gpu_session.sh C     # GPU0: bench e2e | GPU1: decode checks + timings; then CP on both
# Each part writes under $WORK/<part>/; $OUT gets session_<phase>.tgz plus the short logs.
set -uo pipefail
PHASE=${1:?phase B or C}
OUT=${OUT:-/tmp/powerattn-session}
WORK=/tmp/powerattn-session-$PHASE
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
lane() {  # lane GPU NAME COMMAND...: run on one GPU, log to $WORK/NAME.log
    local gpu=$1 name=$2
    shift 2
    mkdir -p "$WORK/$name"
    (export CUDA_VISIBLE_DEVICES=$gpu OUT="$WORK/$name"; "$@") >"$WORK/$name.log" 2>&1
    echo "$name: rc=$? ($(date -u +%T))" | tee -a "$WORK/lanes.txt"
}
start=$(date +%s)
case $PHASE in
B)
    (
        lane 0 kernel env TEST_WORKERS=8 TEST_TIMEOUT="${KT_S:-150}" BENCH_TIMEOUT="${KB_S:-260}" \
            TESTS="tests/ops tests/patterns/test_new_pattern.py" bash scripts/gpu_kernel.sh all
        lane 0 hf env TEST_WORKERS=8 TEST_TIMEOUT="${HF_S:-110}" bash scripts/gpu_hf.sh tests
    ) &
    lane 1 passkey bash scripts/gpu_passkey_gate.sh "${GATE_S:-450}" &
    wait
    ;;
C)
    lane 0 e2e env TIME_BUDGET="${E2E_BUDGET:-200}" bash scripts/gpu_e2e.sh &
    lane 1 decode env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" timeout "${DEC_S:-300}" \
        python3 scripts/gpu_decode.py &
    wait
    lane 0,1 cp env CP_TIMEOUT=200 CP_BUDGET=140 bash scripts/gpu_cp.sh
    ;;
*)
    echo "unknown phase $PHASE" >&2
    exit 2
    ;;
esac
echo "session $PHASE: $(($(date +%s) - start)) s" | tee -a "$WORK/lanes.txt"
tar czf "$OUT/session_$PHASE.tgz" -C "$WORK" .
cp "$WORK/lanes.txt" "$OUT/"
for f in "$WORK"/*.log; do tail -n 40 "$f" >"$OUT/$(basename "$f" .log)_tail.txt"; done 2>/dev/null
ls -la "$OUT" | head -n 12
