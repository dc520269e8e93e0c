"""FlashAttention-4 called directly: the ``flash`` backend's eager prefill and training path.

FlexAttention's FLASH backend runs FlashAttention-4's kernels too, from inside a compiled
graph: every call pays Dynamo's cache lookup and Inductor's wrapper on top of
FlashAttention-4's own Python launch. At 8K a forward is host-bound on the H200 (session 19:
the kernel ran 9 % faster than FlexAttention-FLASH's while the call took 43 % longer,
results/kernel/README.md), so the one lever left was the host path: this module hands the
analytic BlockMask's tile lists to ``flash_attn.cute.flash_attn_func``, causal, with no
compile of ours.

Why causality is the whole token predicate: the path is taken only when every 128-token
tile lies inside one pattern block pair (:func:`~powerattn.ops.flex.tiles_align`) and
``Sq == Sk``; then the BlockMask's partial tiles are the diagonal ones, where the pattern is
plain causality (the same reasoning that lets the FlexAttention path share one causal
``mask_mod`` among every pattern). Chunks (``Sq < Sk``) and calls inside a user's
``torch.compile`` keep FlexAttention's FLASH path (it is traceable; this one is not).

How causality is asked for (:data:`CAUSAL_MASK_MOD`): FlashAttention-4's ``causal=True``
(the default: the CUDA suite and the benchmark ran it), or a CuTe ``mask_mod`` (``kv <= q``)
with ``causal=False``, as FlexAttention asks. On the H200 the two gave bit-identical
outputs at 8K-128K (B=1, bf16) and the ``mask_mod`` forward was 3-5 % faster (``causal=True``
selects a longest-processing-time-first tile order, built for dense causal work), forward +
backward within 1 % either way (session 20, ``scripts/gpu_fa4_variants.py``). It becomes the
default once the CUDA suite has run it (fp16, batches, odd lengths; DEVELOPERS.md).

FlashAttention-4 wants ``(B, S, H, D)``: the transposes below are views (its
``maybe_contiguous`` copies only a tensor whose layout its kernels cannot read), and the
output comes back as the transposed view of its ``(B, S, H, D)`` buffer. Its autograd
function also differentiates the lse.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.nn.attention.flex_attention import BlockMask

# Causality as a CuTe mask_mod (True) or as FlashAttention-4's causal flag (False, the
# variant the CUDA suite has verified; see the module docstring).
CAUSAL_MASK_MOD = False

# Block-sparse tile lists per BlockMask (both directions), FlashAttention-4's named tuples:
# built once per cached mask, not per call (host time is what this path is for).
_SPARSE_CACHE_SIZE = 64
_sparse: OrderedDict[int, tuple[BlockMask, object, object]] = OrderedDict()
_fa4: dict[str, object] = {}


def _interface() -> tuple[object, type, object]:
    """``flash_attn_func``, ``BlockSparseTensorsTorch`` and the causal CuTe ``mask_mod``,
    made on first use (the caller has checked that ``flash_attn.cute`` imports)."""
    if not _fa4:
        import cutlass.cute as cute
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

        @cute.jit
        def causal(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
            # Sq == Sk on this path: local query index = absolute position.
            return kv_idx <= q_idx

        _fa4.update(func=flash_attn_func, tensors=BlockSparseTensorsTorch, causal=causal)
    return _fa4["func"], _fa4["tensors"], _fa4["causal"]


def sparse_tensors(bm: BlockMask, tensors_cls: type) -> tuple[object, object]:
    """FlashAttention-4's forward (key-side) and backward (query-side) tile lists of ``bm``:
    partial tiles are its ``mask`` blocks, full tiles its ``full`` blocks. Cached per mask
    (by identity; the entry keeps the mask alive so that an id is never reused)."""
    key = id(bm)
    hit = _sparse.get(key)
    if hit is not None and hit[0] is bm:
        _sparse.move_to_end(key)
        return hit[1], hit[2]
    size = tuple(bm.BLOCK_SIZE)
    fwd = tensors_cls(
        bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
        block_size=size,
    )  # fmt: skip
    bwd = tensors_cls(
        bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices, block_size=size
    )
    _sparse[key] = (bm, fwd, bwd)
    if len(_sparse) > _SPARSE_CACHE_SIZE:
        _sparse.popitem(last=False)
    return fwd, bwd


def fa4_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bm: BlockMask,
    scale: float,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal block-sparse attention of ``q (B, Hq, S, D)`` over ``k, v (B, Hkv, S, D)``
    through FlashAttention-4, ``bm`` being the pattern's tile-aligned BlockMask for
    ``(S, S)``. Returns ``out (B, Hq, S, D)`` (a view of a ``(B, S, Hq, D)`` buffer) and the
    natural-log lse ``(B, Hq, S)`` float32, or ``None`` unless ``need_lse``."""
    func, tensors_cls, causal_mask = _interface()
    fwd, bwd = sparse_tensors(bm, tensors_cls)
    causal = {"mask_mod": causal_mask} if CAUSAL_MASK_MOD else {"causal": True}
    out, lse = func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        block_sparse_tensors=fwd,
        block_sparse_tensors_bwd=bwd,
        return_lse=need_lse,
        **causal,
    )
    return out.transpose(1, 2), (lse if need_lse else None)
