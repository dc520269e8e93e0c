"""FlexAttention backend on the CPU (compiled C++ kernel, forward only) and its guard
against the unfused fallback. Compiling is slow on the CPU (~10 s per variant), so the
cases share shapes; on CUDA the main suite (test_sparse_attention.py) exercises flex fully.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from powerattn import get_pattern, reference_attention
from powerattn.ops import api, flex

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(hq, hkv, sq, sk, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, h, s, 64, generator=g).to(DEVICE, dtype)
        for h, s in ((hq, sq), (hkv, sk), (hkv, sk))
    ]


@pytest.mark.parametrize(
    "bs, sq, sk",
    [(32, 17, 333), (32, 333, 333), (256, 300, 700)],  # straddling tiles; blocks > tile
)
def test_flex_forward_matches_reference(bs, sq, sk):
    pattern = get_pattern("power", block_size=bs)
    q, k, v = _inputs(8, 2, sq, sk, seed=bs + sq)
    out = api.sparse_attention(q, k, v, pattern, backend="flex")
    ref = reference_attention(q, k, v, pattern, upcast=True)
    mask = pattern.dense_mask(sq, sk).to(DEVICE)
    base = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask
    )
    err = (out.double() - ref).abs().max().item()
    assert err <= 2 * (base.double() - ref).abs().max().item() + 1e-5


def test_recompile_limit_fails_loudly(monkeypatch):
    """Past the recompile limit dynamo would silently run flex_attention eagerly (dense
    S x S scores); our guard must raise instead."""
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 1)
    pattern = get_pattern("power", block_size=32)
    with pytest.raises(flex.FlexRecompileError, match="unfused fallback"):
        for dtype in (torch.float32, torch.bfloat16):  # a second variant must recompile
            q, k, v = _inputs(8, 2, 17, 333, dtype=dtype)
            flex.flex_sparse_attention(q, k, v, pattern, 0.125, need_lse=False)
