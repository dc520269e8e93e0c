#!/usr/bin/env bash
# The recipe gate of the passkey experiments (docs/experiments.md, "The gate"), one call on
# one H200, from the repository root:
#
#   OUT=$OUT bash scripts/gpu_passkey_gate.sh [BUDGET_S]       # default 530
#
# Trains full attention in preset gpu-mix with seeds 0, 1, 2 at once (3 processes on one GPU;
# each checks its attention against the float64 oracle before training and at every length
# after it), stops training BUDGET_S - RESERVE_S seconds after the start whatever the step
# (RESERVE_S, default 70: evaluation at 512..8192 tokens, 640 documents per length, checks,
# tables), evaluates, and writes into $OUT (8 files): gpu.txt, log.txt, results.json,
# tables.txt (per-run table, theory split, seeds side by side, the gate: PASSED or FAILED),
# train_by_len.txt (training exact match per length over the last 200 steps), curves.png,
# summary.json (cells per seed, length and depth bin; the gate),
# runs.tgz (every run's config, metrics.jsonl, eval.json, stage_eval.json and log; no
# checkpoints). A hard `timeout` at BUDGET_S + 40 s is the last resort. PRESET=smoke-mix
# runs the same plumbing on a CPU in about a minute.
set -uo pipefail
BUDGET=${1:-530}
RESERVE=${RESERVE_S:-70}
OUT=${OUT:-/tmp/passkey_gate_out}
WORK=/tmp/passkey_gate
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'triton', triton.__version__)" >>"$OUT/gpu.txt"
git rev-parse HEAD >>"$OUT/gpu.txt" 2>/dev/null
echo "budget ${BUDGET}s, training stops at $((BUDGET - RESERVE))s" | tee "$OUT/log.txt"
timeout $((BUDGET + 40)) python3 -m powerattn.cli experiment passkey --preset "${PRESET:-gpu-mix}" \
    --parts main --patterns full --seeds 0,1,2 --jobs 3 --out "$WORK" --no-progress \
    --deadline $((BUDGET - RESERVE)) 2>&1 | tee -a "$OUT/log.txt"
python3 -m powerattn.cli experiment passkey --out "$WORK/tables" \
    --replot "$WORK/results.json" >"$OUT/tables.txt" 2>&1
python3 - "$WORK" >"$OUT/train_by_len.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

for run in sorted(Path(sys.argv[1], "runs").iterdir()):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    if not lines:
        print(run.name, "no metrics")
        continue
    last = lines[-1]["step"]
    sums: dict[str, list[float]] = {}
    for m in lines:
        if m["step"] > last - 200:
            for n, v in m.get("exact_match_by_len", {}).items():
                sums.setdefault(n, []).append(v)
    by_len = "  ".join(f"{n}: {sum(v) / len(v):.3f}" for n, v in sorted(sums.items(), key=lambda t: int(t[0])))
    rate = lines[-1]["step"] / lines[-1]["time_s"]
    print(f"{run.name:<14} step {last} ({rate:.2f} steps/s)  train exact match, last 200 steps: {by_len}")
EOF
cp "$WORK"/results.json "$WORK"/curves.png "$WORK"/tables/summary.json "$OUT"/ 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude=checkpoint.pt -C "$WORK" runs
tail -n 20 "$OUT/tables.txt"
cat "$OUT/train_by_len.txt"
ls -la "$OUT"
