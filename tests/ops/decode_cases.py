"""Cases for the Triton decode kernel, shared by test_decode.py.

On CUDA they run in-process; on the CPU test_decode.py runs this file as a script in a
subprocess with ``TRITON_INTERPRET=1`` (the variable must be set before triton is imported,
and must not leak into other tests). Outputs and the kernel's scratch buffers are poisoned
with NaN before each call, so unwritten rows show up.

Tolerance: the error against the float64 reference is at most twice that of a same-precision
dense SDPA with the pattern's mask, plus a small floor.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
import torch.nn.functional as F

from powerattn import get_pattern, pattern_names, reference_attention
from powerattn.ops import decode
from powerattn.ops.kvcache import sparse_attention_with_kvcache

FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 2e-4}


def _pattern(name: str, bs: int):
    return get_pattern(name, block_size=bs, **get_pattern(name).small_params)


def cases() -> list[tuple]:
    """(pattern, block size, Sq, Sk, GQA ratio, dtype, head dim, splits, fused)."""
    out = []
    dts = [torch.float32, torch.bfloat16, torch.float16]
    shapes = [(16, 1, 203), (32, 5, 333), (16, 16, 200), (64, 3, 64 * 9 + 1)]
    for i, (name, (bs, sq, sk)) in enumerate(itertools.product(pattern_names(), shapes)):
        out.append((name, bs, sq, sk, (1, 4, 7)[i % 3], dts[i % 3], 64, None, True))
    # Head dim 128, pattern blocks of 256 at a longer context, forced split counts.
    out.append(("power", 256, 1, 256 * 9 + 77, 7, torch.bfloat16, 128, None, True))
    out.append(("power", 256, 2, 256 * 8 + 1, 4, torch.float16, 128, 1, True))
    out.append(("stride_slash", 128, 1, 128 * 9 + 3, 4, torch.float32, 128, 3, True))
    # Strided inputs: q from a (B, S, H, D) layout, K/V a prefix of a longer cache.
    out.append(("power", 32, 3, 32 * 7 + 9, 4, torch.float16, 64, "strided", True))
    # The two-kernel variant (partials, then a combine launch).
    out.append(("power", 16, 3, 203, 4, torch.float32, 64, None, False))
    out.append(("longnet", 32, 1, 333, 7, torch.bfloat16, 64, None, False))
    return out


def batched_cases() -> list[tuple]:
    """(pattern, block size, Sq, lengths, cache size, GQA ratio, dtype, head dim, fused).

    Mixed lengths in one batch: shorter than a block, at and around block boundaries, the
    whole cache, shorter than Sq (rows without keys) and 0 (an empty slot)."""
    return [
        ("power", 16, 1, [203, 5, 16, 17, 64, 256], 256, 4, torch.float32, 64, True),
        ("power", 32, 3, [2, 97, 32, 33, 320, 0], 320, 7, torch.bfloat16, 64, True),
        ("sliding_window", 16, 2, [1, 48, 200, 15], 200, 4, torch.float16, 64, True),
        ("full", 16, 1, [7, 100, 33], 100, 1, torch.float32, 64, True),
        ("stride_slash", 16, 4, [130, 16, 4, 70], 130, 4, torch.float32, 64, False),
        ("longnet", 16, 1, [160, 31, 96], 160, 4, torch.bfloat16, 64, True),
        ("dilated", 32, 1, [33, 200, 64], 200, 2, torch.float16, 128, True),
    ]


def _poison() -> None:
    for ws, _ in decode._workspaces.values():  # partials of earlier calls; counters stay 0
        ws.fill_(float("nan"))


def _dense_base(q, k, v, pattern):
    """Same-precision dense SDPA with the pattern's mask (the tolerance's yardstick)."""
    g = q.shape[1] // k.shape[1]
    mask = pattern.dense_mask(q.shape[2], k.shape[2]).to(q.device)
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask
    )


def _compare(out, lse, q, k, v, pattern, dtype, tag) -> str | None:
    ref, ref_lse = reference_attention(q, k, v, pattern, return_lse=True, upcast=True)
    base = _dense_base(q, k, v, pattern)
    err = (out.double() - ref).abs().max().item()
    tol = 2 * (base.double() - ref).abs().max().item() + FLOOR[dtype]
    lse_err = (lse.double() - ref_lse).abs().max().item()
    if not torch.isfinite(out).all() or not err <= tol:
        return f"{tag}: out error {err:.3g} > {tol:.3g}"
    if not lse_err <= 1e-4:
        return f"{tag}: lse error {lse_err:.3g}"
    return None


def _compare_rows(out, lse, q, k, v, spans, pattern, dtype, tag) -> str | None:
    """Sequence ``b`` holds key slots ``spans[b] = (start, end)``: its rows before position 0
    give 0 / -inf, the others match the reference over its own keys."""
    sq = q.shape[2]
    for b, (s0, e) in enumerate(spans):
        first = max(sq - (e - s0), 0)  # rows at negative positions have no keys
        if first and not (
            out[b, :, :first].eq(0).all() and lse[b, :, :first].eq(float("-inf")).all()
        ):
            return f"{tag}: sequence {b} (slots {s0}..{e}): rows without keys are not 0 / -inf"
        if first < sq:
            sl = slice(first, None)
            msg = _compare(
                out[b : b + 1, :, sl], lse[b : b + 1, :, sl], q[b : b + 1, :, sl],
                k[b : b + 1, :, s0:e], v[b : b + 1, :, s0:e], pattern, dtype, f"{tag} seq {b}",
            )  # fmt: skip
            if msg:
                return msg
    return None


def check(name, bs, sq, sk, gqa, dtype, d, splits, fused, device) -> str | None:
    """Run one uniform-length case; return an error message or None."""
    pattern = _pattern(name, bs)
    g = torch.Generator().manual_seed(sk + sq * 7 + gqa)
    hkv = 2
    if splits == "strided":
        splits = None
        q = torch.randn(2, sq, hkv * gqa, d, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(2, hkv, sk + 50, d, generator=g).to(device, dtype)[:, :, :sk]
        v = torch.randn(2, hkv, sk + 50, d, generator=g).to(device, dtype)[:, :, :sk]
        assert not (q.is_contiguous() or k.is_contiguous())
    else:
        q = torch.randn(2, hkv * gqa, sq, d, generator=g).to(device, dtype)
        k = torch.randn(2, hkv, sk, d, generator=g).to(device, dtype)
        v = torch.randn(2, hkv, sk, d, generator=g).to(device, dtype)
    _poison()
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=device)
    out, lse = decode.decode_attention(
        q, k, v, pattern, d**-0.5, splits=splits, out=out, fused=fused
    )
    tag = f"{name} bs={bs} sq={sq} sk={sk} gqa={gqa} {dtype} d={d} splits={splits} fused={fused}"
    return _compare(out, lse, q, k, v, pattern, dtype, tag)


def check_batched(name, bs, sq, lens, cap, gqa, dtype, d, fused, device) -> str | None:
    """Per-sequence lengths in one call, each sequence against its own reference."""
    pattern = _pattern(name, bs)
    g = torch.Generator().manual_seed(cap + sq)
    B, hkv = len(lens), 2
    q = torch.randn(B, hkv * gqa, sq, d, generator=g).to(device, dtype)
    # The cache as (B, S, H, D) storage viewed as (B, H, S, D): strided, as caches often are.
    k = torch.randn(B, cap, hkv, d, generator=g).to(device, dtype).transpose(1, 2)
    v = torch.randn(B, cap, hkv, d, generator=g).to(device, dtype).transpose(1, 2)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    _poison()
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=device)
    out, lse = decode.decode_attention(
        q, k, v, pattern, d**-0.5, out=out, fused=fused, cache_seqlens=seqlens
    )
    tag = f"{name} bs={bs} sq={sq} lens={lens} cap={cap} gqa={gqa} {dtype} d={d} fused={fused}"
    msg = _compare_rows(out, lse, q, k, v, [(0, n) for n in lens], pattern, dtype, tag)
    if msg:
        return msg
    # A length past the cache: that sequence's rows are NaN, the others unaffected.
    seqlens2 = seqlens.clone()
    seqlens2[0] = cap + 1
    out2, _ = decode.decode_attention(
        q, k, v, pattern, d**-0.5, fused=fused, cache_seqlens=seqlens2
    )  # the same launch plan as above: bitwise equal rows (another plan rounds differently)
    if not (out2[0].isnan().all() and torch.equal(out2[1:], out[1:])):
        return f"{tag}: a length past the cache should give NaN rows for that sequence only"
    return None


def leftpad_cases() -> list[tuple]:
    """(pattern, block size, Sq, (start, end) per sequence, cache size, GQA ratio, dtype,
    fused): left padding (``cache_leftpad``). Starts at, inside and across block
    boundaries, none, a row shorter than Sq, and a start at its end (no keys)."""
    return [
        ("power", 16, 1, [(0, 203), (37, 203), (16, 200), (199, 203), (90, 90)], 203, 4,
         torch.float32, True),
        ("power", 32, 3, [(5, 320), (0, 100), (64, 97), (318, 320)], 320, 7, torch.bfloat16,
         True),
        ("stride_slash", 16, 2, [(3, 150), (40, 150), (0, 33)], 150, 2, torch.float16, False),
        ("full", 16, 1, [(20, 100), (0, 100)], 100, 1, torch.float32, True),
    ]  # fmt: skip


def check_leftpad(name, bs, sq, rows, cap, gqa, dtype, fused, device) -> str | None:
    """Per-sequence starts and ends in one call, through the public operator (a strided
    cache, as transformers' caches are), each sequence against its own keys' reference."""
    pattern = _pattern(name, bs)
    g = torch.Generator().manual_seed(cap + 3 * sq)
    B, hkv, d = len(rows), 2, 64
    q = torch.randn(B, hkv * gqa, sq, d, generator=g).to(device, dtype)
    k = torch.randn(B, cap, hkv, d, generator=g).to(device, dtype).transpose(1, 2)
    v = torch.randn(B, cap, hkv, d, generator=g).to(device, dtype).transpose(1, 2)
    starts = torch.tensor([s for s, _ in rows], dtype=torch.int32, device=device)
    ends = torch.tensor([e for _, e in rows], dtype=torch.int32, device=device)
    _poison()
    out, lse = decode.decode_attention(
        q, k, v, pattern, d**-0.5, fused=fused, cache_seqlens=torch.stack((ends, starts))
    )
    tag = f"leftpad {name} bs={bs} sq={sq} rows={rows} gqa={gqa} {dtype} fused={fused}"
    msg = _compare_rows(out, lse, q, k, v, rows, pattern, dtype, tag)
    if msg:
        return msg
    # The public operator (int64 starts), by the same rule against the reference; then an end
    # past the cache still gives NaN for its row only.
    pub, pub_lse = sparse_attention_with_kvcache(
        q, k, v, pattern, cache_seqlens=ends, cache_leftpad=starts.long(), return_lse=True
    )
    msg = _compare_rows(pub, pub_lse, q, k, v, rows, pattern, dtype, f"{tag} public")
    if msg:
        return msg
    ends2 = ends.clone()
    ends2[0] = cap + 1
    out2, _ = decode.decode_attention(
        q, k, v, pattern, d**-0.5, fused=fused, cache_seqlens=torch.stack((ends2, starts))
    )
    if not (out2[0].isnan().all() and torch.equal(out2[1:], out[1:])):
        return f"{tag}: an end past the cache should give NaN rows for that sequence only"
    return None


def check_public(device) -> str | None:
    """The public batched operator against per-sequence sparse_attention, int64 lengths."""
    pattern = _pattern("power", 16)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 8, 2, 64, generator=g).to(device)
    k = torch.randn(3, 2, 90, 64, generator=g).to(device)
    v = torch.randn(3, 2, 90, 64, generator=g).to(device)
    lens = torch.tensor([90, 17, 40], device=device)
    out, lse = sparse_attention_with_kvcache(q, k, v, pattern, cache_seqlens=lens, return_lse=True)
    for b, n in enumerate(lens.tolist()):
        msg = _compare(
            out[b : b + 1], lse[b : b + 1], q[b : b + 1], k[b : b + 1, :, :n],
            v[b : b + 1, :, :n], pattern, torch.float32, f"public seq {b}",
        )  # fmt: skip
        if msg:
            return msg
    return None


def check_compiled(device) -> str | None:
    """The custom op: opcheck (schema, fake implementation, AOT dispatch) and the public
    operators inside torch.compile(fullgraph=True) match eager calls."""
    from powerattn import sparse_attention

    pattern = _pattern("power", 16)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 1, 32, generator=g).to(device)
    k = torch.randn(2, 2, 70, 32, generator=g).to(device)
    v = torch.randn(2, 2, 70, 32, generator=g).to(device)
    lens = torch.tensor([70, 21], dtype=torch.int32, device=device)
    spec = pattern.spec
    torch.library.opcheck(
        torch.ops.powerattn.decode.default, (q, k, v, lens, spec, 0.2, True, False)
    )

    starts = torch.tensor([3, 0], dtype=torch.int32, device=device)
    torch.library.opcheck(
        torch.ops.powerattn.decode.default,
        (q, k, v, torch.stack((lens, starts)), spec, 0.2, True, False),
    )

    def step(q, k, v, lens, starts):
        a = sparse_attention_with_kvcache(q, k, v, pattern, cache_seqlens=lens)
        b = sparse_attention(q, k, v, pattern, backend="decode")
        c = sparse_attention_with_kvcache(q, k, v, pattern, cache_leftpad=starts)
        return a, b, c

    eager = step(q, k, v, lens, starts)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, lens, starts)
    for e, c in zip(eager, compiled, strict=True):
        if not torch.equal(e, c):
            return f"compiled decode differs from eager by {(e - c).abs().max().item():.3g}"
    return None


def check_steps(device) -> str | None:
    """The public operator's cached decode steps (``ops/decode.py``, ``cached_step``): each
    call, made twice (the second served by its cached step), gives bitwise the result of the
    uncached path, across changes of length (within and across buckets), pattern, dtype,
    scale, ``return_lse``, layout and query count; on CUDA through ``auto`` too (the dense
    route where exact, the direct launcher)."""
    from powerattn import sparse_attention

    g = torch.Generator().manual_seed(11)
    power, sw = _pattern("power", 16), _pattern("sliding_window", 16)
    q = torch.randn(1, 4, 1, 16, generator=g).to(device)
    q3 = torch.randn(1, 4, 3, 16, generator=g).to(device)
    k = torch.randn(1, 2, 100, 16, generator=g).to(device)
    v = torch.randn(1, 2, 100, 16, generator=g).to(device)
    kt = torch.randn(1, 100, 2, 16, generator=g).to(device).transpose(1, 2)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    calls = [  # (q, keys, values, pattern, scale, return_lse)
        (q, k[:, :, :70], v[:, :, :70], power, None, False),
        (q, k[:, :, :66], v[:, :, :66], power, None, False),  # same bucket
        (q, k[:, :, :40], v[:, :, :40], power, None, False),  # another bucket
        (q, k[:, :, :9], v[:, :, :9], power, None, False),  # one block (auto: dense)
        (q, k[:, :, :70], v[:, :, :70], sw, None, False),
        (q, k[:, :, :70], v[:, :, :70], "power", None, False),  # by name: block 256
        (qb, kb[:, :, :70], vb[:, :, :70], power, None, False),
        (q, k[:, :, :70], v[:, :, :70], power, 0.3, False),
        (q, k[:, :, :70], v[:, :, :70], power, None, True),
        (q, kt[:, :, :70], kt[:, :, :70], power, None, False),  # a strided cache
        (q3, k[:, :, :70], v[:, :, :70], power, None, True),
    ]
    backends = ["decode", "auto"] if device == "cuda" else ["decode"]
    for backend in backends:
        for i, (q_, k_, v_, pat, scale, lse) in enumerate(calls):
            s = q_.shape[-1] ** -0.5 if scale is None else scale
            allow_dense = backend == "auto"
            want = decode._decode_impl(q_, k_, v_, None, get_pattern(pat), s, lse, allow_dense)
            for attempt in range(2):
                got = sparse_attention(
                    q_, k_, v_, pat, scale=scale, return_lse=lse, backend=backend
                )
                got = got if lse else (got, None)
                same = torch.equal(got[0], want[0]) and (not lse or torch.equal(got[1], want[1]))
                if not same:
                    return f"cached step {backend} call {i} attempt {attempt}: differs"
            if decode.cached_step(q_, k_, v_, pat, scale, lse, backend) is None:
                return f"cached step {backend} call {i}: the repeat was not served from the cache"
    return None


def main(device: str = "cpu") -> int:
    if os.environ.get("POWERATTN_DECODE_EARLY_V") == "1":  # the kernel variant of the sweep
        decode.EARLY_V_LOAD = True
    runs = [(check, c) for c in cases()] + [(check_batched, c) for c in batched_cases()]
    runs += [(check_leftpad, c) for c in leftpad_cases()]
    failures = [m for fn, c in runs if (m := fn(*c, device=device))]
    for fn in (check_public, check_compiled, check_steps):
        if m := fn(device):
            failures.append(m)
    total = len(runs) + 3
    for m in failures:
        print("FAIL", m)
    print(f"{total - len(failures)}/{total} decode cases passed on {device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cpu"))
