"""Dense masked attention in the input precision: the right tool for short sequences on the
CPU (no compilation) and for decode on the CPU; refused above :data:`DENSE_MAX_SCORES`.

The mask is computed with torch ops from the pattern's ``mask_mod`` on position tensors, so
this backend traces under ``torch.compile(fullgraph=True)``. GQA broadcasts the key/value
heads through a ``(B, Hkv, G, ...)`` view instead of copying them.
"""

from __future__ import annotations

import torch

from ..patterns import Pattern

# Largest score matrix (B * Hq * Sq * Sk elements, float32) we materialise: 1 GiB.
DENSE_MAX_SCORES = 1 << 28


def dense_scores_count(q: torch.Tensor, k: torch.Tensor) -> int:
    B, Hq, Sq, _ = q.shape
    return B * Hq * Sq * k.shape[2]


def dense_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention with the scores materialised (differentiable).

    Args:
        q: ``(B, Hq, Sq, D)``; k, v: ``(B, Hkv, Sk, D)``; validated by the caller.
    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype (computed in float32, float64 for float64
        inputs) and ``lse (B, Hq, Sq)`` in that precision; a row with no key gives 0 and -inf.
    """
    n = dense_scores_count(q, k)
    if n > DENSE_MAX_SCORES:
        raise ValueError(
            f"backend='dense' would materialise {n:,} attention scores (B*Hq*Sq*Sk); the "
            f"limit is {DENSE_MAX_SCORES:,}: use backend='flex' (or 'auto') for this size"
        )
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qpos = torch.arange(Sk - Sq, Sk, device=q.device)[:, None]  # absolute positions
    kpos = torch.arange(Sk, device=q.device)[None, :]
    mask = pattern.mask_mod(None, None, qpos, kpos)  # (Sq, Sk) bool
    qg = q.view(B, Hkv, G, Sq, D)
    # float32 products, like fused kernels' accumulators (bf16-rounded scores would be ~5x
    # less accurate than SDPA); float64 inputs stay float64 (they are for checks).
    acc = torch.promote_types(q.dtype, torch.float32)
    kt = k.unsqueeze(2).transpose(-1, -2).to(acc)
    scores = torch.matmul(qg.to(acc), kt) * scale  # (B, Hkv, G, Sq, Sk)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, Hkv, G, Sq)
    # exp(s - lse) is 0 on masked keys; on an empty row lse = -inf, so clamp it to give 0.
    probs = torch.exp(scores - lse.clamp_min(torch.finfo(acc).min)[..., None])
    out = torch.matmul(probs, v.unsqueeze(2).to(acc))  # (B, Hkv, G, Sq, D)
    return out.reshape(B, Hq, Sq, D).to(q.dtype), lse.reshape(B, Hq, Sq)
