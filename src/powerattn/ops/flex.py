"""FlexAttention backend: prefill, chunked prefill and training (forward and backward).

The BlockMask is written down from the pattern's analytic tile lists (:mod:`.layout`) --
key side *and* query side -- and handed to ``BlockMask`` directly: no ``create_block_mask``
over ``S x S`` and no dense transpose (``BlockMask.from_kv_blocks`` derives the query side
densely). Masks are cached per (pattern, Sq, Sk, device, tile).

``flex_attention`` is compiled once per process (:func:`compiled_flex`; CUDA:
``dynamic=True``, one kernel for all lengths). Unfused fallback guard: when a compiled
function exceeds dynamo's recompile limit, dynamo silently runs it *eagerly*, and eager
``flex_attention`` is the math path that materialises ``S x S`` scores. We call the
compiled function with ``fail_on_recompile_limit_hit=True``, so that case raises
:class:`FlexRecompileError`.
Recompiles are kept rare: when the pattern's block size is a multiple of the tile (the
default 256 vs 128), tiles never straddle pattern blocks (queries are padded at the front
when ``Sk - Sq`` is not a tile multiple), so the ``mask_mod`` is plain causality shared by
every pattern; the query offset is a captured tensor, not a Python int; masks are cached.
Smaller blocks (16..64) need the pattern's own ``mask_mod`` in straddling tiles: one
compiled variant per pattern instance.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:  # torch >= 2.9: return_lse is deprecated in favour of return_aux
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover - older torch
    AuxRequest = None

from ..patterns import Pattern
from .layout import tile_entries

# FlexAttention tile (its BlockMask BLOCK_SIZE). 128 is what its GPU kernels are tuned for;
# pattern blocks of other sizes (16..256+) and unaligned offsets are handled by the layout.
TILE = 128
# Compiled variants allowed before we refuse (each dtype / GQA ratio / head dim / pattern /
# grad mode costs one; sequence lengths go dynamic after the first change).
RECOMPILE_LIMIT = 64
_MASK_CACHE_SIZE = 64
_KERNEL_OPTIONS = {"FORCE_USE_FLEX_ATTENTION": True}

_compiled: dict[str, object] = {}


def compiled_flex(device_type: str = "cuda"):
    """The process-wide compiled ``flex_attention`` (created on first use: building the
    wrapper imports dynamo, ~2 s, which ``import powerattn`` should not pay). CUDA:
    ``dynamic=True``, one kernel for every sequence length. CPU: static shapes, because
    Inductor's CPU flex template fails to build with dynamic ones (torch 2.13)."""
    fn = _compiled.get(device_type)
    if fn is None:
        fn = torch.compile(flex_attention, dynamic=device_type == "cuda")
        _compiled[device_type] = fn
    return fn


_mask_cache: OrderedDict[tuple, BlockMask] = OrderedDict()


class FlexRecompileError(RuntimeError):
    """FlexAttention would fall back to its unfused eager path (recompile limit reached)."""


def _causal_mask_mod(offset: torch.Tensor):
    """Token predicate when tiles align with pattern blocks: the tile lists already encode
    the pattern, the partial (diagonal) tiles only need causality. Pattern-independent, so
    every pattern shares one compiled kernel; the offset is a tensor so a new ``Sk - Sq``
    does not recompile either."""

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return mask_mod


def _pattern_mask_mod(pattern: Pattern, offset: torch.Tensor):
    """Full token predicate (local query index + offset = absolute position), for tiles that
    straddle pattern blocks (block size not a multiple of the tile). Compiled per pattern."""

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.mask_mod(b, h, q_idx + offset, kv_idx)

    return mask_mod


def tiles_align(pattern: Pattern, q_len: int, kv_len: int, tile: int = TILE) -> bool:
    """Whether every tile lies inside one pattern block (block size a multiple of the tile
    and ``Sk - Sq`` a multiple of the tile)."""
    return pattern.block_size % tile == 0 and (kv_len - q_len) % tile == 0


