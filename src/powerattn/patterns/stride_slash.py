"""Stride slash (Sparse Transformer's strided pattern at block level): a local window, the
blocks at multiples of ``stride`` back ("slashes" in the mask picture), and sinks.

Paper setting: window 6, sink 1, "3 slash blocks" at 32K. The paper does not state the
stride; with 128 blocks of 256 tokens, ``stride=32`` gives slashes at distances 32, 64 and 96
and the paper's 10-block budget, so that is our default. Reaching distance ``N`` takes about
``N / stride + stride / window`` hops: O(sqrt N) when the stride is tuned to the length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, _check_nonnegative_int, _check_positive_int
from .registry import register


@register
@dataclass(frozen=True)
class StrideSlashPattern(Pattern):
    name = "stride_slash"
    block_size: int = 256
    window: int = 6
    sink: int = 1
    stride: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative_int("window", self.window)
        _check_nonnegative_int("sink", self.sink)
        _check_positive_int("stride", self.stride)

    def block_rule(self, qb: Any, kb: Any) -> Any:
        d = qb - kb
        return (d < self.window) | (d % self.stride == 0) | (kb < self.sink)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        hi = int(qb.max()) if qb.size else 0
        local = qb[:, None] - np.arange(self.window, dtype=np.int64)[None, :]
        slashes = qb[:, None] - np.arange(0, hi + 1, self.stride, dtype=np.int64)[None, :]
        sinks = np.broadcast_to(np.arange(self.sink, dtype=np.int64), (qb.size, self.sink))
        return np.concatenate([local, slashes, sinks], axis=1)
