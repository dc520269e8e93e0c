"""PowerAttention (Chen et al., 2025): sink + local window + blocks at power-of-two distances.

With block distance ``d = q_block - kv_block``::

    attend  <=>  d < window  or  d is a power of ``base`` (d = 0 included)  or  kv_block < sink

Viewed as a DAG, every block within distance ``base**L`` is reachable in ``L`` layers (for
``base=2`` the shortest path has ``popcount(d)`` hops), at ``O(log n)`` blocks per row.
Paper setting: 256-token blocks, window 5, sink 1 -> at most 10 blocks per row at 32K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, _check_nonnegative_int, _check_positive_int
from .registry import register

# Largest block distance the base-b rule is written out for (2^40 blocks: beyond any context).
_MAX_DISTANCE = 1 << 40


@register
@dataclass(frozen=True)
class PowerPattern(Pattern):
    name = "power"
    block_size: int = 256
    window: int = 5
    sink: int = 1
    base: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative_int("window", self.window)
        _check_nonnegative_int("sink", self.sink)
        _check_positive_int("base", self.base)
        if self.base < 2:
            raise ValueError(f"base must be >= 2, got {self.base}")

    def _powers(self) -> list[int]:
        out, p = [], 1
        while p <= _MAX_DISTANCE:
            out.append(p)
            p *= self.base
        return out

    def block_rule(self, qb: Any, kb: Any) -> Any:
        d = qb - kb
        if self.base == 2:
            # Parenthesised on purpose: == binds tighter than & in C-like languages.
            is_power = (d & (d - 1)) == 0
        else:
            is_power = d == 0
            for p in self._powers():
                is_power = is_power | (d == p)
        return (d < self.window) | is_power | (kb < self.sink)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        hi = int(qb.max()) if qb.size else 0
        dists = [0, *range(self.window), *(p for p in self._powers() if p <= hi)]
        d = np.asarray(sorted(set(dists)), dtype=np.int64)
        sinks = np.broadcast_to(np.arange(self.sink, dtype=np.int64), (qb.size, self.sink))
        return np.concatenate([qb[:, None] - d[None, :], sinks], axis=1)
