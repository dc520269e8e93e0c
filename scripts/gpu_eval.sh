#!/usr/bin/env bash
# The evaluation campaign on the GPU machine (run from the repository root there):
# Table 1 (perplexity by position), Table 2 (RULER-style suite), Figure 5 (probing).
#
#   OUT=$OUT bash scripts/gpu_eval.sh [PARTS [BUDGET_S]]
#
#   OUT=$OUT bash scripts/gpu_eval.sh                  # = plan 560: the one-call plan below
#   SPEED=auto OUT=$OUT bash scripts/gpu_eval.sh       # the same, compile if measured faster
#   OUT=$OUT bash scripts/gpu_eval.sh ruler 560        # next call, machine still warm: RULER
#                                                      # continues the lm runs in $WORK/lm
#                                                      # (RULER_LM=base: those of LM_DIR=base)
#   OUT=$OUT bash scripts/gpu_eval.sh probe 560        # = scripts/gpu_probe.sh after the
#                                                      # corpus; better: gpu_probe.sh alone
#
# The one-call plan (PARTS=plan, the default; nvidia-h200, call timeout 600 s): Table 1 only.
# 12 runs at once on the one GPU (6 patterns x seeds 0,1), the `gpu` preset of
# powerattn.eval.lm: a 28M-parameter Llama (7 layers, hidden 512, BPE vocabulary 8192),
# 4096 tokens = 128 blocks of 32, 4 windows per step, 900 steps = 14.7M tokens per run, 177M
# in all. Planning figure, measured by session 5's call (300 steps, 192 s): 12 runs sharing
# the H200 train 5.0e5 tokens/s in all (5.2e5 over the longest run's time; the 6.6e5 that
# call's log printed summed per-run rates over unequal times and overstates it) -> ~355 s of
# training + ~10 s compilation; plus 25 s corpus, ~50 s start-up/checks/evaluation, ~5 s
# packing: ~445 s. The training deadline (60 s before the part's end: 455 s into the lm part,
# ~440 s of training) leaves ~20 % margin before runs stop incomplete. Longer runs do not fit
# one call: 1000 steps leaves 8 %, 1500 (12 x 450 s at 6.6e5) would need ~600 s of training.
# All of this is eager (no speed options): the lm model has never been timed with compile.
#
# Speed options (SPEED, environment; empty by default = none, as in every call so far):
# * SPEED=compile (any comma list of fused_optim, compile, pin_memory): `--speed` of every
#   training part (lm, ruler, probe). The options change how a step is computed, not the
#   model: each run records them (config.json; ppl.json / ruler.json / probe.json "speed")
#   and resumes with them on or off.
# * SPEED=auto: first time the lm model alone on the GPU, default vs compile
#   (scripts/gpu_train_speed.py --models lm --settings default,compile --no-shared
#   --seconds 3: the first 5 losses of each checked against a float32 run, then 3 s of
#   steps/s), in the background while the corpus is built; then lm and ruler train with
#   compile only if its check passed and it ran >= SPEED_MIN (1.3, campaign.MIN_SPEEDUP)
#   times the default's steps/s; probe compiles (its passkey model was measured: 2.43x).
#   log.txt prints the decision with its numbers; $OUT gets train_speed.json (7 files in
#   all); a later call on the warm machine reuses $WORK/speed/train_speed.json. A failed,
#   killed (SPEED_TIMEOUT, 90 s) or partial measurement means no options.
#   Budget with SPEED=auto (unmeasured: estimates): the measurement ~40-70 s (a cold
#   Inductor compile of the lm model; passkey's took 23 s), 25 s of it hidden behind the
#   corpus, so the lm part's deadline falls from ~455 s to ~405-435 s (~390 s if the
#   measurement is killed at 90 s). Default chosen: ~385 s of start-up + eager training
#   needed, 5-12 % margin (none after a kill: the runs may then stop a few % short, see
#   below). Compile chosen: each of the 12 runs compiles first (12 at once on 16 cores,
#   TORCHINDUCTOR_COMPILE_THREADS = cores / JOBS; est. 1-2 min), then trains at a shared
#   rate nobody has measured (the 1.3x is measured alone; passkey: 2.43x alone, and 3
#   compiled processes sharing the GPU made 0.94x the steps/s of one alone: compiled, one
#   run already fills the GPU). It gains only if 12 runs sharing the GPU train >= ~1.3-1.5x
#   the eager 5.0e5 tokens/s. If they are slower, the deadline stops every run short of its
#   900 steps: each is evaluated, marked
#   incomplete and excluded from the verdicts (never compared at unequal budgets), and the
#   same command sent again at once on the warm machine resumes it from $WORK/lm
#   (details.json's makespan tokens/s then gives the compiled rate to plan LM_STEPS with).
# Session 5's 300 steps (4.9M tokens) left every model far from converged: full attention was
# the worst model and no model used context beyond ~1K tokens (results/lm/README.md).
# With lm and ruler in one call (lm,ruler 560: lm gets 2/3, ~270 s of training) the lm runs
# must be shortened to LM_STEPS=560; better: lm alone, then `ruler 560` while the machine is
# warm (RULER resumes from the checkpoints in $WORK/lm, which never leave the machine).
# A scout of how many tokens full attention needs to overtake the local patterns (4 runs,
# 8x the plan's tokens; the rate of 4 runs sharing the GPU is not measured yet):
#   CORPUS=/tmp/eval/corpus WORK=/tmp/scout PATTERNS=full,sliding_window LM_STEPS=2400 \
#       OUT=$OUT bash scripts/gpu_eval.sh lm 560
#
# Continued pretraining (the paper's protocol: its sparse patterns continue a pretrained
# full-attention model), two stages on one warm machine: a full-attention base, then every
# pattern from it (the full continuation is the ceiling), e.g.
#   PATTERNS=full LM_DIR=base LM_STEPS=N OUT=$OUT bash scripts/gpu_eval.sh lm 560   # until done
#   INIT_FROM=base LM_STEPS=M OUT=$OUT bash scripts/gpu_eval.sh lm 560              # then
#
# BUDGET_S bounds the whole call: training stops at its part's deadline (the run is evaluated
# and marked incomplete, never compared at unequal budgets; it resumes from $WORK while the
# machine stays warm) and every part runs under `timeout`. With several parts, BUDGET_S is
# split lm 2 : ruler 1 : probe 1. Each part's outputs land in $OUT when it ends (runs.tgz and
# results.tgz are rewritten after every part), so a failed or killed part loses only itself.
#
# Correctness first: every lm run compares its model (our kernels) with the same weights on
# masked SDPA with the pattern's exact mask before training and again after it (ppl.json
# "check"; the log prints CHECK FAILED; a failing run is excluded by the decision rules but
# still trains, so that a false alarm costs no data).
#
# Knobs (environment): SEEDS (0,1), LM_STEPS (the preset's 900), PATTERNS (all six), JOBS
# (12), RULER_STEPS, RULER_SAMPLES (50 per task; 5 until session 14), RULER_SEEDS (0), RULER_TASKS, CORPUS_MB (60),
# CORPUS_ARGS (more `eval corpus` flags, e.g. --select-longrange 0.25; --split-key content rebuilds
# the corpora of sessions 5-15, split by content hash; none), CORPUS_TIMEOUT (240 s), LM_DIR (lm), INIT_FROM,
# PRESET (gpu), DEVICE (cuda), SPEED (none; see above), SPEED_MIN, SPEED_TIMEOUT.
# CPU dry run of every part (a stub nvidia-smi on the PATH; SPEED=fused_optim or none there:
# compile runs Inductor on the CPU, minutes; SPEED=auto times tiny models, meaningless):
#   PRESET=tiny DEVICE=cpu JOBS=2 CORPUS_MB=5 OUT=/tmp/o WORK=/tmp/w bash scripts/gpu_eval.sh all 900
#
# Corpus: built on the machine from its own Python sources (--source python; ~10-40 s), or
# $CORPUS if set. Writes into $OUT (6 files; 7 with SPEED=auto's train_speed.json): gpu.txt,
# log.txt (everything printed, with the tables, the decision rules' verdicts, the measured
# tokens/s and SPEED=auto's decision), runs.tgz (every run's
# config, metrics, logs and ppl.json / ruler.json / probe.json; no checkpoints), results.tgz
# (results/{lm,ruler,probing} as `powerattn eval results` writes them), ppl_by_position.png,
# heatmaps.png. Back home: `powerattn eval results --from <the call's files>` rebuilds
# results/{lm,ruler,probing} from runs.tgz alone.
set -uo pipefail
PARTS=${1:-plan}
BUDGET=${2:-560}
[ "$PARTS" = all ] && PARTS=lm,ruler,probe
[ "$PARTS" = plan ] && PARTS=lm
OUT=${OUT:-/tmp/eval_out}
WORK=${WORK:-/tmp/eval}
SEEDS=${SEEDS:-0,1}
JOBS=${JOBS:-12}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
SPEED=${SPEED:-}
LM_DIR=${LM_DIR:-lm}  # the lm part's runs: $WORK/$LM_DIR (base: a continued-pretraining base)
INIT_FROM=${INIT_FROM:-}  # continued pretraining from $WORK/$INIT_FROM/full-s<seed>
RULER_LM=${RULER_LM:-lm}  # the lm runs RULER continues: $WORK/$RULER_LM (base: LM_DIR=base's)
SPEED_MIN=${SPEED_MIN:-}  # SPEED=auto's threshold (default: powerattn.eval.campaign.MIN_SPEEDUP)
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Many processes share the GPU: fewer CPU threads each, and an allocator that fragments less.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
E="python3 -m powerattn.commands.eval"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
has() { [[ ",$PARTS," == *",$1,"* ]]; }
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -n "$SPEED" ] && [ "$SPEED" != auto ]; then  # a typo fails now, not in every run
    python3 -c "import sys; from powerattn.eval.lm import speed_options as s; s(sys.argv[1:])" \
        ${SPEED//,/ } || { echo "SPEED=$SPEED: give speed options or auto"; exit 2; }
fi
echo "gpu_eval.sh PARTS=$PARTS BUDGET=$BUDGET SEEDS=$SEEDS JOBS=$JOBS PRESET=$PRESET" \
    "DEVICE=$DEVICE LM_STEPS=${LM_STEPS:-preset} PATTERNS=${PATTERNS:-all}" \
    "SPEED=${SPEED:-none} $(date -u)"

# Everything that should come back, rewritten after each part (a later failure keeps it).
pack() {
    local dirs
    dirs=$(cd "$WORK" && ls -d base lm ruler probe 2>/dev/null)
    [ -n "$dirs" ] && tar czf "$OUT/runs.tgz.tmp" --exclude='checkpoint.*' -C "$WORK" $dirs &&
        mv "$OUT/runs.tgz.tmp" "$OUT/runs.tgz"
    [ -d "$WORK/results" ] && tar czf "$OUT/results.tgz.tmp" -C "$WORK" results &&
        mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
    cp "$WORK/results/lm/ppl_by_position.png" "$OUT/" 2>/dev/null
    cp "$WORK/results/probing/heatmaps.png" "$OUT/" 2>/dev/null
    echo "-- packed at $(( $(date +%s) - T0 )) s: $(ls "$OUT" | tr '\n' ' ')"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt"
python3 -c "import torch, transformers, tokenizers, triton; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, \
'triton', triton.__version__)" >>"$OUT/gpu.txt" 2>&1
python3 -c "import sklearn; print('sklearn', sklearn.__version__)" >>"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# SPEED=auto: measure the lm model's training speed, default vs compile, alone on the GPU
# (scripts/gpu_train_speed.py: the first 5 steps' losses checked against float32 first, then
# 3 s of steps/s each), in the background while the corpus is built; the decision follows it.
# Kept in $WORK/speed: a later call on the warm machine (e.g. `ruler 560`) reuses it.
SPEED_JSON=$WORK/speed/train_speed.json
SPEED_PID=
if [ "$SPEED" = auto ] && { has lm || has ruler; } && [ ! -f "$SPEED_JSON" ]; then
    mkdir -p "$WORK/speed"
    echo "SPEED=auto: measuring default vs compile on the lm model (background)"
    SMOKE=0
    [ "$DEVICE" = cpu ] && SMOKE=1  # the dry run: tiny models, numbers meaningless
    # --budget 45: compile's phase starts ~20 s in, or never; the timeout bounds a hang (every
    # second waited here comes off the lm part's deadline).
    OUT=$WORK/speed GPU_TRAIN_SPEED_SMOKE=$SMOKE timeout "${SPEED_TIMEOUT:-90}" \
        python3 scripts/gpu_train_speed.py --models lm --settings default,compile --no-shared \
        --seconds 3 --budget 45 >"$WORK/speed/stdout.txt" 2>&1 &
    SPEED_PID=$!
fi

if [ -n "${CORPUS:-}" ]; then
    echo "corpus $CORPUS (given)"
else
    # CORPUS_ARGS: more `eval corpus` flags (e.g. a document selection); a corpus folder of
    # its own per flag set, so a warm machine never reuses one built with other flags.
    CORPUS=$WORK/corpus${CORPUS_ARGS:+-$(echo "$CORPUS_ARGS" | tr -c 'A-Za-z0-9.\n' '_')}
    if [ ! -f "$CORPUS/manifest.json" ]; then
        t=$(date +%s)
        timeout "${CORPUS_TIMEOUT:-240}" $E corpus --out "$CORPUS" --source python --max-mb "${CORPUS_MB:-60}" \
            ${CORPUS_ARGS:-} |
            grep -A12 '"counts"'
        # A document selection's record (without the per-document scores) into the log.
        python3 -c "import json, sys; s = json.load(open(sys.argv[1])).get('select_longrange'); \
s and print('select_longrange', json.dumps({k: v for k, v in s.items() if k != 'scores'}))" \
            "$CORPUS/manifest.json"
        python3 -c "from powerattn.eval import lm; print('tokens in', lm.tokenize_corpus('$CORPUS'))" ||
            { echo "CORPUS FAILED: nothing can run"; exit 1; }
        echo "corpus built and tokenized in $(( $(date +%s) - t )) s"
    fi
fi
echo "corpus $CORPUS, $(left) s left"

# The speed options of the training parts: SPEED as given (every part), or SPEED=auto's
# decision for lm and ruler (the measured model) and compile for probe (the probe part).
TRAIN_SPEED=$SPEED PROBE_SPEED=$SPEED
if [ "$SPEED" = auto ]; then
    t=$(date +%s)
    [ -n "$SPEED_PID" ] && { wait "$SPEED_PID" || echo "speed measurement: exit status $?"; }
    grep -hE "ERROR|SKIP|best setting|done in" "$WORK/speed/train_speed.log" 2>/dev/null
    [ -n "$SPEED_PID" ] || echo "speed measurement: reusing $SPEED_JSON"
    [ -f "$SPEED_JSON" ] || tail -5 "$WORK/speed/stdout.txt" 2>/dev/null
    mkdir -p "$WORK/speed"
    TRAIN_SPEED=$(python3 -c "import sys; from powerattn.eval import campaign as c
m = float(sys.argv[2]) if sys.argv[2] else c.MIN_SPEEDUP
s, why = c.choose_speed(sys.argv[1], 'lm', m); print(f'{why} [threshold {m}x]', file=sys.stderr)
print(','.join(s))" "$SPEED_JSON" "$SPEED_MIN" 2>"$WORK/speed/decision.txt")
    echo "SPEED=auto decision (waited $(( $(date +%s) - t )) s for the measurement):" \
        "lm/ruler --speed '${TRAIN_SPEED}' <- $(cat "$WORK/speed/decision.txt")"
    echo "SPEED=auto: probe compiles (its passkey model: 2.43x alone, results/train_speed)"
    PROBE_SPEED=
    cp "$SPEED_JSON" "$OUT/" 2>/dev/null
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Compile in JOBS processes at once: Inductor's default pool (one worker process per core, in
# every process) would start JOBS x cores workers; share the cores instead.
if [[ ",$TRAIN_SPEED,$PROBE_SPEED," == *",compile,"* ]] && [ "$JOBS" -gt 1 ]; then
    n=$(( $(nproc) / JOBS ))
    export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(( n > 0 ? n : 1 ))}
    echo "compile in up to $JOBS processes at once:" \
        "TORCHINDUCTOR_COMPILE_THREADS=$TORCHINDUCTOR_COMPILE_THREADS"
fi

# Seconds for a part: lm 2 shares, ruler and probe 1 each, of what is left now but the last
# packing's 20 s.
REST=$(( $(left) - 20 ))
share() {
    local w=1 tot=0 p
    [ "$1" = lm ] && w=2
    for p in lm ruler probe; do has $p && { [ $p = lm ] && tot=$((tot + 2)) || tot=$((tot + 1)); }; done
    echo $((REST * w / tot))
}
# Tokens of one training step of the preset (batch x context).
STEP_TOKENS=$(python3 -c "from powerattn.eval import lm; p = lm.PRESETS['$PRESET']; \
print(p.batch_size * p.context)")

if has lm; then
    S=$(share lm)
    t=$(date +%s)
    # Training stops 60 s before the part's end: evaluation (256 windows of 4096 tokens per
    # run, all runs at once), the trained-model check and the summary take ~30 s of them.
    echo "== lm: ${LM_STEPS:-preset} steps per run, ${S}s, training deadline $((S - 60))s," \
        "speed options: ${TRAIN_SPEED:-none}"
    timeout "$S" $E ppl --corpus "$CORPUS" --out "$WORK/$LM_DIR" --preset "$PRESET" --seeds "$SEEDS" \
        ${INIT_FROM:+--init-from "$WORK/$INIT_FROM"} \
        ${LM_STEPS:+--steps $LM_STEPS} ${PATTERNS:+--patterns $PATTERNS} --jobs "$JOBS" \
        ${TRAIN_SPEED:+--speed $TRAIN_SPEED} --device "$DEVICE" --deadline $((S - 60)) \
        --results "$WORK/results/$LM_DIR" >/dev/null ||
        echo "LM PART: exit status $? (failed runs are listed above; see $WORK/$LM_DIR/lm-NAME.log)"
    for f in "$WORK/$LM_DIR"/lm-*.log; do
        grep -q Traceback "$f" 2>/dev/null && { echo "--- $f"; tail -5 "$f"; }
        grep -h "CHECK FAILED" "$f" 2>/dev/null
    done
    # The summary from whatever runs wrote ppl.json (also after a timeout).
    $E ppl --summarize "$WORK/$LM_DIR" --results "$WORK/results/$LM_DIR" >/dev/null
    cat "$WORK/results/$LM_DIR/table.txt" 2>/dev/null
    python3 - "$WORK/$LM_DIR" "$(( $(date +%s) - t ))" <<'EOF'
import json, sys
from pathlib import Path
runs = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/ppl.json")]
tokens = sum(r["tokens_trained"] for r in runs)  # since each run's start (a fresh machine: this call)
print(f"lm part: {len(runs)} runs evaluated, {tokens / 1e6:.1f}M tokens trained, "
      f"{tokens / float(sys.argv[2]):.4g} tokens/s over the part's wall time {sys.argv[2]} s "
      "(start-up, compilation and evaluation included)")
for r in runs:
    print(f"  {r['name']:<22} steps {r['steps']}/{r['steps_planned']} call tokens/s "
          f"{r.get('tokens_per_s') or 0:.4g} check {r.get('check_pass')} "
          f"speed {','.join(r.get('speed', [])) or 'none'}")
EOF
    pack
fi

if has ruler; then
    S=$(share ruler)
    # 11 runs per seed (6 patterns + 5 hybrids) training 40 % of the part at ~5e5 tokens/s in
    # all (12 eager lm runs in session 5; 11 compiled RULER runs in session 14: 4.5e5): ~600
    # steps in `ruler 560` with one seed, ~190 in `lm,ruler 560`.
    RSEEDS=${RULER_SEEDS:-0}
    NRUNS=$(( 11 * $(echo "$RSEEDS" | tr ',' '\n' | wc -l) ))
    RSTEPS=${RULER_STEPS:-$(python3 -c "print(max(5, int($S * 0.4 * 0.5e6 / $STEP_TOKENS / $NRUNS)))")}
    # The tiny preset's 320 tokens hold every task only with a tiny haystack; its dry run
    # needs two tasks and a few steps.
    [ "$PRESET" = tiny ] && RULER_TASKS=${RULER_TASKS:-niah_single,vt} && RSTEPS=${RULER_STEPS:-3}
    echo "== ruler: seeds $RSEEDS, $RSTEPS steps per run, ${RULER_SAMPLES:-50} samples per task," \
        "${S}s, speed options: ${TRAIN_SPEED:-none}"
    timeout "$S" $E ruler --train --lm-runs "$WORK/${RULER_LM:-lm}" --out "$WORK/ruler" --preset "$PRESET" \
        --seeds "$RSEEDS" --hybrid --steps "$RSTEPS" --samples "${RULER_SAMPLES:-50}" --jobs "$JOBS" \
        ${RULER_TASKS:+--tasks $RULER_TASKS} ${TRAIN_SPEED:+--speed $TRAIN_SPEED} \
        --device "$DEVICE" --deadline $((S * 55 / 100)) \
        --results "$WORK/results/ruler" || echo "RULER PART: exit status $?"
    $E ruler --summarize "$WORK/ruler" --results "$WORK/results/ruler" >/dev/null
    pack
fi

if has probe; then
    S=$(share probe)
    # scripts/gpu_probe.sh: the passkey experiment's gpu-mix runs of 3 patterns, probed; its
    # runs resume from $WORK/passkey in a later call. Compile unless SPEED names options (the
    # CPU dry run, PRESET=tiny: smoke-mix and none); its own Inductor threads (3 processes).
    PP=gpu-mix PS=${PROBE_SPEED:-compile}
    [ "$PRESET" = tiny ] && PP=smoke-mix PS=${PROBE_SPEED:-none}
    echo "== probe: ${S}s, scripts/gpu_probe.sh, preset $PP, speed options: $PS"
    env -u TORCHINDUCTOR_COMPILE_THREADS OUT="$OUT/probe" WORK="$WORK" PROBE_PRESET=$PP \
        PROBE_SPEED=$PS PROBE_PATTERNS=sliding_window,power,full PROBE_SEEDS=0 \
        PROBE_DEVICE="$DEVICE" bash "$(dirname "$0")/gpu_probe.sh" "$S" ||
        echo "PROBE PART: exit status $?"
    pack
fi

echo "done in $(( $(date +%s) - T0 )) s"
ls -la "$OUT"
sleep 1  # let tee write the last lines of log.txt
