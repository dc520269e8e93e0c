"""Input validation shared by every attention entry point."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Appended where a (B, S, H, D) tensor -- transformers' layout before its transpose -- would
# land: its heads read as the sequence and the other way round.
_LAYOUT_HINT = (
    " (q, k, v are (batch, heads, seq, head_dim), as for SDPA; tensors laid out (batch, seq, "
    "heads, head_dim) need .transpose(1, 2))"
)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the problem unless q/k/v follow the SDPA convention:
    ``q (B, Hq, Sq, D)``, ``k, v (B, Hkv, Sk, D)``, ``Hq % Hkv == 0``, ``0 < Sq <= Sk``, one
    floating dtype and one device."""
    # Every decode step passes through here: accept valid inputs with one expression (a few
    # microseconds less per call), and let the step-by-step checks below name any problem.
    # This only ever accepts what they accept.
    if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
        qs, ks, dt = q.shape, k.shape, q.dtype  # each read once: a decode step is host-bound
        if (
            len(qs) == 4
            and len(ks) == 4
            and ks == v.shape
            and dt in SUPPORTED_DTYPES
            and dt == k.dtype == v.dtype
            and qs[0] == ks[0]
            and qs[3] == ks[3] > 0
            and ks[1] > 0
            and qs[1] % ks[1] == 0
            and 0 < qs[2] <= ks[2]
            and q.device == k.device == v.device
        ):
            return
    _explain_qkv(q, k, v)


def _explain_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The checks of :func:`check_qkv` one by one, each with its message."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (batch, heads, seq, head_dim), got shape "
                f"{tuple(t.shape)}"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"{name}.dtype is {t.dtype}; supported: "
                + ", ".join(str(d) for d in SUPPORTED_DTYPES)
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    B, Hq, Sq, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k/v have {k.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(f"head dims differ: q has {D}, k/v have {k.shape[3]}")
    if D == 0:
        raise ValueError(f"head_dim (the last dimension) must be positive, got {tuple(q.shape)}")
    Hkv, Sk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(
            f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for GQA/MQA"
            + _LAYOUT_HINT
        )
    if Sq == 0 or Sk == 0:
        raise ValueError(f"sequence lengths must be positive, got Sq={Sq}, Sk={Sk}")
    if Sq > Sk:
        raise ValueError(
            f"Sq ({Sq}) > Sk ({Sk}): queries are aligned to the end of the keys, so there "
            "must be at least as many keys as queries" + _LAYOUT_HINT
        )


def needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether autograd will want gradients of this call (no generator: decode is host-bound)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def resolve_scale(scale: Any, head_dim: int) -> float:
    """The softmax scale: ``1 / sqrt(head_dim)`` for ``None``, else ``scale`` as a float
    (``ValueError`` unless it is a finite real number; bools and strings refused)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return float(scale)
