"""Correctness of the integration on the device before ``bench e2e`` times anything."""

from __future__ import annotations

from typing import Any

import torch

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

    def err(a, b):
        return (a - b).abs().max().item()

    res = {
        "prefill_err": err(out, ref64),
        "prefill_err_same_precision_eager": err(same, ref64),
        "power_vs_full_diff": err(out, full),
        "decode_step_err_vs_ref": err(step[:, -1], ref64[:, -1]),
        "hybrid_all_full_vs_sdpa": err(all_full, full),
    }
    res["prefill_ok"] = res["prefill_err"] <= 2 * res["prefill_err_same_precision_eager"]
    res["decode_ok"] = res["decode_step_err_vs_ref"] <= 2 * res["prefill_err_same_precision_eager"]
    res["pattern_matters"] = res["power_vs_full_diff"] > 4 * res["prefill_err_same_precision_eager"]
    res["operator"] = operator_check(device, dtype)
    model.to("meta")  # free the weights before the big model is built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def operator_check(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """``sparse_attention`` ("auto") against the float64 reference, on q in transformers'
    memory layout (a transposed view of ``(B, S, H, D)``) and on contiguous q, for prefill and
    a single decode query; ``*_base`` is the same-precision dense reference's error."""
    from ..ops.api import sparse_attention
    from ..ops.reference import reference_attention
    from ..patterns import get_pattern

    out: dict[str, float] = {}
    g = torch.Generator(device="cpu").manual_seed(1)
    for bs, d, hq, hkv, s in ((64, 64, 8, 2, 1024), (256, 128, 28, 4, 4096)):
        p = get_pattern("power", block_size=bs)
        q = torch.randn(1, s, hq, d, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        v = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        ref = reference_attention(q, k, v, p, upcast=True)
        base = reference_attention(q, k, v, p)
        tag = f"bs{bs}_d{d}"
        out[f"{tag}_prefill_base"] = (base.double() - ref).abs().max().item()
        out[f"{tag}_decode_base"] = (base[:, :, -1:].double() - ref[:, :, -1:]).abs().max().item()
        for name, qq in (("transposed", q), ("contiguous", q.contiguous())):
            o = sparse_attention(qq, k, v, p)
            out[f"{tag}_prefill_{name}"] = (o.double() - ref).abs().max().item()
            o = sparse_attention(qq[:, :, -1:], k, v, p)
            out[f"{tag}_decode_{name}"] = (o.double() - ref[:, :, -1:]).abs().max().item()
        del ref, base
    return out
