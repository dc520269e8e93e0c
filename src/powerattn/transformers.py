"""Hugging Face transformers integration: PowerAttention as a one-line switch.

::

    import powerattn.transformers as pt

    model = AutoModelForCausalLM.from_pretrained(...)
    pt.apply(model, "power", full_layers="2 of every 7")   # or any registered pattern
    model.generate(...)                                    # training works too
    model.save_pretrained(path)

    pt.register()                                          # before loading it back
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="powerattn")

:func:`register` adds an attention implementation named ``"powerattn"`` to transformers'
``AttentionInterface`` and a mask function of the same name to ``AttentionMaskInterface``.
Transformers then builds no ``S x S`` mask: the mask function returns ``None`` or, for padded
batches, the 2-D ``(batch, kv_len)`` padding mask, and the attention function calls
:func:`powerattn.sparse_attention` (decoder layers) or dense SDPA (layers kept full).

The settings live in ``model.config.powerattn`` (a JSON dict: pattern name and parameters,
the layers kept full, the operator backend), so ``save_pretrained`` / ``from_pretrained``
round-trip them. A model loaded with ``attn_implementation="powerattn"`` but without settings
uses the paper's pattern (``power``, 256-token blocks, window 5, sink 1) in every layer.

Supported: Llama-, Qwen2- and Mistral-style decoder models whose attention modules dispatch
through ``AttentionInterface`` and carry ``layer_idx``; training (autograd through the
operator); ``generate`` with the default dynamic cache; batches whose padding leaves each row one
contiguous run of real tokens (left padding for ``generate``, left or right padding without a
cache): every row is then computed exactly as the unpadded sequence would be.
Refused with an error: static (pre-allocated) caches, sliding-window configs (Mistral's
``sliding_window``, Qwen2's ``use_sliding_window``), bidirectional attention (``is_causal=False``),
packed sequences (position ids that restart, ``cu_seq_lens_*``) and other custom mask overlays,
4-D masks, attention dropout, attention sinks (``s_aux``) and additive position biases
(``position_bias``), logit softcapping, padding with holes, ``output_attentions=True``, and
``full_layers`` indices outside the model's layers (also in a hand-edited ``config.powerattn``).
"""

from __future__ import annotations

import functools
import json
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .ops.api import BACKENDS, sparse_attention
from .patterns import Pattern, get_pattern

ATTN_IMPLEMENTATION = "powerattn"
"""The name registered with transformers (no "flash"/"sdpa"/"flex": transformers gives names
containing those special treatment)."""

CONFIG_KEY = "powerattn"
"""The attribute of ``model.config`` holding the settings dict."""

DEFAULT_PATTERN = "power"
# The mask-function keywords used here (q_length, q_offset, kv_offset) are transformers 5's;
# verified with 5.17 and 5.24.
MIN_TRANSFORMERS_MAJOR = 5

# Caches that hold exactly the tokens seen so far (transformers' DYNAMIC_CACHE_IMPLEMENTATIONS);
# the static and sliding ones pre-allocate or drop keys and are refused.
_DYNAMIC_CACHES = ("dynamic", "offloaded", "quantized")

_RULE = re.compile(r"^\s*(\d+)\s*(?:of\s+every|of|/)\s*(\d+)\s*$")


# --------------------------------------------------------------------------- settings
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


