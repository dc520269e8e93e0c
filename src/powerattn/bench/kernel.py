"""``powerattn bench kernel``: the attention operator against dense attention and FlexAttention.

Qwen2-7B attention shapes by default (B=1, 28 query heads, 4 KV heads, head dim 128, bf16)
at 8K..128K tokens. Cases (``--workloads``):

* ``fwd``: prefill forward (``Sq == Sk``); ``fwd_bwd``: forward + backward;
* ``decode``: one query at the end of ``Sk`` keys (eager call, and ``decode_graph``: a
  CUDA-graph replay), and ``decode_bB`` (``--decode-batches``): B sequences of a KV cache, each
  at its own length (up to ``Sk``).

Methods (``method`` in the JSON):

* ``dense_cudnn``: dense causal SDPA, cuDNN backend (decode: ``dense_sdpa``, the default
  backend with ``enable_gqa``);
* ``flex_static``: FlexAttention the way its documentation shows it: ``create_block_mask`` on
  the pattern's ``mask_mod`` and ``torch.compile(flex_attention)`` with static shapes;
* ``flex_flash``: the same with ``kernel_options={"BACKEND": "FLASH"}`` (FlashAttention-4;
  only where ``flash_attn.cute`` imports and the GPU is SM90/SM100, else a note says why);
* ``ours``: :func:`powerattn.sparse_attention` with ``backend="auto"`` (``backend`` says which
  kernel it chose); ``ours_flex``: ours forced to the Triton kernel, when auto chose FLASH.

Times are medians of CUDA-event timings (``triton.testing.do_bench``; calls over 20 ms: the
median of 3). TFLOP/s count the attended token pairs only (4 * pairs * D * Hq for the forward,
3.5x that with the backward). Each row prints its ratio to ``flex_static`` and to dense.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..patterns import get_pattern

WORKLOADS = ("fwd", "fwd_bwd", "decode")


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
    skip_flex: bool = False  # the FlexAttention baselines (create_block_mask)
    decode_batches: list[int] = field(default_factory=lambda: [8, 32])  # at the longest length


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
        self.notes: list[str] = []
        self.log = log

    def add(self, case, method, s, ms, flops=None, backend=None, **extra):
        row = {"case": case, "seq_len": s, "method": method, "backend": backend, "ms": ms}
        if flops is not None and ms:
            row["tflops"] = flops / ms / 1e9
        row.update(extra)
        self.rows.append(row)
        self.log(
            f"  {case:12s} {method:12s} {backend or '':8s} S={s:7d} {ms:9.3f} ms"
            + (f" {row['tflops']:6.0f} TFLOP/s" if "tflops" in row else "")
            + "".join(f" {k}={v}" for k, v in extra.items())
        )

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            self.log(f"  note: {text}")


def _bench_masks(rec, cfg, pattern, s, dev):
    """Mask construction; returns FlexAttention's own BlockMask (or None)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from ..ops import flex as ops_flex

    def build_ours():
        ops_flex._mask_cache.clear()
        return ops_flex.block_mask_for(pattern, s, s, dev)

    rec.add("mask", "ours", s, _host_ms(build_ours), backend="analytic")
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
    rec.add("mask_first", "flex_static", s, (time.perf_counter() - t) * 1e3)
    rec.add("mask", "flex_static", s, _host_ms(cbm, 3), backend="create_block_mask")
    return bm


def _bench_decode(rec, cfg, pattern, s, batches):
    """Decode rows from :func:`powerattn.bench.decode.bench_decode`: B=1 eager (back-to-back
    calls over rotating KV copies, so neither L2 nor do_bench's flush hides launch cost) and
    CUDA-graph replay, against dense SDPA; B>1 with per-sequence lengths against dense SDPA
    per sequence (exact) and over the padded cache."""
    from .decode import bench_decode

    base = ("case", "seq_len", "method", "backend", "ms")
    rows = bench_decode(
        seq_lens=[s],
        batches=batches,
        q_heads=cfg.q_heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        dtype=getattr(torch, cfg.dtype),
        pattern=pattern,
        log=lambda _msg: None,
    )
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in base}
        rec.add(r["case"], r["method"], r["seq_len"], r["ms"], backend=r["backend"], **extra)


