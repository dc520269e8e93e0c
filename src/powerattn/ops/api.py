"""The public operator: validates, then dispatches to a backend.

Backends (``backend=``):

* ``"flash"`` -- FlashAttention-4's kernels with the analytic BlockMask's tile lists
  (Hopper/Blackwell GPUs with ``flash-attn-4`` installed: ``pip install 'powerattn[fa4]'``;
  16-bit inputs; block sizes that are multiples of 128). Forward and backward. Eager calls
  with ``Sq == Sk`` call FlashAttention-4 directly (:mod:`powerattn.ops.fa4`); chunks and
  calls inside a user's ``torch.compile`` go through FlexAttention's FLASH backend.
* ``"flex"`` -- FlexAttention's Triton kernels with the analytic BlockMask (CUDA; CPU through
  its compiled C++ kernel). Forward and backward, any ``Sq <= Sk``.
* ``"decode"`` -- one Triton kernel that reads only the attended key blocks (CUDA, or CPU
  tensors under ``TRITON_INTERPRET=1``); ``Sq <= DECODE_MAX_Q``, no gradient.
* ``"dense"`` -- exact masked attention over chunks of query rows (memory O(rows x Sk), forward
  and backward), computed in float32 (float64 inputs: in float64); any length the memory
  holds, with gradients.
* ``"reference"`` -- the float64-capable oracle (:func:`reference_attention`), for checks.
* ``"auto"`` -- float64: ``dense``. CUDA: ``decode`` when ``Sq <= DECODE_MAX_Q`` and no
  gradient is needed, else ``flash`` where it can run
  (:func:`~powerattn.ops.flex.flash_unsupported` says why not), else ``flex``. CPU:
  ``dense`` up to ``CPU_DENSE_AUTO_MAX`` scores or when a gradient or the lse is needed
  (FlexAttention's CPU kernel has neither), else ``flex`` (compiled C++ kernel).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask

from ..patterns import Pattern, get_pattern
from . import decode as _decode
from .checks import check_qkv, needs_grad, resolve_scale
from .dense import dense_scores_count, dense_sparse_attention
from .flex import flex_sparse_attention, pick_kernel
from .reference import reference_attention

BACKENDS = ("auto", "flash", "flex", "decode", "dense", "reference")
# CPU: up to this many scores (B*Hq*Sq*Sk, 256 MiB of float32) the dense path beats compiling
# FlexAttention's CPU kernel (tens of seconds per new shape); above it, flex.
CPU_DENSE_AUTO_MAX = 1 << 26
DECODE_MAX_Q = _decode.DECODE_MAX_Q


def _pick_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, return_lse: bool
) -> str:
    if q.dtype == torch.float64:  # checks and references: the fused kernels are 16/32-bit
        return "dense"
    if q.device.type == "cuda":
        if q.shape[2] <= DECODE_MAX_Q and not needs_grad(q, k, v) and _decode.supports(q, k):
            return "decode_auto"  # the kernel, or dense SDPA where that is exact and faster
        return pick_kernel(q, pattern, lse_with_grad=return_lse and needs_grad(q, k, v))
    # FlexAttention's CPU kernel has no backward and no lse: those go dense (chunked: any length).
    if dense_scores_count(q, k) <= CPU_DENSE_AUTO_MAX or needs_grad(q, k, v) or return_lse:
        return "dense"
    return "flex"


# Eager decode steps are host-bound: one C call (~0.1 us) says whether any autocast is on
# before the per-device query (~1 us); inside a trace only the public query is traceable.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


# Device types with autocast, asked once: Dynamo (torch 2.11) cannot trace
# torch.amp.is_autocast_available, while torch.is_autocast_enabled folds to a constant.
_AUTOCAST_DEVICES = frozenset(
    d for d in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia") if torch.amp.is_autocast_available(d)
)


def _autocast_on(q: torch.Tensor) -> bool:
    dev = q.device.type
    if dev in _AUTOCAST_DEVICES:
        return torch.is_autocast_enabled(dev)
    # Another backend (a registered privateuse1 device): asked eagerly; not traceable.
    return (
        not torch.compiler.is_compiling()
        and torch.amp.is_autocast_available(dev)
        and torch.is_autocast_enabled(dev)
    )


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
    block_mask: BlockMask | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal attention under ``pattern`` (SDPA tensor convention).

    Args:
        q: ``(B, Hq, Sq, D)`` float16, bfloat16 or float32 (float64: ``dense``/``reference``).
        k, v: ``(B, Hkv, Sk, D)``, same dtype and device as ``q``; ``Hq % Hkv == 0`` (query
            head ``h`` reads key/value head ``h // (Hq // Hkv)``; K/V are never copied).
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name (default
            parameters), e.g. ``"power"``.
        scale: softmax scale, default ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of the scaled, masked scores.
        backend: one of :data:`BACKENDS` (see the module docstring); an explicit backend
            that cannot serve the input raises ``ValueError``.
        block_mask: for a call compiled by its caller:
            ``powerattn.ops.flex.block_mask_for(pattern, Sq, Sk, q.device)``, built outside
            the compiled region and used by the FlexAttention backends (``flash``, ``flex``);
            looking it up inside the trace breaks the graph. Other backends ignore it.

    Alignment: ``Sq <= Sk`` and the queries are the *last* ``Sq`` positions (``Sq == Sk``:
    prefill/training; ``Sq == 1``: decode; in between: chunked prefill). Query ``i`` sits at
    absolute position ``Sk - Sq + i`` and attends key ``j <= Sk - Sq + i`` when the
    pattern's block rule allows block pair ``(pos // block_size, j // block_size)``::

        keys:     0 1 2 3 4 5 6 7
        queries:          0 1 2 3     (Sq=4, Sk=8)

    ``Sk`` need not be a multiple of the block size. A row that attends no key (possible
    only for degenerate patterns) gives output 0 and lse ``-inf``.

    Returns:
        ``out (B, Hq, Sq, D)`` in the input dtype (under autocast: autocast's dtype, the
        inputs cast to it as autocast casts SDPA's); with ``return_lse`` also
        ``lse (B, Hq, Sq)`` float32.
    """
    if (torch.compiler.is_compiling() or _any_autocast()) and _autocast_on(q):
        dev = q.device.type
        # Like SDPA under autocast: the inputs in autocast's dtype (a Hugging Face layer
        # hands over q, k in float32, RoPE's cos/sin being float32, and v in bfloat16),
        # float64 left as it is, and the kernels computing as they do outside autocast.
        dt = torch.get_autocast_dtype(dev)
        q, k, v = (x.to(dt) if x.is_floating_point() and x.dtype != torch.float64 else x
                   for x in (q, k, v))  # fmt: skip
        with torch.autocast(dev, enabled=False):
            return sparse_attention(
                q, k, v, pattern, scale=scale, return_lse=return_lse, backend=backend,
                block_mask=block_mask,
            )  # fmt: skip
    # A decode call like an earlier validated one (pattern, shapes, dtype, device, length
    # bucket): answered from what that call decided, without redoing the work below.
    hit = _decode.cached_step(q, k, v, pattern, scale, return_lse, backend)
    if hit is not None:
        return hit
    call = (pattern, scale, backend)  # as given: the key of a decode step to remember
    check_qkv(q, k, v)
    pattern = get_pattern(pattern)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    D = q.shape[-1]
    scale = resolve_scale(scale, D)
    if backend == "reference":
        return reference_attention(q, k, v, pattern, scale=scale, return_lse=return_lse)
    if backend == "auto":
        backend = _pick_backend(q, k, v, pattern, return_lse)
    if q.dtype == torch.float64 and backend in ("flash", "flex", "decode"):
        raise ValueError(
            f"backend={backend!r} does not support float64 inputs (use 'dense' or 'reference')"
        )
    if backend == "dense":
        out, lse = dense_sparse_attention(q, k, v, pattern, scale)
    elif backend in ("decode", "decode_auto"):
        if backend == "decode":  # auto checked both already (a decode step is host-bound)
            if needs_grad(q, k, v):
                raise ValueError(
                    "backend='decode' has no backward; inputs require grad (use 'flex' or 'auto')"
                )
            _decode.check_supported(q, k)
        allow_dense = backend == "decode_auto"
        out, lse = _decode.decode_forward(
            q, k, v, pattern, scale, need_lse=return_lse, allow_dense=allow_dense
        )
        _decode.remember_step(q, k, v, call, return_lse, pattern, scale, allow_dense)
    else:
        if q.device.type != "cuda" and needs_grad(q, k, v):
            raise ValueError(
                f"backend='flex' has no backward on {q.device.type} (FlexAttention limitation); "
                "inputs require grad: use backend='dense' (or 'auto')"
            )
        out, lse = flex_sparse_attention(
            q, k, v, pattern, scale, need_lse=return_lse, kernel=backend, block_mask=block_mask
        )
    return (out, lse) if return_lse else out


def power_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int = 256,
    window: int = 5,
    sink: int = 1,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PowerAttention (Chen et al., 2025) in one call: query block ``qb`` attends key block
    ``kb`` iff ``d = qb - kb`` is below ``window``, a power of two (``d = 0`` included), or
    ``kb < sink``; causal inside the diagonal block.

    Same tensors, alignment and returns as :func:`sparse_attention`: q ``(B, Hq, Sq, D)``,
    k/v ``(B, Hkv, Sk, D)``, queries the last ``Sq`` positions; ``out (B, Hq, Sq, D)`` in
    the input dtype, ``lse (B, Hq, Sq)`` float32 with ``return_lse``.
    """
    pattern = get_pattern("power", block_size=block_size, window=window, sink=sink)
    return sparse_attention(q, k, v, pattern, scale=scale, return_lse=return_lse, backend=backend)
