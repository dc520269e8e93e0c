"""Sliding window with attention sinks (StreamingLLM): the last ``window`` blocks (the
query's own included) and the first ``sink`` blocks. Paper setting: window 9, sink 1.

The receptive field grows by ``window - 1`` blocks per layer: linear, so the start of a long
sequence is out of reach of a shallow model (except through the sink)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, largest_fitting, param
from .power import _SINK_HELP, _WINDOW_HELP
from .registry import register


@register
@dataclass(frozen=True)
class SlidingWindowPattern(Pattern):
    name = "sliding_window"
    color = "#1f77b4"
    main = True
    small_params = {"window": 3, "sink": 1}
    budget_rule = "tunes its window (sink 1)"

    window: int = param(9, _WINDOW_HELP, minimum=0)
    sink: int = param(1, _SINK_HELP, minimum=0)

    def block_rule(self, qb: Any, kb: Any) -> Any:
        return ((qb - kb) < self.window) | (kb < self.sink)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        local = qb[:, None] - np.arange(self.window, dtype=np.int64)[None, :]
        sinks = np.broadcast_to(np.arange(self.sink, dtype=np.int64), (qb.size, self.sink))
        return np.concatenate([local, sinks], axis=1)

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> SlidingWindowPattern:
        """The window (sink 1); the last block attends ``min(window, n)`` blocks."""
        return largest_fitting(
            lambda w: cls(block_size=block_size, window=w, sink=1),
            1,
            min(num_blocks, budget),
            budget,
            num_blocks,
        )

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        window, sink = int(rng.integers(0, 11)), int(rng.integers(0, 3))
        return dict(window=window or int(sink == 0), sink=sink)  # never attend nothing

    def decode_closed_form(self) -> tuple[int, int | None, bool] | None:
        return self.sink, self.window, False
