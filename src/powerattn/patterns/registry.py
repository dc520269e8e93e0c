"""Registry of patterns by name; the kernels, the analysis, the plots and the CLI read it.

Registration order is kept (the built-ins first, in the paper's order): tables, figures and
:func:`~powerattn.patterns.equal_budget` list patterns in it; :func:`pattern_names` is sorted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .base import Pattern

PATTERNS: dict[str, type[Pattern]] = {}

P = TypeVar("P", bound=type[Pattern])

# Parameters become command-line flags of ``powerattn analyze/show``: these names are taken.
_RESERVED_PARAMS = {"help", "pattern", "patterns", "seq_len", "layers", "json", "plot", "text"}


def register(cls: P) -> P:
    """Make a :class:`Pattern` subclass available by its ``name`` (a class decorator, or one
    call: ``register(MyPattern)``). Registering the same class again is a no-op."""
    if not (isinstance(cls, type) and issubclass(cls, Pattern)):
        raise ValueError(f"register() takes a Pattern subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in PATTERNS and PATTERNS[cls.name] is not cls:
        raise ValueError(f"a pattern named {cls.name!r} is already registered")
    taken = sorted(_RESERVED_PARAMS & {f.name for f in dataclasses.fields(cls)})
    if taken:
        raise ValueError(
            f"{cls.__name__}: parameter name(s) {', '.join(taken)} clash with command-line "
            "flags of powerattn analyze/show; rename them"
        )
    PATTERNS[cls.name] = cls
    return cls


def pattern_names() -> list[str]:
    return sorted(PATTERNS)


def main_pattern_names() -> list[str]:
    """The patterns of the paper's comparison (``Pattern.main``), in registration order: what
    the experiments train by default."""
    return [name for name, cls in PATTERNS.items() if cls.main]


def pattern_class(name: str) -> type[Pattern]:
    """The registered class of pattern ``name`` (``ValueError`` listing the valid names)."""
    try:
        return PATTERNS[name]
    except KeyError:
        raise ValueError(
            f"unknown pattern {name!r}; valid names: {', '.join(pattern_names())}"
        ) from None


def pattern_params(name: str) -> dict[str, Any]:
    """Parameter names of pattern ``name`` with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(pattern_class(name))}


def pattern_fields(name: str) -> list[dataclasses.Field]:
    """The parameter fields of pattern ``name``, whose ``metadata`` holds ``help``,
    ``minimum``, ``parse`` and ``show`` (see :func:`~powerattn.patterns.base.param`)."""
    return list(dataclasses.fields(pattern_class(name)))


def get_pattern(name: str | Pattern, **params: Any) -> Pattern:
    """Build a registered pattern: ``get_pattern("power", window=5, sink=1, block_size=256)``.

    A :class:`Pattern` instance is returned as is (with ``params`` applied on top).
    Unknown names or parameters raise ``ValueError`` listing what is valid.
    """
    if isinstance(name, Pattern):
        if not params:
            return name
        _check_params(name.name, {f.name: f.default for f in dataclasses.fields(name)}, params)
        return dataclasses.replace(name, **params)
    # One object per (name, parameters): patterns are frozen, and building one (its checks
    # and probe) takes ~20 us, paid on every operator call that names its pattern. Values are
    # keyed with their types (5 and 5.0 are different requests), and a hit counts only while
    # the name still registers the class it was built from.
    try:
        key = (name, tuple((k, type(v), v) for k, v in sorted(params.items()))) if params else name
        hit = _built.get(key)
    except TypeError:  # an unhashable value: built (and refused or accepted) uncached
        key, hit = None, None
    if hit is not None and PATTERNS.get(name) is type(hit):
        return hit
    cls = pattern_class(name)
    _check_params(name, pattern_params(name), params)
    pattern = cls(**params)
    if key is not None:
        if len(_built) >= _BUILT_MAX:
            _built.clear()
        _built[key] = pattern
    return pattern


_built: dict[Any, Pattern] = {}
_BUILT_MAX = 256


def _check_params(name: str, valid: dict[str, Any], params: dict[str, Any]) -> None:
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(
            f"pattern {name!r} has no parameter {', '.join(map(repr, bad))}; valid parameters: "
            + ", ".join(f"{k} (default {v!r})" for k, v in valid.items())
        )
