"""Checks of plain values shared by every layer: integer arguments of the Python API and the
``type=`` converters of the command line. Imports nothing of the project (the bottom layer).
"""

from __future__ import annotations

import argparse
import numbers
from collections.abc import Callable
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


class _Flatten(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [x for v in values for x in v])


def add_list_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    convert: Callable[[str], Any] = str,
    **kwargs: Any,
) -> argparse.Action:
    """A list flag under the project's one convention: values separated by spaces, commas or
    both (``--patterns power dilated`` == ``--patterns power,dilated``); each item goes
    through ``convert`` (an argparse ``type=``, whose error names the flag)."""

    def items(text: str) -> list[Any]:
        parts = [x for x in text.split(",") if x]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a value, got {text!r}")
        return [convert(x) for x in parts]

    items.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parser.add_argument(flag, nargs="+", type=items, action=_Flatten, **kwargs)
