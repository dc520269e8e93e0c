"""The pattern catalogue: one file per pattern, one registry by name.

A new pattern inside the package is one file plus one line below (the import registers it, and
its position is its place in tables and figures); outside the package, define the class and
call :func:`register` (``docs/patterns.md``, "Adding a pattern")."""

from . import power, sliding_window, stride_slash, dilated, longnet, full  # noqa: F401, I001  (register, in the paper's order)
from .base import MAX_DENSE_ELEMENTS, BlockLayout, Pattern, largest_fitting, param
from .budget import equal_budget, longnet_segments
from .registry import (
    PATTERNS,
    get_pattern,
    main_pattern_names,
    pattern_class,
    pattern_fields,
    pattern_names,
    pattern_params,
    register,
)

__all__ = [
    "MAX_DENSE_ELEMENTS",
    "PATTERNS",
    "BlockLayout",
    "Pattern",
    "equal_budget",
    "get_pattern",
    "largest_fitting",
    "longnet_segments",
    "main_pattern_names",
    "param",
    "pattern_class",
    "pattern_fields",
    "pattern_names",
    "pattern_params",
    "register",
]
