#!/usr/bin/env bash
# GPU job of context parallelism, on the 2-GPU machine (nvidia-h200-x2). From the repository
# root:
#     OUT=/tmp/out bash scripts/gpu_cp.sh
# 1. torchrun over NPROC GPUs (default 2), powerattn.bench.cp: correctness first (at 128K
#    tokens, ours and the all-gather baseline, forward and gradients in bf16 against one GPU),
#    then per-step time, peak memory, bytes per rank per layer and the transfer alone at
#    CP_LENS (default 256K and 512K) for our plan, the all-gather baseline and (at 256K)
#    PyTorch's own context parallelism (SDPA ring attention, full causal).
# 2. `powerattn train` through torchrun on NCCL, three runs of one small config (passkey,
#    16K tokens, power, FSDP2 + activation checkpointing) at the same time:
#    `--cp 2` (bf16 autocast, as one process trains), `--cp 2 --mixed-precision bf16`
#    (FSDP2 MixedPrecisionPolicy), and the plain single-GPU trainer as the reference; their
#    per-step losses side by side in train.json (CP_TRAIN_RESUME=1: then one process resumes
#    the --cp 2 run's checkpoint for its last steps).
# 3. The 64-GPU scaling model with the measured points (cp_scaling.png, scaling.json).
# 4. Optional (CP_TRAIN=lengths): training-step throughput of a ~1B Llama, dp x cp.
# NCCL variables (NVLS / multicast included) are left as the machine sets them; env.txt lists
# them. Expected wall time: ~4-5 minutes (bench <= 160 s, training <= 120 s). Writes env.txt,
# cp.log, cp.json, train.log, train.json, scaling.json, cp_scaling.png (+ train_*.json).
set -uo pipefail
OUT=${OUT:-/tmp/powerattn-cp}
NPROC=${NPROC:-2}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
RUN="python3 -m torch.distributed.run --standalone --nproc-per-node $NPROC"
QUIET="UserWarning|warnings.warn|FutureWarning"
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nvidia-smi topo -m 2>/dev/null | head -n 6
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
    env | grep -E '^(NCCL|TORCH_NCCL)_' || echo "no NCCL_* variables set"
} 2>&1 | tee "$OUT/env.txt"
start=$(date +%s)
rc=0
# 1. Correctness, then the three methods.
timeout -k 20 "${CP_TIMEOUT:-160}" $RUN -m powerattn.bench.cp --json "$OUT/cp.json" \
    --seq-lens "${CP_LENS:-262144,524288}" --budget-s "${CP_BUDGET:-100}" ${CP_ARGS:-} \
    2>&1 | grep -v -E "$QUIET" | tee "$OUT/cp.log"
rc=${PIPESTATUS[0]}
echo "bench cp: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$OUT/cp.log"

# 2. powerattn train --cp 2 under torchrun, next to one GPU.
T=$(mktemp -d)
cat >"$T/cfg.json" <<'EOF'
{"seed": 0, "batch_size": 2,
 "model": {"layers": 4, "hidden": 256, "heads": 4, "kv_heads": 2, "intermediate": 768},
 "pattern": {"name": "power", "full_layers": []},
 "task": {"block_size": 64, "digits": 5},
 "stages": [{"seq_len": 16384, "steps": 6}],
 "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "constant"},
 "lm_weight": 1.0, "log_every": 1, "checkpoint_every": 1000, "device": "cuda"}
EOF
TRAIN="train --config $T/cfg.json --no-progress"
STOP=${CP_TRAIN_RESUME:+--stop-at 3}
t0=$(date +%s)
(timeout -k 20 "${TRAIN_TIMEOUT:-120}" $RUN -m powerattn.cli $TRAIN --cp "$NPROC" --out "$T/cp" $STOP \
    >"$T/cp.log" 2>&1; echo "cp: rc=$?" >>"$T/cp.log") &
