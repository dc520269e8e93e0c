#!/usr/bin/env bash
# GPU job of context parallelism, on the 2-GPU machine (nvidia-h200-x2). From the repository
# root:
#     OUT=/tmp/out bash scripts/gpu_cp.sh
# 1. torchrun over NPROC GPUs (default 2): correctness at 128K tokens against one GPU (ours
#    and the all-gather baseline, forward and gradients), then per-step time, peak memory,
#    bytes per rank per layer and the transfer alone at 256K, 512K and 1M tokens for our plan,
#    the all-gather baseline and (at 256K) PyTorch's ring CP for full causal attention
#    (powerattn.bench.cp; its docstring says what each number is).
# 2. The 64-GPU scaling model with the measured points (cp_scaling.png, scaling.json).
# 3. Optional (CP_TRAIN=lengths): training-step throughput of a ~1B Llama, dp x cp.
# NCCL variables are left as the machine sets them. Expected wall time: ~3-4 minutes without
# CP_TRAIN. Writes env.txt, cp.log, cp.json, scaling.json, cp_scaling.png (+ train_*.json).
set -uo pipefail
OUT=${OUT:-/tmp/powerattn-cp}
NPROC=${NPROC:-2}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nvidia-smi topo -m 2>/dev/null | head -n 6
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
} 2>&1 | tee "$OUT/env.txt"
start=$(date +%s)
rc=0
timeout "${CP_TIMEOUT:-230}" python3 -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
    -m powerattn.bench.cp --json "$OUT/cp.json" --budget-s "${CP_BUDGET:-170}" ${CP_ARGS:-} \
    2>&1 | grep -v -E "UserWarning|warnings.warn" | tee "$OUT/cp.log"
rc=${PIPESTATUS[0]}
echo "bench cp: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$OUT/cp.log"
# Optional: training-step throughput of a ~1B Llama, dp x cp with FSDP2 + activation
# checkpointing (CP_TRAIN="262144 524288" lengths; CP_TRAIN_HYBRID=1 adds "2 of every 7" full
# layers). ~1-2 minutes per length on two H200s (one compile, one warm-up step, 4 steps).
for S in ${CP_TRAIN:-}; do
    for FULL in "" ${CP_TRAIN_HYBRID:+"2 of every 7"}; do
        tag=$([[ -n $FULL ]] && echo hybrid || echo power)
        timeout "${CP_TRAIN_TIMEOUT:-240}" python3 -m torch.distributed.run --standalone \
            --nproc-per-node "$NPROC" -m powerattn.distributed.train --cp "$NPROC" --seq-len "$S" \
            ${FULL:+--full-layers "$FULL"} --json "$OUT/train_${tag}_$S.json" 2>&1 \
            | grep -v -E "UserWarning|warnings.warn|FutureWarning" | tail -n 5 | tee -a "$OUT/cp.log"
    done
done
python3 -m powerattn.commands.cp cp-scaling --seq-len 1048576 --json "$OUT/scaling.json" \
    --plot "$OUT/cp_scaling.png" --measured "$OUT/cp.json" 2>&1 | tail -n 12 || rc=$?
exit $rc
