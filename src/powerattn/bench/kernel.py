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
  kernel it chose); ``ours_flex``: ours forced to the Triton kernel, when auto chose FLASH;
  ``ours_flash_flex``: ours with FlashAttention-4 reached through FlexAttention's FLASH
  backend (``ops.flex.FLASH_DIRECT`` off), beside ``ours`` calling it directly.

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

import torch

from ..patterns import get_pattern
from . import runner
from .runner import Benchmark, Column, Plot, Ratio, Skip

WORKLOADS = ("fwd", "fwd_bwd", "decode")
DEVICE = "cuda"  # a module constant so that the logic can be dry-run on the CPU


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


# The table (and each row's progress line): one Column per field of a row.
COLUMNS = (
    Column("case", "case", 12),
    Column("method", "method", 12),
    Column("backend", "backend", 9),
    Column("seq_len", "S", 7, "d", align=">"),
    Column("ms", "ms", 10, ".3f", align=">"),
    Column("tflops", "TFLOP/s", 8, ".0f", align=">"),
    Column("vs_flex_static", "vs flex", 8, ".2f", "x", align=">"),
    Column("vs_dense", "vs dense", 9, ".2f", "x", align=">"),
)
PLOT = Plot(
    x="seq_len",
    panel="case",
    panels=("mask", "fwd", "fwd_bwd", "decode", "decode_graph"),
    xlabel="sequence length (tokens)",
    ylabel="ms (log)",
)
PREFILL_METHODS = (
    "dense_cudnn",
    "flex_static",
    "flex_flash",
    "ours",
    "ours_flex",
    "ours_flash_flex",
)


def benchmark(cfg: KernelBenchConfig) -> Benchmark:
    """The benchmark as the runner sees it: per sequence length, the configs ``mask`` then
    each workload; providers ``ours``/``flex_static`` (mask), :data:`PREFILL_METHODS`
    (``fwd``, ``fwd_bwd``; those that cannot run here are skipped with a note) and
    ``bench_decode`` (``decode``: its rows name their own cases and methods). Needs CUDA to
    measure; building it does not."""
    dev = DEVICE
    dtype = getattr(torch, cfg.dtype)
    pattern = get_pattern(cfg.pattern, block_size=cfg.block_size)
    flex_masks: dict[int, object] = {}  # the FlexAttention BlockMask of the current length
    warmed: set[tuple[str, str]] = set()  # (case, method) measured once already

    configs = [
        {"case": case, "seq_len": s} for s in cfg.seq_lens for case in ("mask", *cfg.workloads)
    ]

    def providers(c):
        if c["case"] == "mask":
            return ["ours"] if cfg.skip_flex else ["ours", "flex_static"]
        if c["case"] == "decode":
            return ["bench_decode"]
        if cfg.skip_flex:
            return [m for m in PREFILL_METHODS if not m.startswith("flex")]
        return list(PREFILL_METHODS)

    def setup(c):
        if c["case"] in ("mask", "decode"):
            return None
        s, grad = c["seq_len"], c["case"] == "fwd_bwd"
        g = torch.Generator(device=dev).manual_seed(s + grad)
        B, Hq, Hkv, D = cfg.batch, cfg.q_heads, cfg.kv_heads, cfg.head_dim
        q, k, v, dout = (
            torch.randn(*shape, device=dev, dtype=dtype, generator=g)
            for shape in ((B, Hq, s, D), (B, Hkv, s, D), (B, Hkv, s, D), (B, Hq, s, D))
        )
        q, k, v = (t.requires_grad_(grad) for t in (q, k, v))
        mult = 3.5 if grad else 1.0  # backward = 2.5x the forward's matmul work
        return {
            "qkv": (q, k, v),
            "dout": dout,
            "grad": grad,
            "flops": 4.0 * _pairs(pattern, s) * D * Hq * B * mult,
            "dense_flops": 4.0 * s * (s + 1) / 2 * D * Hq * B * mult,
        }

    def measure(c, method, st):
        if c["case"] == "mask":
            return _measure_mask(method, pattern, c["seq_len"], dev, flex_masks)
        if c["case"] == "decode":
            s = c["seq_len"]
            more = cfg.decode_batches if s == max(cfg.seq_lens) else []
            return _decode_rows(cfg, pattern, s, [1, *more])
        args = (method, c["case"], pattern, st, flex_masks.get(c["seq_len"]))
        if (c["case"], method) not in warmed:
            # A discarded first measurement of each method: the first length runs on a cold
            # process (first launches after the compile), and at 8K the step is host-bound,
            # so that shows in its time (H200, session 8: results/kernel/session8/).
            warmed.add((c["case"], method))
            _measure_prefill(*args)
        return _measure_prefill(*args)

    return Benchmark(
        name="kernel",
        configs=configs,
        providers=providers,
        measure=measure,
        setup=setup,
        teardown=lambda c: c["case"] != "mask" and torch.cuda.empty_cache(),
        columns=COLUMNS,
        ratios={
            "vs_flex_static": Ratio("flex_static", 3, on_baseline=True),
            "vs_dense": Ratio("dense_cudnn", 2),
        },
        plot=PLOT,
    )