(timeout -k 20 "${TRAIN_TIMEOUT:-120}" $RUN -m powerattn.cli $TRAIN --cp "$NPROC" --out "$T/mp" \
    --mixed-precision bf16 >"$T/mp.log" 2>&1; echo "mp: rc=$?" >>"$T/mp.log") &
(CUDA_VISIBLE_DEVICES=$((NPROC - 1)) timeout -k 20 "${TRAIN_TIMEOUT:-120}" python3 -m powerattn.cli \
    $TRAIN --out "$T/one" >"$T/one.log" 2>&1; echo "one: rc=$?" >>"$T/one.log") &
wait
if [[ -n ${CP_TRAIN_RESUME:-} ]]; then  # one process (no torchrun) resumes the --cp run
    timeout 90 python3 -m powerattn.cli $TRAIN --out "$T/cp" >>"$T/cp.log" 2>&1
    echo "resume: rc=$?" >>"$T/cp.log"
fi
for r in cp mp one; do
    echo "== $r"
    grep -v -E "$QUIET|^\s*warnings|^W[0-9]" "$T/$r.log" | tail -n 25
done >"$OUT/train.log" 2>&1
python3 - "$T" "$OUT/train.json" <<'EOF' 2>&1 | tee -a "$OUT/train.log"
import json, sys
from pathlib import Path
t, out = Path(sys.argv[1]), sys.argv[2]
runs = {}
for r in ("cp", "mp", "one"):
    f = t / r / "metrics.jsonl"
    runs[r] = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
res = {"config": json.loads((t / "cfg.json").read_text()), "runs": runs}
one = {m["step"]: m["loss"] for m in runs["one"]}
print("step   one GPU   --cp 2 (rel diff)   --cp 2 bf16 mp (rel diff)")
for m in runs["cp"]:
    s = m["step"]
    mp = {x["step"]: x["loss"] for x in runs["mp"]}.get(s)
    row = [f"{s:4d}", f"{one.get(s, float('nan')):9.5f}", f"{m['loss']:9.5f}"]
    if s in one:
        row.append(f"({(m['loss'] - one[s]) / one[s]:+.1e})")
    if mp is not None and s in one:
        row += [f"{mp:9.5f}", f"({(mp - one[s]) / one[s]:+.1e})"]
    print("  ".join(row), f"dp {m['dp']} cp {m['cp']}", f"{m['tokens_per_s']:.0f} tok/s")
Path(out).write_text(json.dumps(res, indent=1) + "\n")
EOF
echo "train: $(($(date +%s) - t0)) s" | tee -a "$OUT/train.log"
rm -rf "$T"

# 4. Optional: training-step throughput of a ~1B Llama, dp x cp with FSDP2 + activation
# checkpointing (CP_TRAIN="262144 524288" lengths; CP_TRAIN_HYBRID=1 adds "2 of every 7" full
# layers; CP_TRAIN_ARGS="--mixed-precision" for float32 master weights). ~1-2 minutes per
# length on two H200s (one compile, one warm-up step, 4 steps).
for S in ${CP_TRAIN:-}; do
    for FULL in "" ${CP_TRAIN_HYBRID:+"2 of every 7"}; do
        tag=$([[ -n $FULL ]] && echo hybrid || echo power)
        timeout "${CP_TRAIN_TIMEOUT:-240}" $RUN -m powerattn.distributed.train --cp "$NPROC" \
            --seq-len "$S" ${FULL:+--full-layers "$FULL"} ${CP_TRAIN_ARGS:-} \
            --json "$OUT/train_${tag}_$S.json" \
            2>&1 | grep -v -E "$QUIET" | tail -n 5 | tee -a "$OUT/cp.log"
    done
done
# 3. The scaling model with the measured points.
python3 -m powerattn.commands.cp cp-scaling --seq-len 1048576 --json "$OUT/scaling.json" \
    --plot "$OUT/cp_scaling.png" --measured "$OUT/cp.json" 2>&1 | tail -n 12 || rc=$?
echo "total: $(($(date +%s) - start)) s"
exit $rc
