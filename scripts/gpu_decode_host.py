"""Where does an eager decode call's host time go? (issue 9: eager decode is host-bound)

Session 5's `scripts/gpu_decode.py` run: one eager `sparse_attention` decode call at 8K-128K
costs ~33 us of host time against ~24 us for dense SDPA, while the kernel itself takes
~16-19 us of GPU time, so the eager call is bounded by the host. This script times each
layer of the call on its own (perf_counter over many calls; the GPU queue absorbs the
kernels), then prints a cProfile of the whole call. Qwen2-7B shapes, bf16, power, 32K keys.

    OUT=$OUT PYTHONPATH=src python3 scripts/gpu_decode_host.py      # ~30 s, nvidia-h200

Writes $OUT/decode_host.json and $OUT/decode_host.txt.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from powerattn import get_pattern, sparse_attention
from powerattn.ops import decode as dec

OUT = Path(os.environ.get("OUT", "/tmp/decode-host"))


def host_us(fn, iters: int = 2000) -> float:
    """Median over 5 rounds of the mean host time per call."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        rounds.append((time.perf_counter() - t) / iters * 1e6)
        torch.cuda.synchronize()
    return sorted(rounds)[2]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    p = get_pattern("power", block_size=256)
    g = torch.Generator(device="cuda").manual_seed(0)
    s = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
    q = torch.randn(1, 28, 1, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 4, s, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    scale = 128**-0.5
    dev = q.device
    sparse_attention(q, k, v, p)
    sparse_attention(q, k, v, p)  # the second call takes the direct launch
    n_kb = dec._next_pow2(-(-s // 256))
    args = (p, 1, 28, 4, 1, 128, q.dtype, n_kb, dev, None, dec.FUSED, False, False)
    plan = dec._plan(*args)
    ws, cnt = dec._workspace(dev, plan)
    out = torch.empty_like(q)
    largs = (
        q, k, v, out, ws, ws, cnt, cnt, plan.tbl, plan.tcnt, *q.stride(), *k.stride(),
        *v.stride(), s, s, scale * dec._LOG2E, plan.n_slots, plan.splits,
    )  # fmt: skip
    runner = next(iter(plan.runners.values()), None)
    stream = torch._C._cuda_getCurrentRawStream(0)
    parts = {
        "dense SDPA (enable_gqa)": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "sparse_attention (whole public call)": lambda: sparse_attention(q, k, v, p),
        "decode_forward": lambda: dec.decode_forward(q, k, v, p, scale),
        "decode_attention": lambda: dec.decode_attention(q, k, v, p, scale, need_lse=False),
        "_plan (cached)": lambda: dec._plan(*args),
        "_workspace": lambda: dec._workspace(dev, plan),
        "torch.empty (B,Hq,1,D)": lambda: torch.empty((1, 28, 1, 128), dtype=q.dtype, device=dev),
        "torch.empty_like(q)": lambda: torch.empty_like(q),
        "_launch_fast": lambda: dec._launch_fast(plan, largs, 0),
        "runner(...) alone": (
            (lambda: runner(*largs, *plan.const_values, stream=stream)) if runner else None
        ),
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "_cuda_getCurrentRawStream": lambda: torch._C._cuda_getCurrentRawStream(0),
        "q.stride() x3 + data_ptr x5": lambda: (
            q.stride(),
            k.stride(),
            v.stride(),
            q.data_ptr(),
            k.data_ptr(),
            v.data_ptr(),
            out.data_ptr(),
            cnt.data_ptr(),
        ),  # fmt: skip
        "torch.compiler.is_compiling": torch.compiler.is_compiling,
        "dense_is_exact": lambda: dec.dense_is_exact(p, 1, s),
        "hash(pattern)": lambda: hash(p),
    }
    res = {}
    lines = [f"S={s} torch {torch.__version__} {torch.cuda.get_device_name()}"]
    for name, fn in parts.items():
        if fn is None:
            continue
        res[name] = round(host_us(fn), 2)
        lines.append(f"{name:<40} {res[name]:8.2f} us")
        print(lines[-1], flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3000):
        sparse_attention(q, k, v, p)
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    lines.append(buf.getvalue())
    print(buf.getvalue())
    (OUT / "decode_host.txt").write_text("\n".join(lines))
    (OUT / "decode_host.json").write_text(json.dumps({"seq_len": s, "host_us": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
