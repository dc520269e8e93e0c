"""The 8K forward of `bench kernel` (ours +85 % against FlexAttention + FA4 in sessions 8 and
12, equal in isolation in session 13): reproduce it in the bench's own process, then look.

1. `bench kernel` at 8K and 16K, forward only (the bench's rows, as committed runs made them).
2. In the same process, fresh no-grad tensors at 8K: ``flex_flash`` (compiled flex_attention +
   FA4 on create_block_mask's BlockMask) against ``ours`` (``sparse_attention``, backend
   auto), each timed three ways: the bench's ``_bench`` (do_bench: an L2 flush, then events
   around each call), back-to-back GPU time, and host time per call.
3. torch.profiler over 20 do_bench-like iterations of each (flush, event, call, event), with a
   per-iteration breakdown: the GPU gap between the flush's end and the call's first kernel
   (host time the GPU waits for), the call's kernels and their time. Key averages (host time
   per op) and the chrome traces go to $OUT.

Correctness first: ours' output equals flex_flash's to bf16 noise (same kernel, same mask).

    source <FA4 install> && PYTHONPATH=src:$PYTHONPATH OUT=$OUT python3 scripts/gpu_fwd8k.py

About a minute. Writes $OUT/fwd8k.json, fwd8k_bench.json, fwd8k_<method>_trace.json and _ops.txt.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
from torch.nn.attention.flex_attention import create_block_mask
from torch.profiler import ProfilerActivity, profile

from powerattn import get_pattern, sparse_attention
from powerattn.bench import kernel as bk
from powerattn.ops import flex as ops_flex

sys.path.insert(0, str(Path(__file__).parent))
from gpu_host_isolate import gpu_ms  # noqa: E402  (back-to-back GPU ms per call)


def host_ms(fn, n: int = 50) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) * 1e3 / n  # enqueue rate while the GPU keeps up or not
    torch.cuda.synchronize()
    return host


def bench_like_iterations(fn, cache, n: int):
    """do_bench's timed loop: flush, start event, call, end event (no sync in between)."""
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(n)]  # fmt: skip
    for s, e in ev:
        cache.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in ev]


def breakdown(prof) -> list[dict]:
    """Per iteration (from one flush to the next; the flush is the long ``zero_`` fill of
    do_bench's 256-MB buffer): the GPU gap from the flush's end to the first kernel of the
    call, the call's kernels and their GPU time, and the span to the last one's end."""
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: e.time_range.start,
    )

    def is_flush(e) -> bool:
        return "fill" in e.name.lower() and e.time_range.end - e.time_range.start > 30

    rows, cur = [], None
    for e in kernels:
        if is_flush(e):
            if cur and cur["kernels"]:
                rows.append(cur)
            cur = {"flush_end": e.time_range.end, "kernels": []}
        elif cur is not None:
            cur["kernels"].append((e.name[:60], e.time_range.start, e.time_range.end))
    if cur and cur["kernels"]:
        rows.append(cur)
    return [
        {
            "gap_after_flush_us": r["kernels"][0][1] - r["flush_end"],
            "span_us": r["kernels"][-1][2] - r["flush_end"],
            "kernel_us": sum(b - a for _, a, b in r["kernels"]),
            "kernels": [n for n, _, _ in r["kernels"]],
        }
        for r in rows
    ]


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/fwd8k"))
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"env": bk.environment()}
    # 1. the bench's own rows
    cfg = bk.KernelBenchConfig(seq_lens=[8192, 16384], workloads=["fwd"])
    res = bk.run(cfg, log=lambda m: print(m, flush=True))
    (out / "fwd8k_bench.json").write_text(json.dumps(res, indent=1, default=str))
    report["bench_rows"] = [
        {k: r.get(k) for k in ("case", "seq_len", "method", "backend", "ms")} for r in res["rows"]
    ]
    # 2. the same process, fresh tensors
    s, pattern = 8192, get_pattern("power")
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, h, s, 128, device="cuda", dtype=torch.bfloat16, generator=g)
               for h in (28, 4, 4))  # fmt: skip

    def mask_mod(b, h, qi, ki):
        return pattern.mask_mod(b, h, qi, ki)

    bm = create_block_mask(mask_mod, None, None, s, s, device="cuda", BLOCK_SIZE=128)
    flex_c = ops_flex.compiled_flex()
    opts = {"BACKEND": "FLASH"}

    def flex_flash():
        with torch.no_grad():
            return flex_c(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=opts)

    def ours():
        with torch.no_grad():
            return sparse_attention(q, k, v, "power")

    methods = {"flex_flash": flex_flash, "ours": ours}
    a, b = flex_flash().float(), ours().float()
    err = (a - b).abs().max().item()
    report["check_ours_vs_flex_flash_max_abs"] = err
    print(f"check: ours vs flex_flash max abs diff {err:.3g} (|out| max {a.abs().max():.3g})")
    assert err < 2e-2 * a.abs().max().item(), "ours and flex_flash disagree"
    report["rounds"] = []
    for rnd in range(2):
        for name, fn in methods.items():
            row = {"method": name, "round": rnd, "bench_ms": round(bk._bench(fn), 4),
                   "gpu_ms": round(gpu_ms(fn), 4), "host_ms": round(host_ms(fn), 4)}  # fmt: skip
            report["rounds"].append(row)
            print(row, flush=True)
    # 3. profiles of the bench's timed loop
    cache = triton.runtime.driver.active.get_empty_cache_for_benchmark()
    report["profiles"] = {}
    for name, fn in methods.items():
        bench_like_iterations(fn, cache, 10)  # warm
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            times = bench_like_iterations(fn, cache, 20)
        prof.export_chrome_trace(str(out / f"fwd8k_{name}_trace.json"))
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        (out / f"fwd8k_{name}_ops.txt").write_text(table)
        its = breakdown(prof)
        report["profiles"][name] = {
            "event_ms": sorted(times)[len(times) // 2],
            "iterations": its,
        }

        def med(key: str, its=its):
            return sorted(r[key] for r in its)[len(its) // 2] if its else None

        one = its[0]["kernels"] if its else None
        print(
            f"{name}: event median {sorted(times)[len(times) // 2]:.4f} ms; after the flush: "
            f"gap {med('gap_after_flush_us')} us, kernels {med('kernel_us')} us, span "
            f"{med('span_us')} us; kernels of one call: {one}"
        )
        (out / "fwd8k.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
