"""Set the patterns to an equal compute budget, as the paper compares them.

The budget is the largest number of key blocks any query block attends at the given length
(``Pattern.max_degree``). By default the degree of the pattern that ``defines_budget``
(PowerAttention) at its paper setting defines it (10 blocks at 32K with 256-token blocks);
every registered pattern is then set by its own :meth:`~powerattn.patterns.Pattern.at_budget`
(each pattern's docstring says which knob it tunes; LongNet keeps its shape and full
attention is the ceiling, so those two exceed the budget).
"""

from __future__ import annotations

from .base import Pattern, _check_positive_int
from .longnet import longnet_segments
from .registry import PATTERNS

__all__ = ["equal_budget", "longnet_segments"]


def equal_budget(
    seq_len: int, block_size: int = 256, budget: int | None = None
) -> dict[str, Pattern]:
    """Every registered pattern at (at most, where it can be tuned) the same budget.

    Args:
        seq_len: sequence length in tokens.
        block_size: tokens per block, for every pattern.
        budget: max key blocks per query block; default: the degree of the budget-defining
            pattern (power) at its default setting, which is then kept as is. With an explicit
            budget every pattern is tuned, power included.

    Returns:
        ``{name: pattern}`` in registration order (power, sliding_window, stride_slash,
        dilated, longnet, full, then patterns registered later). Compare
        ``pattern.max_degree(n)`` with the budget: a pattern that cannot be tuned down to it
        (LongNet, full, or any pattern at a budget below its floor) exceeds it.
    """
    _check_positive_int("seq_len", seq_len)
    _check_positive_int("block_size", block_size)
    refs = [cls for cls in PATTERNS.values() if cls.defines_budget]
    ref = refs[0](block_size=block_size) if refs else None
    n = -(-seq_len // block_size)  # blocks, the last one possibly partial
    keep_ref = budget is None
    if budget is None:
        if ref is None:
            raise ValueError("no registered pattern defines the default budget: pass budget")
        budget = ref.max_degree(n)
    _check_positive_int("budget", budget)
    return {
        name: ref if keep_ref and cls.defines_budget else cls.at_budget(budget, n, block_size)
        for name, cls in PATTERNS.items()
    }
