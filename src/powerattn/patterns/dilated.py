"""Dilated sliding window (Longformer-style): every ``dilation``-th block within the last
``window`` blocks, no sink. Paper setting: a 20-block window with a gap of one block
(``dilation=2``), i.e. block distances 0, 2, ..., 18.

Only distances that are multiples of ``dilation`` exist in the DAG, so paths of any length
reach only multiples of it: about half of the sequence stays unreachable (``dilation=2``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, largest_fitting, param
from .registry import register


@register
@dataclass(frozen=True)
class DilatedPattern(Pattern):
    name = "dilated"
    color = "#ff7f0e"
    main = True
    small_params = {"window": 6, "dilation": 2}
    budget_rule = "tunes its window (dilation 2)"

    window: int = param(20, "the span 0..W-1 that the dilation thins out", minimum=1)
    dilation: int = param(
        2, "keep only distances that are multiples of DILATION inside the window", minimum=1
    )

    def block_rule(self, qb: Any, kb: Any) -> Any:
        d = qb - kb
        return (d < self.window) & (d % self.dilation == 0)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        d = np.arange(0, self.window, self.dilation, dtype=np.int64)
        return qb[:, None] - d[None, :]

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> DilatedPattern:
        """The window (dilation 2, no sink); the last block attends ``ceil(min(window, n) /
        2)`` blocks."""
        return largest_fitting(
            lambda w: cls(block_size=block_size, window=w),
            1,
            min(2 * num_blocks, 2 * budget + 1),
            budget,
            num_blocks,
        )

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        return dict(window=int(rng.integers(1, 14)), dilation=int(rng.integers(1, 5)))
