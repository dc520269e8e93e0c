"""Tile layouts for FlexAttention, derived analytically from a pattern's ``block_layout``.

FlexAttention works on tiles of ``q_tile x kv_tile`` tokens whose query tiles start at the
first *local* query (``q_idx = 0``), while a pattern's blocks sit at *absolute* positions
(the queries are the last ``Sq`` of ``Sk`` positions). The two grids only line up when the
tile size divides the block size and ``Sk - Sq`` is a multiple of the tile. This module
handles the general case: a query tile may straddle two pattern blocks, a pattern block may
cover several tiles or a tile several blocks, and the last tiles may be cut by ``Sq``/``Sk``.

For query tile ``i`` with pattern query blocks ``Q_i`` and key tile ``j`` with pattern key
blocks ``K_j``, we count the allowed block pairs ``n_ij = |{(a, b) in Q_i x K_j: a -> b}|``
(from the pattern's per-block index lists: O(tiles x degree), never O(S^2)). Tile ``(i, j)``
is computed iff ``n_ij > 0`` and some key of ``j`` is causally visible from ``i``; it is
*full* (no token mask needed) iff ``n_ij == |Q_i| |K_j|`` and every key of ``j`` precedes
every query of ``i``. The query-side (transposed) lists that FlexAttention's backward reads
come from the same pair list sorted the other way, so nothing is ever dense.
"""

from __future__ import annotations

import math

import numpy as np

from ..patterns import Pattern


def _aligned_entries(idx, qb0, r, t0, n_qt, n_kt):
    """Tiles inside pattern blocks (block = ``r`` tiles, query offset a tile multiple): query
    tile ``i`` is absolute tile ``t0 + i`` of block ``(t0 + i) // r``; each attended block
    contributes its ``r`` key tiles; tiles before the diagonal one are full, the diagonal one
    is partial (causal), later ones are dropped. Returns (i, j, full) sorted by (i, j)."""
    t_abs = t0 + np.arange(n_qt, dtype=np.int64)
    rows = idx[t_abs // r - qb0]  # (n_qt, deg), ascending, -1 padded
    j = (rows[:, :, None] * r + np.arange(r)[None, None, :]).reshape(n_qt, -1)  # ascending
    ok = (np.repeat(rows, r, axis=1) >= 0) & (j < n_kt) & (j <= t_abs[:, None])
    ti, col = np.nonzero(ok)  # row-major: sorted by (i, j)
    tj = j[ti, col]
    return ti, tj, tj < t_abs[ti]


def _general_entries(idx, qb0, bs, off, kv_len, q_tile, kv_tile, n_qt, n_kt):
    """Any tile / block sizes and offsets: count the allowed block pairs per tile pair.
    Returns (i, j, full) sorted by (i, j)."""
    # Query tile i: absolute rows [lo_i, hi_i] -> pattern query blocks qlo_i .. qhi_i.
    ti = np.arange(n_qt, dtype=np.int64)
    lo = off + ti * q_tile
    hi = np.minimum(lo + q_tile, kv_len) - 1
    qlo, qhi = lo // bs, hi // bs
    n_qi = qhi - qlo + 1  # |Q_i|
    # (i, query block) pairs.
    m = int(n_qi.max())
    pi = np.repeat(ti, m)
    pq = (qlo[:, None] + np.arange(m)[None, :]).reshape(-1)
    keep = pq <= np.repeat(qhi, m)
    pi, pq = pi[keep], pq[keep]
    # (i, key block) entries: one per allowed block pair.
    rows = idx[pq - qb0]  # (P, deg)
    deg_ok = rows >= 0
    ei = np.broadcast_to(pi[:, None], rows.shape)[deg_ok]
    eb = rows[deg_ok]
    # Key block -> key tiles it overlaps (inside kv_len).
    t_lo = eb * bs // kv_tile
    t_hi = (np.minimum((eb + 1) * bs, kv_len) - 1) // kv_tile
    u = int((t_hi - t_lo).max()) + 1 if eb.size else 1
    ej = (t_lo[:, None] + np.arange(u)[None, :]).reshape(-1)
    ei = np.repeat(ei, u)
    ok = ej <= np.repeat(t_hi, u)
    ei, ej = ei[ok], ej[ok]
    # Drop tiles lying entirely after the last query of the tile (causally empty).
    ok = ej * kv_tile <= hi[ei]
    ei, ej = ei[ok], ej[ok]

    key, n_pairs = np.unique(ei * n_kt + ej, return_counts=True)  # sorted by (i, j)
    ti_u, tj_u = key // n_kt, key % n_kt
    kv_end = np.minimum((tj_u + 1) * kv_tile, kv_len) - 1  # last key of tile j
    n_kj = kv_end // bs - tj_u * kv_tile // bs + 1  # |K_j|
    full = (n_pairs == n_qi[ti_u] * n_kj) & (kv_end <= lo[ti_u])
    return ti_u, tj_u, full


def tile_entries(
    pattern: Pattern, q_len: int, kv_len: int, q_tile: int = 128, kv_tile: int = 128
) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """The four tile lists of ``pattern`` as sorted coordinate lists ``(rows, cols, n_rows,
    n_cols)``, in the order: partial key tiles per query tile, full key tiles per query tile,
    partial query tiles per key tile, full query tiles per key tile. O(tiles x degree).

    Args:
        pattern: the block pattern (any block size).
        q_len, kv_len: ``1 <= q_len <= kv_len``; the queries are the last ``q_len`` positions.
        q_tile, kv_tile: FlexAttention's ``BLOCK_SIZE`` (query, key) in tokens.
    """
    if not 1 <= q_len <= kv_len:
        raise ValueError(f"need 1 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    bs = pattern.block_size
    off = kv_len - q_len
    n_qt, n_kt = math.ceil(q_len / q_tile), math.ceil(kv_len / kv_tile)
    n_kb = math.ceil(kv_len / bs)
    qb0 = off // bs
    lay = pattern.block_layout(n_kb - qb0, n_kb, qb0)
    idx = lay.kv_indices.numpy().astype(np.int64)  # (n_qb, deg): key blocks per query block

    if bs % q_tile == 0 and bs % kv_tile == 0 and q_tile == kv_tile and off % q_tile == 0:
        ti, tj, full = _aligned_entries(idx, qb0, bs // q_tile, off // q_tile, n_qt, n_kt)
    else:
        ti, tj, full = _general_entries(idx, qb0, bs, off, kv_len, q_tile, kv_tile, n_qt, n_kt)
    # Entries are sorted by (i, j); a stable sort on j makes them (j, i). int16 keys take
    # numpy's radix sort (10x faster here).
    keys = tj.astype(np.int16) if n_kt < (1 << 15) else tj
    order = np.argsort(keys, kind="stable")
    tj_t, ti_t, full_t = tj[order], ti[order], full[order]
    return [
        (ti[~full], tj[~full], n_qt, n_kt),
        (ti[full], tj[full], n_qt, n_kt),
        (tj_t[~full_t], ti_t[~full_t], n_kt, n_qt),
        (tj_t[full_t], ti_t[full_t], n_kt, n_qt),
    ]