def block_mask_for(
    pattern: Pattern, q_len: int, kv_len: int, device: torch.device | str, tile: int = TILE
) -> BlockMask:
    """The cached FlexAttention ``BlockMask`` of ``pattern`` for ``q_len`` queries aligned to
    the end of ``kv_len`` keys, on ``device``. Built analytically (both sides): coordinate
    lists on the host, one host-to-device copy, scattered into full width on the device."""
    device = torch.device(device)
    key = (pattern, q_len, kv_len, device, tile)
    bm = _mask_cache.get(key)
    if bm is not None:
        _mask_cache.move_to_end(key)
        return bm
    sides = tile_entries(pattern, q_len, kv_len, tile, tile)
    # FlexAttention's kernels read index lists padded to the number of tiles (with compact
    # lists, torch 2.11's GPU kernels gave wrong outputs on the H200, and the CPU kernel
    # asserts). Those are dense (tiles x tiles) matrices, so they are filled on the device:
    # one host-to-device copy of the counts, the query offset and the (position, value) of
    # every entry -- O(entries) -- then one scatter into zeros.
    counts, pos, vals, base = [], [], [], 0
    for rows, cols, n_rows, n_cols in sides:
        count = np.bincount(rows, minlength=n_rows).astype(np.int32)
        start = np.zeros(n_rows, dtype=np.int64)
        np.cumsum(count[:-1], out=start[1:])
        rank = np.arange(rows.size, dtype=np.int64) - start[rows]  # rows are sorted
        counts.append(count)
        pos.append(base + rows * n_cols + rank)
        vals.append(cols)
        base += n_rows * n_cols
    if base >= 1 << 31:
        raise ValueError(
            f"q_len={q_len}, kv_len={kv_len}: FlexAttention's full-width index lists would "
            f"hold {base:,} entries (int32 positions overflow); use a larger tile or shorter "
            "sequences"
        )
    # Segments start at 64-byte boundaries so that every view is aligned.
    segs = [np.asarray([kv_len - q_len], dtype=np.int32), *counts, np.concatenate(pos)]
    segs.append(np.concatenate(vals))
    sizes = [-(-x.size // 16) * 16 for x in segs]
    starts = np.cumsum([0, *sizes[:-1]])
    host = np.zeros(sum(sizes), dtype=np.int32)
    for x, st in zip(segs, starts, strict=True):
        host[st : st + x.size] = x
    buf = torch.from_numpy(host).to(device)
    offset = buf[0]
    n_ent = segs[-1].size
    idx_all = torch.zeros(base, dtype=torch.int32, device=device)
    idx_all[buf[starts[-2] : starts[-2] + n_ent].long()] = buf[starts[-1] : starts[-1] + n_ent]
    counts_d, idx_d, i0 = [], [], 0
    for st, (_, _, n_rows, n_cols) in zip(starts[1:5], sides, strict=True):
        counts_d.append(buf[st : st + n_rows].view(1, 1, n_rows))
        idx_d.append(idx_all[i0 : i0 + n_rows * n_cols].view(1, 1, n_rows, n_cols))
        i0 += n_rows * n_cols
    bm = BlockMask(
        seq_lengths=(q_len, kv_len),
        kv_num_blocks=counts_d[0],
        kv_indices=idx_d[0],
        full_kv_num_blocks=counts_d[1],
        full_kv_indices=idx_d[1],
        q_num_blocks=counts_d[2],
        q_indices=idx_d[2],
        full_q_num_blocks=counts_d[3],
        full_q_indices=idx_d[3],
        BLOCK_SIZE=(tile, tile),
        mask_mod=(
            _causal_mask_mod(offset)
            if tiles_align(pattern, q_len, kv_len, tile)
            else _pattern_mask_mod(pattern, offset)
        ),
    )
    _mask_cache[key] = bm
    if len(_mask_cache) > _MASK_CACHE_SIZE:
        _mask_cache.popitem(last=False)
    return bm


@contextlib.contextmanager
def recompile_guard(limit: int | None = None):
    """Turn dynamo's silent eager fallback of the compiled ``flex_attention`` into an error."""
    limit = RECOMPILE_LIMIT if limit is None else limit
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    try:
        with cfg.patch(**{name: limit, "fail_on_recompile_limit_hit": True}):
            yield
    except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
        raise FlexRecompileError(
            f"FlexAttention reached {limit} compiled variants; running on would use its "
            "unfused fallback, which materialises the full score matrix. Use fewer distinct "
            "dtypes/head layouts/patterns per process, or raise "
            "powerattn.ops.flex.RECOMPILE_LIMIT."
        ) from exc


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention through FlexAttention (differentiable on CUDA).

    Args:
        q: ``(B, Hq, Sq, D)``; k, v: ``(B, Hkv, Sk, D)`` (validated by the caller).
        need_lse: return the lse. On CUDA it is always computed (one compiled variant, and
            the backward needs it anyway); FlexAttention's CPU kernel cannot produce it.
    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype and ``lse (B, Hq, Sq)`` float32 (natural log),
        or ``None`` for the lse on the CPU.
    """
    Sq, Sk = q.shape[2], k.shape[2]
    # Blocks that are multiples of the tile but an offset that is not (decode-like chunks):
    # prepend zero queries so that tiles align again; their rows are dropped below.
    pad = 0
    if q.device.type == "cuda" and pattern.block_size % TILE == 0:
        pad = (Sk - Sq) % TILE
        if pad:
            q = F.pad(q, (0, 0, pad, 0))
    bm = block_mask_for(pattern, Sq + pad, Sk, q.device)
    gqa = q.shape[1] != k.shape[1]
    # Inside the user's compiled graph: call the op itself (no nested compile).
    if torch.compiler.is_compiling():
        fn = flex_attention
    else:
        fn = compiled_flex("cuda" if q.device.type == "cuda" else "cpu")
    guard = contextlib.nullcontext() if torch.compiler.is_compiling() else recompile_guard()
    with guard:
        if q.device.type == "cpu":
            if need_lse:
                raise ValueError("backend='flex' cannot return the lse on the CPU")
            return fn(q, k, v, block_mask=bm, scale=scale, enable_gqa=gqa), None
        # The regular kernel also for short queries: flex's decoding kernel finds no valid
        # config under dynamic shapes (torch 2.11, seen on the H200).
        kw = dict(block_mask=bm, scale=scale, enable_gqa=gqa, kernel_options=_KERNEL_OPTIONS)
        if AuxRequest is not None:
            out, aux = fn(q, k, v, return_aux=AuxRequest(lse=True), **kw)
            lse = aux.lse
        else:
            out, lse = fn(q, k, v, return_lse=True, **kw)
    if pad:
        out, lse = out[:, :, pad:].contiguous(), lse[:, :, pad:].contiguous()
    return out, lse
