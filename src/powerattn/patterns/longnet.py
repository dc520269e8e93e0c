"""LongNet's dilated attention (Ding et al., 2023) at block level, causal.

For each (segment length ``w``, dilation rate ``r``) pair, the sequence is cut into aligned
segments of ``w`` blocks; inside a segment, blocks whose index is a multiple of ``r`` attend
each other. The pattern is the union over pairs. Paper setting:
``(8, 1), (16, 2), (32, 4), (64, 8), (128, 16)`` blocks; LongNet's per-head offsets are
dropped (all heads share one mask), as in the paper's comparison.

A query block that is not a multiple of ``r`` gets nothing from that pair, so e.g. the last
block of each 8-block segment is reachable only from inside its own segment: holes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern
from .registry import register


@register
@dataclass(frozen=True)
class LongNetPattern(Pattern):
    name = "longnet"
    block_size: int = 256
    segments: tuple[tuple[int, int], ...] = ((8, 1), (16, 2), (32, 4), (64, 8), (128, 16))

    def __post_init__(self) -> None:
        super().__post_init__()
        segs = tuple(tuple(int(x) for x in s) for s in self.segments)
        if not segs or any(len(s) != 2 or s[0] <= 0 or s[1] <= 0 for s in segs):
            raise ValueError(
                "segments must be a non-empty sequence of (length, rate) pairs of positive "
                f"integers, got {self.segments!r}"
            )
        if any(w % r for w, r in segs):
            raise ValueError(f"each segment length must be a multiple of its rate: {segs}")
        object.__setattr__(self, "segments", segs)  # lists from JSON/CLI -> hashable tuples

    def block_rule(self, qb: Any, kb: Any) -> Any:
        # Block indices are >= 0, so for powers of two (the paper's segments) the same-segment
        # and divisibility tests are bit operations: this rule is FlexAttention's mask_mod on
        # every partial tile, where integer division costs far more per element.
        out = None
        for w, r in self.segments:
            same = (qb ^ kb) < w if _pow2(w) else qb // w == kb // w
            on_grid = ((qb | kb) & (r - 1)) == 0 if _pow2(r) else (qb % r == 0) & (kb % r == 0)
            term = same & on_grid
            out = term if out is None else out | term
        return out

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        cols = []
        for w, r in self.segments:
            start = (qb // w) * w
            cols.append(start[:, None] + np.arange(0, w, r, dtype=np.int64)[None, :])
        return np.concatenate(cols, axis=1)


def _pow2(n: int) -> bool:
    return n & (n - 1) == 0
