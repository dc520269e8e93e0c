"""The public operator: validates, then dispatches to a backend."""

from __future__ import annotations

import torch

from ..patterns import Pattern, get_pattern
from .checks import check_qkv
from .reference import reference_attention

BACKENDS = ("auto", "reference")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal attention under ``pattern`` (SDPA tensor convention).

    Args:
        q: ``(B, Hq, Sq, D)``; k, v: ``(B, Hkv, Sk, D)``; ``Hq % Hkv == 0``; ``Sq <= Sk`` with
            the queries aligned to the end of the keys.
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the float32 log-sum-exp ``(B, Hq, Sq)``.
        backend: one of :data:`BACKENDS`.
    """
    check_qkv(q, k, v)
    pattern = get_pattern(pattern)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return reference_attention(q, k, v, pattern, scale=scale, return_lse=return_lse)
