"""PowerAttention (Chen et al., 2025): sink + local window + blocks at power-of-two distances.

With block distance ``d = q_block - kv_block``::

    attend  <=>  d < window  or  d is a power of ``base`` (d = 0 included)  or  kv_block < sink

Viewed as a DAG, every block within distance ``base**L`` is reachable in ``L`` layers (for
``base=2`` the shortest path has ``popcount(d)`` hops), at ``O(log n)`` blocks per row.
Paper setting: 256-token blocks, window 5, sink 1 -> at most 10 blocks per row at 32K.
Below ~1.5K tokens (6 blocks of 256) the window and the powers of two cover every earlier
block: power is full causal attention there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, largest_fitting, param
from .registry import register

# Largest block distance the base-b rule is written out for (2^40 blocks: beyond any context).
_MAX_DISTANCE = 1 << 40

_WINDOW_HELP = "local window W in blocks: distances 0..W-1"
_SINK_HELP = "sink S: the first S blocks, attended by every query"


@register
@dataclass(frozen=True)
class PowerPattern(Pattern):
    name = "power"
    color = "#d62728"
    main = True
    defines_budget = True
    small_params = {"window": 2, "sink": 1}
    budget_rule = "tunes its window (sink 1); the powers of two alone take log2(n) + 2 blocks"

    window: int = param(5, _WINDOW_HELP, minimum=0)
    sink: int = param(1, _SINK_HELP, minimum=0)
    base: int = param(2, "attend distances that are powers of BASE (default 2)", minimum=2)

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

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> PowerPattern:
        """The window (sink 1, base 2); the powers of two alone take ``log2(n) + 2`` blocks,
        so a smaller budget cannot be met."""
        return largest_fitting(
            lambda w: cls(block_size=block_size, window=w, sink=1),
            0,
            min(num_blocks, budget),
            budget,
            num_blocks,
        )

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        return dict(
            window=int(rng.integers(0, 7)),
            sink=int(rng.integers(0, 3)),
            base=int(rng.choice([2, 2, 3, 4])),
        )

    def decode_closed_form(self) -> tuple[int, int | None, bool] | None:
        return (self.sink, self.window, True) if self.base == 2 else None
