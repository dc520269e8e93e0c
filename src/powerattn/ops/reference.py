"""The oracle: dense masked attention, written for clarity, not speed.

Every kernel in :mod:`powerattn.ops` is tested against this module; kernels never import it.
"""

from __future__ import annotations

import torch

from ..patterns import Pattern, get_pattern
from .checks import check_qkv, resolve_scale


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    scale: float | None = None,
    return_lse: bool = False,
    upcast: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense attention under ``pattern``'s mask.

    Args:
        q: ``(B, Hq, Sq, D)`` queries.
        k, v: ``(B, Hkv, Sk, D)`` keys and values; ``Hq % Hkv == 0`` (GQA/MQA: query head
            ``h`` reads key head ``h // (Hq // Hkv)``); ``Sq <= Sk``.
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of the scaled scores, ``(B, Hq, Sq)`` float32
            (float64 with ``upcast``).
        upcast: compute in float64 (the reference for error measurements); otherwise in the
            input dtype.

    Queries are the last ``Sq`` positions of the ``Sk`` keys (bottom-right alignment). A row
    with no attended key (possible only for degenerate patterns) gives output 0, lse -inf.

    Returns:
        ``out (B, Hq, Sq, D)`` in the input dtype (float64 with ``upcast``), and ``lse`` if asked.
    """
    check_qkv(q, k, v)
    pattern = get_pattern(pattern)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    scale = resolve_scale(scale, D)
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    group = Hq // Hkv
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Sk, D)
    v = v.repeat_interleave(group, dim=1)
    mask = pattern.dense_mask(Sq, Sk).to(q.device)  # (Sq, Sk)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hq, Sq, Sk)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores.float() if not upcast else scores, dim=-1)  # (B, Hq, Sq)
    empty = ~mask.any(dim=-1)  # (Sq,)
    probs = torch.softmax(scores, dim=-1).masked_fill(empty[:, None], 0.0)
    out = torch.matmul(probs, v)
    if return_lse:
        return out, lse
    return out
