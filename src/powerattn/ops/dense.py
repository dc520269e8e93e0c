"""Dense masked attention: the one dense implementation of the project.

* :func:`dense_sparse_attention` -- ``backend="dense"``: exact masked attention over chunks of
  query rows, so memory is O(chunk x Sk) in the forward *and* the backward (each chunk is
  recomputed there), whatever the length: the CPU has no cap below what its memory holds.
  Computed in float32 (float64 for float64 inputs, so a float64 call is a float64
  computation); differentiable in q, k, v and the lse; traces under
  ``torch.compile(fullgraph=True)`` (the mask comes from the pattern's ``mask_mod`` on
  position tensors).
* :func:`sdpa_attention` -- the pattern's mask through PyTorch's
  ``scaled_dot_product_attention`` (fused kernels; the causal kernel for full attention):
  the same-precision yardstick of the tests and the dense path of models (the layers kept
  full, the masked-SDPA fallback).

GQA broadcasts the key/value heads through a ``(B, Hkv, G, ...)`` view instead of copying
them. The oracle stays :func:`powerattn.ops.reference.reference_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..patterns import Pattern, get_pattern

# Scores (B * Hq * rows * Sk) per chunk of query rows: 64 MiB of float32, so a chunk's
# scores, probabilities and their gradients stay within a few hundred MiB.
DENSE_CHUNK_SCORES = 1 << 24


def dense_scores_count(q: torch.Tensor, k: torch.Tensor) -> int:
    """``B * Hq * Sq * Sk``: the scores of the whole attention matrix."""
    B, Hq, Sq, _ = q.shape
    return B * Hq * Sq * k.shape[2]


def chunk_rows(q: torch.Tensor, k: torch.Tensor, chunk_scores: int = DENSE_CHUNK_SCORES) -> int:
    """Query rows per chunk: as many as fit ``chunk_scores`` scores (at least one)."""
    B, Hq, Sq, _ = q.shape
    return max(1, min(Sq, chunk_scores // max(1, B * Hq * k.shape[2])))


def _rows(
    qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, scale: float, pos0: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: ``qg (B, Hkv, G, c, D)`` queries at absolute positions ``pos0 ..`` against
    ``k, v (B, Hkv, Sk, D)`` (already in the compute dtype) -> ``out (B, Hkv, G, c, D)``,
    ``lse (B, Hkv, G, c)``; a row with no key gives 0 and -inf."""
    c, Sk = qg.shape[3], k.shape[2]
    qpos = torch.arange(pos0, pos0 + c, device=qg.device)[:, None]
    kpos = torch.arange(Sk, device=qg.device)[None, :]
    mask = pattern.mask_mod(None, None, qpos, kpos)  # (c, Sk) bool
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale  # (B, Hkv, G, c, Sk)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    # exp(s - lse) is 0 on masked keys; on an empty row lse = -inf, so clamp it to give 0.
    probs = torch.exp(scores - lse.clamp_min(torch.finfo(scores.dtype).min)[..., None])
    return torch.matmul(probs, v.unsqueeze(2)), lse


def dense_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    chunk_scores: int = DENSE_CHUNK_SCORES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention over chunks of query rows (differentiable).

    Args:
        q: ``(B, Hq, Sq, D)``; k, v: ``(B, Hkv, Sk, D)``; validated by the caller; queries
            are the last ``Sq`` positions.
        pattern: the block pattern; scale: the softmax scale.
        chunk_scores: scores per chunk (see :data:`DENSE_CHUNK_SCORES`).

    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype and ``lse (B, Hq, Sq)`` -- computed in float32
        (bf16-rounded scores would be ~5x less accurate than SDPA), float64 for float64
        inputs (the lse then in float64 too); a row with no key gives 0 and -inf. With a
        gradient to compute and more than one chunk, each chunk is recomputed in the backward
        (activation checkpointing), so no (Sq, Sk) matrix is ever held.
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.view(B, Hkv, G, Sq, D).to(acc)
    kc, vc = k.to(acc), v.to(acc)
    rows = chunk_rows(q, k, chunk_scores)
    recompute = (
        rows < Sq
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    )
    outs, lses = [], []
    for r0 in range(0, Sq, rows):
        args = (qg[:, :, :, r0 : r0 + rows], kc, vc, pattern, scale, Sk - Sq + r0)
        o, s = checkpoint(_rows, *args, use_reentrant=False) if recompute else _rows(*args)
        outs.append(o)
        lses.append(s)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
    lse = lses[0] if len(lses) == 1 else torch.cat(lses, dim=3)
    return out.reshape(B, Hq, Sq, D).to(q.dtype), lse.reshape(B, Hq, Sq)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    scale: float | None = None,
) -> torch.Tensor:
    """``pattern``'s exact mask through PyTorch's ``scaled_dot_product_attention``, in the
    input precision: q ``(B, Hq, Sq, D)``, k/v ``(B, Hkv, Sk, D)``, queries the last ``Sq``
    positions -> ``(B, Hq, Sq, D)``.

    Full attention (a ``ceiling`` pattern) with ``Sq == Sk`` or ``Sq == 1`` takes SDPA's
    causal (flash) kernel; otherwise the ``(Sq, Sk)`` boolean mask is built on the device
    from the pattern's ``mask_mod`` (no cache to go stale, no cap beyond the device's
    memory). A row with no key gives NaN (SDPA's convention), unlike
    :func:`dense_sparse_attention`.
    """
    pattern = get_pattern(pattern)
    sq, sk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if type(pattern).ceiling and (sq == sk or sq == 1):
        # SDPA's is_causal is top-left aligned, which equals bottom-right only when Sq == Sk.
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=sq > 1, scale=scale, enable_gqa=gqa
        )
    qpos = torch.arange(sk - sq, sk, device=q.device)[:, None]  # absolute positions
    mask = pattern.mask_mod(None, None, qpos, torch.arange(sk, device=q.device)[None, :])
    if gqa and q.device.type == "cuda":
        # Masked GQA falls back to the math kernel on CUDA: repeat the KV heads instead.
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
