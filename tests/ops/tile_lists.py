"""Padded tile matrices of a pattern, built from :func:`powerattn.ops.layout.tile_entries`
(test-only: FlexAttention's BlockMask is filled from the entries directly) and their dense
picture, to check the tile lists against the token mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerattn.ops.layout import tile_entries
from powerattn.patterns import Pattern


@dataclass(frozen=True)
class TileLayout:
    """Block-sparse tile lists in FlexAttention's layout (all int32 numpy arrays).

    Attributes:
        kv_count, kv_idx: ``(n_q_tiles,)``, ``(n_q_tiles, W)`` -- partial key tiles per query
            tile (the token-level ``mask_mod`` is applied), ascending, padded with 0.
        full_kv_count, full_kv_idx: the same for full key tiles (no mask applied).
        q_count, q_idx, full_q_count, full_q_idx: ``(n_kv_tiles,)``, ``(n_kv_tiles, W')`` --
            the transpose: query tiles reading each key tile (used by the backward).
        q_len, kv_len: sequence lengths; q_tile, kv_tile: tile sizes in tokens.
    """

    kv_count: np.ndarray
    kv_idx: np.ndarray
    full_kv_count: np.ndarray
    full_kv_idx: np.ndarray
    q_count: np.ndarray
    q_idx: np.ndarray
    full_q_count: np.ndarray
    full_q_idx: np.ndarray
    q_len: int
    kv_len: int
    q_tile: int
    kv_tile: int

    @property
    def num_q_tiles(self) -> int:
        return int(self.kv_count.shape[0])

    @property
    def num_kv_tiles(self) -> int:
        return int(self.q_count.shape[0])

    def computed_tiles(self) -> int:
        """Number of (query tile, key tile) pairs the kernel visits."""
        return int(self.kv_count.sum() + self.full_kv_count.sum())


def _pack_rows(rows: np.ndarray, cols: np.ndarray, n_rows: int, width: int | None):
    """Left-pack ``cols`` (sorted by ``(rows, cols)``) into ``(n_rows, W)``, padded with 0."""
    count = np.bincount(rows, minlength=n_rows).astype(np.int32)
    w = max(int(count.max()) if count.size else 0, 1) if width is None else width
    start = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(count, out=start[1:])
    rank = np.arange(rows.size, dtype=np.int64) - start[rows]
    out = np.zeros((n_rows, w), dtype=np.int32)
    out[rows, rank] = cols
    return count, out


def tile_layout(
    pattern: Pattern,
    q_len: int,
    kv_len: int,
    q_tile: int = 128,
    kv_tile: int = 128,
    full_width: bool = False,
) -> TileLayout:
    """The FlexAttention tile lists of ``pattern`` for ``q_len`` queries aligned to the end of
    ``kv_len`` keys, as padded matrices (see :func:`tile_entries` for the arguments).

    Args:
        full_width: pad the index lists to the number of tiles (what FlexAttention's kernels
            read); otherwise to the longest list.
    """
    sides = tile_entries(pattern, q_len, kv_len, q_tile, kv_tile)
    packed = [_pack_rows(r, c, n_r, n_c if full_width else None) for r, c, n_r, n_c in sides]
    (kv_count, kv_idx), (full_kv_count, full_kv_idx) = packed[0], packed[1]
    (q_count, q_idx), (full_q_count, full_q_idx) = packed[2], packed[3]
    return TileLayout(
        kv_count=kv_count,
        kv_idx=kv_idx,
        full_kv_count=full_kv_count,
        full_kv_idx=full_kv_idx,
        q_count=q_count,
        q_idx=q_idx,
        full_q_count=full_q_count,
        full_q_idx=full_q_idx,
        q_len=q_len,
        kv_len=kv_len,
        q_tile=q_tile,
        kv_tile=kv_tile,
    )


def tile_masks(layout: TileLayout) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(n_q_tiles, n_kv_tiles)`` bool matrices (computed, full) of a layout -- for
    tests and pictures at small sizes only."""
    n_qt, n_kt = layout.num_q_tiles, layout.num_kv_tiles
    computed = np.zeros((n_qt, n_kt), dtype=bool)
    full = np.zeros((n_qt, n_kt), dtype=bool)
    for i in range(n_qt):
        computed[i, layout.kv_idx[i, : layout.kv_count[i]]] = True
        full[i, layout.full_kv_idx[i, : layout.full_kv_count[i]]] = True
    return computed | full, full
