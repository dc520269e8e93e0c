"""Decode timings (CUDA): one query per sequence, ours against dense SDPA.

:func:`bench_decode` measures, for each KV length ``s``:

* ``batches`` containing 1 -- case ``decode``: one sequence, ``sparse_attention`` (``auto``:
  the decode kernel, or dense SDPA where that is exact) against dense SDPA (``enable_gqa``,
  no mask); case ``decode_graph``: the same calls captured in a CUDA graph and replayed
  (``ms``: a graph of one call, bounded below by the graph launch; ``in_graph_ms``: per call
  of 32 calls captured in one graph, the cost inside a captured decode step of a model);
  case ``decode_masked``: dense SDPA with the pattern's exact mask row, a candidate route
  for short caches (measured, not used by ``auto``);
* every other ``B`` -- case ``decode_b{B}``: ``B`` sequences of a KV cache of ``s`` slots with
  lengths spread evenly over ``s/2 .. s`` (``sparse_attention_with_kvcache`` with
  ``cache_seqlens``) against two dense baselines: ``dense_sdpa``, a loop of SDPA calls, one
  per sequence over its own length (exact; ``B`` launches), and ``dense_sdpa_padded``, one
  SDPA call over the whole padded cache (one launch, reads every slot: not exact for the
  shorter sequences). ``decode_b{B}_graph``: ours replayed from a CUDA graph.

Eager times are per call over back-to-back calls (CUDA events around the loop), so they
include the host's launch work when that, not the GPU, is the bottleneck (``do_bench`` would
hide it behind its L2 flush); the calls rotate over several copies of the KV cache so that
the keys are not served from L2 (in a model, other layers run in between). Graph replays
are timed by ``triton.testing.do_bench`` (L2 flushed before each replay).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

import torch

from ..ops.api import sparse_attention
from ..ops.kvcache import sparse_attention_with_kvcache
from ..patterns import Pattern, get_pattern

DEVICE = "cuda"  # a module constant so that the logic can be dry-run on the CPU
_L2_BYTES = 64 << 20  # more than the H100/H200 L2 (50/60 MiB)
_COPY_BUDGET = 24 << 30  # most bytes of KV-cache copies to rotate over


def _eager_ms(fns: Sequence[Callable[[], object]], iters: int = 200, repeats: int = 5) -> float:
    """Median per-call ms of back-to-back calls, rotating over ``fns``."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        for i in range(iters):
            fns[i % len(fns)]()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return sorted(times)[len(times) // 2]


def _host_us(fn: Callable[[], object], iters: int = 200) -> float:
    """Host time per call (launch work only: the GPU queue absorbs the kernels)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    host = (time.perf_counter() - t) / iters * 1e6
    torch.cuda.synchronize()
    return host


def _graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(st)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def _graph_ms(fn: Callable[[], object]) -> float:
    import triton

    graph = _graph(fn)
    return float(triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median"))


def _in_graph_ms(fns: Sequence[Callable[[], object]], calls: int = 32) -> float:
    """Per-call ms of ``calls`` calls captured back to back in one CUDA graph (rotating over
    ``fns``, so that the keys come from HBM): what one attention call costs inside a captured
    decode step of a whole model, where the graph's launch is shared by every layer. A
    one-call graph's replay (:func:`_graph_ms`) is bounded below by that launch instead."""
    import triton

    try:
        graph = _graph(lambda: [fns[i % len(fns)]() for i in range(calls)])
    except RuntimeError as exc:  # reported in the row, not lost with the other rows
        print(f"  in-graph timing failed: {exc}")
        return float("nan")
    ms = triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
    return float(ms) / calls


def _copies(bytes_read: float, cache_bytes: float) -> int:
    """KV-cache copies to rotate over so that a call's keys are not in L2."""
    want = math.ceil(3 * _L2_BYTES / max(bytes_read, 1.0))
    return max(1, min(16, want, int(_COPY_BUDGET // max(cache_bytes, 1.0))))


def _read_frac(pattern: Pattern, s: int) -> float:
    """Fraction of the keys a one-query call at length ``s`` reads."""
    n = math.ceil(s / pattern.block_size)
    return min(1.0, pattern.block_layout(1, n, n - 1).max_degree * pattern.block_size / s)


def bench_decode(
    seq_lens: Sequence[int] = (8192, 16384, 32768, 65536, 131072),
    batches: Sequence[int] = (1, 8, 32),
    q_heads: int = 28,
    kv_heads: int = 4,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    pattern: Pattern | str = "power",
    log: Callable[[str], object] = print,
) -> list[dict]:
    """Time decode; one row per measured cell: ``{"case", "seq_len", "method", "backend",
    "ms", ...}`` (see the module docstring). Qwen2-7B attention shapes by default."""
    if not torch.cuda.is_available():
        raise ValueError("bench_decode needs a CUDA GPU")
    pattern = get_pattern(pattern)
    rows: list[dict] = []

    def add(case, s, method, backend, ms, **extra):
        row = {"case": case, "seq_len": s, "method": method, "backend": backend, "ms": ms}
        rows.append({**row, **extra})
        more = "".join(f" {k}={v}" for k, v in extra.items())
        log(f"  {case:16s} {method:18s} S={s:7d} {ms:8.4f} ms{more}")

    with torch.no_grad():
        if seq_lens:
            # A discarded pass first: the first length measured in a process ran on a cold
            # host (H200, session 7: dense SDPA's host time 84 us per call there, 22-36 us at
            # every later length; ours 3x dense on the same SDPA kernel).
            _single(lambda *a, **k: None, seq_lens[0], q_heads, kv_heads, head_dim, dtype, pattern)
        for s in seq_lens:
            for B in batches:
                if B == 1:
                    _single(add, s, q_heads, kv_heads, head_dim, dtype, pattern)
                else:
                    _batched(add, B, s, q_heads, kv_heads, head_dim, dtype, pattern)
                torch.cuda.empty_cache()
    return rows


def _rand(*shape, dtype, g):
    return torch.randn(*shape, device=DEVICE, dtype=dtype, generator=g)


def _single(add, s, Hq, Hkv, D, dtype, pattern):
    from ..ops import decode as ops_decode

    g = torch.Generator(device=DEVICE).manual_seed(s)
    frac = _read_frac(pattern, s)
    cache_bytes = 2 * Hkv * s * D * dtype.itemsize
    n = _copies(frac * cache_bytes, cache_bytes)
    q = _rand(1, Hq, 1, D, dtype=dtype, g=g)
    kvs = [(_rand(1, Hkv, s, D, dtype=dtype, g=g), _rand(1, Hkv, s, D, dtype=dtype, g=g))]
    kvs += [(k.clone(), v.clone()) for k, v in kvs * (n - 1)]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dense = [lambda k=k, v=v: sdpa(q, k, v, enable_gqa=True) for k, v in kvs]
    ours = [lambda k=k, v=v: sparse_attention(q, k, v, pattern) for k, v in kvs]
    k0, v0 = kvs[0]
    routed = "dense" if ops_decode.dense_is_exact(pattern, 1, s) else "decode"
    # Accuracy against float32 dense attention with the pattern's mask.
    g_ = Hq // Hkv
    mask = pattern.dense_mask(1, s).to(DEVICE)
    ref = sdpa(
        q.float(),
        k0.float().repeat_interleave(g_, 1),
        v0.float().repeat_interleave(g_, 1),
        attn_mask=mask,
    )
    ours[0]()  # the second call takes the direct launch: check that one
    err = (ours[0]().float() - ref).abs().max().item()
    # A candidate route for short caches, measured only (auto does not take it): dense SDPA
    # with the pattern's exact mask row (`mask`), which a route would cache per length.
    masked = [lambda k=k, v=v: sdpa(q, k, v, attn_mask=mask, enable_gqa=True) for k, v in kvs]
    masked_err = (masked[0]().float() - ref).abs().max().item()
    del ref
    dense_ms = _eager_ms(dense)
    add(
        "decode", s, "dense_sdpa", "dense", dense_ms, copies=n, host_us=round(_host_us(dense[0]), 1)
    )
    ms = _eager_ms(ours)
    add(
        "decode", s, "ours", routed, ms, vs_dense=round(dense_ms / ms, 2), max_err=f"{err:.2e}",
        kv_read_frac=round(frac, 4), host_us=round(_host_us(ours[0]), 1),
        kernel_host_us=round(_host_us(
            lambda: ops_decode.decode_attention(q, k0, v0, pattern, D**-0.5, need_lse=False)
        ), 1), fast_launch=ops_decode.FAST_LAUNCH,
    )  # fmt: skip
    dense_g, dense_in = _graph_ms(dense[0]), _in_graph_ms(dense)
    add("decode_graph", s, "dense_sdpa", "dense", dense_g, in_graph_ms=round(dense_in, 5))
    ms, ours_in = _graph_ms(ours[0]), _in_graph_ms(ours)
    add(
        "decode_graph", s, "ours", routed, ms, vs_dense=round(dense_g / ms, 2),
        in_graph_ms=round(ours_in, 5), in_graph_vs_dense=round(dense_in / ours_in, 2),
    )  # fmt: skip
    add(
        "decode_masked", s, "dense_sdpa_masked", "dense+mask", _eager_ms(masked),
        in_graph_ms=round(_in_graph_ms(masked), 5), max_err=f"{masked_err:.2e}",
        ours_in_graph_ms=round(ours_in, 5),
    )  # fmt: skip


def _batched(add, B, s, Hq, Hkv, D, dtype, pattern):
    g = torch.Generator(device=DEVICE).manual_seed(s + B)
    lens = torch.linspace(s // 2, s, B, device=DEVICE).round().to(torch.int32)
    lens_host = lens.tolist()
    frac = _read_frac(pattern, s)
    cache_bytes = 2 * B * Hkv * s * D * dtype.itemsize
    n = _copies(frac * cache_bytes * 0.75, cache_bytes)
    q = _rand(B, Hq, 1, D, dtype=dtype, g=g)
    kvs = [(_rand(B, Hkv, s, D, dtype=dtype, g=g), _rand(B, Hkv, s, D, dtype=dtype, g=g))]
    kvs += [(k.clone(), v.clone()) for k, v in kvs * (n - 1)]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def loop(k, v):
        return [
            sdpa(q[b : b + 1], k[b : b + 1, :, :L], v[b : b + 1, :, :L], enable_gqa=True)
            for b, L in enumerate(lens_host)
        ]

    ours = [
        lambda k=k, v=v: sparse_attention_with_kvcache(q, k, v, pattern, cache_seqlens=lens)
        for k, v in kvs
    ]
    k0, v0 = kvs[0]
    # Accuracy: every sequence against float32 dense attention with its mask.
    ours[0]()
    out = ours[0]()  # the second call takes the direct launch: check that one
    err = 0.0
    for b, L in enumerate(lens_host):
        ref = sdpa(
            q[b : b + 1].float(),
            k0[b : b + 1, :, :L].float().repeat_interleave(Hq // Hkv, 1),
            v0[b : b + 1, :, :L].float().repeat_interleave(Hq // Hkv, 1),
            attn_mask=pattern.dense_mask(1, L).to(DEVICE),
        )
        err = max(err, (out[b : b + 1].float() - ref).abs().max().item())
    case = f"decode_b{B}"
    mean_len = round(sum(lens_host) / B)
    loop_ms = _eager_ms([lambda k=k, v=v: loop(k, v) for k, v in kvs], iters=20)
    add(case, s, "dense_sdpa", "dense", loop_ms, batch=B, mean_len=mean_len,
        baseline="per-sequence loop (exact)")  # fmt: skip
    pad_ms = _eager_ms([lambda k=k, v=v: sdpa(q, k, v, enable_gqa=True) for k, v in kvs], 50)
    add(case, s, "dense_sdpa_padded", "dense", pad_ms, batch=B, mean_len=mean_len,
        baseline="one call over the padded cache (reads every slot; not exact)")  # fmt: skip
    ms = _eager_ms(ours)
    add(case, s, "ours", "decode", ms, batch=B, mean_len=mean_len,
        vs_dense=round(loop_ms / ms, 2), vs_dense_padded=round(pad_ms / ms, 2),
        max_err=f"{err:.2e}", copies=n)  # fmt: skip
    add(case + "_graph", s, "ours", "decode", _graph_ms(ours[0]), batch=B)


def bench_full_pattern(
    seq_lens: Sequence[int],
    q_heads: int = 28,
    kv_heads: int = 4,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    log: Callable[[str], object] = print,
) -> list[dict]:
    """The kernel forced on the ``full`` pattern (it reads every key, as dense SDPA does)
    against dense SDPA: where dense wins, ``auto`` should answer exact-full calls densely
    (:data:`powerattn.ops.decode.DENSE_DECODE_MAX_KEYS`). Case ``decode_fullpattern``."""
    full = get_pattern("full", block_size=256)
    rows = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        for s in seq_lens:
            g = torch.Generator(device=DEVICE).manual_seed(s)
            cache_bytes = 2 * kv_heads * s * head_dim * dtype.itemsize
            n = _copies(cache_bytes, cache_bytes)
            q = _rand(1, q_heads, 1, head_dim, dtype=dtype, g=g)
            kvs = [
                tuple(_rand(1, kv_heads, s, head_dim, dtype=dtype, g=g) for _ in range(2))
                for _ in range(n)
            ]
            d = _eager_ms([lambda q=q, k=k, v=v: sdpa(q, k, v, enable_gqa=True) for k, v in kvs])
            o = _eager_ms(
                [
                    lambda q=q, k=k, v=v: sparse_attention(q, k, v, full, backend="decode")
                    for k, v in kvs
                ]
            )
            for method, backend, ms in (("dense_sdpa", "dense", d), ("ours", "decode", o)):
                rows.append({"case": "decode_fullpattern", "seq_len": s, "method": method,
                             "backend": backend, "ms": ms})  # fmt: skip
            log(f"  decode_fullpattern S={s:7d} dense {d:.4f} ms, kernel {o:.4f} ms")
            torch.cuda.empty_cache()
    return rows


def bench_kernel_configs(
    s: int,
    B: int,
    configs: Sequence[tuple[int, int, int, bool]] = (
        (64, 4, 2, False),
        (128, 4, 2, False),
        (64, 8, 2, False),
        (128, 8, 3, False),
        (64, 4, 2, True),
        (64, 4, 3, True),
    ),  # fmt: skip
    splits: Sequence[int | None] = (None, 1, 8, 32, 64),
    fused: Sequence[bool] = (True, False),
    q_heads: int = 28,
    kv_heads: int = 4,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    pattern: Pattern | str = "power",
    log: Callable[[str], object] = print,
) -> list[dict]:
    """The kernel's GPU time per (``BLOCK_N_MAX``, ``NUM_WARPS``, ``NUM_STAGES``, each for
    narrow and wide grids alike, ``EARLY_V_LOAD``), split count (``None``: the default choice) and
    ``fused`` (one launch, or a second combine kernel): data for the constants of
    :mod:`powerattn.ops.decode`. Timed per call of 32 calls in one CUDA graph over rotating
    KV copies (:func:`_in_graph_ms`: a one-call graph's launch would hide differences of a few
    microseconds). Case ``decode_config_b{B}``; the constants are restored."""
    from ..ops import decode as ops_decode

    pattern = get_pattern(pattern)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    q = _rand(B, q_heads, 1, head_dim, dtype=dtype, g=g)
    cache_bytes = 2 * B * kv_heads * s * head_dim * dtype.itemsize
    n_copies = _copies(_read_frac(pattern, s) * cache_bytes, cache_bytes)
    kvs = [
        tuple(_rand(B, kv_heads, s, head_dim, dtype=dtype, g=g) for _ in range(2))
        for _ in range(n_copies)
    ]
    lens = torch.full((B,), s, dtype=torch.int32, device=DEVICE) if B > 1 else None
    scale = head_dim**-0.5
    nb = 1 << max(0, math.ceil(s / pattern.block_size) - 1).bit_length()
    names = ("BLOCK_N_MAX", "BLOCK_N_MAX_WIDE", "NUM_WARPS", "NUM_WARPS_WIDE", "NUM_STAGES",
             "NUM_STAGES_WIDE", "EARLY_V_LOAD")  # fmt: skip
    saved = {name: getattr(ops_decode, name) for name in names}
    rows = []
    try:
        with torch.no_grad():
            for block_n, warps, stages, early_v in configs:
                values = (block_n, block_n, warps, warps, stages, stages, early_v)
                for name, value in zip(names, values, strict=True):
                    setattr(ops_decode, name, value)  # narrow and wide grids alike
                ops_decode.clear_plans()
                for fuse, n in itertools.product(fused, splits):
                    fns = [
                        lambda n=n, k=k, v=v, fuse=fuse: ops_decode.decode_attention(
                            q, k, v, pattern, scale, splits=n, fused=fuse, cache_seqlens=lens,
                            need_lse=False,
                        )
                        for k, v in kvs
                    ]  # fmt: skip
                    for f in fns[:1]:
                        f()  # the plan and the compile, outside the capture
                    ms = _in_graph_ms(fns)
                    plan = ops_decode._plan(pattern, B, q_heads, kv_heads, 1, head_dim, dtype,
                                            nb, q.device, n, fuse, False, B > 1)  # fmt: skip
                    method = (
                        f"ours_n{block_n}_w{warps}_st{stages}{'_earlyv' * early_v}_"
                        + ("default" if n is None else f"splits{n}")
                        + ("" if fuse else "_unfused")
                    )
                    rows.append({"case": f"decode_config_b{B}", "seq_len": s, "method": method,
                                 "backend": "decode", "ms": ms, "splits": plan.splits,
                                 "block_n": block_n, "num_warps": warps,
                                 "num_stages": stages, "fused": fuse,
                                 "early_v": early_v})  # fmt: skip
                    log(f"  config B={B} S={s}: {method:40s} ({plan.splits:2d}) {ms:.4f} ms")
    finally:
        for name, value in saved.items():
            setattr(ops_decode, name, value)
        ops_decode.clear_plans()
    return rows


def crossover(rows: list[dict], case: str = "decode") -> dict:
    """What the data implies: the lengths where ours is slower than dense SDPA for ``case``
    and the shortest length from which ours is never slower."""
    by_len: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["case"] == case and r["method"] in ("ours", "dense_sdpa"):
            by_len.setdefault(r["seq_len"], {})[r["method"]] = r["ms"]
    slower = sorted(s for s, m in by_len.items() if len(m) == 2 and m["ours"] > m["dense_sdpa"])
    lens = sorted(s for s, m in by_len.items() if len(m) == 2)
    never_slower_from = next(
        (s for s in lens if all(x not in slower for x in lens if x >= s)), None
    )
    return {"case": case, "slower_at": slower, "never_slower_from": never_slower_from}
