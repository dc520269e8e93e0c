"""LongNet's dilated attention (Ding et al., 2023) at block level, causal.

For each (segment length ``w``, dilation rate ``r``) pair, the sequence is cut into aligned
segments of ``w`` blocks; inside a segment, blocks whose index is a multiple of ``r`` attend
each other. The pattern is the union over pairs. Paper setting:
``(8, 1), (16, 2), (32, 4), (64, 8), (128, 16)`` blocks; LongNet's per-head offsets are
dropped (all heads share one mask), as in the paper's comparison.

A query block that is not a multiple of ``r`` gets nothing from that pair, so e.g. the last
block of each 8-block segment is reachable only from inside its own segment: holes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..validate import is_int
from .base import Pattern, param
from .registry import register


def parse_segments(text: str) -> tuple[tuple[int, int], ...]:
    """``'8:1,16:2'`` -> ``((8, 1), (16, 2))`` (the command line's form of ``segments``)."""
    try:
        pairs = tuple(
            (int(w), int(r)) for w, r in (item.split(":") for item in text.split(",") if item)
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"segments must look like '8:1,16:2,32:4' (length:rate pairs), got {text!r}"
        ) from None
    if not pairs:
        raise argparse.ArgumentTypeError("segments must hold at least one length:rate pair")
    return pairs


def show_segments(segments: tuple[tuple[int, int], ...]) -> str:
    """``((8, 1), (16, 2))`` -> ``'8:1,16:2'``."""
    return ",".join(f"{w}:{r}" for w, r in segments)


def longnet_segments(first: int, num_blocks: int) -> tuple[tuple[int, int], ...]:
    """``(first, 1), (2 first, 2), (4 first, 4), ...`` while the segment fits ``num_blocks``
    (at least the first pair)."""
    segs, w, r = [], first, 1
    while not segs or w <= num_blocks:
        segs.append((w, r))
        w, r = w * 2, r * 2
    return tuple(segs)


@register
@dataclass(frozen=True)
class LongNetPattern(Pattern):
    name = "longnet"
    color = "#9467bd"
    main = True
    small_params = {"segments": ((2, 1), (4, 2), (8, 4))}
    budget_rule = (
        "keeps the paper's segment shape 8:1,16:2,32:4,... up to the sequence (not tunable "
        "without breaking its structure)"
    )

    segments: tuple[tuple[int, int], ...] = param(
        ((8, 1), (16, 2), (32, 4), (64, 8), (128, 16)),
        "(segment length, dilation rate) pairs in blocks, written '8:1,16:2,32:4' "
        "(default: the paper's 8:1,16:2,32:4,64:8,128:16)",
        parse=parse_segments,
        show=show_segments,
    )

    def _check(self) -> None:
        segs = self.segments
        if isinstance(segs, str):  # the command line's form, also accepted from Python
            try:
                segs = parse_segments(segs)
            except argparse.ArgumentTypeError as e:
                raise ValueError(str(e)) from None
        bad = ValueError(
            "segments must be a non-empty sequence of (length, rate) pairs of positive "
            f"integers, e.g. ((8, 1), (16, 2)) or '8:1,16:2', got {self.segments!r}"
        )
        try:
            pairs = [tuple(s) for s in segs]
        except TypeError:  # a flat list such as [8, 1] or a number
            raise bad from None
        if not pairs or any(len(s) != 2 or not all(is_int(x) and x > 0 for x in s) for s in pairs):
            raise bad  # floats are refused, not truncated: 8.5 is no segment length
        segs = tuple((int(w), int(r)) for w, r in pairs)
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

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> LongNetPattern:
        """Not tunable without breaking its structure: the paper's shape ``(8, 1), (16, 2),
        (32, 4), ...`` up to the sequence (other segment lengths misalign its segments with
        the last block and mostly just shrink its reach). At 32K that leaves it 13 blocks to
        power's 10: a margin in LongNet's favour."""
        return cls(block_size=block_size, segments=longnet_segments(8, num_blocks))

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        segs = []
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(1, 5))
            segs.append((r * int(rng.integers(1, 6)), r))
        return dict(segments=tuple(segs))


def _pow2(n: int) -> bool:
    return n & (n - 1) == 0
