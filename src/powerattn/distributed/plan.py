"""The static communication plan of context parallelism, derived from a pattern's layout.

The sequence of ``S`` tokens is split into ``P`` contiguous shards of ``L = S / P`` tokens
(rank ``p`` holds positions ``p L .. (p + 1) L - 1``; rank order is sequence order). Each
shard is ``C = L / block_size`` pattern blocks. Rank ``p``'s queries attend the key blocks
that the pattern's :meth:`~powerattn.patterns.Pattern.block_layout` lists for query blocks
``p C .. (p + 1) C - 1``; those before ``p C`` live on earlier ranks and must be received.
The plan records them *per block* (a source sends only the blocks the destination reads,
not its whole shard), so its volumes are exact::

    full attention      rank p receives p shards        (the last rank: (P - 1) S / P)
    power(W, sink)      rank p receives <= log2(P) + 2 shards' worth of blocks

(the shard at distance 2^i for each 2^i < p, the previous shard's tail for the window and
the small powers, the sink block). Everything is analytic: O(blocks x degree), no
``S x S`` matrix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..patterns import Pattern, get_pattern


@dataclass(frozen=True, eq=False)
class CPPlan:
    """Who sends which key/value blocks to whom, for one (pattern, S, P).

    Attributes:
        pattern: the attention pattern.
        seq_len: ``S``, tokens of the whole sequence.
        world_size: ``P``, ranks (shards).
        local_len: ``L = S / P``, tokens per rank.
        recv: ``recv[p]`` is a tuple of ``(src, blocks)`` pairs, ``src`` ascending, where
            ``blocks`` is the ascending ``int64`` array of the *source-local* block indices
            (``0 .. C - 1``) that rank ``p`` reads from rank ``src``.
    """

    pattern: Pattern
    seq_len: int
    world_size: int
    local_len: int
    recv: tuple[tuple[tuple[int, np.ndarray], ...], ...]

    @property
    def block_size(self) -> int:
        return self.pattern.block_size

    @property
    def chunk_blocks(self) -> int:
        """``C``: pattern blocks per shard."""
        return self.local_len // self.pattern.block_size

    def sources(self, rank: int) -> list[int]:
        """Ranks that ``rank`` receives key/value blocks from (ascending)."""
        return [src for src, _ in self.recv[rank]]

    def dests(self, rank: int) -> list[int]:
        """Ranks that ``rank`` sends key/value blocks to (ascending)."""
        return [dst for dst in range(self.world_size) if rank in self.sources(dst)]

    def blocks(self, dst: int, src: int) -> np.ndarray:
        """Source-local block indices that ``dst`` reads from ``src`` (empty if none)."""
        for s, blk in self.recv[dst]:
            if s == src:
                return blk
        return np.zeros(0, dtype=np.int64)

    @property
    def recv_tokens(self) -> list[int]:
        """Per rank: key/value tokens received from other ranks per layer (per K and per V)."""
        return [sum(int(b.size) for _, b in r) * self.block_size for r in self.recv]

    @property
    def send_tokens(self) -> list[int]:
        """Per rank: key/value tokens sent to other ranks per layer (per K and per V)."""
        out = [0] * self.world_size
        for r in self.recv:
            for src, blk in r:
                out[src] += int(blk.size) * self.block_size
        return out

    @property
    def recv_peers(self) -> list[int]:
        """Per rank: number of ranks it receives from (messages per layer and direction)."""
        return [len(r) for r in self.recv]

    def remote_blocks(self, rank: int) -> np.ndarray:
        """Absolute indices of the remote key blocks ``rank`` reads, ascending: the order in
        which :func:`~powerattn.distributed.context_parallel_attention` lays them out."""
        c = self.chunk_blocks
        parts = [src * c + blk for src, blk in self.recv[rank]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def summary(self) -> dict:
        """JSON-friendly numbers: per-rank token volumes and peers."""
        return {
            "pattern": self.pattern.describe(),
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "local_len": self.local_len,
            "recv_tokens": self.recv_tokens,
            "send_tokens": self.send_tokens,
            "recv_peers": self.recv_peers,
        }


def check_shard(pattern: Pattern, seq_len: int, world_size: int) -> int:
    """Validate a (pattern, S, P) split and return ``L = S / P``; ``ValueError`` naming the
    fix otherwise."""
    for name, x in (("seq_len", seq_len), ("world_size", world_size)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
            raise ValueError(f"{name} must be a positive integer, got {x!r}")
    if seq_len % world_size:
        raise ValueError(
            f"seq_len {seq_len} is not divisible by world_size {world_size}: every rank must "
            "hold the same number of tokens (pad the sequence to a multiple of world_size)"
        )
    local = seq_len // world_size
    if local % pattern.block_size:
        raise ValueError(
            f"the local shard ({local} tokens = {seq_len} / {world_size}) is not a multiple of "
            f"the pattern's block_size ({pattern.block_size}): pad the sequence to a multiple "
            f"of world_size x block_size = {world_size * pattern.block_size}, or use a smaller "
            "block_size"
        )
    return local


@functools.lru_cache(maxsize=32)
def _cp_plan(pattern: Pattern, seq_len: int, world_size: int) -> CPPlan:
    local = check_shard(pattern, seq_len, world_size)
    c = local // pattern.block_size
    recv = []
    for p in range(world_size):
        if p == 0:
            recv.append(())
            continue
        lay = pattern.block_layout(c, num_kv_blocks=(p + 1) * c, q_block_offset=p * c)
        idx = lay.kv_indices.numpy().astype(np.int64)
        remote = np.unique(idx[(idx >= 0) & (idx < p * c)])
        src = remote // c
        pairs = tuple(
            (int(s), remote[src == s] - s * c) for s in np.unique(src)
        )  # ascending sources, ascending blocks
        recv.append(pairs)
    return CPPlan(pattern, seq_len, world_size, local, tuple(recv))


def cp_plan(pattern: Pattern | str, seq_len: int, world_size: int) -> CPPlan:
    """The static context-parallel communication plan of ``pattern`` for a sequence of
    ``seq_len`` tokens over ``world_size`` ranks (contiguous shards, rank order = sequence
    order). Cached per (pattern, seq_len, world_size).

    ``seq_len`` must be a multiple of ``world_size x pattern.block_size`` (every shard whole
    blocks). See :class:`CPPlan` for what it holds (``recv_tokens``, ``send_tokens``,
    ``sources``, ``dests``, ``blocks``).
    """
    return _cp_plan(get_pattern(pattern), int(seq_len), int(world_size))