def _bench_prefill(rec, cfg, pattern, s, rnd, bm_flex, grad):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..ops import api
    from ..ops import flex as ops_flex

    B, Hq, Hkv, D = cfg.batch, cfg.q_heads, cfg.kv_heads, cfg.head_dim
    case = "fwd_bwd" if grad else "fwd"
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

    def dense():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=True
            )

    base = {}
    try:
        base["dense"] = _bench(lambda: step(dense))
        rec.add(case, "dense_cudnn", s, base["dense"], dense_flops * mult, backend="cudnn")
    except RuntimeError as exc:  # backend unavailable for these inputs
        rec.note(f"{case} dense cuDNN unavailable ({str(exc).splitlines()[0]})")

    def ratios(ms):
        out = {}
        if "flex" in base:
            out["vs_flex_static"] = round(base["flex"] / ms, 3)
        if "dense" in base:
            out["vs_dense"] = round(base["dense"] / ms, 2)
        return out

    if bm_flex is not None:
        flex_c = ops_flex.compiled_flex()
        kernels = [("flex_static", "triton", {})]
        flash_reason = ops_flex.flash_unsupported(q, pattern)
        if flash_reason:
            rec.note(f"flex_flash not measured: {flash_reason}")
        else:
            kernels.append(("flex_flash", "flash", {"BACKEND": "FLASH"}))
        for method, backend, opts in kernels:

            def fflex(opts=opts):
                return flex_c(q, k, v, block_mask=bm_flex, enable_gqa=True, kernel_options=opts)

            try:
                ms = _bench(lambda fflex=fflex: step(fflex))
            except Exception as exc:  # noqa: BLE001 - report and go on with the other methods
                rec.note(
                    f"{case} {method} failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                )
                continue
            if method == "flex_static":
                base["flex"] = ms
            rec.add(case, method, s, ms, fwd_flops * mult, backend=backend, **ratios(ms))
    chosen = api._pick_backend(q, k, v, pattern, False)
    backends = [chosen] + (["flex"] if chosen == "flash" else [])
    for backend in backends:

        def ours(backend=backend):
            return api.sparse_attention(q, k, v, pattern, backend=backend)

        ms = _bench(lambda ours=ours: step(ours))
        method = "ours" if backend == chosen else "ours_flex"
        rec.add(case, method, s, ms, fwd_flops * mult, backend=backend, **ratios(ms))


def environment() -> dict:
    import triton

    from ..ops import flex as ops_flex

    major, minor = torch.cuda.get_device_capability()
    env = {
        "gpu": torch.cuda.get_device_name(),
        "capability": f"SM{major}{minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "flash_attn_4": None,
    }
    if ops_flex.flash_importable():
        from importlib.metadata import PackageNotFoundError, version

        try:
            env["flash_attn_4"] = version("flash-attn-4")
        except PackageNotFoundError:
            env["flash_attn_4"] = "importable (version unknown)"
    return env


def run(cfg: KernelBenchConfig, log=print, on_progress=None) -> dict:
    """Run the benchmark; returns ``{"config", "env", "rows", "notes"}`` (rows: one per
    measurement). ``on_progress(result)`` is called after each sequence length."""
    if not torch.cuda.is_available():
        raise ValueError("powerattn bench kernel needs a CUDA GPU")
    dev = "cuda"
    dtype = getattr(torch, cfg.dtype)
    pattern = get_pattern(cfg.pattern, block_size=cfg.block_size)
    rec = _Recorder(log)
    env = environment()

    def result():
        return {"config": asdict(cfg), "env": env, "rows": rec.rows, "notes": rec.notes}

    for s in cfg.seq_lens:
        log(f"S = {s}")
        g = torch.Generator(device=dev).manual_seed(s)

        def rnd(*shape, g=g):
            return torch.randn(*shape, device=dev, dtype=dtype, generator=g)

        bm_flex = _bench_masks(rec, cfg, pattern, s, dev)
        for wl in cfg.workloads:
            if wl == "decode":
                more = cfg.decode_batches if s == max(cfg.seq_lens) else []
                _bench_decode(rec, cfg, pattern, s, [1, *more])
            else:
                _bench_prefill(rec, cfg, pattern, s, rnd, bm_flex, wl == "fwd_bwd")
            torch.cuda.empty_cache()
        if on_progress is not None:
            on_progress(result())
    return result()


def summary(result: dict) -> dict:
    """The machine-readable summary (``results/kernel/summary.json``): one row per timed cell,
    ``{"case", "seq_len", "method", "backend", "ms"}``."""
    keys = ("case", "seq_len", "method", "backend", "ms")
    rows = [{k: r.get(k) for k in keys} for r in result["rows"] if r["case"] != "mask_first"]
    return {"gpu": result["env"]["gpu"], "env": result["env"], "rows": rows}


def print_table(result: dict) -> None:
    env = result["env"]
    fa4 = env.get("flash_attn_4") or "not installed"
    print(f"\n{env['gpu']}  torch {env['torch']}  triton {env['triton']}  flash-attn-4 {fa4}")
    head = f"{'case':12s} {'method':12s} {'backend':9s} {'S':>7s} {'ms':>10s} {'TFLOP/s':>8s}"
    print(f"{head} {'vs flex':>8s} {'vs dense':>9s}")
    for r in result["rows"]:
        tf = f"{r['tflops']:.0f}" if "tflops" in r else ""
        vf = f"{r['vs_flex_static']:.2f}x" if "vs_flex_static" in r else ""
        vd = f"{r['vs_dense']:.2f}x" if "vs_dense" in r else ""
        left = f"{r['case']:12s} {r['method']:12s} {r.get('backend') or '':9s} {r['seq_len']:7d}"
        print(f"{left} {r['ms']:10.3f} {tf:>8s} {vf:>8s} {vd:>9s}")
    for n in result.get("notes", []):
        print(f"note: {n}")


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ("mask", "fwd", "fwd_bwd", "decode", "decode_graph")
    cases = [c for c in order if any(r["case"] == c for r in result["rows"])]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.6 * len(cases), 4))
    axes = [axes] if len(cases) == 1 else axes
    for ax, case in zip(axes, cases, strict=True):
        methods = dict.fromkeys(r["method"] for r in result["rows"] if r["case"] == case)
        for m in methods:
            pts = sorted(
                (r["seq_len"], r["ms"])
                for r in result["rows"]
                if r["case"] == case and r["method"] == m
            )
            ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("ms (log)")
        ax.set_title(case)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    c = result["config"]
    fig.suptitle(
        f"{result['env']['gpu']}: B={c['batch']} Hq={c['q_heads']} Hkv={c['kv_heads']} "
        f"D={c['head_dim']} {c['dtype']}, {c['pattern']} (block {c['block_size']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_json(path: str | None, obj: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def _main(args: argparse.Namespace) -> int:
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
    else:
        get_pattern(args.pattern, block_size=args.block_size)  # bad --block-size
        cfg = KernelBenchConfig(
            seq_lens=args.seq_lens,
            workloads=args.workloads,
            pattern=args.pattern,
            block_size=args.block_size,
            skip_flex=args.skip_flex,
            decode_batches=args.decode_batches,
        )
        # Fail loudly rather than let dynamo fall back to eager flex_attention (S x S scores).
        with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
            result = run(cfg, on_progress=lambda r: _write_json(args.json, r))
        _write_json(args.json, result)
    print_table(result)
    _write_json(args.summary, summary(result))
    if args.plot:
        plot(result, args.plot)
    return 0


def _workload(text: str) -> str:
    if text not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"unknown {text!r}; valid: {', '.join(WORKLOADS)}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    from ..patterns import pattern_names
    from ..validate import add_list_argument, positive_int

    p = sub.add_parser(
        "kernel",
        help="attention kernel vs dense SDPA and FlexAttention (CUDA)",
        description=(
            "The attention operator against dense cuDNN SDPA, FlexAttention compiled the "
            "usual way (static shapes, create_block_mask), FlexAttention's FlashAttention-4 "
            "backend (when installed), for prefill, training and decode. Qwen2-7B attention "
            "shapes (B=1, 28 query heads, 4 KV heads, head dim 128, bf16). Needs a CUDA GPU."
        ),
        epilog="Example (H200): powerattn bench kernel --json kernel.json --summary "
        "summary.json --plot kernel.png. Re-render without a GPU: powerattn bench kernel "
        "--from-json kernel.json --summary summary.json --plot kernel.png",
    )
    add_list_argument(
        p,
        "--seq-lens",
        positive_int,
        default=[8192, 16384, 32768, 65536, 131072],
        metavar="N",
        help="sequence lengths in tokens (default: 8192 16384 32768 65536 131072)",
    )
    add_list_argument(
        p,
        "--workloads",
        _workload,
        default=list(WORKLOADS),
        metavar="CASE",
        help=f"cases among {', '.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--pattern", default="power", choices=pattern_names(), help="pattern (default: power)"
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=256,
        help="pattern block size in tokens (default: 256)",
    )
    add_list_argument(
        p,
        "--decode-batches",
        positive_int,
        default=[8, 32],
        metavar="B",
        help="batch sizes of the per-sequence-length decode case, at the longest length "
        "(default: 8 32)",
    )
    p.add_argument("--skip-flex", action="store_true", help="leave out the FlexAttention baselines")
    p.add_argument("--json", metavar="PATH", help="write every measurement (and the env) here")
    p.add_argument("--summary", metavar="PATH", help="write the summary rows (summary.json)")
    p.add_argument("--plot", metavar="PATH", help="write the figure (PNG)")
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="re-render the table, summary and plot of a saved --json run (no GPU needed)",
    )
    p.set_defaults(func=_main)
