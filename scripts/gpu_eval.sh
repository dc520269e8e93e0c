#!/usr/bin/env bash
# The evaluation campaign on the GPU machine (run from the repository root there):
# Table 1 (perplexity by position), Table 2 (RULER-style suite), Figure 5 (probing).
#
#   OUT=$OUT bash scripts/gpu_eval.sh PARTS BUDGET_S
#   e.g. OUT=$OUT bash scripts/gpu_eval.sh all 290        # smoke: every part, ~5 minutes
#        OUT=$OUT bash scripts/gpu_eval.sh lm 560         # one call of a full campaign
#        OUT=$OUT bash scripts/gpu_eval.sh ruler,probe 560  # the next call, machine still warm
#
# PARTS: comma list of check, lm, ruler, probe, or "all" (= check,lm,ruler,probe). BUDGET_S
# bounds the whole call; it is split between the parts (lm 50 %, ruler 25 %, probe 25 % of
# what the corpus and the check leave). Training stops at its part's deadline (runs resume
# from /tmp/eval while the machine stays warm); a run that did not reach its steps is reported
# as incomplete (details.json), never silently compared at unequal budgets.
# Knobs (environment): SEEDS (0,1), LM_STEPS (default from BUDGET_S, see below), RULER_STEPS,
# RULER_SAMPLES, RULER_TASKS, PROBE_SCALE (fraction of the probe preset's steps), CORPUS_MB,
# JOBS; PRESET=tiny DEVICE=cpu (with a stub nvidia-smi) dry-runs this script on a CPU.
#
# Corpus: runs/corpus if it was carried (built here by `powerattn eval corpus --out
# runs/corpus`), else built on the machine from its own Python sources (--source python).
# Writes into $OUT (8 files): gpu.txt, log.txt, lm_summary.json, lm_details.json,
# ruler_summary.json, probing_summary.json, heatmaps.png, runs.tgz (every run's config,
# metrics, ppl.json / ruler.json / probe.json; no checkpoints).
set -uo pipefail
PARTS=${1:?PARTS (all, or a comma list of check,lm,ruler,probe)}
BUDGET=${2:?BUDGET_S}
[ "$PARTS" = all ] && PARTS=check,lm,ruler,probe
OUT=${OUT:-/tmp/eval_out}
WORK=${WORK:-/tmp/eval}
SEEDS=${SEEDS:-0,1}
JOBS=${JOBS:-12}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
TASKS=${RULER_TASKS:+--tasks $RULER_TASKS}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src PYTHONUNBUFFERED=1
E="python3 -m powerattn.commands.eval"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
has() { [[ ",$PARTS," == *",$1,"* ]]; }
exec > >(tee -a "$OUT/log.txt") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt"
python3 -c "import torch, transformers, tokenizers; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)" >>"$OUT/gpu.txt"
python3 -c "import sklearn; print('sklearn', sklearn.__version__)" >>"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

if [ -f runs/corpus/manifest.json ]; then
    CORPUS=runs/corpus
else
    CORPUS=$WORK/corpus
    [ -f "$CORPUS/manifest.json" ] || $E corpus --out "$CORPUS" --source python \
        --max-mb "${CORPUS_MB:-60}" | tail -20
fi
echo "corpus $CORPUS, $(left) s left"

if has check; then
    # Correctness first: one window per pattern through the training model (our kernels) and
    # through the pattern's exact mask in SDPA must give the same NLL (bf16 tolerance).
    python3 - "$CORPUS" "$PRESET" "$DEVICE" <<'EOF' || { echo "CHECK FAILED: not running the campaign"; exit 1; }
