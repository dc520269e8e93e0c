"""Cases for the Triton decode kernel, shared by test_decode.py.

On CUDA they run in-process; on the CPU test_decode.py runs this file as a script in a
subprocess with ``TRITON_INTERPRET=1`` (the variable must be set before triton is imported,
and must not leak into other tests). Outputs and the kernel's scratch buffers are poisoned
with NaN before each call, so unwritten rows show up.
"""

from __future__ import annotations

import itertools
import sys

import torch
import torch.nn.functional as F

from powerattn import get_pattern, pattern_names, reference_attention
from powerattn.ops import decode

FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 2e-4}
_PARAMS = {"stride_slash": {"stride": 4}, "longnet": {"segments": ((4, 1), (8, 2), (16, 4))}}


def _pattern(name: str, bs: int):
    return get_pattern(name, block_size=bs, **_PARAMS.get(name, {}))


def cases() -> list[tuple]:
    """(pattern, block size, Sq, Sk, GQA ratio, dtype, head dim, splits)."""
    out = []
    dts = [torch.float32, torch.bfloat16, torch.float16]
    for i, (name, (bs, sq, sk)) in enumerate(
        itertools.product(
            pattern_names(), [(16, 1, 203), (32, 5, 333), (16, 16, 200), (64, 3, 64 * 9 + 1)]
        )
    ):
        out.append((name, bs, sq, sk, (1, 4, 7)[i % 3], dts[i % 3], 64, None))
    # Head dim 128, pattern blocks of 256 at a longer context, forced split counts.
    out.append(("power", 256, 1, 256 * 9 + 77, 7, torch.bfloat16, 128, None))
    out.append(("power", 256, 2, 256 * 8 + 1, 4, torch.float16, 128, 1))
    out.append(("stride_slash", 128, 1, 128 * 9 + 3, 4, torch.float32, 128, 3))
    # Strided inputs: q from a (B, S, H, D) layout, K/V a prefix of a longer cache.
    out.append(("power", 32, 3, 32 * 7 + 9, 4, torch.float16, 64, "strided"))
    return out


def check(name, bs, sq, sk, gqa, dtype, d, splits, device, fused=None) -> str | None:
    """Run one case; return an error message or None."""
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
    ref, ref_lse = reference_attention(q, k, v, pattern, return_lse=True, upcast=True)
    mask = pattern.dense_mask(sq, sk).to(device)
    base = F.scaled_dot_product_attention(
        q, k.repeat_interleave(gqa, 1), v.repeat_interleave(gqa, 1), attn_mask=mask
    )
    for buf in decode._scratch.values():  # poison the partials of earlier calls
        for t in buf[:3]:
            t.fill_(float("nan"))
    out = torch.full_like(q, float("nan"))
    out, lse = decode.decode_attention(
        q, k, v, pattern, d**-0.5, splits=splits, out=out, fused=fused
    )
    err = (out.double() - ref).abs().max().item()
    tol = 2 * (base.double() - ref).abs().max().item() + FLOOR[dtype]
    lse_err = (lse.double() - ref_lse).abs().max().item()
    tag = f"{name} bs={bs} sq={sq} sk={sk} gqa={gqa} {dtype} d={d} splits={splits} fused={fused}"
    if not torch.isfinite(out).all() or not err <= tol:
        return f"{tag}: out error {err:.3g} > {tol:.3g}"
    if not lse_err <= 1e-4:
        return f"{tag}: lse error {lse_err:.3g}"
    return None


def main(device: str = "cpu") -> int:
    runs = [(c, f) for c in cases() for f in (True, False)]  # fused and two-kernel
    failures = [m for c, f in runs if (m := check(*c, device=device, fused=f))]
    for m in failures:
        print("FAIL", m)
    print(f"{len(runs) - len(failures)}/{len(runs)} decode cases passed on {device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cpu"))
