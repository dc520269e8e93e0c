"""Checks of plain values shared by every layer: integer arguments of the Python API and the
``type=`` converters of the command line. Imports nothing of the project (the bottom layer).
"""

from __future__ import annotations

import argparse
import numbers
from typing import Any


def _bound(minimum: int) -> str:
    return {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools (``True`` is not a block size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= minimum``
    (bools refused): ``minimum=1`` positive, ``minimum=0`` non-negative."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be {_bound(minimum)}, got {value!r}")


# ------------------------------------------------------------------ argparse converters
def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer > 0 (the error names the bad value)."""
    value = _int(text, "positive")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    value = _int(text, "non-negative")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def int_converter(minimum: int):
    """The argparse converter for integers ``>= minimum`` (0: non-negative, else positive:
    a tighter bound is left to the constructor, whose error names the parameter)."""
    return nonnegative_int if minimum <= 0 else positive_int
