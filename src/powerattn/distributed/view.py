"""A pattern seen through a gathered key buffer, so the existing operator computes it.

Under context parallelism a rank's queries are the absolute blocks ``q0 .. q0 + C - 1`` and
its keys are a *non-contiguous* set of absolute blocks (the remote blocks of the plan, then
its own shard). Laid out in that order -- ascending absolute position, own shard last -- the
gathered keys are a compact sequence whose last ``C`` blocks are the queries' own blocks::

    absolute blocks:  0 . . 4 . . . . 8 9 10 11 | 12 13 14 15   (rank 3 of 4, C = 4)
    gathered keys:    0       4       8 9 10 11   12 13 14 15
    compact index:    0       1       2 3  4  5    6  7  8  9
    queries:                                       6  7  8  9   (aligned to the end)

so :func:`~powerattn.sparse_attention`'s end alignment puts the queries at the right compact
positions, and token-level causality in compact coordinates is causality in absolute ones
(remote keys all precede the shard). Only the block rule needs absolute indices:
:class:`GatheredView` maps compact blocks back to absolute ones and asks the base pattern.
Any backend (dense, flex) then runs unchanged on the gathered buffer.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..patterns import Pattern


@dataclass(frozen=True)
class GatheredView(Pattern):
    """``base`` restricted to the absolute key blocks listed in ``runs``, in compact order.

    Attributes:
        base: the pattern being computed.
        runs: ``((abs_start, n_blocks), ...)``, ascending and disjoint: the absolute blocks
            of the gathered key buffer, in buffer order. The last ``C`` of them are the
            queries' own blocks.
        key_limit: when ``>= 0``, compact key blocks ``>= key_limit`` are excluded (used to
            attend only the remote part of a buffer that also holds the local shard).

    Not registered: built by :mod:`powerattn.distributed.attention` per rank and plan.
    """

    name = "gathered"
    base: Pattern | None = None
    runs: tuple[tuple[int, int], ...] = ()
    key_limit: int = -1

    def __post_init__(self) -> None:
        if self.base is None or not self.runs:
            raise ValueError("GatheredView needs a base pattern and at least one run")
        # Not Pattern.__post_init__: the base pattern is already validated, and its probe
        # (a layout from block 0) means nothing in compact coordinates.
        object.__setattr__(self, "block_size", self.base.block_size)

    @functools.cached_property
    def _abs_blocks(self) -> np.ndarray:
        return np.concatenate([np.arange(a, a + n, dtype=np.int64) for a, n in self.runs])

    @functools.cached_property
    def _steps(self) -> tuple[tuple[int, int], ...]:
        """``(compact_start, shift increment)`` per run: absolute = compact + sum of the
        increments of the runs started at or before it (operators only: traces anywhere)."""
        out, c, prev = [], 0, 0
        for a, n in self.runs:
            shift = a - c
            out.append((c, shift - prev))
            prev, c = shift, c + n
        return tuple(out)

    def to_absolute(self, b: Any) -> Any:
        """Compact block index -> absolute block index (int, numpy array or torch tensor)."""
        if isinstance(b, np.ndarray):
            abs_b = self._abs_blocks
            return (
                abs_b[np.clip(b, 0, abs_b.size - 1)]
                + np.minimum(b, 0)
                + np.maximum(b - (abs_b.size - 1), 0)
            )
        if isinstance(b, torch.Tensor):
            out = b + self._steps[0][1]
            for c, inc in self._steps[1:]:
                out = out + (b >= c) * inc
            return out
        starts = [c for c, _ in self._steps]
        i = max(bisect.bisect_right(starts, int(b)) - 1, 0)
        return int(b) + sum(inc for _, inc in self._steps[: i + 1])

    def block_rule(self, qb: Any, kb: Any) -> Any:
        ok = self.base.block_rule(self.to_absolute(qb), self.to_absolute(kb))
        if self.key_limit >= 0:
            ok = ok & (kb < self.key_limit)
        return ok

    def _layout_arrays(
        self, num_q_blocks: int, num_kv_blocks: int, q_block_offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # The base pattern's own layout of the absolute query blocks (one call per run of
        # consecutive absolute blocks), its key blocks mapped to compact indices; keys not
        # in the buffer are dropped. The map is increasing, so rows stay sorted.
        qb = np.arange(q_block_offset, q_block_offset + num_q_blocks, dtype=np.int64)
        aq = self.to_absolute(qb)
        cut = np.flatnonzero(np.diff(aq) != 1) + 1
        rows = []
        for seg in np.split(aq, cut):
            lo = int(seg[0])
            if lo < 0:
                rows.append(np.full((seg.size, 1), -1, dtype=np.int64))
                continue
            _, idx = self.base._layout_arrays(seg.size, lo + seg.size, lo)
            rows.append(np.asarray(idx, dtype=np.int64).reshape(seg.size, -1))
        width = max(r.shape[1] for r in rows)
        idx = np.concatenate(
            [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-1) for r in rows]
        )
        abs_b = self._abs_blocks
        pos = np.searchsorted(abs_b, idx)
        keep = (idx >= 0) & (pos < abs_b.size)
        keep &= abs_b[np.minimum(pos, abs_b.size - 1)] == idx
        limit = num_kv_blocks if self.key_limit < 0 else min(num_kv_blocks, self.key_limit)
        keep &= (pos < limit) & (pos <= qb[:, None])
        # Left-pack the kept entries (stable: ascending order kept).
        order = np.argsort(~keep, axis=1, kind="stable")
        pos = np.take_along_axis(np.where(keep, pos, -1), order, axis=1)
        count = keep.sum(axis=1)
        width = int(count.max()) if count.size else 0
        return count, pos[:, :width]
