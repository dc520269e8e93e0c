"""Receptive-field analysis: a pattern's layout as a DAG over blocks, searched breadth-first.

An edge ``q -> k`` means query block ``q`` attends key block ``k``. Stacking layers, the last
token receives block ``k``'s information after ``L`` layers iff a path of at most ``L`` edges
leads from the last block to ``k`` (every pattern here has the self-edge ``d = 0``, so "at most"
and "exactly" coincide). For an off-diagonal edge every token of ``q`` sees every token of
``k``, so block reachability is token reachability.
"""

from __future__ import annotations

import numpy as np

from .patterns import Pattern, get_pattern
from .validate import check_int

# The all-pairs hop matrix is (n, n) int16 plus bitsets: refuse beyond this many blocks.
MAX_HOP_MATRIX_BLOCKS = 16384


def _adjacency(pattern: Pattern, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    lay = pattern.block_layout(num_blocks)
    return lay.kv_indices.numpy().astype(np.int64), lay.kv_count.numpy().astype(np.int64)


def hops(pattern: Pattern | str, seq_len: int) -> np.ndarray:
    """Minimum number of layers for the last token to receive each block's information.

    Returns a numpy int array with one entry per block of ``seq_len`` tokens: 0 for the last
    block itself, ``L >= 1`` for a block first reachable through ``L`` layers, -1 where no
    number of layers reaches it.
    """
    pattern = get_pattern(pattern)
    n = pattern.num_blocks(seq_len)
    idx, _ = _adjacency(pattern, n)
    dist = np.full(n, -1, dtype=np.int64)
    dist[n - 1] = 0
    frontier = np.array([n - 1])
    level = 0
    while frontier.size:
        level += 1
        nxt = idx[frontier].ravel()
        # Mark, don't np.unique: a sort of all frontier edges costs ~0.4 s for full at 1M.
        fresh = np.zeros(n, dtype=bool)
        fresh[nxt[nxt >= 0]] = True
        fresh &= dist < 0
        frontier = np.flatnonzero(fresh)
        dist[frontier] = level
    return dist


def coverage(pattern: Pattern | str, seq_len: int, layers: int) -> np.ndarray:
    """Fraction of blocks whose information reaches the last token after 1, 2, ..., ``layers``
    layers: a float array of length ``layers`` (the theoretical curve of the paper's Fig. 1b)."""
    check_int("layers", layers)
    h = hops(pattern, seq_len)
    reach = h[h >= 0]
    counts = np.bincount(reach, minlength=layers + 1)[: layers + 1]
    return np.cumsum(counts)[1:].astype(np.float64) / h.size


def layers_for_full_coverage(pattern: Pattern | str, seq_len: int) -> int | None:
    """The fewest layers after which the last token has every block's information, or None if
    some block is never reached."""
    return full_coverage_layers(hops(pattern, seq_len))


def full_coverage_layers(h: np.ndarray) -> int | None:
    """:func:`layers_for_full_coverage` from an array of :func:`hops` already computed."""
    if (h < 0).any():
        return None
    return max(int(h.max()), 1)


def hop_image(pattern: Pattern | str, seq_len: int, layers: int) -> np.ndarray:
    """``(layers, num_blocks)`` int: entry ``[L-1, k]`` is the layer at which block ``k``
    first reaches the last token (the last block itself counts as layer 1) if that is
    ``<= L``, else 0 (not reached within ``L`` layers)."""
    check_int("layers", layers)
    h = hops(pattern, seq_len)
    lvl = np.arange(1, layers + 1)[:, None]
    reached = (h[None, :] >= 0) & (h[None, :] <= lvl)
    return np.where(reached, np.maximum(h, 1)[None, :], 0)


def reachability(pattern: Pattern | str, seq_len: int, layers: int) -> np.ndarray:
    """``(layers, num_blocks)`` bool: row ``L-1`` marks the blocks reaching the last token
    within ``L`` layers (the paper's Fig. 1a)."""
    return hop_image(pattern, seq_len, layers) > 0


def hop_matrix(pattern: Pattern | str, seq_len: int) -> np.ndarray:
    """All-pairs hops: ``(n, n)`` int16 with entry ``[i, j]`` the fewest layers for block ``i``
    to receive block ``j`` (0 on the diagonal, -1 if never, e.g. for ``j > i``).

    Bit-parallel breadth-first search: reachable sets are packed 64 blocks to a word and
    expanded through the layout in O(n x degree x n / 64) per layer.
    """
    pattern = get_pattern(pattern)
    n = pattern.num_blocks(seq_len)
    if n > MAX_HOP_MATRIX_BLOCKS:
        raise ValueError(
            f"hop_matrix over {n} blocks exceeds the limit of {MAX_HOP_MATRIX_BLOCKS}; "
            "use hops() for the last block only"
        )
    idx, _ = _adjacency(pattern, n)
    pad = idx < 0
    idx = np.where(pad, np.arange(n)[:, None], idx)  # padding -> self, a no-op in the union
    reach = np.packbits(np.eye(n, dtype=bool), axis=1)  # (n, ceil(n/8)) uint8
    out = np.where(np.eye(n, dtype=bool), 0, -1).astype(np.int16)
    level = 0
    while True:
        level += 1
        new = np.bitwise_or.reduce(reach[idx], axis=1) | reach
        if np.array_equal(new, reach):
            return out
        fresh = np.unpackbits(new & ~reach, axis=1, count=n).astype(bool)
        out[fresh] = level
        reach = new


def dense_prefix_tokens(pattern: Pattern | str, max_blocks: int = 1024) -> int | None:
    """The longest sequence, in tokens, over which ``pattern`` attends every earlier block,
    i.e. equals full causal attention (power with 256-token blocks: 1,536 tokens, 6 blocks).
    ``None`` when it does so over all ``max_blocks`` blocks probed (full attention itself).

    Layouts are prefix-consistent (a query block's key blocks do not depend on the sequence
    after it), so one layout of ``max_blocks`` blocks answers for every length."""
    pattern = get_pattern(pattern)
    if type(pattern).ceiling:
        return None
    count = pattern.block_layout(max_blocks).kv_count.numpy()
    sparse = np.flatnonzero(count < np.arange(1, max_blocks + 1))
    return int(sparse[0]) * pattern.block_size if sparse.size else None
