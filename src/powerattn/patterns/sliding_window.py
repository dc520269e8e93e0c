"""Sliding window with attention sinks (StreamingLLM): the last ``window`` blocks (the
query's own included) and the first ``sink`` blocks. Paper setting: window 9, sink 1.

The receptive field grows by ``window - 1`` blocks per layer: linear, so the start of a long
sequence is out of reach of a shallow model (except through the sink)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, _check_nonnegative_int
from .registry import register


@register
@dataclass(frozen=True)
class SlidingWindowPattern(Pattern):
    name = "sliding_window"
    block_size: int = 256
    window: int = 9
    sink: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative_int("window", self.window)
        _check_nonnegative_int("sink", self.sink)

    def block_rule(self, qb: Any, kb: Any) -> Any:
        return ((qb - kb) < self.window) | (kb < self.sink)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        local = qb[:, None] - np.arange(self.window, dtype=np.int64)[None, :]
        sinks = np.broadcast_to(np.arange(self.sink, dtype=np.int64), (qb.size, self.sink))
        return np.concatenate([local, sinks], axis=1)
