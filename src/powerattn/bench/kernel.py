"""``powerattn bench kernel``: the attention operator against dense SDPA and FlexAttention.

Qwen2-7B attention shapes by default (B=1, 28 query heads, 4 KV heads, head dim 128, bf16)
at 8K..128K tokens, three workloads:

* ``fwd``: prefill forward (``Sq == Sk``);
* ``fwdbwd``: forward + backward;
* ``decode``: one query at the end of ``Sk`` keys.

Methods: dense SDPA with the flash and the cuDNN backends (causal; decode: no mask, default
backend), FlexAttention the usual way (``create_block_mask`` on the pattern's ``mask_mod``;
its build time reported separately, first call and cached), and ours
(:func:`powerattn.sparse_attention`, BlockMask construction timed separately, uncached; for
decode also the raw kernel and a CUDA-graph replay). Times are medians of CUDA-event
timings (``triton.testing.do_bench``). TFLOP/s count the attended token pairs only
(4 * pairs * D * Hq for the forward, 2.5x that more for the backward); speed-up is against
dense cuDNN SDPA (decode: dense SDPA).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..patterns import get_pattern

WORKLOADS = ("fwd", "fwdbwd", "decode")


@dataclass
class KernelBenchConfig:
    seq_lens: list[int] = field(default_factory=lambda: [8192, 16384, 32768, 65536, 131072])
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    batch: int = 1
    q_heads: int = 28  # Qwen2-7B
    kv_heads: int = 4
    head_dim: int = 128
    dtype: str = "bfloat16"
    pattern: str = "power"
    block_size: int = 256
    skip_flex: bool = False  # FlexAttention baseline (create_block_mask)


def _bench(fn, rep_ms: float = 100.0) -> float:
    """Median ms of ``fn`` by CUDA events. Slow calls (dense attention at 128K takes up to a
    second) are timed 3 times instead of through do_bench's 5-call estimate + repeats."""
    import triton

    fn()  # warm up / compile
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    if start.elapsed_time(end) > 20.0:
        times = []
        for _ in range(3):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[1]
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def _host_ms(fn, n: int = 5) -> float:
    """Median wall time of ``fn`` (synchronised), for host-side work like mask building."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def _pairs(pattern, s: int) -> float:
    """Attended (query, key) pairs of an ``s``-token prefill."""
    return pattern.density(s) * s * (s + 1) / 2


class _Recorder:
    def __init__(self, log):
        self.rows: list[dict] = []
        self.log = log

    def add(self, workload, method, s, ms, flops=None, **extra):
        row = {"workload": workload, "method": method, "seq_len": s, "ms": ms, **extra}
        if flops is not None and ms:
            row["tflops"] = flops / ms / 1e9
        self.rows.append(row)
        self.log(
            f"  {workload:7s} {method:28s} S={s:7d} {ms:9.3f} ms"
            + (f" {row['tflops']:6.0f} TFLOP/s" if "tflops" in row else "")
            + "".join(f" {k}={v}" for k, v in extra.items())
        )


def _bench_masks(rec, cfg, pattern, s, dev):
    """Mask construction; returns FlexAttention's own BlockMask (or None)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from ..ops import flex as ops_flex

    def build_ours():
        ops_flex._mask_cache.clear()
        return ops_flex.block_mask_for(pattern, s, s, dev)

    rec.add("mask", "ours (analytic BlockMask)", s, _host_ms(build_ours))
    if cfg.skip_flex:
        return None

    def mask_mod(b, h, q_idx, kv_idx):  # create_block_mask wants a plain function
        return pattern.mask_mod(b, h, q_idx, kv_idx)

    def cbm():
        return create_block_mask(
            mask_mod, None, None, s, s, device=dev, BLOCK_SIZE=128, _compile=True
        )

    t = time.perf_counter()
    bm = cbm()
    torch.cuda.synchronize()
    rec.add("mask", "flex create_block_mask 1st", s, (time.perf_counter() - t) * 1e3)
    rec.add("mask", "flex create_block_mask", s, _host_ms(cbm, 3))
    return bm


