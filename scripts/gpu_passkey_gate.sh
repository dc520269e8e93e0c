#!/usr/bin/env bash
# The recipe gate of the passkey experiments (docs/experiments.md, "The gate"), one call on
# one H200, from the repository root:
#
#   [RESERVE_S=70] OUT=$OUT bash scripts/gpu_passkey_gate.sh [BUDGET_S]       # default 530
#
# Trains full attention in preset gpu-mix with seeds 0, 1, 2 at once (3 processes on one GPU;
# each checks its attention against the float64 oracle before training and at every length
# after it), stops training BUDGET_S - RESERVE_S seconds after the start whatever the step
# (RESERVE_S, default 70: evaluation at 512..8192 tokens, 640 documents per length, checks,
# tables), evaluates, and writes into $OUT the 8 files of scripts/gpu_train.sh, which it runs:
# gpu.txt, log.txt, results.json, tables.txt (per-run table, theory split, seeds side by side,
# the gate: PASSED or FAILED), train_by_len.txt, curves.png, summary.json, runs.tgz. The
# trainer is killed at BUDGET_S + 40 s at the latest. Passed in session 5 with RESERVE_S=50
# (results/passkey/gate-session5-wsd). PRESET=smoke-mix runs the same plumbing on a CPU in
# about a minute.
set -uo pipefail
BUDGET=${1:-530}
RESERVE=${RESERVE_S:-70}
WORK=/tmp/passkey_gate RESERVE_S=$((RESERVE + 40)) PRESET=${PRESET:-gpu-mix} \
    exec bash "$(dirname "$0")/gpu_train.sh" main $((BUDGET + 40)) --patterns full --seeds 0,1,2 --jobs 3
