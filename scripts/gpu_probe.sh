#!/usr/bin/env bash
# Figure 5 (probing) on the GPU machine, from the repository root; nvidia-h200, timeout_s 600:
#
#   OUT=$OUT bash scripts/gpu_probe.sh [BUDGET_S]        # default 570
#
# 1. Trains the passkey experiment's main runs of sliding_window, power and full, seed 0, in
#    the recipe that passed its gate (preset gpu-mix, 5500 steps) with --speed compile on the
#    sdpa_mask backend (the pattern's exact mask: the path Figure 3's compiled runs trained on
#    at ~54 steps/s in all; FlexAttention under compile failed every sparse run of its
#    session-7 call 1, fixed in 68b81c6 but not yet run on a GPU), three processes sharing
#    the GPU: scripts/gpu_train.sh, Figure 3's tool, with
#    WORK=$PROBE_RUNS (default $WORK/passkey; checkpoints stay there) and OUT=$OUT/passkey
#    (its 8 files: train_by_len.txt, tables.txt, ...). Training stops RESERVE_S (60) s before
#    the trainer's bound, BUDGET_S - 30 s: at 480 s in a 570-s call, as in Figure 3's calls;
#    then every run is evaluated as it stands. Skipped when every run has already trained its
#    5500 steps and been evaluated there.
# 2. If at least PROBE_MIN_S (75) s are left: `powerattn eval probe --from-runs` probes each
#    run's initial model and its checkpoint (load-checked) on 192 documents of 4096 tokens.
# 3. Packs what `powerattn eval results --from <the call's files>` needs.
#
# The plan (results/probing/README.md): two calls, the first trains and evaluates, the
# second probes. The same command, sent again at once while the machine is warm, resumes the
# runs from their checkpoints or, when they are complete, only probes. Repeat until the last
# line says "STATUS: done".
#
# Writes into $OUT: gpu.txt, log.txt, runs.tgz (probe/NAME/probe.json; passkey/: each run's
# config, metrics, eval, log and results.json; no checkpoints), results.tgz (results/probing:
# summary.json, details.json, table.txt, heatmaps.png), heatmaps.png, and passkey/ when it
# trained. Knobs (environment): PROBE_PRESET (gpu-mix), PROBE_SPEED (compile; "none": no
# options), PROBE_BACKEND (sdpa_mask; auto: FlexAttention), PROBE_PATTERNS
# (sliding_window,power,full), PROBE_SEEDS (0), PROBE_DEVICE (cuda), PROBE_PER_KEY (32),
# PROBE_RUNS ($WORK/passkey: where the runs train; runs of this preset already there, e.g.
# Figure 3's in /tmp/passkey on a warm machine, are resumed, not retrained), RESERVE_S (60),
# PROBE_MIN_S (75). CPU dry run (a minute or two):
#   PROBE_PRESET=smoke-mix PROBE_SPEED=none PROBE_DEVICE=cpu PROBE_PER_KEY=4 \
#       OUT=/tmp/po WORK=/tmp/pw bash scripts/gpu_probe.sh 400
set -uo pipefail
BUDGET=${1:-570}
OUT=${OUT:-/tmp/probe_out}
WORK=${WORK:-/tmp/probe}
PRESET=${PROBE_PRESET:-gpu-mix}
SPEED=${PROBE_SPEED:-compile}
[ "$SPEED" = none ] && SPEED=
PATTERNS=${PROBE_PATTERNS:-sliding_window,power,full}
SEEDS=${PROBE_SEEDS:-0}
DEVICE=${PROBE_DEVICE:-cuda}
BACKEND=${PROBE_BACKEND:-sdpa_mask}
PK=${PROBE_RUNS:-$WORK/passkey}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
exec > >(tee -a "$OUT/log.txt") 2>&1
RUNS=$(( $(tr ',' '\n' <<<"$PATTERNS" | grep -c .) * $(tr ',' '\n' <<<"$SEEDS" | grep -c .) ))
echo "gpu_probe.sh BUDGET=$BUDGET PRESET=$PRESET SPEED=${SPEED:-none} PATTERNS=$PATTERNS" \
    "SEEDS=$SEEDS ($RUNS runs) BACKEND=$BACKEND DEVICE=$DEVICE runs in $PK $(date -u)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'triton', triton.__version__)" >>"$OUT/gpu.txt" 2>&1

