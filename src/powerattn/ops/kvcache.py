"""Decode against a KV cache: a batch of sequences, each at its own length (serving).

:func:`sparse_attention_with_kvcache` is :func:`~powerattn.sparse_attention` for the decode
step of a batch whose sequences have different lengths, in the layout of a preallocated KV
cache (``flash_attn_with_kvcache``'s ``cache_seqlens``): the lengths stay on the device and
the decode kernel reads them, so a step has no host-device synchronisation and no Python
loop over the batch (it can be captured in a CUDA graph and traced by ``torch.compile``).
"""

from __future__ import annotations

import math

import torch

from ..patterns import Pattern, get_pattern
from . import decode as _decode
from .api import sparse_attention
from .checks import check_qkv


def sparse_attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pattern: Pattern | str,
    *,
    cache_seqlens: torch.Tensor | int | None = None,
    cache_leftpad: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal attention of the newest ``Sq`` tokens of each sequence.

    Args:
        q: ``(B, Hq, Sq, D)``, the queries of the newest ``Sq`` positions of each sequence
            (``Sq <= 16`` on CUDA: decode, speculative decoding).
        k_cache, v_cache: ``(B, Hkv, S_max, D)``, same dtype and device; any strides (e.g. a
            view of a ``(B, S_max, Hkv, D)`` cache); ``Hq % Hkv == 0`` (GQA without copies).
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name.
        cache_seqlens: ``(B,)`` int32 or int64 tensor on q's device: sequence ``b`` holds
            ``cache_seqlens[b]`` tokens (keys ``k_cache[b, :, :cache_seqlens[b]]``, entries
            past it are ignored), its queries sit at positions
            ``cache_seqlens[b] - Sq .. cache_seqlens[b] - 1``. An int: every sequence has that
            length. ``None``: every sequence fills the cache (``S_max``).
        cache_leftpad: ``(B,)`` int32 or int64 tensor on q's device, left padding (as
            transformers' ``generate`` pads a batch, and as flash-attn's argument of that
            name): sequence ``b`` starts at slot ``cache_leftpad[b]``, its keys are
            ``k_cache[b, :, cache_leftpad[b]:cache_seqlens[b]]`` (``cache_seqlens`` is then
            the end slot), at positions counted from that start, so its pattern blocks are
            those of the unpadded sequence. One call for the whole batch.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp ``(B, Hq, Sq)`` float32.

    A length below ``Sq`` leaves the rows at negative positions without keys (output 0, lse
    ``-inf``; a length of 0 is an empty batch slot). A length above ``S_max`` is an error: on
    the CUDA kernel the rows of that sequence come out NaN (raising would need a host-device
    synchronisation), elsewhere it raises ``ValueError``; so does a start past its end on
    the CPU (on the kernel: rows without keys).

    Where: CUDA through the decode kernel (float16/bfloat16/float32, head dim <= 256). On the
    CPU, and for float64, a loop over the sequences calls :func:`sparse_attention`
    (for checks and small runs). No gradient.

    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype; with ``return_lse`` also ``lse (B, Hq, Sq)``.
    """
    check_qkv(q, k_cache, v_cache)
    pattern = get_pattern(pattern)
    B, Hq, Sq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if any(t.requires_grad for t in (q, k_cache, v_cache)) and torch.is_grad_enabled():
        raise ValueError(
            "sparse_attention_with_kvcache has no backward; inputs require grad (use "
            "sparse_attention, or call under torch.no_grad())"
        )
    if cache_leftpad is not None:
        _check_seqlens(cache_leftpad, q, "cache_leftpad")
    if cache_seqlens is None or isinstance(cache_seqlens, int):
        n = k_cache.shape[2] if cache_seqlens is None else cache_seqlens
        if cache_leftpad is not None:  # one end for all: the rows differ by their starts
            cache_seqlens = torch.full_like(cache_leftpad, n)
        else:
            if not Sq <= n <= k_cache.shape[2]:
                raise ValueError(
                    f"cache_seqlens={n} must lie in Sq..S_max = {Sq}..{k_cache.shape[2]} when "
                    "given as an int (use a tensor for per-sequence lengths)"
                )
            return sparse_attention(
                q, k_cache[:, :, :n], v_cache[:, :, :n], pattern, scale=scale,
                return_lse=return_lse,
            )  # fmt: skip
    _check_seqlens(cache_seqlens, q)
    if q.dtype == torch.float64 or not _decode.kernel_device(q):
        out, lse = _per_sequence(q, k_cache, v_cache, pattern, scale, cache_seqlens, cache_leftpad)
    else:
        _decode.check_supported(q, k_cache)  # e.g. Sq > 16: raises, naming the limit
        # The interpreter (CPU tensors): checking costs no synchronisation. Not in a trace.
        if cache_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_range(cache_seqlens.tolist(), k_cache.shape[2], cache_leftpad)
        if cache_leftpad is not None:  # the kernel's form: (2, B), ends then starts
            cache_seqlens = torch.stack((cache_seqlens, cache_leftpad.to(cache_seqlens.dtype)))
        out, lse = _decode.decode_forward(
            q, k_cache, v_cache, pattern, scale, cache_seqlens=cache_seqlens, need_lse=return_lse
        )
    return (out, lse) if return_lse else out


def _check_seqlens(t: torch.Tensor, q: torch.Tensor, name: str = "cache_seqlens") -> None:
    if not isinstance(t, torch.Tensor):
        what = "a tensor" if name == "cache_leftpad" else "a tensor, an int or None"
        raise ValueError(f"{name} must be {what}, got {type(t).__name__}")
    if t.shape != (q.shape[0],) or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{name} must be a (batch,) = ({q.shape[0]},) int32 or int64 tensor, got "
            f"{t.dtype} of shape {tuple(t.shape)}"
        )
    if t.device != q.device:
        raise ValueError(f"{name} must be on q's device ({q.device}), got {t.device}")


def _check_range(lens: list[int], s_max: int, leftpad: torch.Tensor | None = None) -> None:
    bad = [n for n in lens if not 0 <= n <= s_max]
    if bad:
        raise ValueError(f"cache_seqlens must lie in 0..S_max = 0..{s_max}, got {bad}")
    if leftpad is not None:
        starts = leftpad.tolist()
        bad = [(s, n) for s, n in zip(starts, lens, strict=True) if not 0 <= s <= n]
        if bad:
            raise ValueError(f"cache_leftpad must lie in 0..cache_seqlens (start, end): got {bad}")


def _per_sequence(q, k, v, pattern, scale, cache_seqlens, cache_leftpad=None):
    """The CPU / float64 path: each sequence through :func:`sparse_attention` (the same
    semantics as the kernel, with lengths checked on the host)."""
    B, Hq, Sq, _ = q.shape
    lens = cache_seqlens.tolist()
    _check_range(lens, k.shape[2], cache_leftpad)
    starts = [0] * B if cache_leftpad is None else cache_leftpad.tolist()
    out = q.new_zeros(q.shape)
    lse = torch.full((B, Hq, Sq), float("-inf"), dtype=torch.float32, device=q.device)
    for b, (s0, end) in enumerate(zip(starts, lens, strict=True)):
        n = end - s0
        first = max(Sq - n, 0)  # rows before position 0 have no keys
        if first == Sq:
            continue
        o, s = sparse_attention(
            q[b : b + 1, :, first:],
            k[b : b + 1, :, s0:end],
            v[b : b + 1, :, s0:end],
            pattern,
            scale=scale,
            return_lse=True,
        )
        out[b, :, first:] = o[0]
        lse[b, :, first:] = s[0].float()
    return out, lse
