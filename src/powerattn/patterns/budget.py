"""Set the patterns to an equal compute budget, as the paper compares them.

The budget is the largest number of key blocks any query block attends at the given length
(``Pattern.max_degree``). PowerAttention's degree at its paper setting defines it by default
(10 blocks at 32K with 256-token blocks); each baseline is tuned along one knob to the
largest setting whose degree fits:

* ``sliding_window``: the window (sink 1);
* ``stride_slash``: window 6 and sink 1 kept, the smallest stride that fits;
* ``dilated``: the window (dilation 2, no sink);
* ``longnet``: not tunable without breaking its structure; the paper's shape
  ``(8, 1), (16, 2), (32, 4), ...`` up to the sequence, which leaves it a slightly *larger*
  budget than the others (13 blocks at 32K, against 10);
* ``full``: unchanged (it is the ceiling, not a budget-matched competitor).
"""

from __future__ import annotations

from .base import Pattern, _check_positive_int
from .registry import get_pattern


def _largest(make, lo: int, hi: int, degree, budget: int):
    """Largest knob in [lo, hi] with degree(make(knob)) <= budget (degree is monotone)."""
    if degree(make(lo)) > budget:
        return make(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if degree(make(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return make(lo)


def longnet_segments(first: int, num_blocks: int) -> tuple[tuple[int, int], ...]:
    """``(first, 1), (2 first, 2), (4 first, 4), ...`` while the segment fits ``num_blocks``
    (at least the first pair)."""
    segs, w, r = [], first, 1
    while not segs or w <= num_blocks:
        segs.append((w, r))
        w, r = w * 2, r * 2
    return tuple(segs)


def equal_budget(
    seq_len: int, block_size: int = 256, budget: int | None = None
) -> dict[str, Pattern]:
    """Every registered baseline tuned to the same maximum degree at ``seq_len``.

    Returns ``{name: pattern}`` for power, sliding_window, stride_slash, dilated, longnet and
    full. ``budget`` defaults to the degree of ``power`` (window 5, sink 1) at ``seq_len``.
    """
    _check_positive_int("seq_len", seq_len)
    _check_positive_int("block_size", block_size)
    power = get_pattern("power", block_size=block_size)
    n = power.num_blocks(seq_len)
    if budget is None:
        budget = power.max_degree(n)
    _check_positive_int("budget", budget)

    def deg(p: Pattern) -> int:
        return p.max_degree(n)

    # Search ranges are cut to where the answer can lie (each degree evaluation builds a
    # layout, and a huge window or a tiny stride makes that layout O(n^2)): the last block
    # alone attends min(window, n) blocks of a sliding window, ceil(min(window, n) / 2) of a
    # dilated one, and (n - 1) // stride + 1 slashes, at most 7 of them shared with the
    # window and sink.
    out: dict[str, Pattern] = {"power": power}
    out["sliding_window"] = _largest(
        lambda w: get_pattern("sliding_window", block_size=block_size, window=w, sink=1),
        1,
        min(n, budget),
        deg,
        budget,
    )
    # Degree falls as the stride grows: search on -stride.
    out["stride_slash"] = _largest(
        lambda s: get_pattern("stride_slash", block_size=block_size, stride=-s),
        -n,
        -max(1, (n - 1) // (2 * budget + 16)),
        deg,
        budget,
    )
    out["dilated"] = _largest(
        lambda w: get_pattern("dilated", block_size=block_size, window=w),
        1,
        min(2 * n, 2 * budget + 1),
        deg,
        budget,
    )
    # LongNet is kept in the paper's shape, (8, 1), (16, 2), ... up to the sequence: other
    # segment lengths misalign its segments with the last block and mostly just shrink its
    # reach. At 32K that gives it 13 blocks to power's 10 -- a margin in LongNet's favour.
    out["longnet"] = get_pattern("longnet", block_size=block_size, segments=longnet_segments(8, n))
    out["full"] = get_pattern("full", block_size=block_size)
    return out