# Every run trained to its last step and evaluated there (its eval.json says so)?
complete() {
    python3 - "$PK" "$PATTERNS" "$SEEDS" <<'EOF'
import json, sys
from powerattn.eval.probe_runs import find_run

done = True
for s in sys.argv[3].split(","):
    for p in sys.argv[2].split(","):
        try:
            ev = json.loads((find_run(sys.argv[1], p, int(s)) / "eval.json").read_text())
            print(f"  {p} seed {s}: {ev['steps_done']}/{ev['steps_planned']} steps evaluated")
            done &= ev["steps_done"] == ev["steps_planned"]
        except (ValueError, OSError) as exc:
            print(f"  {p} seed {s}: not trained and evaluated ({exc})")
            done = False
sys.exit(0 if done else 1)
EOF
}

if complete; then
    echo "== training: every run complete, skipped"
else
    S=$(( $(left) - 30 ))
    echo "== training: scripts/gpu_train.sh main $S, stops at $((S - ${RESERVE_S:-60})) s"
    WORK="$PK" OUT="$OUT/passkey" RESERVE_S=${RESERVE_S:-60} PRESET=$PRESET \
        bash "$(dirname "$0")/gpu_train.sh" main "$S" --patterns "$PATTERNS" --seeds "$SEEDS" \
        --jobs "$RUNS" --backend "$BACKEND" ${SPEED:+--speed $SPEED}
    complete >/dev/null && echo "training: every run complete" ||
        echo "training: not complete yet (train_by_len.txt above)"
fi

E="python3 -m powerattn.commands.eval"
if [ "$(left)" -ge "${PROBE_MIN_S:-75}" ]; then
    t=$(date +%s)
    echo "== probe: $(left) s left"
    timeout $(( $(left) - 15 )) $E probe --from-runs "$PK" --out "$WORK/probe" \
        --patterns "$PATTERNS" --seeds "$SEEDS" --per-key "${PROBE_PER_KEY:-32}" \
        --device "$DEVICE" --results "$WORK/results/probing" &&
        PROBED=1 || echo "PROBE: exit status $?"
    echo "probe took $(( $(date +%s) - t )) s"
else
    echo "== probe: skipped, $(left) s left (< PROBE_MIN_S ${PROBE_MIN_S:-75})"
fi

# What comes back; the probe summary from whatever probe.json exist.
[ -d "$WORK/probe" ] && $E probe --summarize "$WORK/probe" --results "$WORK/results/probing" \
    >/dev/null 2>&1
items=()  # runs.tgz: probe/ and the runs' outputs as passkey/, without checkpoints
[ -d "$WORK/probe" ] && items+=(-C "$WORK" probe)
[ -d "$PK" ] && items+=(-C "$(dirname "$PK")" "$(basename "$PK")")
[ ${#items[@]} -gt 0 ] && tar czf "$OUT/runs.tgz" --exclude='checkpoint.*' --exclude='*.png' \
    --transform "s,^$(basename "$PK")\(/\|$\),passkey\1," "${items[@]}"
[ -d "$WORK/results" ] && tar czf "$OUT/results.tgz" -C "$WORK" results
cp "$WORK/results/probing/heatmaps.png" "$OUT/" 2>/dev/null
if [ -n "${PROBED:-}" ] && complete >/dev/null; then
    echo "STATUS: done in $(( $(date +%s) - T0 )) s: every run trained, evaluated and probed"
else
    echo "STATUS: not done ($(( $(date +%s) - T0 )) s): send the same command again at once"
fi
ls -la "$OUT"
sleep 1  # let tee write the last lines of log.txt
