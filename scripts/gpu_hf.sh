#!/usr/bin/env bash
# GPU job of the Hugging Face integration: the conformance suite (tests/hf) on CUDA -- float32
# models, so prefill runs FlexAttention and decode the decode kernel; the compiled static-cache
# test uses transformers' own compile (inductor, CUDA graphs) -- then a small decode timing of
# a random Qwen2-shaped model (batch 4, 16K prompt): dynamic cache vs static cache + compiled
# decode step (numbers for information; `powerattn bench e2e` is the benchmark).
# Run from the repository root on the GPU machine (nvidia-h200, 3-5 minutes, compiles dominate):
#     OUT=/tmp/out bash scripts/gpu_hf.sh [all|tests|decode]
# Writes env.txt, hf_tests.log, hf_decode.log, hf_decode.json under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/powerattn-hf}
MODE=${1:-all}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
rc=0
if [[ $MODE == all || $MODE == tests ]]; then
    start=$(date +%s)
    POWERATTN_HF_DEVICE=cuda timeout "${TEST_TIMEOUT:-180}" python3 -m pytest -q \
        -n "${TEST_WORKERS:-4}" -p no:cacheprovider tests/hf \
        --deselect tests/hf/test_hf_bench_e2e.py::test_bench_e2e_plumbing \
        >"$OUT/hf_tests.log" 2>&1 || rc=$?
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/hf_tests.log" | tail -n 40
    echo "tests: rc=$rc in $(($(date +%s) - start)) s"
fi
if [[ $MODE == all || $MODE == decode ]]; then
    start=$(date +%s)
    timeout "${DECODE_TIMEOUT:-150}" python3 - "$OUT/hf_decode.json" <<'EOF' 2>&1 | tee "$OUT/hf_decode.log" | grep -v Warning
"""Decode ms/token of a random Qwen2-shaped model (4 layers, 8 query / 2 key-value heads of
128, bf16, batch 4): sdpa vs powerattn full and power (256-token blocks) with the dynamic cache
(eager), and power with cache_implementation="static" (transformers compiles the decode step
itself on CUDA).
Correctness first: full == sdpa and static == dynamic tokens (bf16: a flip on a near-tie is
reported, not hidden)."""
import json, os, sys, time, traceback

import torch
import transformers

import powerattn.hf as pt

# HF_DECODE_DEVICE=cpu HF_DECODE_PROMPT=64: a dry run of this script on a CPU.
DEV = os.environ.get("HF_DECODE_DEVICE", "cuda")
PROMPT, NEW = int(os.environ.get("HF_DECODE_PROMPT", 16384)), 32
DTYPE = torch.bfloat16 if DEV == "cuda" else torch.float32
sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)


def model(impl):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=1024, hidden_size=1024, intermediate_size=2048, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1 << 17,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    m = transformers.Qwen2ForCausalLM(cfg).to(DEV, DTYPE).eval()
    if impl == "sdpa":
        m.set_attn_implementation("sdpa")
    else:
        pt.apply(m, impl)  # "full", or "power" at the paper's 256-token blocks
    return m


def generate(m, x, new, cache):
    with torch.no_grad():
        return m.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          pad_token_id=0, cache_implementation=cache)


def ms_per_token(m, x, cache):
    generate(m, x, NEW, cache)  # warm-up (and compilation for the static cache)
    times = {}
    for new in (1, NEW):
        sync()
        t = time.perf_counter()
        generate(m, x, new, cache)
        sync()
        times[new] = time.perf_counter() - t
    return 1e3 * (times[NEW] - times[1]) / (NEW - 1)


doc = {"prompt": PROMPT, "new_tokens": NEW, "rows": [], "checks": {}}
for batch in (4,):
    x = torch.randint(3, 1024, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
    x = x.to(DEV)
    tokens = {}
    for impl, cache in (("sdpa", None), ("full", None), ("power", None), ("power", "static")):
        row = {"batch": batch, "impl": impl, "cache": cache or "dynamic"}
        try:
            torch._dynamo.reset()
            m = model(impl)
            tokens[(impl, cache)] = generate(m, x, NEW, cache)[:, PROMPT:].cpu()
            row["ms_per_token"] = round(ms_per_token(m, x, cache), 3)
            row["tokens_per_s"] = round(1e3 * batch / row["ms_per_token"], 1)
        except Exception as e:  # keep measuring the others; the error is in the JSON
            row["error"] = f"{type(e).__name__}: {e}"[:400]
            traceback.print_exc()
        print(row, flush=True)
        doc["rows"].append(row)
        json.dump(doc, open(sys.argv[1], "w"), indent=1)  # what is done survives a timeout
        del m
        if DEV == "cuda":
            torch.cuda.empty_cache()

    def agree(a, b):
        if a in tokens and b in tokens:
            return float((tokens[a] == tokens[b]).float().mean())
        return None

    doc["checks"][f"b{batch}"] = {
        "full_vs_sdpa_token_agreement": agree(("full", None), ("sdpa", None)),
        "power_static_vs_dynamic_token_agreement": agree(("power", "static"), ("power", None)),
    }
    print(doc["checks"][f"b{batch}"], flush=True)
json.dump(doc, open(sys.argv[1], "w"), indent=1)
EOF
    rc2=${PIPESTATUS[0]}
    [[ $rc2 != 0 ]] && rc=$rc2
    echo "decode: rc=$rc2 in $(($(date +%s) - start)) s"
fi
exit $rc
