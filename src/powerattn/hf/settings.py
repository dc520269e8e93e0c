"""The settings stored in ``model.config.powerattn``: parsed once, attached to each layer.

``apply()`` parses them when it writes them; a model loaded with
``attn_implementation="powerattn"`` parses them at its first forward. Each attention module then
carries its resolved route (:class:`LayerRoute`: the pattern, or dense for layers kept full),
together with the raw dict it was resolved from: a later edit of ``config.powerattn`` (a value
comparison, not an identity check) is resolved again rather than silently ignored.
"""

from __future__ import annotations

import copy
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ops.api import BACKENDS
from ..patterns import Pattern, get_pattern

ATTN_IMPLEMENTATION = "powerattn"
"""The name registered with transformers (no "flash"/"sdpa"/"flex": transformers gives names
containing those special treatment)."""

CONFIG_KEY = "powerattn"
"""The attribute of ``model.config`` holding the settings dict."""

DEFAULT_PATTERN = "power"

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
"""``config.model_type`` values covered by the conformance suite (tests/hf). Others (GPT-2,
Gemma, Phi-3, ...) are refused: their attention modules pass arguments (scaling rules, soft
caps, fused or windowed layouts) this integration has not been checked against."""

_RULE = re.compile(r"^\s*(\d+)\s*(?:of\s+every|of|/)\s*(\d+)\s*$")
_ROUTE_ATTR = "_powerattn_route"


@dataclass(frozen=True)
class Settings:
    """Parsed ``model.config.powerattn``: the pattern, the layers kept dense, the backend."""

    pattern: Pattern
    full_layers: frozenset[int]
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern.name,
            "params": _jsonable(self.pattern.params()),
            "full_layers": sorted(self.full_layers),
            "backend": self.backend,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], num_layers: int) -> Settings:
        """Parse a settings dict (as stored in ``config.powerattn``) for a model of
        ``num_layers`` layers; ``ValueError`` naming the bad entry."""
        if not isinstance(raw, dict):
            raise ValueError(f"config.{CONFIG_KEY} must be a dict, got {type(raw).__name__}")
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"config.{CONFIG_KEY}['params'] must be a dict, got {params!r}")
        # JSON turns tuples (LongNet's segments) into lists: give them back as tuples.
        params = {k: _tuples(v) for k, v in params.items()}
        pattern = get_pattern(raw.get("pattern", DEFAULT_PATTERN), **params)
        backend = raw.get("backend", "auto")
        if backend not in BACKENDS:
            raise ValueError(
                f"config.{CONFIG_KEY}['backend'] must be one of {BACKENDS}, got {backend!r}"
            )
        full = resolve_full_layers(
            raw.get("full_layers", []), num_layers, f"config.{CONFIG_KEY}['full_layers']"
        )
        return cls(pattern, frozenset(full), backend)


