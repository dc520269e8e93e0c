"""Which FlashAttention-4 call should the ``flash`` backend's prefill make? (issue 9, session 20)

Session 20's `bench kernel` run: the direct call (``ops.fa4``: ``causal=True``, no
``mask_mod``) made the 8K forward 6 % faster than FlexAttention + FA4 and the 8K forward +
backward 14 % faster, but at 64K/128K its forward was 3-4.5 % slower than the same kernel
reached through FlexAttention (``FLASH_DIRECT`` off). Through FlexAttention, FA4 gets a
``mask_mod`` and ``causal=False``, which selects another tile scheduler (``causal`` turns on
the longest-processing-time-first order). This times, with the same tile lists, Qwen2-7B
shapes (B=1, Hq=28, Hkv=4, D=128, bf16, pattern ``power``):

* ``direct_causal``: today's direct call;
* ``direct_maskmod``: the direct call with ``causal=False`` and a CuTe ``mask_mod``
  (``kv <= q``);
* ``via_flex``: ours with ``FLASH_DIRECT = False``.

The session 20 run (code ``190f807``) wrote its own copy of that call and mask; the
script now calls :func:`powerattn.ops.fa4.fa4_attention` with ``CAUSAL_MASK_MOD`` set
either way (the same arguments). Correctness first: every variant's output (and at 8K its
gradients) against ``via_flex``'s and against a float32 SDPA with the pattern's dense mask at
8K. Then medians of the bench's ``_bench`` (CUDA events, L2 flush) for the forward and
forward + backward.

    source .whl/cN/install.sh && OUT=$OUT PYTHONPATH=src:$PYTHONPATH \
        python3 scripts/gpu_fa4_variants.py
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F


def main() -> int:
    from powerattn import get_pattern, sparse_attention
    from powerattn.bench.kernel import _bench
    from powerattn.ops import fa4, flex

    out_dir = os.environ.get("OUT", "/tmp/fa4-variants")
    os.makedirs(out_dir, exist_ok=True)
    pattern = get_pattern("power", block_size=256)
    dev = torch.device("cuda", 0)
    lengths = [int(x) for x in os.environ.get("LENGTHS", "8192,32768,131072").split(",")]
    result: dict = {"check": {}, "ms": {}}

    def variants(q, k, v, bm):
        scale = q.shape[-1] ** -0.5

        def direct(mask_mod: bool):  # ops.fa4's call, causality by the flag or the mask_mod
            def call():
                saved = fa4.CAUSAL_MASK_MOD
                fa4.CAUSAL_MASK_MOD = mask_mod
                try:
                    return fa4.fa4_attention(q, k, v, bm, scale, need_lse=False)[0]
                finally:
                    fa4.CAUSAL_MASK_MOD = saved

            return call

        def via_flex():
            flex.FLASH_DIRECT = False
            try:
                return sparse_attention(q, k, v, pattern)
            finally:
                flex.FLASH_DIRECT = True

        return {
            "direct_causal": direct(False),
            "direct_maskmod": direct(True),
            "via_flex": via_flex,
        }

    for s in lengths:
        g = torch.Generator(device=dev).manual_seed(s)
        q, k, v, dout = (
            torch.randn(1, h, s, 128, device=dev, dtype=torch.bfloat16, generator=g)
            for h in (28, 4, 4, 28)
        )
        bm = flex.block_mask_for(pattern, s, s, dev)
        fns = variants(q, k, v, bm)
        # correctness: outputs against via_flex (and at 8K against float32 masked SDPA)
        with torch.no_grad():
            outs = {n: f().float() for n, f in fns.items()}
        check = {n: (o - outs["via_flex"]).abs().max().item() for n, o in outs.items()}
        if s <= 8192:
            mask = pattern.dense_mask(s, s).to(dev)
            ref = F.scaled_dot_product_attention(
                q.float(), k.float().repeat_interleave(7, 1), v.float().repeat_interleave(7, 1),
                attn_mask=mask,
            )  # fmt: skip
            check.update({f"{n}_vs_f32": (o - ref).abs().max().item() for n, o in outs.items()})
            grads = {}
            for n in fns:
                qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
                sub = variants(qq, kk, vv, bm)[n]
                sub().backward(dout)
                grads[n] = [t.grad.float() for t in (qq, kk, vv)]
            base = grads["via_flex"]
            for n in grads:
                diffs = [(a - b).abs().max().item() for a, b in zip(grads[n], base, strict=True)]
                check[f"{n}_grad_vs_via_flex"] = max(diffs)
        result["check"][s] = check
        print(f"S={s} check {json.dumps({n: round(x, 5) for n, x in check.items()})}", flush=True)
        # timings
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad_fns = variants(qg, kg, vg, bm)
        for n in fns:
            with torch.no_grad():
                fwd_ms = _bench(fns[n])

            def step(f=grad_fns[n], dout=dout):
                f().backward(dout)

            bwd_ms = _bench(step)
            result["ms"].setdefault(str(s), {})[n] = {"fwd": fwd_ms, "fwd_bwd": bwd_ms}
            print(f"S={s} {n:15s} fwd {fwd_ms:.3f} ms  fwd+bwd {bwd_ms:.3f} ms", flush=True)
        with open(os.path.join(out_dir, "fa4_variants.json"), "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