def _bench_decode(rec, cfg, pattern, s, rnd, flex_c, with_flex):
    from torch.nn.attention.flex_attention import create_block_mask

    from ..ops.api import sparse_attention
    from ..ops.decode import decode_attention

    B, Hq, Hkv, D = cfg.batch, cfg.q_heads, cfg.kv_heads, cfg.head_dim
    q = rnd(B, Hq, 1, D)
    k, v = rnd(B, Hkv, s, D), rnd(B, Hkv, s, D)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dense = _bench(lambda: sdpa(q, k, v, enable_gqa=True))
    rec.add("decode", "dense SDPA", s, dense)
    if with_flex:
        offset = torch.tensor(s - 1, device=q.device)  # a tensor: no recompile per length

        def mask_mod(b, h, q_idx, kv_idx):
            return pattern.mask_mod(b, h, q_idx + offset, kv_idx)

        try:
            bm1 = create_block_mask(mask_mod, None, None, 1, s, device=q.device, BLOCK_SIZE=128)
            ms = _bench(lambda: flex_c(q, k, v, block_mask=bm1, enable_gqa=True))
            rec.add("decode", "flex (create_block_mask)", s, ms, speedup=round(dense / ms, 2))
        except Exception as exc:  # noqa: BLE001 - report and go on with the other methods
            rec.log(f"  decode flex: failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    G = Hq // Hkv
    mask = pattern.dense_mask(1, s).to(q.device)
    ref = sdpa(
        q.float(),
        k.float().repeat_interleave(G, 1),
        v.float().repeat_interleave(G, 1),
        attn_mask=mask,
    )
    with torch.no_grad():
        err = (sparse_attention(q, k, v, pattern).float() - ref).abs().max().item()
        ms = _bench(lambda: sparse_attention(q, k, v, pattern))
    frac = min(1.0, pattern.max_degree(math.ceil(s / cfg.block_size)) * cfg.block_size / s)
    rec.add(
        "decode",
        "ours (sparse_attention)",
        s,
        ms,
        speedup=round(dense / ms, 2),
        max_err=f"{err:.2e}",
        kv_read_frac=round(frac, 4),
    )
    scale = D**-0.5
    ms = _bench(lambda: decode_attention(q, k, v, pattern, scale))
    rec.add("decode", "ours (kernel call)", s, ms, speedup=round(dense / ms, 2))
    ms = _bench(lambda: decode_attention(q, k, v, pattern, scale, fused=False))
    rec.add("decode", "ours (kernel, 2 launches)", s, ms, speedup=round(dense / ms, 2))
    # CUDA graph of the kernel call (what a static-cache decode loop would replay).
    st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for _ in range(3):
            decode_attention(q, k, v, pattern, scale)
    torch.cuda.current_stream().wait_stream(st)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention(q, k, v, pattern, scale)
    ms = _bench(graph.replay)
    kv_bytes = frac * 2 * B * Hkv * s * D * k.element_size()
    rec.add(
        "decode",
        "ours (CUDA graph)",
        s,
        ms,
        speedup=round(dense / ms, 2),
        GBps=round(kv_bytes / ms / 1e6),
    )


def _bench_prefill(rec, cfg, pattern, s, rnd, flex_c, bm_flex, grad):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..ops.api import sparse_attention

    B, Hq, Hkv, D = cfg.batch, cfg.q_heads, cfg.kv_heads, cfg.head_dim
    wl = "fwdbwd" if grad else "fwd"
    mult = 3.5 if grad else 1.0  # backward = 2.5x the forward's matmul work
    fwd_flops = 4.0 * _pairs(pattern, s) * D * Hq * B
    dense_flops = 4.0 * s * (s + 1) / 2 * D * Hq * B
    q = rnd(B, Hq, s, D).requires_grad_(grad)
    k = rnd(B, Hkv, s, D).requires_grad_(grad)
    v = rnd(B, Hkv, s, D).requires_grad_(grad)
    dout = rnd(B, Hq, s, D)

    def step(f):
        if not grad:
            with torch.no_grad():
                return f()
        out = f()
        out.backward(dout)
        return out

    dense_ms = {}
    backends = (("flash", SDPBackend.FLASH_ATTENTION), ("cuDNN", SDPBackend.CUDNN_ATTENTION))
    for name, be in backends:

        def dense(be=be):
            with sdpa_kernel(be):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True
                )

        try:
            ms = _bench(lambda dense=dense: step(dense))
        except RuntimeError as exc:  # backend unavailable for these inputs
            rec.log(f"  {wl} dense {name}: unavailable ({str(exc).splitlines()[0]})")
            continue
        dense_ms[name] = ms
        rec.add(wl, f"dense SDPA {name}", s, ms, dense_flops * mult)
    base = dense_ms.get("cuDNN") or dense_ms.get("flash")

    def speedup(ms):
        return {"speedup": round(base / ms, 2)} if base else {}

    def ours():
        return sparse_attention(q, k, v, pattern)

    def fflex():
        return flex_c(q, k, v, block_mask=bm_flex, enable_gqa=True)

    if bm_flex is not None:
        try:
            ms = _bench(lambda: step(fflex))
            rec.add(wl, "flex (create_block_mask)", s, ms, fwd_flops * mult, **speedup(ms))
        except Exception as exc:  # noqa: BLE001
            rec.log(f"  {wl} flex: failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            bm_flex = None
    ms = _bench(lambda: step(ours))
    extra = speedup(ms)
    if bm_flex is not None and not grad:
        with torch.no_grad():
            extra["max_diff_vs_flex"] = f"{(ours().float() - fflex().float()).abs().max():.2e}"
    rec.add(wl, "ours (sparse_attention)", s, ms, fwd_flops * mult, **extra)


def run(cfg: KernelBenchConfig, log=print, on_progress=None) -> dict:
    """Run the benchmark; returns ``{"config", "env", "rows"}`` (rows: one per measurement).
    ``on_progress(result)`` is called after each sequence length (partial results)."""
    import triton

    if not torch.cuda.is_available():
        raise ValueError("powerattn bench kernel needs a CUDA GPU")
    dev = "cuda"
    dtype = getattr(torch, cfg.dtype)
    pattern = get_pattern(cfg.pattern, block_size=cfg.block_size)
    # The usual way: compiled flex_attention. The same compiled wrapper as ours (dynamic
    # shapes): two wrappers of one function would recompile on every switch (BACKEND_MATCH).
    from ..ops import flex as ops_flex

    flex_c = ops_flex.compiled_flex("cuda")
    rec = _Recorder(log)
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    for s in cfg.seq_lens:
        log(f"S = {s}")
        g = torch.Generator(device=dev).manual_seed(s)

        def rnd(*shape, g=g):
            return torch.randn(*shape, device=dev, dtype=dtype, generator=g)

        bm_flex = _bench_masks(rec, cfg, pattern, s, dev)
        for wl in cfg.workloads:
            if wl == "decode":
                _bench_decode(rec, cfg, pattern, s, rnd, flex_c, bm_flex is not None)
            else:
                _bench_prefill(rec, cfg, pattern, s, rnd, flex_c, bm_flex, wl == "fwdbwd")
            torch.cuda.empty_cache()
        if on_progress is not None:
            on_progress({"config": asdict(cfg), "env": env, "rows": rec.rows})
    return {"config": asdict(cfg), "env": env, "rows": rec.rows}


def print_table(result: dict) -> None:
    env = result["env"]
    print(f"\n{env['gpu']}  torch {env['torch']}  triton {env['triton']}")
    print(f"{'workload':8s} {'method':28s} {'S':>7s} {'ms':>10s} {'TFLOP/s':>8s} {'speed-up':>9s}")
    for r in result["rows"]:
        tf = f"{r['tflops']:.0f}" if "tflops" in r else ""
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        head = f"{r['workload']:8s} {r['method']:28s} {r['seq_len']:7d}"
        print(f"{head} {r['ms']:10.3f} {tf:>8s} {sp:>9s}")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = [w for w in ("mask", *WORKLOADS) if any(r["workload"] == w for r in result["rows"])]
    fig, axes = plt.subplots(1, len(wls), figsize=(5 * len(wls), 4))
    axes = [axes] if len(wls) == 1 else axes
    for ax, wl in zip(axes, wls, strict=True):
        methods = dict.fromkeys(r["method"] for r in result["rows"] if r["workload"] == wl)
        for m in methods:
            pts = [
                (r["seq_len"], r["ms"])
                for r in result["rows"]
                if r["workload"] == wl and r["method"] == m
            ]
            ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms")
        ax.set_title(wl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    c = result["config"]
    fig.suptitle(
        f"{result['env']['gpu']}: B={c['batch']} Hq={c['q_heads']} Hkv={c['kv_heads']} "
        f"D={c['head_dim']} {c['dtype']}, {c['pattern']} (block {c['block_size']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _seq_lens(text: str) -> list[int]:
    """``--seq-lens``: comma-separated positive token counts."""
    try:
        lens = [int(x) for x in text.split(",")]
    except ValueError:
        lens = []
    if not lens or min(lens) <= 0:
        raise ValueError(f"--seq-lens: expected positive integers like 8192,16384, got {text!r}")
    return lens


def _main(args: argparse.Namespace) -> int:
    bad = sorted(set(args.workloads.split(",")) - set(WORKLOADS))
    if bad:
        raise ValueError(f"--workloads: unknown {bad}; valid: {', '.join(WORKLOADS)}")
    get_pattern(args.pattern, block_size=args.block_size)  # bad --pattern / --block-size
    cfg = KernelBenchConfig(
        seq_lens=_seq_lens(args.seq_lens),
        workloads=args.workloads.split(","),
        pattern=args.pattern,
        block_size=args.block_size,
        skip_flex=args.skip_flex,
    )

    def save(result):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    # Fail loudly rather than let dynamo fall back to eager flex_attention (S x S scores).
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        result = run(cfg, on_progress=save)
    print_table(result)
    save(result)
    if args.plot:
        plot(result, args.plot)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kernel",
        help="attention kernel vs dense SDPA and FlexAttention (CUDA)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--seq-lens", default="8192,16384,32768,65536,131072")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="fwd,fwdbwd,decode")
    p.add_argument("--pattern", default="power")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--skip-flex", action="store_true", help="no create_block_mask baseline")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--plot", metavar="PATH")
    p.set_defaults(func=_main)