def _jsonable(value: Any) -> Any:
    """Tuples (LongNet's segments) become lists; numpy ints become ints."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def full_layers_from_rule(rule: str, num_layers: int) -> list[int]:
    """Expand ``"k of every n"`` (also ``"k of n"``, ``"k/n"``) to layer indices.

    The layers are cut into consecutive groups of ``n`` and the **last** ``k`` layers of each
    group stay full (as local/global hybrids such as Gemma place their global layers); a
    trailing partial group keeps its last ``k`` too. 28 layers, ``"2 of every 7"`` ->
    ``[5, 6, 12, 13, 19, 20, 26, 27]``.
    """
    m = _RULE.match(rule) if isinstance(rule, str) else None
    if m is None:
        raise ValueError(f"full_layers rule must look like '2 of every 7' (or '2/7'), got {rule!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n <= 0 or k > n:
        raise ValueError(f"full_layers rule {rule!r} needs 0 <= k <= n and n > 0")
    out = []
    for start in range(0, num_layers, n):
        stop = min(start + n, num_layers)
        out.extend(range(max(start, stop - k), stop))
    return out


def resolve_full_layers(
    full_layers: str | Sequence[int] | None, num_layers: int, what: str = "full_layers"
) -> list[int]:
    """Sorted layer indices from ``full_layers`` (``what`` names it in errors)."""
    if full_layers is None:
        return []
    if isinstance(full_layers, str):
        return full_layers_from_rule(full_layers, num_layers)
    items = list(full_layers) if isinstance(full_layers, Sequence) else None
    if items is None or any(
        isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in items
    ):
        raise ValueError(
            f"{what} must be None, a rule such as '2 of every 7', or a list of layer "
            f"indices, got {full_layers!r}"
        )
    layers = [int(i) for i in items]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"{what} {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})"
        )
    return sorted(set(layers))


def check_config(config: Any) -> None:
    """Refuse model configurations the integration does not serve (before any forward)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"powerattn supports model types {SUPPORTED_MODEL_TYPES} (checked by its conformance "
            f"suite); config.model_type={model_type!r} is refused: its attention may pass "
            "arguments (scaling rules, soft caps, windows, fused layouts) the integration would "
            "drop. Use one of the supported architectures, or attn_implementation='sdpa'."
        )
    if not getattr(config, "is_causal", True):
        raise NotImplementedError(
            "powerattn is causal; this config asks for bidirectional attention "
            "(config.is_causal=False)"
        )
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "sliding_window", None) is not None or "sliding_attention" in layer_types:
        raise NotImplementedError(
            f"this model uses a sliding window (config.sliding_window="
            f"{getattr(config, 'sliding_window', None)}): its cache drops keys older than the "
            "window, which a sparse pattern still reads. Set config.sliding_window = None (and "
            "use_sliding_window = False for Qwen2) before applying powerattn if the pattern "
            "should replace the window."
        )


def get_settings(config: Any) -> Settings:
    """The :class:`Settings` stored on a transformers config (defaults when none are).

    Parses ``config.powerattn`` on every call (no cache): the attention layers do not call
    this, they use the route attached to them (:func:`layer_route`). Raises ``ValueError`` for
    bad settings, e.g. ``full_layers`` outside ``0..config.num_hidden_layers - 1``."""
    raw = getattr(config, CONFIG_KEY, None)
    if raw is None:
        raw = {"pattern": DEFAULT_PATTERN}
    return Settings.from_dict(raw, int(config.num_hidden_layers))


@dataclass(frozen=True)
class LayerRoute:
    """What one attention module computes: ``pattern`` (``None``: dense causal attention, a
    layer kept full) with ``backend``; ``raw`` is the settings dict it was resolved from."""

    pattern: Pattern | None
    backend: str
    raw: Any


def attach_route(module: torch.nn.Module, settings: Settings, raw: Any) -> LayerRoute:
    """Resolve ``module``'s route from ``settings`` and store it on the module."""
    layer_idx = getattr(module, "layer_idx", None)
    if settings.full_layers and layer_idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx to route full_layers by")
    dense = layer_idx in settings.full_layers
    route = LayerRoute(None if dense else settings.pattern, settings.backend, copy.deepcopy(raw))
    # object.__setattr__: a plain attribute, not registered as a submodule or buffer.
    object.__setattr__(module, _ROUTE_ATTR, route)
    return route


def layer_route(module: torch.nn.Module) -> LayerRoute:
    """The route attached to ``module``; resolved from ``module.config`` on first use (a model
    loaded by name) and again whenever ``config.powerattn`` no longer equals the dict it was
    resolved from."""
    route = module.__dict__.get(_ROUTE_ATTR)
    if route is not None and torch.compiler.is_compiling():
        return route  # no re-validation inside a compiled graph (the dict would become guards)
    config = module.config
    raw = getattr(config, CONFIG_KEY, None)
    if route is not None and route.raw == raw:
        return route
    check_config(config)
    return attach_route(module, get_settings(config), raw)