def _jsonable(value: Any) -> Any:
    """Tuples (LongNet's segments) become lists; numpy ints become ints."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
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


def _resolve_full_layers(
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


@functools.lru_cache(maxsize=64)
def _parse_settings(blob: str, num_layers: int) -> Settings:
    d = json.loads(blob)
    pattern = get_pattern(d.get("pattern", DEFAULT_PATTERN), **d.get("params", {}))
    backend = d.get("backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(
            f"config.{CONFIG_KEY}['backend'] must be one of {BACKENDS}, got {backend!r}"
        )
    full = _resolve_full_layers(
        d.get("full_layers", []), num_layers, f"config.{CONFIG_KEY}['full_layers']"
    )
    return Settings(pattern, frozenset(full), backend)


# Per config object: ((a copy of the raw dict, the layer count), its Settings). Every layer asks,
# so the common case is one dict comparison instead of a JSON dump and a parse.
_settings_cache: dict[int, tuple[tuple[dict[str, Any], int], Settings]] = {}


def get_settings(config: Any) -> Settings:
    """The :class:`Settings` stored on a transformers config (defaults when none are).

    Raises ``ValueError`` for bad settings, e.g. ``full_layers`` outside
    ``0..config.num_hidden_layers - 1``."""
    raw = getattr(config, CONFIG_KEY, None)
    if raw is None:
        raw = {"pattern": DEFAULT_PATTERN}
    if not isinstance(raw, dict):
        raise ValueError(f"config.{CONFIG_KEY} must be a dict, got {type(raw).__name__}")
    num_layers = int(config.num_hidden_layers)
    hit = _settings_cache.get(id(config))
    if hit is not None and hit[0] == (raw, num_layers):
        return hit[1]
    settings = _parse_settings(json.dumps(raw, sort_keys=True), num_layers)
    if len(_settings_cache) > 256:
        _settings_cache.clear()
    _settings_cache[id(config)] = ((json.loads(json.dumps(raw)), num_layers), settings)
    return settings


# --------------------------------------------------------------------------- registration
def register() -> None:
    """Register ``"powerattn"`` with ``AttentionInterface`` and ``AttentionMaskInterface``.

    Idempotent. Needed before ``from_pretrained(..., attn_implementation="powerattn")``;
    :func:`apply` calls it.
    """
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < MIN_TRANSFORMERS_MAJOR:
        raise ImportError(
            f"powerattn.transformers needs transformers >= {MIN_TRANSFORMERS_MAJOR} (its mask "
            f"interface), found {transformers.__version__}"
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
        model: a ``PreTrainedModel`` (Llama, Qwen2, Mistral and alike).
        pattern: a :class:`~powerattn.patterns.Pattern` or a registered name; ``pattern_params``
            are passed to :func:`powerattn.get_pattern` (e.g. ``block_size=256, window=5``).
        full_layers: layers kept on dense causal attention: ``None`` (none), a list of layer
            indices, or a rule ``"k of every n"`` (the last ``k`` layers of each group of
            ``n``; see :func:`full_layers_from_rule`).
        backend: the :func:`powerattn.sparse_attention` backend.

    Returns the model. The settings are written to ``model.config.powerattn`` and the model's
    ``attn_implementation`` becomes ``"powerattn"``.
    """
    register()
    config = model.config
    _check_config(config)
    cache = getattr(getattr(model, "generation_config", None), "cache_implementation", None)
    if cache is not None and cache not in _DYNAMIC_CACHES:
        raise NotImplementedError(
            f"model.generation_config.cache_implementation={cache!r}: powerattn needs a cache "
            f"that holds exactly the tokens seen so far, one of {_DYNAMIC_CACHES}; set it to None "
            "for the default DynamicCache"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    pat = get_pattern(pattern, **pattern_params)
    layers = _resolve_full_layers(full_layers, int(config.num_hidden_layers))
    settings = Settings(pat, frozenset(layers), backend)
    # Every forward rebuilds the pattern from the JSON dict by name: check that gives it back
    # (an unregistered Pattern subclass would fail, or silently become its registered parent).
    try:
        stored = _parse_settings(
            json.dumps(settings.to_dict(), sort_keys=True), int(config.num_hidden_layers)
        )
    except (TypeError, ValueError):
        stored = None
    if stored != settings:
        raise ValueError(
            f"pattern {pat.describe()} ({type(pat).__name__}) cannot be stored in "
            f"model.config.{CONFIG_KEY}: it is rebuilt by name with get_pattern, so its class "
            "must be registered (powerattn.patterns.registry.register) and its parameters JSON"
        )
    setattr(config, CONFIG_KEY, settings.to_dict())
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(
            f"{type(model).__name__} did not switch to attn_implementation="
            f"{ATTN_IMPLEMENTATION!r}: its attention does not dispatch through transformers' "
            "AttentionInterface"
        )
    return model


def _check_config(config: Any) -> None:
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


# --------------------------------------------------------------------------- mask function
def mask_forward(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The mask function transformers calls once per forward (``AttentionMaskInterface``).

    Returns ``None`` (no padding) or the 2-D bool padding mask ``(batch, kv_length)``, never a
    ``q_length x kv_length`` matrix: the pattern is applied by the operator. Refuses what the
    operator cannot express (see the module docstring).
    """
    from transformers.masking_utils import causal_mask_function

    if local_size is not None:
        raise NotImplementedError(
            f"powerattn does not combine with a sliding-window mask (local_size={local_size}); "
            "set config.sliding_window = None"
        )
    if mask_function is not None and mask_function is not causal_mask_function:
        raise NotImplementedError(
            "powerattn supports plain causal language modelling only; transformers asked for a "
            "modified mask (packed sequences, a bidirectional or sliding mask, or an "
            "or/and mask overlay)"
        )
    if isinstance(q_offset, torch.Tensor) or kv_offset != 0 or kv_length != q_offset + q_length:
        raise NotImplementedError(
            "powerattn needs a cache that holds exactly the tokens seen so far (the default "
            "DynamicCache); static / pre-allocated or sliding caches are not supported "
            f"(got q_offset={q_offset}, q_length={q_length}, kv_length={kv_length}, "
            f"kv_offset={kv_offset})"
        )
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch_size, kv_length):
        raise ValueError(
            "attention_mask must be the 2-D padding mask over the past and new tokens, shape "
            f"({batch_size}, {kv_length}); got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None
    _row_ranges(mask)  # validate once per forward; the layers reuse the cached ranges
    return mask


_last_ranges: tuple[torch.Tensor, list[tuple[int, int]]] | None = None


def _row_ranges(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end)]`` per row of a 2-D bool padding mask whose True entries are one
    contiguous run (``start == end`` for an empty row). Cached for the last mask seen, since
    every layer of a forward receives the same tensor."""
    global _last_ranges
    if _last_ranges is not None and _last_ranges[0] is mask:
        return _last_ranges[1]
    n = mask.shape[-1]
    m = mask.to(torch.int32)
    count = m.sum(dim=1)
    first = m.argmax(dim=1)
    last = n - 1 - m.flip(1).argmax(dim=1)
    rows = torch.stack([count, first, last], dim=1).tolist()
    ranges = []
    for b, (c, s, e) in enumerate(rows):
        if c == 0:
            ranges.append((0, 0))
        elif c != e - s + 1:
            raise ValueError(
                f"attention_mask row {b} has padding between real tokens; powerattn supports "
                "left padding (and right padding without a cache), one contiguous run of "
                "real tokens per row"
            )
        else:
            ranges.append((s, e + 1))
    _last_ranges = (mask, ranges)
    return ranges


_last_positions: torch.Tensor | None = None


def _check_positions(position_ids: torch.Tensor) -> None:
    """Refuse position ids that do not count up by one along a row: packed sequences, which
    transformers detects only without a cache (``use_cache`` defaults to True). Checked once per
    forward (every layer receives the same tensor), skipped under ``torch.compile``."""
    global _last_positions
    if torch.compiler.is_compiling():
        return
    if position_ids.shape[-1] < 2 or position_ids is _last_positions:
        return
    if bool((position_ids.diff(dim=-1) != 1).any()):
        raise NotImplementedError(
            "powerattn does not support packed sequences: position_ids restart (or skip) within "
            "a row; give each sequence its own row (with a padding attention_mask)"
        )
    _last_positions = position_ids


# --------------------------------------------------------------------------- attention
def dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Dense causal SDPA with the queries aligned to the end of the keys (``q (B, Hq, Sq, D)``,
    ``k, v (B, Hkv, Sk, D)`` -> ``(B, Hq, Sq, D)``): the layers kept full."""
    sq, sk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if sq == sk or sq == 1:
        # SDPA's is_causal is top-left aligned, which equals bottom-right only when Sq == Sk.
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=sq > 1, scale=scale, enable_gqa=gqa
        )
    pos_q = torch.arange(sk - sq, sk, device=q.device)
    mask = torch.arange(sk, device=q.device)[None, :] <= pos_q[:, None]  # (Sq, Sk)
    group = q.shape[1] // k.shape[1]
    # Masked GQA falls back to the math kernel on CUDA: repeat the KV heads instead.
    k = k.repeat_interleave(group, dim=1) if gqa else k
    v = v.repeat_interleave(group, dim=1) if gqa else v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# Keyword arguments that change the attention's scores or softmax, which the operator does not
# implement: refused rather than silently dropped.
_UNSUPPORTED_TERMS = {
    "s_aux": "attention sinks (a learned per-head logit in the softmax, as in gpt-oss)",
    "position_bias": "an additive position bias on the attention scores",
}


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls in every layer (``AttentionInterface``).

    Args:
        module: the attention module (its ``config`` holds the settings, its ``layer_idx``
            picks sparse or dense).
        query: ``(B, Hq, Sq, D)``; key, value: ``(B, Hkv, Sk, D)`` -- the whole cache at decode.
        attention_mask: what :func:`mask_forward` returned: ``None`` or ``(B, Sk)`` bool.
        scaling: softmax scale.

    Returns ``(out (B, Sq, Hq, D), None)`` (no attention weights).
    """
    if dropout:
        raise NotImplementedError(
            f"powerattn has no attention dropout (got dropout={dropout}); set "
            "config.attention_dropout = 0.0"
        )
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            f"powerattn does not combine with sliding_window={kwargs['sliding_window']}; set "
            "config.sliding_window = None"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("powerattn does not support attention logit softcapping")
    for name, what in _UNSUPPORTED_TERMS.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"powerattn does not support {what} ({name}); the operator computes plain "
                "softmax attention under the pattern's mask"
            )
    is_causal = kwargs.get("is_causal")
    if not (getattr(module, "is_causal", True) if is_causal is None else is_causal):
        raise NotImplementedError("powerattn is causal; this attention call is not")
    if kwargs.get("output_attentions"):
        raise NotImplementedError(
            "powerattn returns no attention weights (output_attentions=True); use "
            "attn_implementation='eager' to inspect them"
        )
    if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
        raise NotImplementedError(
            "powerattn does not support packed sequences (cu_seq_lens_q / cu_seq_lens_k)"
        )
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "powerattn takes no 4-D attention_mask (the pattern is the mask); pass the 2-D "
            f"padding mask instead, got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != (query.shape[0], key.shape[2]):
        raise ValueError(
            f"attention_mask must be the (batch, kv_len) = ({query.shape[0]}, {key.shape[2]}) "
            f"padding mask, got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask is None and kwargs.get("position_ids") is not None:
        _check_positions(kwargs["position_ids"])
    settings = get_settings(module.config)
    layer_idx = getattr(module, "layer_idx", None)
    if settings.full_layers and layer_idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx to route full_layers by")
    if layer_idx in settings.full_layers:
        fn = functools.partial(dense_causal_attention, scale=scaling)
    else:
        fn = functools.partial(
            sparse_attention, pattern=settings.pattern, scale=scaling, backend=settings.backend
        )
    if attention_mask is None:
        out = fn(query, key, value)
    else:
        out = _padded(fn, query, key, value, _row_ranges(attention_mask))
    return out.transpose(1, 2).contiguous(), None


def _padded(
    fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ranges: list[tuple[int, int]]
) -> torch.Tensor:
    """Run ``fn`` on each row's real tokens only, so each row is computed exactly as its
    unpadded sequence (pattern blocks counted from its first real token). Query rows at padded
    positions are 0."""
    sq, sk = q.shape[2], k.shape[2]
    off = sk - sq  # absolute position of query 0
    out = q.new_zeros(q.shape)
    for b, (start, end) in enumerate(ranges):
        qs = max(off, start)
        if qs >= end:
            continue  # no real token among this row's queries
        out[b : b + 1, :, qs - off : end - off] = fn(
            q[b : b + 1, :, qs - off : end - off],
            k[b : b + 1, :, start:end],
            v[b : b + 1, :, start:end],
        )
    return out


__all__ = [
    "ATTN_IMPLEMENTATION",
    "CONFIG_KEY",
    "Settings",
    "apply",
    "attention_forward",
    "dense_causal_attention",
    "full_layers_from_rule",
    "get_settings",
    "mask_forward",
    "register",
]
