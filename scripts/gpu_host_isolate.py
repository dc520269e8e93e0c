"""Where do the extra ~0.3 ms of host per 8K forward + backward step come from?

Session 8's scripts/gpu_prefill_profile.py (results/kernel/speed-session8/): at 8K,
``sparse_attention(q, k, v, "power")`` (FA4) spends 1.99 ms of host per step against 1.67 ms
for ``flex_attention`` + FA4 on ``create_block_mask``'s BlockMask, and the step is
host-bound (its kernels take ~1.6 ms, ours a little less than the baseline's). Our Python
wrapper costs ~15-30 us (scripts/prefill_host_cpu.py), and ``ops.flex.flex_sparse_attention``
alone is already +263 us: the difference is inside the compiled call. This script swaps one
ingredient at a time between the baseline and ours (same compiled ``flex_attention``, same
kernels), so that the variant where the host time jumps names the cause:

  A  plain compiled flex_attention, create_block_mask BlockMask (BLOCK_SIZE 128) -- baseline
  B  plain compiled flex_attention, our BlockMask (ops.flex.block_mask_for: its tensors are
     views into two shared buffers)
  C  as B, every BlockMask tensor cloned into its own allocation
  D  ops.flex.flex_sparse_attention (our compiled function, FA4)
  E  sparse_attention(q, k, v, "power") (the public call)
  F  as E, with block_mask_for returning cloned tensors (candidate fix)

Then the call counts of A and E under cProfile, function by function, where they differ.
Correctness first: every variant's output and dq equal A's to bf16 noise.

    source <FA4 install> && PYTHONPATH=src:$PYTHONPATH OUT=$OUT python3 scripts/gpu_host_isolate.py

About 1.5-2 minutes. Writes $OUT/host_isolate.json.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

sys.path.insert(0, str(Path(__file__).parent))
from gpu_prefill_profile import fwd_bwd_step, host_ms_per_step  # noqa: E402

from powerattn import get_pattern, sparse_attention  # noqa: E402
from powerattn.bench.kernel import _bench  # noqa: E402
from powerattn.ops import flex as ops_flex  # noqa: E402
from powerattn.ops.checks import resolve_scale  # noqa: E402

_FIELDS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def cloned(bm: BlockMask) -> BlockMask:
    """The same BlockMask with every tensor in its own allocation."""
    parts = {f: getattr(bm, f).clone() for f in _FIELDS}
    return BlockMask(
        seq_lengths=bm.seq_lengths, BLOCK_SIZE=bm.BLOCK_SIZE, mask_mod=bm.mask_mod, **parts
    )


def gpu_ms(step, n: int = 50) -> float:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        step()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def no_grad(fn):
    def step():
        with torch.no_grad():
            return fn()

    return step


def call_counts(step) -> tuple[dict[str, int], dict[str, float]]:
    torch.cuda.synchronize()
    torch.cuda._sleep(int(3e8))
    with cProfile.Profile() as prof:
        for _ in range(10):
            step()
    torch.cuda.synchronize()
    st = pstats.Stats(prof).stats
    name = lambda f: f"{Path(f[0]).name}:{f[1]}({f[2]})"  # noqa: E731
    return (
        {name(f): v[1] for f, v in st.items()},  # primitive + recursive calls
        {name(f): v[2] for f, v in st.items()},  # own time
    )


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "/tmp/host_isolate"))
    out_dir.mkdir(parents=True, exist_ok=True)
    s = int(os.environ.get("SEQ", 8192))
    pattern = get_pattern("power")
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = ((1, 28, s, 128), (1, 4, s, 128), (1, 4, s, 128), (1, 28, s, 128))
    q, k, v, dout = (
        torch.randn(*sh, device="cuda", dtype=torch.bfloat16, generator=g) for sh in shapes
    )
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    flex_c = ops_flex.compiled_flex()
    opts = {"BACKEND": "FLASH"}

    def mask_mod(b, h, qi, ki):
        return pattern.mask_mod(b, h, qi, ki)

    bm_a = create_block_mask(mask_mod, None, None, s, s, device="cuda", BLOCK_SIZE=128)
    bm_b = ops_flex.block_mask_for(pattern, s, s, q.device)
    bm_c = cloned(bm_b)
    scale = resolve_scale(None, q.shape[-1])
    orig = ops_flex.block_mask_for
    clone_cache: dict = {}

    def block_mask_cloned(pattern, q_len, kv_len, device, tile=ops_flex.TILE, **kw):
        key = (pattern, q_len, kv_len, str(device), tile, tuple(sorted(kw.items())))
        if key not in clone_cache:
            clone_cache[key] = cloned(orig(pattern, q_len, kv_len, device, tile, **kw))
        return clone_cache[key]

    def patched_e():
        ops_flex.block_mask_for = block_mask_cloned
        try:
            return sparse_attention(q, k, v, "power")
        finally:
            ops_flex.block_mask_for = orig

    variants = {
        "A flex+FA4, create_block_mask": lambda: flex_c(
            q, k, v, block_mask=bm_a, enable_gqa=True, kernel_options=opts
        ),
        "B flex+FA4, our BlockMask": lambda: flex_c(
            q, k, v, block_mask=bm_b, enable_gqa=True, kernel_options=opts
        ),
        "C flex+FA4, our BlockMask cloned": lambda: flex_c(
            q, k, v, block_mask=bm_c, enable_gqa=True, kernel_options=opts
        ),
        "D ops.flex.flex_sparse_attention": lambda: ops_flex.flex_sparse_attention(
            q, k, v, pattern, scale, need_lse=False, kernel="flash"
        )[0],
        "E sparse_attention": lambda: sparse_attention(q, k, v, "power"),
        "F sparse_attention, cloned BlockMask": patched_e,
    }
    report = {"env": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()},
              "seq_len": s, "rows": [], "checks": {}}  # fmt: skip
    ref = None
    for name, fn in variants.items():
        o = fn()
        o.backward(dout)
        got = (o.detach().float(), q.grad.float())
        q.grad = k.grad = v.grad = None
        if ref is None:
            ref = got
        err = [(a - b).abs().max().item() for a, b in zip(got, ref, strict=True)]
        report["checks"][name] = {"out_max_abs_diff": err[0], "dq_max_abs_diff": err[1]}
        print(f"check {name}: out {err[0]:.3g}, dq {err[1]:.3g} (dq max {ref[1].abs().max():.3g})")
    del ref, got
    for rnd in range(2):  # two rounds, interleaved: drift shows as a round-to-round change
        for name, fn in variants.items():
            step = fwd_bwd_step(fn, q, k, v, dout)
            row = {"variant": name, "round": rnd, "gpu_ms": round(gpu_ms(step), 4),
                   "host_ms": round(host_ms_per_step(step), 4),
                   "fwd_host_ms": round(host_ms_per_step(fn), 4),
                   # bench kernel's fwd case: no autograd (8K forward: ours 0.69 ms against
                   # flex_flash 0.37, sessions 8 and 12, while fwd+bwd matches)
                   "fwd_nograd_gpu_ms": round(gpu_ms(no_grad(fn)), 4),
                   "fwd_nograd_host_ms": round(host_ms_per_step(no_grad(fn)), 4),
                   # the same call timed as bench kernel times it (do_bench: an L2 flush,
                   # then events around each call), to test whether that timing exposes
                   # the launch latency of a call that is host-bound at the margin
                   "fwd_nograd_bench_ms": round(_bench(no_grad(fn)), 4)}  # fmt: skip
            report["rows"].append(row)
            print(
                f"round {rnd} {name:40s} GPU {row['gpu_ms']:.3f} ms/step, host "
                f"{row['host_ms']:.3f} ms/step, forward host {row['fwd_host_ms']:.3f}, "
                f"no-grad forward GPU {row['fwd_nograd_gpu_ms']:.3f} host "
                f"{row['fwd_nograd_host_ms']:.3f}, as bench kernel times it "
                f"{row['fwd_nograd_bench_ms']:.3f}"
            )
        (out_dir / "host_isolate.json").write_text(json.dumps(report, indent=1))
    counts, own = {}, {}  # own time: seconds over 10 steps; x 1e5 = us per step
    for name in ("A flex+FA4, create_block_mask", "E sparse_attention"):
        counts[name], own[name] = call_counts(fwd_bwd_step(variants[name], q, k, v, dout))
    a, e = counts.values()
    oa, oe = own.values()
    diff = sorted(
        ((fn, a.get(fn, 0) / 10, e.get(fn, 0) / 10, (oe.get(fn, 0) - oa.get(fn, 0)) * 1e5)
         for fn in set(a) | set(e) if a.get(fn, 0) != e.get(fn, 0) or fn not in a),
        key=lambda r: -abs(r[3]),
    )  # fmt: skip
    report["call_diff_per_step"] = [
        {"function": fn, "calls_A": ca, "calls_E": ce, "own_us_E_minus_A_cprofile": round(d, 1)}
        for fn, ca, ce, d in diff
    ]
    print("\nfunctions called a different number of times per step (A -> E), by own-time change:")
    for fn, ca, ce, d in diff[:60]:
        print(f"  {ca:6.1f} -> {ce:6.1f}  {d:+8.1f} us  {fn}")
    (out_dir / "host_isolate.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
