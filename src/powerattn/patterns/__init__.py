"""The pattern catalogue: one file per pattern, one registry by name."""

from . import dilated, full, longnet, power, sliding_window, stride_slash  # noqa: F401  (register)
from .base import MAX_DENSE_ELEMENTS, BlockLayout, Pattern
from .budget import equal_budget, longnet_segments
from .registry import PATTERNS, get_pattern, pattern_names, pattern_params

__all__ = [
    "MAX_DENSE_ELEMENTS",
    "PATTERNS",
    "BlockLayout",
    "Pattern",
    "equal_budget",
    "get_pattern",
    "longnet_segments",
    "pattern_names",
    "pattern_params",
]
