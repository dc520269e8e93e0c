#!/usr/bin/env bash
# The passkey experiments on the GPU machine, one call (run from the repository root there).
#
#   [PRESET=gpu-mix] [RESERVE_S=90] OUT=$OUT bash scripts/gpu_train.sh PARTS BUDGET_S [args]
#
# PARTS: a comma list of main,layers,long; args: more `powerattn experiment passkey` flags.
# Training stops BUDGET_S - RESERVE_S seconds after the start whatever the step (a --deadline
# in args overrides that), then every run is evaluated; the trainer is killed at BUDGET_S at
# the latest (call with timeout_s >= BUDGET_S + 30). Figure 3 and Figure 1b
# (results/passkey/README.md, "The comparison: plan" has every call), e.g.
#
#   OUT=$OUT bash scripts/gpu_train.sh main 570 --patterns power --seeds 0,1,2 --jobs 3
#
# which trains as the gate did (3 runs of 5500 steps on one H200, training stops at 480 s).
# Rerunning the same command on the same, still warm machine resumes the runs from their
# checkpoints in /tmp/passkey (a fresh machine starts them over). Writes into $OUT (8 files):
# gpu.txt (GPU, versions, a hash of the src/ that ran: the machine's .git is a stale snapshot),
# log.txt, results.json (this call's runs only), tables.txt (tables, the gate, the verdicts of
# this call alone), summary.json, train_by_len.txt (steps done, steps/s, training exact match
# per length over the last 200 steps), curves.png and runs.tgz (each run's config, metrics,
# eval and log; no checkpoints). Merge calls here with
# `powerattn experiment passkey --out DIR --replot a/results.json,b/results.json,...`.
# PRESET=smoke-mix runs the same plumbing on a CPU in about a minute.
set -uo pipefail
PARTS=${1:?PARTS}
BUDGET=${2:?BUDGET_S}
shift 2
RESERVE=${RESERVE_S:-90}
OUT=${OUT:-/tmp/passkey_out}
WORK=${WORK:-/tmp/passkey}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'triton', triton.__version__)" >>"$OUT/gpu.txt" 2>&1
# The code that ran, as git blob hashes of src/**/*.py (the machine's .git is a stale
# snapshot, its HEAD is not this tree). Check against a commit here with
#   git ls-tree -r COMMIT -- src | awk '$4 ~ /[.]py$/ {print $3, $4}' | LC_ALL=C sort -k2 | sha1sum
find src -name '*.py' | LC_ALL=C sort >"$WORK/src_files.txt"
echo "src $(paste -d' ' <(xargs git hash-object <"$WORK/src_files.txt") "$WORK/src_files.txt" \
    | sha1sum | cut -c1-40) (sha1 of 'blob path' lines of src/**/*.py)" >>"$OUT/gpu.txt"
rm -f "$WORK/results.json" "$WORK/this_call.txt"  # a killed call must not report the last one's
echo "budget ${BUDGET}s, training stops at $((BUDGET - RESERVE))s unless args say otherwise" \
    | tee "$OUT/log.txt"
timeout "$BUDGET" python3 -m powerattn.cli experiment passkey --preset "${PRESET:-gpu-mix}" \
    --parts "$PARTS" --out "$WORK" --no-progress --deadline $((BUDGET - RESERVE)) "$@" 2>&1 \
    | tee -a "$OUT/log.txt"
python3 -m powerattn.cli experiment passkey --out "$WORK/tables" \
    --replot "$WORK/results.json" >"$OUT/tables.txt" 2>&1
# Training per run of this call (runs of earlier calls stay in WORK/runs for resuming).
python3 - "$WORK" >"$OUT/train_by_len.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

from powerattn.experiments.tables import train_exact_match_by_len

work = Path(sys.argv[1])
results = json.loads((work / "results.json").read_text())
names = list(results["runs"]) + results["meta"].get("failed", [])
for name in names:
    log = work / "runs" / name / "metrics.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    if not lines:
        print(name, "no metrics")
        continue
    last = lines[-1]["step"]
    by_len = "  ".join(f"{n}: {v:.3f}" for n, v in train_exact_match_by_len(lines, 200).items())
    run = results["runs"].get(name, {})
    planned = run.get("steps_planned", "?")
    # time_s restarts at 0 when a run resumes: rates from this call's segment only. The
    # steady rate is over the segment's second half (no compilation or warm-up in it): what
    # a longer call of the same runs would train at.
    start = max([0] + [i for i in range(1, len(lines))
                       if lines[i]["time_s"] < lines[i - 1]["time_s"]])
    seg = lines[start:]
    rate = (last - seg[0]["step"] + 10) / seg[-1]["time_s"] if seg[-1]["time_s"] > 0 else 0.0
    mid = seg[len(seg) // 2]
    dt = seg[-1]["time_s"] - mid["time_s"]
    steady = (last - mid["step"]) / dt if dt > 0 else float("nan")
    resumed = f", resumed: first step logged here {seg[0]['step']}" if start else ""
    print(f"{name:<22} step {last}/{planned} ({rate:.2f} steps/s, steady {steady:.2f}{resumed})"
          f"  train exact match, last 200 steps: {by_len}")
EOF
cp "$WORK"/results.json "$WORK"/curves.png "$WORK"/tables/summary.json "$OUT"/ 2>/dev/null
python3 -c "import json, sys; print('\n'.join('runs/' + n for n in json.load(open(sys.argv[1]))['runs']))" \
    "$WORK/results.json" >"$WORK/this_call.txt" 2>/dev/null
[ -s "$WORK/this_call.txt" ] || echo runs >"$WORK/this_call.txt"  # no results: every run
tar czf "$OUT/runs.tgz" --exclude=checkpoint.pt -C "$WORK" -T "$WORK/this_call.txt"
tail -n 25 "$OUT/tables.txt"
cat "$OUT/train_by_len.txt"
ls -la "$OUT"
