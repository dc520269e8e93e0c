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

At 8K it also times the host alone for our call through each layer (the public call with a
name, with a Pattern object, and ``ops.flex.flex_sparse_attention`` itself) and prints where
the host time of one step goes (cProfile, top functions by own time), ours and plain flex:
our wrapper's share against dynamo's guards, AOTAutograd and FlashAttention-4's launch code.
scripts/prefill_host_cpu.py measures our wrapper's part on a CPU-only machine.

Run on the GPU machine with FlashAttention-4 on PYTHONPATH (DEVELOPERS.md):

    source .whl/b/install.sh && export PYTHONPATH=src:$PYTHONPATH
    OUT=$OUT python3 scripts/gpu_prefill_profile.py

About 1.5-2.5 minutes (four FlashAttention-4 compiles; scripts/gpu_speed.sh gives it 150 s).
Writes $OUT/prefill_profile.json and prints the tables and the host summary.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import create_block_mask

from powerattn import get_pattern, sparse_attention
from powerattn.ops import flex as ops_flex
from powerattn.ops.checks import resolve_scale


def host_ms_per_step(step, steps: int = 10, rounds: int = 5) -> float:
    """Host time of ``step`` alone: a sleep kernel first keeps the GPU busy, so the host
    never waits on it; the loop's wall time is then the host's work (median of rounds). 10
    steps per round keep the launch queue short of its depth (a full queue would block)."""
    per = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        torch.cuda._sleep(int(3e8))  # ~0.15-0.2 s of GPU time, far beyond 10 steps of host
        t = time.perf_counter()
        for _ in range(steps):
            step()
        per.append((time.perf_counter() - t) / steps * 1e3)
    torch.cuda.synchronize()
    return statistics.median(per)


def fwd_bwd_step(fn, q, k, v, dout):
    def step():
        o = fn()
        o.backward(dout)
        q.grad = k.grad = v.grad = None

    return step


def host_profile(step, top: int = 25) -> str:
    """cProfile of 10 steps (GPU kept busy): the top functions by own time."""
    torch.cuda.synchronize()
    torch.cuda._sleep(int(3e8))
    with cProfile.Profile() as prof:
        for _ in range(10):
            step()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def profile_method(name, fn, q, k, v, dout) -> dict:
    """GPU time, host time and kernels of one forward + backward step of ``fn``."""
    step = fwd_bwd_step(fn, q, k, v, dout)
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
    host_ms = host_ms_per_step(step)
    fwd_host_ms = host_ms_per_step(fn)  # the forward alone (graph kept, then dropped)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [
        {"name": e.key[:120], "count": e.count, "cuda_us": round(e.device_time_total, 1)}
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        if e.device_time_total > 0
    ]
    return {"method": name, "gpu_ms": round(gpu_ms, 4), "host_ms": round(host_ms, 4),
            "fwd_host_ms": round(fwd_host_ms, 4), "kernels": kernels}  # fmt: skip


def profile_length(s: int, pattern, flex_c, report: dict) -> None:
    """Check, then profile ours and FlexAttention + FA4 at ``s`` tokens into ``report``."""
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
        # as `powerattn bench kernel` calls it (a name, backend auto: flash here)
        "ours": lambda q=q, k=k, v=v: sparse_attention(q, k, v, "power"),
    }
    # Correctness first: the same attention, so outputs and gradients agree to bf16 noise.
    res = {}
    for name, fn in methods.items():
        o = fn()
        o.backward(dout)
        res[name] = (o.detach().float(), q.grad.float())
        q.grad = k.grad = v.grad = None
    diff = {
        "out_max_abs_diff": (res["ours"][0] - res["flex_flash"][0]).abs().max().item(),
        "dq_max_abs_diff": (res["ours"][1] - res["flex_flash"][1]).abs().max().item(),
        "dq_max_abs": res["flex_flash"][1].abs().max().item(),
    }
    report["checks"].append({"seq_len": s, **diff})
    print(f"== S={s} ours vs flex_flash: " + ", ".join(f"{k} {v:.3g}" for k, v in diff.items()))
    del res
    for name, fn in methods.items():
        row = {"seq_len": s, **profile_method(name, fn, q, k, v, dout)}
        report["rows"].append(row)
        print(f"\n== S={s} {name}: {row['gpu_ms']:.3f} ms/step on the GPU (back to back), "
              f"host {row['host_ms']:.3f} ms/step, forward alone "
              f"{row['fwd_host_ms']:.3f}")  # fmt: skip
        for kr in row["kernels"][:15]:
            print(f"   {kr['count']:3d} x {kr['cuda_us']:9.1f} us  {kr['name']}")
    if s == 8192:  # where the host could matter: each layer of our call, and where it goes
        scale = resolve_scale(None, q.shape[-1])  # the very float of our call: no recompile
        layers = {
            "ours, Pattern object, backend='flash'": lambda: sparse_attention(
                q, k, v, pattern, backend="flash"
            ),
            "ops.flex.flex_sparse_attention": lambda: ops_flex.flex_sparse_attention(
                q, k, v, pattern, scale, need_lse=False, kernel="flash"
            )[0],
        }
        host = {r["method"]: r["host_ms"] for r in report["rows"] if r["seq_len"] == s}
        for name, fn in layers.items():
            host[name] = round(host_ms_per_step(fwd_bwd_step(fn, q, k, v, dout)), 4)
        gpu = {r["method"]: r["gpu_ms"] for r in report["rows"] if r["seq_len"] == s}
        report["host_8k"] = {"host_ms_per_fwd_bwd": host, "gpu_ms_per_fwd_bwd": gpu}
        print("\n== 8K host time per forward + backward step (ms), GPU kept busy:")
        for name, ms in host.items():
            print(f"   {ms:8.4f}  {name}")
        extra = host["ours"] - host["flex_flash"]
        print(f"   ours - flex_flash: {extra * 1e3:+.1f} us of host per step; GPU per step: "
              f"ours {gpu['ours']:.3f} ms, flex_flash {gpu['flex_flash']:.3f} ms: the host "
              + ("IS" if host["ours"] >= 0.9 * gpu["ours"] else "is not")
              + " near the GPU time (host-bound when it is)")  # fmt: skip
        for name in methods:
            try:
                text = host_profile(fwd_bwd_step(methods[name], q, k, v, dout))
            except Exception as exc:  # noqa: BLE001 - a diagnostic: keep the timings
                text = f"cProfile failed: {exc!r}"
            report[f"host_profile_8k_{name}"] = text
            print(f"\n== 8K {name}: cProfile of 10 steps (top functions by own time)")
            print(text)


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "/tmp/prefill_profile"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = get_pattern("power")
    probe = torch.empty(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16)
    reason = ops_flex.flash_unsupported(probe, pattern)
    if reason:
        sys.exit(f"FlashAttention-4 not usable here: {reason}")
    flex_c = ops_flex.compiled_flex()
    report = {
        "env": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()},
        "rows": [],
        "checks": [],
    }
    for s in (8192, 32768):
        profile_length(s, pattern, flex_c, report)
        torch.cuda.empty_cache()
        # after each length: a timeout during 32K keeps 8K's answer
        (out_dir / "prefill_profile.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
