"""``register()`` and ``apply()``: how a transformers model is switched to powerattn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..ops.api import BACKENDS
from ..patterns import Pattern, get_pattern
from .attention import attention_forward
from .masks import mask_forward
from .settings import (
    ATTN_IMPLEMENTATION,
    CONFIG_KEY,
    DEFAULT_PATTERN,
    Settings,
    attach_route,
    check_config,
    resolve_full_layers,
)

MIN_TRANSFORMERS = (5, 17)
"""The oldest transformers release this integration is tested with (5.17; also 5.24). The mask
function's keywords (``q_length``, ``q_offset``, ``kv_offset``) are transformers 5's."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def register() -> None:
    """Register ``"powerattn"`` with ``AttentionInterface`` and ``AttentionMaskInterface``.

    Idempotent. Needed before ``from_pretrained`` of a checkpoint saved after :func:`apply`
    (its ``config.json`` names the implementation, so it loads with powerattn by itself once
    registered); :func:`apply` calls it.
    """
    import transformers

    if _version_tuple(transformers.__version__) < MIN_TRANSFORMERS:
        want = ".".join(map(str, MIN_TRANSFORMERS))
        raise ImportError(
            f"powerattn's transformers integration needs transformers >= {want} (its mask "
            f"interface), found {transformers.__version__}: pip install 'transformers>={want}'"
        )
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, mask_forward)


def apply(
    model: Any,
    pattern: Pattern | str = DEFAULT_PATTERN,
    full_layers: str | Sequence[int] | None = None,
    *,
    backend: str = "auto",
    **pattern_params: Any,
) -> Any:
    """Switch a loaded transformers model to block-sparse attention, in place.

    Args:
        model: a ``PreTrainedModel`` (Llama, Qwen2 or Mistral; see
            :data:`~powerattn.hf.settings.SUPPORTED_MODEL_TYPES`).
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name; ``pattern_params``
            are passed to :func:`powerattn.get_pattern` (e.g. ``block_size=256, window=5``).
        full_layers: layers kept on dense causal attention: ``None`` (none), a list of layer
            indices, or a rule ``"k of every n"`` (the last ``k`` layers of each group of
            ``n``; see :func:`full_layers_from_rule`).
        backend: the :func:`powerattn.sparse_attention` backend.

    Returns the model. The settings are written to ``model.config.powerattn`` (and
    ``config.attn_implementation = "powerattn"``, so a saved checkpoint loads with powerattn
    again, or fails loudly where powerattn is not registered); each attention module gets its
    resolved route; the model's ``attn_implementation`` becomes ``"powerattn"``.
    """
    register()
    config = model.config
    check_config(config)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    pat = get_pattern(pattern, **pattern_params)
    layers = resolve_full_layers(full_layers, int(config.num_hidden_layers))
    settings = Settings(pat, frozenset(layers), backend)
    raw = settings.to_dict()
    # A loaded checkpoint rebuilds the pattern from this dict by name: check that gives it back
    # (an unregistered Pattern subclass would fail, or silently become its registered parent).
    try:
        stored = Settings.from_dict(raw, int(config.num_hidden_layers))
    except (TypeError, ValueError):
        stored = None
    if stored != settings:
        raise ValueError(
            f"pattern {pat.describe()} ({type(pat).__name__}) cannot be stored in "
            f"model.config.{CONFIG_KEY}: it is rebuilt by name with get_pattern, so its class "
            "must be registered (powerattn.patterns.registry.register) and its parameters JSON"
        )
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(
            f"{type(model).__name__} did not switch to attn_implementation="
            f"{ATTN_IMPLEMENTATION!r}: its attention does not dispatch through transformers' "
            "AttentionInterface"
        )
    setattr(config, CONFIG_KEY, raw)
    # Saved into config.json; transformers reads it back as the implementation to use.
    config.attn_implementation = ATTN_IMPLEMENTATION
    for module in model.modules():
        if getattr(module, "config", None) is config and hasattr(module, "layer_idx"):
            attach_route(module, settings, raw)
    return model
