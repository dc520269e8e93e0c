"""Why is forward + backward at 8K slower through powerattn than through FlexAttention + FA4?

Session 4's `bench kernel` (results/kernel/README.md): at 8K tokens ours (backend flash)
took 1.85 ms against 1.58 ms for `flex_attention(..., kernel_options={"BACKEND": "FLASH"})`
on FlexAttention's own BlockMask, while from 16K up ours was 1-6 % faster. Both run
FlashAttention-4's kernels on block masks that agree entry for entry. This script separates
the three candidate causes, for 8K and 32K, Qwen2-7B shapes, bf16:

1. host time per step (the Python work of the call and its backward, measured with the GPU
   queue kept busy so that it does not wait),
2. GPU time per step (CUDA events around back-to-back steps), and
3. the kernels each step launches (torch.profiler: name, count, total CUDA time), which shows
   any extra copy, fill or conversion in our path.

Run on the GPU machine with FlashAttention-4 on PYTHONPATH (DEVELOPERS.md):

    source .whl/b/install.sh && export PYTHONPATH=src:$PYTHONPATH
    OUT=$OUT python3 scripts/gpu_prefill_profile.py

About 1-2 minutes. Writes $OUT/prefill_profile.json and prints the tables.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import create_block_mask

from powerattn import get_pattern, sparse_attention
from powerattn.ops import flex as ops_flex


def profile_method(name, fn, q, k, v, dout) -> dict:
    """GPU time, host time and kernels of one forward + backward step of ``fn``."""

    def step():
        o = fn()
        o.backward(dout)
        q.grad = k.grad = v.grad = None

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    # GPU time per step: back-to-back steps between two events.
    n = 50
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        step()
    b.record()
    torch.cuda.synchronize()
    gpu_ms = a.elapsed_time(b) / n
    # Host time per step: a long sleep kernel first keeps the GPU busy, so the host never
    # waits on it; the loop's wall time is then the host's work alone.
    torch.cuda._sleep(int(2e9))
    t = time.perf_counter()
    for _ in range(20):
        step()
    host_ms = (time.perf_counter() - t) / 20 * 1e3
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [
        {"name": e.key[:120], "count": e.count, "cuda_us": round(e.device_time_total, 1)}
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        if e.device_time_total > 0
    ]
    return {"method": name, "gpu_ms": round(gpu_ms, 4), "host_ms": round(host_ms, 4),
            "kernels": kernels}  # fmt: skip


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "/tmp/prefill_profile"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = get_pattern("power")
    probe = torch.empty(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16)
    reason = ops_flex.flash_unsupported(probe, pattern)
    if reason:
        sys.exit(f"FlashAttention-4 not usable here: {reason}")
    flex_c = ops_flex.compiled_flex()
    report = {"env": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}, "rows": []}
    for s in (8192, 32768):
        g = torch.Generator(device="cuda").manual_seed(s)
        shapes = ((1, 28, s, 128), (1, 4, s, 128), (1, 4, s, 128), (1, 28, s, 128))
        q, k, v, dout = (
            torch.randn(*sh, device="cuda", dtype=torch.bfloat16, generator=g) for sh in shapes
        )
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()

        def mask_mod(b, h, qi, ki):
            return pattern.mask_mod(b, h, qi, ki)

        bm = create_block_mask(mask_mod, None, None, s, s, device="cuda", BLOCK_SIZE=128)
        methods = {
            "flex_flash": lambda q=q, k=k, v=v, bm=bm: flex_c(
                q, k, v, block_mask=bm, enable_gqa=True, kernel_options={"BACKEND": "FLASH"}
            ),
            "ours": lambda q=q, k=k, v=v: sparse_attention(q, k, v, pattern, backend="flash"),
        }
        for name, fn in methods.items():
            row = {"seq_len": s, **profile_method(name, fn, q, k, v, dout)}
            report["rows"].append(row)
            print(f"\n== S={s} {name}: {row['gpu_ms']:.3f} ms/step on the GPU (back to back), "
                  f"host {row['host_ms']:.3f} ms/step")  # fmt: skip
            for kr in row["kernels"][:15]:
                print(f"   {kr['count']:3d} x {kr['cuda_us']:9.1f} us  {kr['name']}")
        del q, k, v, dout, bm
        torch.cuda.empty_cache()
    (out_dir / "prefill_profile.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
