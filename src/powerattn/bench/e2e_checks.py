"""Correctness of the integration on the device before ``bench e2e`` times anything."""

from __future__ import annotations

from typing import Any

import torch

from ..testing import FORWARD_FACTOR, check_close, max_error, reduction_terms, tolerance
from .e2e_model import ModelShape, _cache_kw, build_model


def smoke_check(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Correctness of the integration on ``device`` with a small random Qwen2 (4 layers, 1024
    tokens, 64-token blocks, so the pattern drops keys): prefill logits against a float64 eager
    forward given the dense mask (relative to the same eager forward in ``dtype``), the decode
    step's logits against a full recompute, and the hybrid routing."""
    import copy

    from transformers import DynamicCache

    from .. import transformers as pt
    from ..patterns import get_pattern

    shape = ModelShape(1024, 512, 1024, 4, 8, 2, 1e6)
    torch.manual_seed(0)
    model = build_model(shape, device, dtype, 4096)
    pattern = get_pattern("power", block_size=64)
    S = 1024
    ids = torch.randint(0, shape.vocab_size, (1, S), device=device)
    dense = pattern.dense_mask(S).to(device)

    def eager(dt):
        ref = copy.deepcopy(model).to(dt)
        ref.set_attn_implementation("eager")
        add = torch.zeros(dense.shape, dtype=dt, device=device).masked_fill(~dense, float("-inf"))
        with torch.no_grad():
            return ref(ids, attention_mask=add[None, None]).logits.double()

    ref64, same = eager(torch.float64), eager(dtype)
    with torch.no_grad():
        full = model(ids).logits.double()
        pt.apply(model, pattern)
        out = model(ids).logits.double()
        # Decode: prefill S-1 tokens into a cache, then one step; against the recompute's last row.
        cache = DynamicCache()
        model(ids[:, :-1], use_cache=True, **{_cache_kw(): cache})
        step = model(ids[:, -1:], use_cache=True, **{_cache_kw(): cache}).logits.double()
        pt.apply(model, pattern, full_layers=list(range(shape.num_hidden_layers)))
        all_full = model(ids).logits.double()

    # The tolerance rule (powerattn.testing), with no floor: the baseline is the same model.
    prefill = check_close(out, ref64, same, FORWARD_FACTOR, terms=0)
    # The decode step's last-row logits, held to the whole same-precision prefill's error.
    decode_tol = tolerance(ref64, same, dtype, FORWARD_FACTOR, terms=0)
    res = {
        "prefill_err": prefill["err"],
        "prefill_err_same_precision_eager": prefill["baseline_err"],
        "prefill_tol": prefill["tol"],
        "power_vs_full_diff": max_error(out, full),
        "decode_step_err_vs_ref": max_error(step[:, -1], ref64[:, -1]),
        "hybrid_all_full_vs_sdpa": max_error(all_full, full),
    }
    res["prefill_ok"] = prefill["ok"]
    res["decode_ok"] = res["decode_step_err_vs_ref"] <= decode_tol
    # Not a tolerance: the pattern must change the logits well beyond the rounding noise.
    res["pattern_matters"] = res["power_vs_full_diff"] > 4 * res["prefill_err_same_precision_eager"]
    res["operator"] = operator_check(device, dtype)
    model.to("meta")  # free the weights before the big model is built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# (block size, head dim, query heads, kv heads, tokens): a small case and Qwen2-7B's heads.
OPERATOR_CASES = ((64, 64, 8, 2, 1024), (256, 128, 28, 4, 4096))


def operator_check(
    device: torch.device,
    dtype: torch.dtype,
    cases: tuple[tuple[int, int, int, int, int], ...] = OPERATOR_CASES,
) -> dict[str, Any]:
    """``sparse_attention`` ("auto") against the float64 reference under the tolerance rule
    (:func:`powerattn.testing.check_close`: 2x a same-precision SDPA's error plus the floor of
    ``Sk`` terms), on q in transformers' memory layout (a transposed view of ``(B, S, H, D)``)
    and on contiguous q, for prefill and a single decode query. Returns one
    ``{"err", "baseline_err", "tol", "ok"}`` per ``bs{B}_d{D}_{prefill|decode}_{layout}``
    and ``"ok"`` (all of them)."""
    from ..ops.api import sparse_attention
    from ..ops.dense import sdpa_attention
    from ..ops.reference import reference_attention
    from ..patterns import get_pattern

    out: dict[str, Any] = {}
    g = torch.Generator(device="cpu").manual_seed(1)
    for bs, d, hq, hkv, s in cases:
        p = get_pattern("power", block_size=bs)
        q = torch.randn(1, s, hq, d, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        v = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        terms = reduction_terms(q, k)["out"]
        ref = reference_attention(q, k, v, p, upcast=True)
        base = {
            "prefill": sdpa_attention(q, k, v, p),
            "decode": sdpa_attention(q[:, :, -1:], k, v, p),
        }
        refs = {"prefill": ref, "decode": ref[:, :, -1:]}
        tag = f"bs{bs}_d{d}"
        for name, qq in (("transposed", q), ("contiguous", q.contiguous())):
            got = {"prefill": sparse_attention(qq, k, v, p)}
            got["decode"] = sparse_attention(qq[:, :, -1:], k, v, p)
            for case in ("prefill", "decode"):
                out[f"{tag}_{case}_{name}"] = check_close(
                    got[case], refs[case], base[case], FORWARD_FACTOR, terms
                )
        del ref, refs, base
    out["ok"] = all(r["ok"] for r in out.values())
    return out