import sys, numpy as np, torch
from powerattn.eval import lm
from powerattn.eval.bpe import BPETokenizer
from powerattn.training.model import build_model
p = lm.PRESETS[sys.argv[2]]
windows, _ = lm.eval_windows(lm.tokenize_corpus(sys.argv[1]), p.context, 2)
bad = []
for name in lm.PATTERNS:
    cfg = lm.train_config(p, name, 0, 1, sys.argv[3])
    out = {}
    for backend in ("auto", "sdpa_mask"):
        m = build_model(cfg.model, cfg.build_pattern(), p.context, backend=backend,
                        tokenizer=BPETokenizer()).to(sys.argv[3])
        out[backend] = lm.window_nll(m, windows, p.bucket, 2)
    rel = np.abs(out["auto"] - out["sdpa_mask"]).max() / np.abs(out["sdpa_mask"]).max()
    print(f"check {name:<16} max relative NLL difference kernel vs masked SDPA {rel:.2e}")
    bad += [name] if rel > 2e-2 else []
sys.exit(1 if bad else 0)
EOF
fi

# The budget of the training parts, after the corpus and the check.
N=0; for p in lm ruler probe; do has $p && N=$((N + 1)); done
REST=$(left)
share() { # seconds for a part: lm 2 shares, the others 1
    local w=1; [ "$1" = lm ] && w=2
    local tot=0; for p in lm ruler probe; do has $p && { [ $p = lm ] && tot=$((tot + 2)) || tot=$((tot + 1)); }; done
    echo $((REST * w / tot))
}

if has lm; then
    S=$(share lm)
    # Default steps: what 12 runs sharing the H200 should finish in ~40 % of the part
    # (planning figure of 0.35M tokens/s aggregate for the ~28M-parameter model at 4096
    # tokens; the smoke's metrics.jsonl gives the measured tokens_per_s for the next plan).
    STEPS=${LM_STEPS:-$(python3 -c "print(max(10, int($S * 0.4 * 0.35e6 / (8 * 4096) / 12)))")}
    echo "== lm: $STEPS steps per run, ${S}s"
    $E ppl --corpus "$CORPUS" --out "$WORK/lm" --preset "$PRESET" --seeds "$SEEDS" --steps "$STEPS" \
        --jobs "$JOBS" --device "$DEVICE" --deadline $((S * 80 / 100)) --results "$WORK/results/lm"
    cp "$WORK/results/lm/summary.json" "$OUT/lm_summary.json"
    cp "$WORK/results/lm/details.json" "$OUT/lm_details.json"
fi

if has ruler; then
    S=$(share ruler)
    RSTEPS=${RULER_STEPS:-$(python3 -c "print(max(5, int($S * 0.4 * 0.35e6 / (8 * 4096) / 11)))")}
    echo "== ruler: $RSTEPS steps per run, ${S}s"
    $E ruler --train --lm-runs "$WORK/lm" --out "$WORK/ruler" --preset "$PRESET" --seeds 0 \
        --hybrid --steps "$RSTEPS" --samples "${RULER_SAMPLES:-5}" --jobs "$JOBS" $TASKS \
        --device "$DEVICE" \
        --deadline $((S * 55 / 100)) --results "$WORK/results/ruler"
    cp "$WORK/results/ruler/summary.json" "$OUT/ruler_summary.json"
fi

if has probe; then
    S=$(share probe)
    echo "== probe: ${S}s"
    $E probe --out "$WORK/probe" --preset "$PRESET" --patterns sliding_window,power,full \
        --seeds 0 --steps-scale "${PROBE_SCALE:-0.3}" --jobs 3 --deadline $((S * 70 / 100)) \
        --device "$DEVICE" \
        --results "$WORK/results/probing"
    cp "$WORK/results/probing/summary.json" "$OUT/probing_summary.json"
    cp "$WORK/results/probing/heatmaps.png" "$OUT/heatmaps.png"
fi

tar czf "$OUT/runs.tgz" --exclude='checkpoint.*' -C "$WORK" $(cd "$WORK" && ls -d lm ruler probe 2>/dev/null)
echo "done in $(( $(date +%s) - T0 )) s"
ls -la "$OUT"