def _measure_mask(method, pattern, s, dev, flex_masks):
    """Mask construction: ours (analytic) or FlexAttention's ``create_block_mask`` (its first,
    compiling call as case ``mask_first``); keeps FlexAttention's BlockMask for the
    prefill cases of this length."""
    from ..ops import flex as ops_flex

    if method == "ours":

        def build_ours():
            ops_flex._mask_cache.clear()
            return ops_flex.block_mask_for(pattern, s, s, dev)

        return {"backend": "analytic", "ms": _host_ms(build_ours)}
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):  # create_block_mask wants a plain function
        return pattern.mask_mod(b, h, q_idx, kv_idx)

    def cbm():
        return create_block_mask(
            mask_mod, None, None, s, s, device=dev, BLOCK_SIZE=128, _compile=True
        )

    flex_masks.clear()
    t = time.perf_counter()
    flex_masks[s] = cbm()
    torch.cuda.synchronize()
    first = (time.perf_counter() - t) * 1e3
    return [
        {"case": "mask_first", "backend": None, "ms": first},
        {"backend": "create_block_mask", "ms": _host_ms(cbm, 3)},
    ]


def _decode_rows(cfg, pattern, s, batches):
    """Decode rows from :func:`powerattn.bench.decode.bench_decode`: B=1 eager (back-to-back
    calls over rotating KV copies, so neither L2 nor do_bench's flush hides launch cost) and
    CUDA-graph replay, against dense SDPA; B>1 with per-sequence lengths against dense SDPA
    per sequence (exact) and over the padded cache."""
    from .decode import bench_decode

    return bench_decode(
        seq_lens=[s],
        batches=batches,
        q_heads=cfg.q_heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        dtype=getattr(torch, cfg.dtype),
        pattern=pattern,
        log=lambda _msg: None,
    )


def _measure_prefill(method, case, pattern, st, bm_flex):
    """One prefill method (``fwd``: forward; ``fwd_bwd``: forward + backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..ops import api
    from ..ops import flex as ops_flex

    q, k, v = st["qkv"]
    dout, grad = st["dout"], st["grad"]

    def step(f):
        if not grad:
            with torch.no_grad():
                return f()
        out = f()
        out.backward(dout)
        return out

    def timed(backend, fn, flops):
        ms = _bench(lambda: step(fn))
        return {"backend": backend, "ms": ms, "tflops": flops / ms / 1e9}

    if method == "dense_cudnn":

        def dense():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True
                )

        try:
            return timed("cudnn", dense, st["dense_flops"])
        except RuntimeError as exc:  # backend unavailable for these inputs
            raise Skip(f"{case} dense cuDNN unavailable ({_first_line(exc)})") from None
    if method in ("flex_static", "flex_flash"):
        opts = {"BACKEND": "FLASH"} if method == "flex_flash" else {}
        if method == "flex_flash":
            reason = ops_flex.flash_unsupported(q, pattern)
            if reason:
                raise Skip(f"flex_flash not measured: {reason}")
        flex_c = ops_flex.compiled_flex()

        def fflex():
            return flex_c(q, k, v, block_mask=bm_flex, enable_gqa=True, kernel_options=opts)

        try:
            return timed("flash" if opts else "triton", fflex, st["flops"])
        except Exception as exc:  # noqa: BLE001 - report and go on with the other methods
            raise Skip(
                f"{case} {method} failed ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    chosen = api._pick_backend(q, k, v, pattern, False)
    if method == "ours":
        backend = chosen
    elif chosen != "flash":
        raise Skip()
    elif method == "ours_flex":  # ours forced to the Triton kernel, next to FLASH
        backend = "flex"
    else:  # ours_flash_flex: FlashAttention-4 through FlexAttention, next to the direct call
        direct = ops_flex.FLASH_DIRECT
        ops_flex.FLASH_DIRECT = False
        try:
            res = timed("flash", lambda: api.sparse_attention(q, k, v, pattern), st["flops"])
        finally:
            ops_flex.FLASH_DIRECT = direct
        return {**res, "backend": "flash_flex"}
    return timed(
        backend, lambda: api.sparse_attention(q, k, v, pattern, backend=backend), st["flops"]
    )


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
    measurement). ``on_progress(result)`` is called after each config (case, length)."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise ValueError("powerattn bench kernel needs a CUDA GPU")
    env = environment()

    def full(part: dict) -> dict:
        return {"config": asdict(cfg), "env": env, **part}

    progress = None if on_progress is None else (lambda part: on_progress(full(part)))
    return full(runner.run(benchmark(cfg), log, progress))


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
    runner.print_table(result["rows"], COLUMNS, result.get("notes", []))


def plot(result: dict, path: str) -> None:
    c = result["config"]
    runner.plot(
        result["rows"],
        PLOT,
        path,
        title=f"{result['env']['gpu']}: B={c['batch']} Hq={c['q_heads']} Hkv={c['kv_heads']} "
        f"D={c['head_dim']} {c['dtype']}, {c['pattern']} (block {c['block_size']})",
    )


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
            result = run(cfg, on_progress=lambda r: runner.write_json(args.json, r))
        runner.write_json(args.json, result)
    print_table(result)
    runner.write_json(args.summary, summary(result))
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
